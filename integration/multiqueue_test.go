package integration

import (
	"encoding/binary"
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMultiQueueKeepsTCPOrder quarantines VM 1's port with limits far
// above the load and two queues per tap (run --tap-queues 2), and sends
// 16 TCP streams from VM 1 to the external host (iperf3 -P 16): the
// kernel spreads the streams over both queues of the VM tap, each queue
// has its own forwarding thread, and yet the forwarder writes every
// stream's frames in the order the kernel handed them to it (packet
// sockets on both taps). The TCP stacks' own reordering counters are
// logged, not asserted: on these machines the Linux bridge alone shows a
// few dozen per 5 s (veth backlogs on two CPUs).
func TestMultiQueueKeepsTCPOrder(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 is not installed (apt-get install iperf3)")
	}
	l := newLab(t, "bridge")
	vm1, ext, hv := l.get("VM1_NS"), l.get("EXT_NS"), l.get("HV_NS")
	port := l.get("VM1_PORT")
	d := l.startDaemon("--tap-queues", "2")
	d.must("quarantine", port, "--pps", "10000000", "--to-vm-pps", "10000000")
	vmTap := d.status(port).Taps.VM
	if out := l.sh(hv, "ip -d link show "+vmTap); !strings.Contains(out, "multi_queue") {
		t.Fatalf("the VM tap is not multi-queue:\n%s", out)
	}

	srv := inNS(ext, "iperf3", "--server", "--one-off", "--bind", l.get("EXT_IP"))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	time.Sleep(300 * time.Millisecond)

	const streams = 16
	sent0, recv0 := netstat(t, l, vm1), netstat(t, l, ext)
	q0 := queueSent(t, l, hv, vmTap)
	capIn, capOut := captureFlows(t, hv, vmTap), captureFlows(t, hv, d.status(port).Taps.Net)
	// The kernel puts a new flow on a queue by its hash, and the
	// forwarder keeps it there (it writes what it reads from queue i on
	// queue i of the other tap, where the tap records the flow's queue):
	// with 4 streams all of them landed on one queue 1 time in 8 (16
	// streams: 1 in 32768).
	out, err := inNS(vm1, "iperf3", "--client", l.get("EXT_IP"), "--parallel", strconv.Itoa(streams), "--time", "5", "--json").Output()
	if err != nil {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	sent1, recv1 := netstat(t, l, vm1), netstat(t, l, ext)
	q1 := queueSent(t, l, hv, vmTap)
	moved, matched := reordered(capIn.finish(), capOut.finish())

	var res struct {
		End struct {
			SumSent     struct{ Retransmits int } `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	reorder := 0
	for _, k := range []string{"TCPSACKReorder", "TCPTSReorder", "TCPRenoReorder"} {
		reorder += sent1[k] - sent0[k]
	}
	ofo := recv1["TCPOFOQueue"] - recv0["TCPOFOQueue"]
	t.Logf("%d streams through 2 queues: %.2f Gbit/s, %d retransmitted; frames per VM tap queue %v; of %d frames seen handed to the forwarder and written by it, %d written out of order; reordering seen by the sender %d, out-of-order queued by the receiver %d (the kernel's, the bridge's included)",
		streams, res.End.SumReceived.BitsPerSecond/1e9, res.End.SumSent.Retransmits, diffs(q0, q1), matched, moved, reorder, ofo)
	if len(q1) != 2 {
		t.Fatalf("the VM tap has %d queues in tc, want 2", len(q1))
	}
	for i, n := range diffs(q0, q1) {
		if n == 0 {
			t.Errorf("queue %d of the VM tap carried nothing: the streams were not spread", i)
		}
	}
	if matched < 1000 || moved != 0 {
		t.Errorf("of %d frames seen on both taps, the forwarder wrote %d out of order: want 0 of at least 1000", matched, moved)
	}
}

// netstat reads the TcpExt counters of namespace ns.
func netstat(t *testing.T, l *lab, ns string) map[string]int {
	t.Helper()
	lines := strings.Split(l.sh(ns, "cat /proc/net/netstat"), "\n")
	m := map[string]int{}
	for i := 0; i+1 < len(lines); i += 2 {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(keys) == 0 || keys[0] != "TcpExt:" || len(keys) != len(vals) {
			continue
		}
		for j := 1; j < len(keys); j++ {
			m[keys[j]], _ = strconv.Atoi(vals[j])
		}
	}
	if len(m) == 0 {
		t.Fatalf("no TcpExt counters in %s", ns)
	}
	return m
}

var sentPkts = regexp.MustCompile(`Sent \d+ bytes (\d+) pkt`)

// queueSent returns the packets sent by each child qdisc of dev's mq root
// qdisc (one per transmit queue: what the kernel queued to each queue of
// the tap for the forwarder).
func queueSent(t *testing.T, l *lab, ns, dev string) []int {
	t.Helper()
	out := l.sh(ns, "tc -s qdisc show dev "+dev)
	var qs []int
	for _, block := range strings.Split(out, "qdisc ")[1:] {
		// The queues' own qdiscs only: not the mq root, nor the
		// clsact or ingress qdisc a kernel half may have there.
		if strings.HasPrefix(block, "mq ") || strings.HasPrefix(block, "clsact ") || strings.HasPrefix(block, "ingress ") {
			continue
		}
		if m := sentPkts.FindStringSubmatch(block); m != nil {
			n, _ := strconv.Atoi(m[1])
			qs = append(qs, n)
		}
	}
	return qs
}

func diffs(a, b []int) []int {
	var d []int
	for i := range b {
		v := b[i]
		if i < len(a) {
			v -= a[i]
		}
		d = append(d, v)
	}
	return d
}

// TestOffloadTCPThroughQuarantine sends one TCP stream (iperf3) from VM 1
// to the external host through a quarantine whose limits are far above
// the load, on the Linux bridge backend, whose taps the forwarder opens
// with offloads: the VM's 64 KB TCP segments cross userland whole (the VM
// tap hands the forwarder several times fewer frames than the stream's
// segments), the forwarder charges each as the frames it becomes (its tcp
// class counts what VM 1 sent, segment for segment), and it writes the
// stream's frames in the order it was handed them.
func TestOffloadTCPThroughQuarantine(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 is not installed (apt-get install iperf3)")
	}
	l := newLab(t, "bridge")
	vm1, ext, hv := l.get("VM1_NS"), l.get("EXT_NS"), l.get("HV_NS")
	port := l.get("VM1_PORT")
	offloadsOn(l)
	d := l.startDaemon()
	d.must("quarantine", port, "--pps", "10000000", "--to-vm-pps", "10000000")
	vmTap := d.status(port).Taps.VM

	srv := inNS(ext, "iperf3", "--server", "--one-off", "--bind", l.get("EXT_IP"))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	time.Sleep(300 * time.Millisecond)

	snmp := func(ns string) map[string]int { return snmpTcp(t, l, ns) }
	sent0, recv0, tcp0 := netstat(t, l, vm1), netstat(t, l, ext), snmp(vm1)
	reads0 := l.counter(hv, vmTap, "tx_packets")
	pass0 := d.status(port).Directions.FromVM.Classes["tcp"].PassedPackets
	capIn, capOut := captureFlows(t, hv, vmTap), captureFlows(t, hv, d.status(port).Taps.Net)
	out, err := inNS(vm1, "iperf3", "--client", l.get("EXT_IP"), "--time", "5", "--json").Output()
	if err != nil {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	moved, matched := reordered(capIn.finish(), capOut.finish())
	sent1, recv1, tcp1 := netstat(t, l, vm1), netstat(t, l, ext), snmp(vm1)
	reads := l.counter(hv, vmTap, "tx_packets") - reads0
	passed := d.status(port).Directions.FromVM.Classes["tcp"].PassedPackets - pass0

	var res struct {
		End struct {
			SumSent struct {
				Retransmits int
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	segs := tcp1["OutSegs"] - tcp0["OutSegs"]
	reorder := 0
	for _, k := range []string{"TCPSACKReorder", "TCPTSReorder", "TCPRenoReorder"} {
		reorder += sent1[k] - sent0[k]
	}
	ofo := recv1["TCPOFOQueue"] - recv0["TCPOFOQueue"]
	t.Logf("one stream through a loose quarantine: %.2f Gbit/s, %d retransmitted; VM 1 sent %d segments, the VM tap handed the forwarder %d frames, the forwarder passed %d tcp packets; of %d frames seen on both taps %d written out of order; reordering seen by the sender %d, out of order at the receiver %d (the kernel's included)",
		res.End.SumReceived.BitsPerSecond/1e9, res.End.SumSent.Retransmits, segs, reads, passed, matched, moved, reorder, ofo)
	if reads == 0 || uint64(segs) < 4*reads {
		t.Errorf("the VM tap handed the forwarder %d frames for %d segments: want several segments per frame (GSO)", reads, segs)
	}
	// What VM 1 sent (retransmissions included) is what the forwarder
	// passed, give or take the segments in flight at either reading.
	if diff := int(passed) - segs; diff < -segs/50 || diff > segs/50 {
		t.Errorf("the forwarder passed %d tcp packets for %d segments sent: want them charged as the frames they became (within 2%%)", passed, segs)
	}
	if matched < 1000 || moved != 0 {
		t.Errorf("of %d frames seen on both taps, the forwarder wrote %d out of order: want 0 of at least 1000", matched, moved)
	}
}

// snmpTcp reads the Tcp counters of /proc/net/snmp in namespace ns.
func snmpTcp(t *testing.T, l *lab, ns string) map[string]int {
	t.Helper()
	lines := strings.Split(l.sh(ns, "cat /proc/net/snmp"), "\n")
	m := map[string]int{}
	for i := 0; i+1 < len(lines); i++ {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(keys) == 0 || keys[0] != "Tcp:" || len(keys) != len(vals) {
			continue
		}
		if _, err := strconv.Atoi(vals[1]); err != nil {
			continue
		}
		for j := 1; j < len(keys); j++ {
			m[keys[j]], _ = strconv.Atoi(vals[j])
		}
		break
	}
	if len(m) == 0 {
		t.Fatalf("no Tcp counters in %s", ns)
	}
	return m
}

// offloadsOn turns checksum offload and TSO back on for VM 1 and the
// external host, and their ports, which lab.sh turns off (the OVS
// userspace datapath needs that; a Linux bridge does not): a VM's virtio
// interface has them.
func offloadsOn(l *lab) {
	l.t.Helper()
	for _, x := range []struct{ ns, dev string }{
		{l.get("VM1_NS"), "eth0"}, {l.get("EXT_NS"), "eth0"}, {l.get("HV_NS"), l.get("VM1_PORT")}, {l.get("HV_NS"), l.get("EXT_PORT")},
	} {
		l.sh(x.ns, "ethtool -K "+x.dev+" tx on sg on tso on gso on")
	}
}

// flowCapture records, in the order a tap sees them, the frames of the TCP
// streams to port 5201 (iperf3): each as its source port, IP ID and TCP
// sequence number, which name a transmission uniquely.
type flowCapture struct {
	fd   int
	keys []uint64
	stop atomic.Bool
	done chan struct{}
}

// captureFlows starts capturing on dev in ns with a packet socket: on the
// VM tap it sees what the kernel hands the forwarder, on the net tap what
// the forwarder wrote, each in order.
func captureFlows(t *testing.T, ns, dev string) *flowCapture {
	t.Helper()
	fd, err := packetSocketIn(ns, dev)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 256<<20)
	c := &flowCapture{fd: fd, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		buf := make([]byte, 128)
		for !c.stop.Load() {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 54 || buf[12] != 0x08 || buf[13] != 0 {
				continue
			}
			ihl := int(buf[14]&0xf) * 4
			l4 := 14 + ihl
			if buf[23] != 6 || n < l4+8 || binary.BigEndian.Uint16(buf[l4+2:]) != 5201 {
				continue
			}
			sport, id, seq := binary.BigEndian.Uint16(buf[l4:]), binary.BigEndian.Uint16(buf[18:]), binary.BigEndian.Uint32(buf[l4+4:])
			c.keys = append(c.keys, uint64(sport)<<48|uint64(id)<<32|uint64(seq))
		}
	}()
	return c
}

// finish stops the capture and returns what it saw.
func (c *flowCapture) finish() []uint64 {
	c.stop.Store(true)
	<-c.done
	unix.Close(c.fd)
	return c.keys
}

// reordered compares the frames the forwarder wrote (out) with those it
// was handed (in): it counts, per stream, the frames written after a frame
// that was handed to it later, among the frames both captures saw
// (matched); frames either capture missed are skipped.
func reordered(in, out []uint64) (n, matched int) {
	at := map[uint64]int{}
	for i, k := range in {
		if _, dup := at[k]; dup {
			at[k] = -1
			continue
		}
		at[k] = i
	}
	last := map[uint64]int{}
	for _, k := range out {
		i, ok := at[k]
		if !ok || i < 0 {
			continue
		}
		matched++
		s := k >> 48
		if l, seen := last[s]; seen && i < l {
			n++
			continue
		}
		last[s] = i
	}
	return n, matched
}
