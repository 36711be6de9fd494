package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/rules"
)

// Raw frames for the guard cases, from the VM of forward_test.go
// (vmMAC, vmIP) unless said otherwise.

var (
	vm4      = netip.AddrFrom4([4]byte(vmIP.To4()))
	ext4     = netip.AddrFrom4([4]byte(extIP.To4()))
	vmLL     = guard.LinkLocal([6]byte(vmMAC))
	allNodes = netip.MustParseAddr("ff02::1")
)

func rawEth(src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	b := append(append(append([]byte{}, extMAC...), src...), byte(etherType>>8), byte(etherType))
	return append(b, payload...)
}

func rawARP(op uint16, sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4, byte(op >> 8), byte(op)}
	b = append(b, sha...)
	s, d := spa.As4(), tpa.As4()
	b = append(b, s[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return rawEth(vmMAC, 0x0806, append(b, d[:]...))
}

func rawUDP4(src, dst netip.Addr, sport, dport uint16) []byte {
	u := []byte{byte(sport >> 8), byte(sport), byte(dport >> 8), byte(dport), 0, 8 + 4, 0, 0, 1, 2, 3, 4}
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(u)))
	ip[8], ip[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	return rawEth(vmMAC, 0x0800, append(ip, u...))
}

// rawICMP6 is an ICMPv6 message from src with hop limit 255, behind a
// hop-by-hop header when hbh.
func rawICMP6(src, dst netip.Addr, msg []byte, hbh bool) []byte {
	var chain []byte
	next := uint8(58)
	if hbh {
		chain = []byte{58, 0, 5, 2, 0, 0, 1, 0}
		next = 0
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(chain)+len(msg)))
	ip[6], ip[7] = next, 255
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return rawEth(vmMAC, 0x86dd, append(append(ip, chain...), msg...))
}

func naMsg(target netip.Addr, tll net.HardwareAddr) []byte {
	b := make([]byte, 24)
	b[0] = 136
	t := target.As16()
	copy(b[8:], t[:])
	return append(b, append([]byte{2, 1}, tll...)...)
}

func raMsg() []byte {
	b := make([]byte, 16)
	b[0] = 134
	return b
}

func mustGuard(t testing.TB) *guard.Guard {
	t.Helper()
	g, err := guard.New(guard.Config{MACs: []net.HardwareAddr{vmMAC}, IPs: []netip.Prefix{netip.PrefixFrom(vm4, 32)}})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func mustRules(t testing.TB, src string) *rules.Set {
	t.Helper()
	s, err := rules.Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The guard comes first, before the control budget and any class, and
// each of its drops is counted under its own reason; legitimate frames
// pass.
func TestGuardDropsEachSpoofWithItsReason(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Guard: mustGuard(t)}
	pol.Classes[classify.Control] = bucket.Limits{Block: true} // would drop all control
	from, _ := newPipes(t, pol, Policy{}, now)
	spoofMAC := frame(t, true, &layers.UDP{SrcPort: 1, DstPort: 2}, 10, 0)
	copy(spoofMAC[6:12], []byte{0x52, 0x54, 0, 0, 0, 0x99})
	cases := []struct {
		name string
		b    []byte
		want Reason
	}{
		{"spoofed mac", spoofMAC, ReasonGuardMAC},
		{"spoofed ip", rawUDP4(ext4, ext4, 1000, 2000), ReasonGuardIP},
		{"forged arp reply", rawARP(2, vmMAC, ext4, vm4), ReasonGuardARP},
		{"forged na", rawICMP6(vmLL, allNodes, naMsg(netip.MustParseAddr("fe80::1"), vmMAC), false), ReasonGuardND},
		{"rogue dhcp offer", rawUDP4(vm4, netip.MustParseAddr("255.255.255.255"), 67, 68), ReasonGuardDHCP},
		{"ra behind hop-by-hop", rawICMP6(vmLL, allNodes, raMsg(), true), ReasonGuardRA},
	}
	for _, c := range cases {
		v := from.Step(c.b, now)
		if v.Action == Pass || v.Reason != c.want {
			t.Errorf("%s: %+v, want dropped as %v", c.name, v, c.want)
		}
	}
	// Legitimate traffic is untouched by the guard (the ARP request meets
	// the blocked control budget, after the guard).
	if v := from.Step(udpFlood(t), now); v.Action != Pass {
		t.Errorf("legitimate UDP: %+v", v)
	}
	if v := from.Step(rawARP(1, vmMAC, vm4, ext4), now); v.Reason != ReasonControlBudget {
		t.Errorf("legitimate ARP with control blocked: %+v, want control_budget", v)
	}
	st := from.Stats()
	var total [NumReasons]uint64
	for _, cs := range st.Classes {
		for r, n := range cs.Drops {
			total[r] += n
		}
	}
	for _, c := range cases {
		if total[c.want] != 1 {
			t.Errorf("%v counted %d times", c.want, total[c.want])
		}
	}
	// A to-VM pipe has no guard.
	_, to := newPipes(t, Policy{}, Policy{}, now)
	if err := to.SetPolicy(pol); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("guard on the to-VM pipe: %v", err)
	}
}

