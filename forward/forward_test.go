package forward

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward/fakedev"
)

var (
	vmMAC  = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x11}
	extMAC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x64}
	vmIP   = net.IP{198, 18, 0, 11}
	extIP  = net.IP{198, 18, 0, 100}
)

// frame serialises Ethernet/IPv4 plus the given transport layer, padded to
// size bytes when size is larger.
func frame(t testing.TB, fromVM bool, l4 gopacket.SerializableLayer, payload, size int) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: vmMAC, DstMAC: extMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: vmIP, DstIP: extIP}
	if !fromVM {
		eth.SrcMAC, eth.DstMAC = extMAC, vmMAC
		ip.SrcIP, ip.DstIP = extIP, vmIP
	}
	switch l := l4.(type) {
	case *layers.UDP:
		ip.Protocol = layers.IPProtocolUDP
		l.SetNetworkLayerForChecksum(ip)
	case *layers.TCP:
		ip.Protocol = layers.IPProtocolTCP
		l.SetNetworkLayerForChecksum(ip)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, l4, gopacket.Payload(make([]byte, payload)))
	if err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	for len(b) < size {
		b = append(b, 0)
	}
	return b
}

// udpFlood is a 250-byte UDP frame from the VM, as in the incident.
func udpFlood(t testing.TB) []byte {
	return frame(t, true, &layers.UDP{SrcPort: 40000, DstPort: 9}, 250-14-20-8, 0)
}

func newPipes(t testing.TB, from, to Policy, now time.Time) (*Pipe, *Pipe) {
	t.Helper()
	table := classify.NewConnTable(1024)
	cf, err := classify.New(classify.FromVM, classify.Config{}, table)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := classify.New(classify.ToVM, classify.Config{}, table)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := NewPipe(classify.FromVM, []Input{{Cls: cf}}, nil, from, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := NewPipe(classify.ToVM, []Input{{Cls: ct}}, nil, to, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pf, pt
}

func TestAggregatePPSUnderFlood(t *testing.T) {
	start := time.Unix(1700000000, 0)
	pol := Policy{Aggregate: bucket.Limits{PPS: 5000}}
	from, _ := newPipes(t, pol, Policy{}, start)
	f := udpFlood(t)
	const offered, seconds = 25000, 10 // 5x the rate
	step := time.Second / offered
	passed := 0
	now := start
	for i := 0; i < offered*seconds; i++ {
		if from.Step(f, now).Action == Pass {
			passed++
		}
		now = now.Add(step)
	}
	ideal := 5000.0*seconds + float64(pol.Aggregate.Effective().BurstPackets)
	if float64(passed) < 0.999*ideal || float64(passed) > ideal+1 {
		t.Fatalf("passed %d frames, want within [%.0f, %.0f]", passed, 0.999*ideal, ideal+1)
	}
	st := from.Stats().Classes[classify.UDP]
	if st.PassedPackets != uint64(passed) || st.DroppedPackets != uint64(offered*seconds-passed) {
		t.Fatalf("counters %+v do not add up to %d passed of %d", st, passed, offered*seconds)
	}
	if st.Drops[ReasonAggregateBudget] != st.DroppedPackets {
		t.Fatalf("drops by reason %v, want all aggregate_budget", st.Drops)
	}
}

func TestBypassKeepsWorkingAndSkipsAggregate(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Aggregate: bucket.Limits{PPS: 1, BurstPackets: 1}}
	pol.Classes[classify.Bypass] = bucket.Limits{PPS: 100, BurstPackets: 10}
	from, to := newPipes(t, pol, pol, now)
	// Exhaust the aggregate in both directions.
	flood := udpFlood(t)
	from.Step(flood, now)
	if from.Step(flood, now).Action == Pass {
		t.Fatal("aggregate of 1 packet admitted two")
	}
	syn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	synack := frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 50000, SYN: true, ACK: true, Window: 1000}, 0, 0)
	for i := 0; i < 3; i++ {
		if v := to.Step(syn, now); v.Action != Pass || v.Class != classify.Bypass {
			t.Fatalf("SYN to the VM's port 22: %+v, want a passed bypass frame", v)
		}
		if v := from.Step(synack, now); v.Action != Pass || v.Class != classify.Bypass {
			t.Fatalf("the VM's answer from port 22: %+v, want a passed bypass frame", v)
		}
	}
	// The VM sending from port 22 to a connection nobody opened is not bypass.
	stray := frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 50001, ACK: true, Window: 1000}, 0, 0)
	if v := from.Step(stray, now); v.Class == classify.Bypass || v.Action == Pass {
		t.Fatalf("stray frame from port 22: %+v, want a refused non-bypass frame", v)
	}
}

