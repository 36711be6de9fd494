package integration

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMultiQueueKeepsTCPOrder quarantines VM 1's port with limits far
// above the load and two queues per tap (run --tap-queues 2), and sends
// four TCP streams from VM 1 to the external host (iperf3 -P 4): the
// kernel spreads the streams over both queues of the VM tap, each queue
// has its own forwarding thread, and yet no stream sees a segment out of
// order (the sender's reordering counters and the receiver's out-of-order
// queue stay at zero).
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

	sent0, recv0 := netstat(t, l, vm1), netstat(t, l, ext)
	q0 := queueSent(t, l, hv, vmTap)
	out, err := inNS(vm1, "iperf3", "--client", l.get("EXT_IP"), "--parallel", "4", "--time", "5", "--json").Output()
	if err != nil {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	sent1, recv1 := netstat(t, l, vm1), netstat(t, l, ext)
	q1 := queueSent(t, l, hv, vmTap)

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
	t.Logf("4 streams through 2 queues: %.2f Gbit/s, %d retransmitted; reordering seen by the sender %d, out-of-order queued by the receiver %d; frames per VM tap queue %v",
		res.End.SumReceived.BitsPerSecond/1e9, res.End.SumSent.Retransmits, reorder, ofo, diffs(q0, q1))
	if len(q1) < 2 {
		t.Fatalf("the VM tap has %d queues in tc, want 2", len(q1))
	}
	for i, n := range diffs(q0, q1) {
		if n == 0 {
			t.Errorf("queue %d of the VM tap carried nothing: the streams were not spread", i)
		}
	}
	if reorder != 0 {
		t.Errorf("the sender saw %d reorderings, want 0", reorder)
	}
	if res.End.SumSent.Retransmits == 0 && ofo != 0 {
		t.Errorf("no segment was lost, yet the receiver queued %d out of order", ofo)
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
		if strings.HasPrefix(block, "mq ") {
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