// New bypass connections are limited per source per minute: a source
// hammering port 22 gets its allowance, a second source is untouched, and
// frames of established connections are not counted.
func TestBypassConnPerSource(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{BypassConnPerSource: 3}
	_, to := newPipes(t, Policy{}, pol, now)
	synFrom := func(src net.IP, sport uint16) []byte {
		b := frame(t, false, &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 22, SYN: true, Window: 1000}, 0, 0)
		copy(b[14+12:14+16], src.To4())
		return b
	}
	attacker, other := net.IP{198, 18, 5, 5}, net.IP{198, 18, 6, 6}
	passed := 0
	for i := range 100 {
		now = now.Add(100 * time.Millisecond) // 10 s at 10 new connections per second
		v := to.Step(synFrom(attacker, uint16(40000+i)), now)
		if v.Class != classify.Bypass {
			t.Fatalf("SYN to 22 classified %v", v.Class)
		}
		if v.Action == Pass {
			passed++
		} else if v.Reason != ReasonBypassConn {
			t.Fatalf("refused as %v", v.Reason)
		}
	}
	// 3 at once, then 3 per minute: 3 + 0.5 in 10 s.
	if passed != 3 {
		t.Errorf("attacker opened %d connections in 10 s, want 3", passed)
	}
	for i := range 3 {
		if v := to.Step(synFrom(other, uint16(50000+i)), now); v.Action != Pass {
			t.Errorf("second source's connection %d refused: %+v", i, v)
		}
	}
	// The ACKs of an admitted connection are not new connections.
	ack := frame(t, false, &layers.TCP{SrcPort: 40000, DstPort: 22, ACK: true, Window: 1000}, 0, 0)
	copy(ack[14+12:14+16], attacker.To4())
	for range 10 {
		if v := to.Step(ack, now); v.Action != Pass || v.Class != classify.Bypass {
			t.Fatalf("ACK of the attacker's admitted connection: %+v", v)
		}
	}
	// A minute later the attacker has its allowance back.
	now = now.Add(time.Minute)
	if v := to.Step(synFrom(attacker, 41000), now); v.Action != Pass {
		t.Errorf("a minute later: %+v", v)
	}
}

// --max-frame drops large frames at step 4, but not bypass frames.
func TestMaxFrame(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{MaxFrame: 200}
	from, to := newPipes(t, pol, pol, now)
	if v := from.Step(udpFlood(t), now); v.Reason != ReasonFrameSize || v.Action == Pass {
		t.Errorf("250-byte frame with --max-frame 200: %+v", v)
	}
	small := frame(t, true, &layers.UDP{SrcPort: 1, DstPort: 2}, 100, 0)
	if v := from.Step(small, now); v.Action != Pass {
		t.Errorf("small frame: %+v", v)
	}
	syn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 300, 0)
	if v := to.Step(syn, now); v.Action != Pass || v.Class != classify.Bypass {
		t.Errorf("large bypass SYN: %+v", v)
	}
}