func TestBypassBudget(t *testing.T) {
	now := time.Unix(1700000000, 0)
	var pol Policy
	pol.Classes[classify.Bypass] = bucket.Limits{PPS: 10, BurstPackets: 5}
	_, to := newPipes(t, Policy{}, pol, now)
	syn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	passed := 0
	for i := 0; i < 20; i++ {
		if to.Step(syn, now).Action == Pass {
			passed++
		}
	}
	if passed != 5 {
		t.Fatalf("bypass budget of burst 5 passed %d", passed)
	}
	if got := to.Stats().Classes[classify.Bypass].Drops[ReasonBypassBudget]; got != 15 {
		t.Fatalf("bypass_budget drops = %d, want 15", got)
	}
}

func TestSetPolicyTakesEffectAtOnce(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, _ := newPipes(t, Policy{Aggregate: bucket.Limits{PPS: 5000}}, Policy{}, now)
	f := udpFlood(t)
	count := func(d time.Duration) int {
		n := 0
		for end := now.Add(d); now.Before(end); now = now.Add(20 * time.Microsecond) {
			if from.Step(f, now).Action == Pass {
				n++
			}
		}
		return n
	}
	count(time.Second)
	if err := from.SetPolicy(Policy{Aggregate: bucket.Limits{PPS: 2000}}); err != nil {
		t.Fatal(err)
	}
	got := count(time.Second)
	// At most one burst of the old or new rate on top of 2000.
	if got < 1990 || got > 2000+50+1 {
		t.Fatalf("after set to 2000 pps: %d frames in 1 s", got)
	}
	if err := from.SetPolicy(Policy{Aggregate: bucket.Limits{PPS: -1}}); err == nil {
		t.Fatal("SetPolicy accepted a negative rate")
	}
	if from.Policy().Aggregate.PPS != 2000 {
		t.Fatal("a rejected policy replaced the good one")
	}
}

func TestMalformedFramesAreCountedNotFatal(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, _ := newPipes(t, Policy{}, Policy{}, now)
	for _, b := range [][]byte{nil, {1}, make([]byte, 13)} {
		if v := from.Step(b, now); v.Action == Pass || v.Reason != ReasonMalformed {
			t.Fatalf("%d-byte frame: %+v, want a malformed drop", len(b), v)
		}
	}
	// An Ethernet header with a truncated IPv4 header follows 'other'.
	bad := udpFlood(t)[:20]
	if v := from.Step(bad, now); v.Action != Pass || v.Class != classify.Malformed {
		t.Fatalf("truncated IPv4: %+v, want a passed malformed frame (other policy: none)", v)
	}
	st := from.Stats().Classes[classify.Malformed]
	if st.Drops[ReasonMalformed] != 3 || st.PassedPackets != 1 {
		t.Fatalf("malformed counters %+v", st)
	}
}

func TestStepZeroAllocs(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Aggregate: bucket.Limits{PPS: 5000, BytesPerSec: 1e6}}
	pol.Classes[classify.Bypass] = bucket.Limits{PPS: 2000}
	pol.Classes[classify.Control] = bucket.Limits{PPS: 200}
	from, to := newPipes(t, pol, pol, now)
	syn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	to.Step(syn, now)
	cases := []struct {
		name string
		p    *Pipe
		b    []byte
	}{
		{"udp", from, udpFlood(t)},
		{"tcp-syn", from, frame(t, true, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true}, 0, 0)},
		{"bypass-to-vm", to, syn},
		{"bypass-from-vm", from, frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 50000, ACK: true}, 10, 0)},
		{"short", from, []byte{1, 2, 3}},
	}
	for _, c := range cases {
		allocs := testing.AllocsPerRun(1000, func() {
			now = now.Add(time.Microsecond)
			c.p.Step(c.b, now)
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per frame, want 0", c.name, allocs)
		}
	}
}