// stepN offers count copies of b, evenly over d, and counts the verdicts.
func stepN(p *Pipe, b []byte, now *time.Time, d time.Duration, count int) (passed int, reasons map[Reason]int) {
	reasons = map[Reason]int{}
	for range count {
		*now = now.Add(d / time.Duration(count))
		v := p.Step(b, *now)
		if v.Action == Pass {
			passed++
		} else {
			reasons[v.Reason]++
		}
	}
	return passed, reasons
}

// Classes in rule order: a conforming match decides (the built-in class
// budget is skipped); drop, continue and reclassify apply over the limit.
func TestRuleActions(t *testing.T) {
	udp := udpFlood(t) // UDP to port 9
	dns := frame(t, true, &layers.UDP{SrcPort: 5353, DstPort: 53}, 20, 0)
	syn := frame(t, true, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true, Window: 1}, 0, 0)
	for _, c := range []struct {
		name    string
		rules   string
		builtin func(*Policy)
		frame   []byte
		passed  int // of 1000 frames in 1 s
		reasons map[Reason]int
		rule    string // the class whose counters see the passed frames
	}{
		{"exempt skips the built-in budget", "dns: udp dport 53", func(p *Policy) { p.Classes[classify.UDP] = bucket.Limits{Block: true} },
			dns, 1000, nil, "dns"},
		{"no match goes to the built-in class", "dns: udp dport 53", func(p *Policy) { p.Classes[classify.UDP] = bucket.Limits{Block: true} },
			udp, 0, map[Reason]int{ReasonClassBudget: 1000}, ""},
		{"drop", "dns: udp dport 53 pps 100 burst 10", nil, dns, 110, map[Reason]int{ReasonClassBudget: 890}, "dns"},
		{"continue to the next class", "dns: udp dport 53 pps 100 burst 10 continue\nrest: udp pps 200 burst 10", nil,
			dns, 110 + 210, map[Reason]int{ReasonClassBudget: 680}, ""},
		{"continue to the built-in class", "dns: udp dport 53 pps 100 burst 10 continue", func(p *Policy) { p.Classes[classify.UDP] = bucket.Limits{PPS: 50, BurstPackets: 5} },
			dns, 110 + 55, map[Reason]int{ReasonClassBudget: 835}, ""},
		{"reclassify to a later class", "a: syn pps 100 burst 10 reclassify b\nx: syn block\nb: any pps 300 burst 10", nil,
			syn, 110 + 310, map[Reason]int{ReasonClassBudget: 580}, ""},
		{"reclassify to a built-in class", "a: syn pps 100 burst 10 reclassify udp", func(p *Policy) { p.Classes[classify.UDP] = bucket.Limits{PPS: 30, BurstPackets: 3} },
			syn, 110 + 33, map[Reason]int{ReasonClassBudget: 857}, ""},
		{"block", "big: size >200 block", nil, udp, 0, map[Reason]int{ReasonClassBudget: 1000}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			now := time.Unix(1700000000, 0)
			pol := Policy{Rules: mustRules(t, c.rules)}
			if c.builtin != nil {
				c.builtin(&pol)
			}
			from, _ := newPipes(t, pol, Policy{}, now)
			passed, reasons := stepN(from, c.frame, &now, time.Second, 1000)
			if c.reasons == nil {
				c.reasons = map[Reason]int{}
			}
			if d := passed - c.passed; d < -5 || d > 5 || fmt.Sprint(reasons) != fmt.Sprint(c.reasons) && !nearly(reasons, c.reasons) {
				t.Errorf("passed %d, dropped %v; want %d, %v", passed, reasons, c.passed, c.reasons)
			}
			if c.rule != "" {
				for _, rs := range from.RuleStats() {
					if rs.Name == c.rule && int(rs.PassedPackets) != passed {
						t.Errorf("class %s counted %d passed of %d", rs.Name, rs.PassedPackets, passed)
					}
				}
			}
		})
	}
}

// nearly reports whether two drop tallies differ by at most 5 frames per
// reason (refill rounding at the edges of the second).
func nearly(a, b map[Reason]int) bool {
	for r := range NumReasons {
		if d := a[r] - b[r]; d < -5 || d > 5 {
			return false
		}
	}
	return true
}

// One source over its per-source budget is limited without hurting the
// others; per destination likewise for the VM's fan-out.
func TestPerAddressClasses(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, to := newPipes(t,
		Policy{Rules: mustRules(t, "fanout: syn per dst pps 10 burst 5")},
		Policy{Rules: mustRules(t, "web-brute: tcp dport 80 syn per src pps 10 burst 5")}, now)
	synTo := func(dst net.IP) []byte {
		b := frame(t, true, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true, Window: 1}, 0, 0)
		copy(b[14+16:14+20], dst.To4())
		return b
	}
	synFrom := func(src net.IP) []byte {
		b := frame(t, false, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true, Window: 1}, 0, 0)
		copy(b[14+12:14+16], src.To4())
		return b
	}
	// One attacker at 1000 SYN/s for 1 s; a second source at 5/s.
	var attacker, polite int
	for i := range 1000 {
		now = now.Add(time.Millisecond)
		if v := to.Step(synFrom(net.IP{198, 18, 9, 9}), now); v.Action == Pass {
			attacker++
		} else if v.Reason != ReasonSourceBudget || v.Rule != "web-brute" {
			t.Fatalf("attacker's SYN: %+v", v)
		}
		if i%200 == 0 {
			if v := to.Step(synFrom(net.IP{198, 18, 8, 8}), now); v.Action == Pass {
				polite++
			}
		}
	}
	if attacker < 14 || attacker > 16 || polite != 5 {
		t.Errorf("attacker passed %d (want 15), polite source %d of 5", attacker, polite)
	}
	rs := to.RuleStats()
	if len(rs) != 1 || rs[0].Drops[ReasonSourceBudget] != uint64(1000-attacker) || rs[0].Overlimit != uint64(1000-attacker) || rs[0].TableLen != 2 {
		t.Errorf("rule stats %+v", rs)
	}
	// The VM's fan-out: each destination gets 5 at once, whatever the
	// number of destinations.
	total := 0
	for d := range 50 {
		for range 20 {
			if from.Step(synTo(net.IP{198, 18, 10, byte(d)}), now).Action == Pass {
				total++
			}
		}
	}
	if total != 50*5 {
		t.Errorf("fan-out: %d SYNs passed to 50 destinations, want 5 each", total)
	}
}

// Budgets are all-or-nothing: a frame the aggregate refuses is not
// charged to the class that admitted it.
func TestClassNotChargedWhenAggregateRefuses(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Rules: mustRules(t, "u: udp pps 10 burst 10"), Aggregate: bucket.Limits{Block: true}}
	from, _ := newPipes(t, pol, Policy{}, now)
	if _, r := stepN(from, udpFlood(t), &now, time.Millisecond, 100); r[ReasonAggregateBudget] != 100 {
		t.Fatalf("%v", r)
	}
	pol.Aggregate = bucket.Limits{}
	if err := from.SetPolicy(pol); err != nil {
		t.Fatal(err)
	}
	// Same rules (same class, same limits): the budget carried over, and
	// it still holds its whole burst.
	if p, _ := stepN(from, udpFlood(t), &now, time.Millisecond, 100); p != 10 {
		t.Fatalf("after the aggregate opened, %d passed, want the class's untouched burst of 10", p)
	}
}

// A new policy with the same classes keeps their budgets and counters;
// changed limits apply at once.
func TestRulesAcrossPolicies(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := Policy{Rules: mustRules(t, "u: udp pps 10 burst 10")}
	from, _ := newPipes(t, pol, Policy{}, now)
	stepN(from, udpFlood(t), &now, time.Millisecond, 20) // spends the burst
	if err := from.SetPolicy(Policy{Rules: mustRules(t, "u: udp pps 10 burst 10\nmisc: tcp")}); err != nil {
		t.Fatal(err)
	}
	if p, _ := stepN(from, udpFlood(t), &now, time.Millisecond, 20); p != 0 {
		t.Errorf("the re-parsed class got a fresh burst: %d passed", p)
	}
	if err := from.SetPolicy(Policy{Rules: mustRules(t, "u: udp pps 1000 burst 500")}); err != nil {
		t.Fatal(err)
	}
	if p, _ := stepN(from, udpFlood(t), &now, time.Second, 1000); p < 995 {
		t.Errorf("raised limits: %d of 1000 passed", p)
	}
	rs := from.RuleStats()
	if len(rs) != 1 || rs[0].PassedPackets < 10+995 || rs[0].Rule != "u: proto udp pps 1000 burst 500" {
		t.Errorf("counters did not carry over: %+v", rs)
	}
}