func TestForwarderMovesFramesAndStops(t *testing.T) {
	before := runtime.NumGoroutine()
	vm, nt := fakedev.New(64), fakedev.New(64)
	// 1 pps: the burst of 3 is all that passes, however slowly a loaded
	// machine (make test runs it with -race beside other packages) gets
	// through the 10 frames; a token more takes a whole second.
	f, err := New(Config{FromVM: Policy{Aggregate: bucket.Limits{PPS: 1, BurstPackets: 3}}}, Devices{VM: vm, Net: nt})
	if err != nil {
		t.Fatal(err)
	}
	flood := udpFlood(t)
	for i := 0; i < 10; i++ {
		vm.Inject(flood)
	}
	toVM := frame(t, false, &layers.UDP{SrcPort: 9, DstPort: 40000}, 20, 0)
	nt.Inject(toVM)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := f.FromVM.Stats().Classes[classify.UDP]
		if s.PassedPackets+s.DroppedPackets == 10 && len(vm.Written()) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("frames not forwarded: from_vm %+v, to_vm written %d", s, len(vm.Written()))
		}
		time.Sleep(time.Millisecond)
	}
	if got := len(nt.Written()); got < 3 || got > 4 {
		t.Fatalf("burst of 3 at 1 pps forwarded %d of 10 back-to-back frames", got)
	}
	if !f.Alive() {
		t.Fatal("forwarder not alive")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if f.Alive() {
		t.Fatal("alive after Close")
	}
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines after Close, %d before: leaked", n, before)
	}
}

func TestWriteErrorsAreCounted(t *testing.T) {
	vm, nt := fakedev.New(8), fakedev.New(8)
	nt.WriteErr = net.ErrWriteToConnected
	f, err := New(Config{}, Devices{VM: vm, Net: nt})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vm.Inject(udpFlood(t))
	deadline := time.Now().Add(5 * time.Second)
	for f.FromVM.Stats().Classes[classify.UDP].Drops[ReasonWriteError] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("write error not counted: %+v", f.FromVM.Stats().Classes[classify.UDP])
		}
		time.Sleep(time.Millisecond)
	}
	if s := f.FromVM.Stats().Classes[classify.UDP]; s.PassedPackets != 0 || s.DroppedPackets != 1 {
		t.Fatalf("a frame the device refused is counted as %+v", s)
	}
}

func BenchmarkStep(b *testing.B) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Aggregate: bucket.Limits{PPS: 5000, BytesPerSec: 2e6}}
	pol.Classes[classify.Bypass] = bucket.Limits{PPS: 2000}
	for _, c := range []struct {
		name string
		pol  Policy
	}{{"unlimited", Policy{}}, {"policed", pol}} {
		b.Run(c.name, func(b *testing.B) {
			from, _ := newPipes(b, c.pol, c.pol, now)
			f := udpFlood(b)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = now.Add(time.Microsecond)
				from.Step(f, now)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}

// A frame steered to the priority input is classified there like anywhere
// else: a flood from port 22 that no connection opened is charged to the
// same aggregate as the main queue, while real bypass frames pass.
func TestPriorityInputSharesBudgets(t *testing.T) {
	vm, nt, prio := fakedev.New(64), fakedev.New(64), fakedev.New(64)
	pol := Policy{Aggregate: bucket.Limits{PPS: 1, BurstPackets: 4}}
	f, err := New(Config{FromVM: pol}, Devices{VM: vm, Net: nt, Priority: prio})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The external client opens a connection to the VM's port 22.
	nt.Inject(frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0))
	waitFor(t, func() bool { return f.ToVM.Stats().Classes[classify.Bypass].PassedPackets == 1 })
	stray := frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 9, ACK: true, Window: 1000}, 0, 0)
	for i := 0; i < 10; i++ {
		vm.Inject(udpFlood(t))
		prio.Inject(stray)
	}
	synack := frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 50000, SYN: true, ACK: true, Window: 1000}, 0, 0)
	prio.Inject(synack)
	waitFor(t, func() bool {
		s := f.FromVM.Stats()
		n := uint64(0)
		for _, c := range s.Classes {
			n += c.PassedPackets + c.DroppedPackets
		}
		return n == 21
	})
	s := f.FromVM.Stats()
	if got := s.Classes[classify.UDP].PassedPackets + s.Classes[classify.TCP].PassedPackets; got < 4 || got > 5 {
		t.Errorf("flood on two inputs passed %d frames, want the shared burst of 4 (5 with refill)", got)
	}
	if s.Classes[classify.Bypass].PassedPackets != 1 {
		t.Errorf("the VM's SYN-ACK on the priority input: bypass %+v", s.Classes[classify.Bypass])
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