type fakeQuota struct {
	mu      sync.Mutex
	bytes   map[bool]int // by must
	refuse  bool
	calls   int
	lastDir classify.Direction
}

func (q *fakeQuota) Admit(now time.Time, dir classify.Direction, n int, must bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls++
	q.lastDir = dir
	if q.refuse && !must {
		return false
	}
	if q.bytes == nil {
		q.bytes = map[bool]int{}
	}
	q.bytes[must] += n
	return true
}

// The quota sees every passed frame after the aggregate, bypass included
// (which it cannot refuse), and its refusal charges no budget.
func TestQuotaHook(t *testing.T) {
	now := time.Unix(1700000000, 0)
	q := &fakeQuota{}
	pol := Policy{Quota: q, Aggregate: bucket.Limits{PPS: 10, BurstPackets: 10}}
	from, to := newPipes(t, pol, pol, now)
	flood := udpFlood(t)
	p, _ := stepN(from, flood, &now, time.Millisecond, 100)
	syn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	to.Step(syn, now)
	if p != 10 || q.bytes[false] != 10*len(flood) || q.bytes[true] != len(syn) || q.lastDir != classify.ToVM {
		t.Fatalf("quota saw %v (calls %d) for %d passed", q.bytes, q.calls, p)
	}
	q.refuse = true
	now = now.Add(10 * time.Second) // the aggregate refills
	if _, r := stepN(from, flood, &now, time.Millisecond, 5); r[ReasonQuota] != 5 {
		t.Fatalf("refused by the quota: %v", r)
	}
	if v := to.Step(syn, now); v.Action != Pass {
		t.Fatalf("bypass refused by the quota: %+v", v)
	}
	q.refuse = false
	if p, _ := stepN(from, flood, &now, time.Millisecond, 20); p != 10 {
		t.Fatalf("after the quota's refusals the aggregate passed %d, want its untouched burst of 10", p)
	}
}

func TestPolicyValidateClasses(t *testing.T) {
	shapeRule := mustRules(t, "bulk: udp pps 10 mode shape")
	for _, c := range []struct {
		pol  Policy
		want string
	}{
		{Policy{MaxFrame: 59}, "--max-frame"},
		{Policy{MaxFrame: MaxFrameBuffer + 1}, "--max-frame"},
		{Policy{BypassConnPerSource: -1}, "--bypass-conn-per-source"},
		{Policy{BypassConnPerSource: MaxBypassConnPerSource + 1}, "--bypass-conn-per-source"},
		{Policy{Rules: shapeRule}, "--class bulk: mode shape"},
	} {
		err := c.pol.Validate()
		if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %s", c.pol, err, c.want)
		}
	}
	if err := (&Policy{Rules: shapeRule, Mode: Shape, MaxFrame: 60, BypassConnPerSource: 1}).Validate(); err != nil {
		t.Errorf("a valid policy: %v", err)
	}
}

// In shape mode, a class with mode shape queues what its budget refuses
// and releases it at its rate; a class with mode police drops at once.
func TestShapeModeClasses(t *testing.T) {
	pol := Policy{Mode: Shape, QueueTime: time.Second,
		Rules: mustRules(t, "slow: udp dport 9 pps 1000 burst 10 mode shape\ncapped: udp dport 53 pps 100 burst 10")}
	s := newSim(t, pol)
	udp := udpFlood(t)
	dns := frame(t, true, &layers.UDP{SrcPort: 5353, DstPort: 53}, 20, 0)
	// 5000 pps of each for 2 s.
	var policed int
	for i := range 10000 {
		at := t0.Add(time.Duration(i) * 200 * time.Microsecond)
		s.arrive(at, udp)
		if v := s.arrive(at, dns); v.Action != Pass && v.Action != Queue && v.Reason == ReasonClassBudget {
			policed++
		}
	}
	s.advance(t0.Add(4 * time.Second))
	var slow, capped RuleStats
	for _, rs := range s.p.RuleStats() {
		switch rs.Name {
		case "slow":
			slow = rs
		case "capped":
			capped = rs
		}
	}
	// The shaped class released about 1000 pps over the 2 s plus what
	// its queue held; the police class dropped at once all but 100 pps.
	if capped.PassedPackets < 205 || capped.PassedPackets > 215 || int(capped.DroppedPackets) != policed {
		t.Errorf("police-mode class: %+v, %d refused on arrival", capped.ClassStats, policed)
	}
	if slow.PassedPackets < 2000 || slow.PassedPackets > 3100 || slow.Drops[ReasonClassBudget] != 0 {
		t.Errorf("shape-mode class: %+v", slow.ClassStats)
	}
}

func TestTopDestinations(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, to := newPipes(t, Policy{Aggregate: bucket.Limits{Block: true}}, Policy{}, now)
	udpTo := func(dst net.IP, port uint16) []byte {
		b := frame(t, true, &layers.UDP{SrcPort: 1, DstPort: layers.UDPPort(port)}, 10, 0)
		copy(b[14+16:14+20], dst.To4())
		return b
	}
	// A heavy target, a medium one, and 10000 one-off destinations.
	for i := range 10000 {
		from.Step(udpTo(net.IP{198, 18, 0, 200}, 53), now)
		if i%2 == 0 {
			from.Step(udpTo(net.IP{198, 18, 0, 201}, 123), now)
		}
		from.Step(udpTo(net.IP{10, byte(i >> 8), byte(i), 1}, 9), now)
	}
	from.Step(frame(t, true, &layers.TCP{SrcPort: 1, DstPort: 443, SYN: true, Window: 1}, 0, 0), now)
	top := from.TopDestinations(nil, 10)
	if len(top) != 10 {
		t.Fatalf("%d destinations", len(top))
	}
	// Frames are sampled (1 in TopDestSample), so counts are estimates:
	// about 1250 and 625 samples, so 20% is over 5 standard deviations.
	if top[0].Addr != netip.MustParseAddr("198.18.0.200") || top[0].Port != 53 || top[0].ProtoName() != "udp" ||
		top[0].Packets < 8000 || top[0].Packets > 12000+top[0].MaxOvercount {
		t.Errorf("top destination %+v; want 198.18.0.200:53/udp about 10000", top[0])
	}
	if top[1].Addr != netip.MustParseAddr("198.18.0.201") || top[1].Port != 123 ||
		top[1].Packets < 4000 || top[1].Packets > 6000+top[1].MaxOvercount {
		t.Errorf("second destination %+v; want about 5000", top[1])
	}
	if got := to.TopDestinations(nil, 10); len(got) != 0 {
		t.Errorf("to-VM pipe counts destinations: %v", got)
	}
}

// The top-K table against exact counts: under a skewed random stream its
// index stays consistent and the heavy hitters come out in order.
func TestTopKExact(t *testing.T) {
	tk := newTopK()
	exact := map[netip.Addr]uint64{}
	seed := uint64(1)
	for range 200000 {
		seed = seed*6364136223846793005 + 1442695040888963407
		// Destination i with probability about 1/(i+1): a Zipf-like mix.
		i := int((seed >> 33) % 1000)
		i = i * i / 1000 * i / 1000
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		exact[a]++
		tk.addN(&classify.Frame{IPVersion: 4, DstIP: a, Proto: 99}, 1)
	}
	for s, pos := range tk.index {
		if pos != 0 && int(tk.heap[pos-1].slot) != s {
			t.Fatalf("index slot %d points at heap %d, whose slot is %d", s, pos-1, tk.heap[pos-1].slot)
		}
	}
	top := tk.top(nil, 5)
	for _, d := range top {
		if d.Packets < exact[d.Addr] || d.Packets-d.MaxOvercount > exact[d.Addr] {
			t.Errorf("%v: estimate %d (overcount up to %d), exact %d", d.Addr, d.Packets, d.MaxOvercount, exact[d.Addr])
		}
	}
	if top[0].Addr != netip.AddrFrom4([4]byte{198, 18, 0, 0}) {
		t.Errorf("heaviest: %v", top[0])
	}
}

// The full step path, guard and classes and per-address tables and the
// quota and the top-destinations table on, allocates nothing per frame.
func TestStepZeroAllocsWithGuardAndRules(t *testing.T) {
	now := time.Unix(1700000000, 0)
	pol := fullPolicy(t)
	from, to := newPipes(t, pol, Policy{BypassConnPerSource: 10, Rules: pol.Rules, Quota: pol.Quota}, now)
	syn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	cases := []struct {
		name string
		p    *Pipe
		b    []byte
	}{
		{"udp", from, udpFlood(t)},
		{"dns", from, frame(t, true, &layers.UDP{SrcPort: 5353, DstPort: 53}, 20, 0)},
		{"tcp-syn", from, frame(t, true, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true}, 0, 0)},
		{"spoofed ip", from, rawUDP4(ext4, ext4, 1, 2)},
		{"ra behind hbh", from, rawICMP6(vmLL, allNodes, raMsg(), true)},
		{"arp", from, rawARP(1, vmMAC, vm4, ext4)},
		{"bypass syn to vm", to, syn},
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

// fullPolicy is a from-VM policy with every step on.
func fullPolicy(t testing.TB) Policy {
	pol := Policy{
		Aggregate: bucket.Limits{PPS: 1e6, BytesPerSec: 1e9},
		Guard:     mustGuard(t),
		MaxFrame:  1514,
		Quota:     &nopQuota{},
		Rules: mustRules(t, `ssh-out: tcp dport 22 syn per dst pps 5
dns: udp dport 53 pps 1e6 continue
icmp-cap: icmp bps 2kbit
big: size >1400 block
scan: syn per dst pps 1e6 reclassify tcp-syn
not-mine: not src 198.18.0.0/15 block`),
	}
	pol.Classes[classify.TCPSyn] = bucket.Limits{PPS: 1e6}
	pol.Classes[classify.UDP] = bucket.Limits{PPS: 1e6}
	pol.Classes[classify.Bypass] = bucket.Limits{PPS: 2000}
	pol.Classes[classify.Control] = bucket.Limits{PPS: 1e6}
	return pol
}

type nopQuota struct{}

func (nopQuota) Admit(time.Time, classify.Direction, int, bool) bool { return true }

// BenchmarkStepFull measures the cost of each addition of issue 7 on the
// path of a 250-byte UDP flood frame from the VM, against the plain path
// in the same run, and reports the ratio (x-plain): the top-destinations
// table, the guard, six classes of rules (none of which matches the
// frame, so all are tried) with --max-frame and the quota hook, and all
// of them. The budgets are the same in every case: the aggregate and the
// bypass budget.
func BenchmarkStepFull(b *testing.B) {
	plainPol := Policy{Aggregate: bucket.Limits{PPS: 1e6, BytesPerSec: 1e9}}
	plainPol.Classes[classify.Bypass] = bucket.Limits{PPS: 2000}
	all := fullPolicy(b)
	guardOnly := plainPol
	guardOnly.Guard = all.Guard
	rulesOnly := plainPol
	rulesOnly.Rules, rulesOnly.Quota, rulesOnly.MaxFrame = all.Rules, all.Quota, all.MaxFrame
	full := rulesOnly
	full.Guard = all.Guard
	flood := udpFlood(b)
	var plainNs float64
	for _, c := range []struct {
		name string
		pol  Policy
		top  bool
	}{
		{"plain", plainPol, false},
		{"top", plainPol, true},
		{"guard", guardOnly, false},
		{"rules", rulesOnly, false},
		{"full", full, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			now := time.Unix(1700000000, 0)
			from, _ := newPipes(b, c.pol, Policy{}, now)
			if !c.top {
				from.top = nil
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = now.Add(time.Microsecond)
				from.Step(flood, now)
			}
			ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(ns, "ns/frame")
			if c.name == "plain" {
				plainNs = ns
			} else if plainNs > 0 {
				b.ReportMetric(ns/plainNs, "x-plain")
			}
		})
	}
}

// --syn-pps: the tcp-syn class holds new connections per second in each
// direction to its rate, while bypass connections (ssh to the VM) are not
// counted and an established ssh session keeps working.
func TestSynRateBothDirections(t *testing.T) {
	now := time.Unix(1700000000, 0)
	var pol Policy
	pol.Classes[classify.TCPSyn] = bucket.Limits{PPS: 200}
	pol.Classes[classify.Bypass] = bucket.Limits{PPS: 2000}
	from, to := newPipes(t, pol, pol, now)
	// An ssh session to the VM, established before the flood.
	sshIn := frame(t, false, &layers.TCP{SrcPort: 50000, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	sshOut := frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 50000, SYN: true, ACK: true, Window: 1000}, 0, 0)
	sshData := frame(t, true, &layers.TCP{SrcPort: 22, DstPort: 50000, ACK: true, PSH: true, Window: 1000}, 100, 0)
	if to.Step(sshIn, now).Action != Pass || from.Step(sshOut, now).Action != Pass {
		t.Fatal("ssh handshake refused")
	}
	synOut := frame(t, true, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true, Window: 1}, 0, 0)
	synIn := frame(t, false, &layers.TCP{SrcPort: 1234, DstPort: 80, SYN: true, Window: 1}, 0, 0)
	newSSH := frame(t, false, &layers.TCP{SrcPort: 50001, DstPort: 22, SYN: true, Window: 1000}, 0, 0)
	// 5 s of SYN floods at 20000 per second in each direction.
	var out, in, ssh, sshNew int
	for i := range 100000 {
		now = now.Add(50 * time.Microsecond)
		if from.Step(synOut, now).Action == Pass {
			out++
		}
		if to.Step(synIn, now).Action == Pass {
			in++
		}
		if i%1000 == 0 {
			if from.Step(sshData, now).Action == Pass {
				ssh++
			}
			if v := to.Step(newSSH, now); v.Action == Pass && v.Class == classify.Bypass {
				sshNew++
			}
		}
	}
	for _, x := range []struct {
		dir string
		n   int
	}{{"from the VM", out}, {"to the VM", in}} {
		if rate := float64(x.n) / 5; rate < 196 || rate > 204+2 { // 200/s within 2%, plus the first burst
			t.Errorf("SYN %s: %.1f per second, want 200 within 2%%", x.dir, rate)
		}
	}
	if ssh != 100 || sshNew != 100 {
		t.Errorf("ssh during the flood: %d of 100 data frames, %d of 100 new connections", ssh, sshNew)
	}
	if s := to.Stats().Classes[classify.TCPSyn]; s.Drops[ReasonClassBudget] == 0 || to.Stats().Classes[classify.Bypass].DroppedPackets != 0 {
		t.Errorf("to-VM counters: tcp-syn %+v, bypass %+v", s, to.Stats().Classes[classify.Bypass])
	}
}

// Every reason has a distinct, non-empty name, and the guard's verdicts map
// onto the guard's reasons under the same names.
func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := range NumReasons {
		n := r.String()
		if n == "" || n == "unknown" || seen[n] {
			t.Errorf("reason %d: name %q", r, n)
		}
		seen[n] = true
	}
	if NumReasons.String() != "unknown" {
		t.Error("NumReasons has a name")
	}
	for v := guard.DropMAC; v < guard.NumVerdicts; v++ {
		if guardReasons[v].String() != v.String() {
			t.Errorf("guard verdict %v maps to reason %v", v, guardReasons[v])
		}
	}
}
