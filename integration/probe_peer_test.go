//go:build bench

package integration

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestProbeAgainstNftLimit (issue 13): under a max-rate flood of 250-byte
// UDP from the VM, the bypass probe's p99 through shaperd (--pps 5000) is
// at most 1.5 times its p99 through the peer an operator would write on
// the port instead: an nftables netdev limit of 5000 pps (burst 10 ms)
// that accepts `tcp sport 22` first. The peer needs a netdev ingress hook
// the port's frames pass, which Open vSwitch's userspace datapath does not
// (it reads its ports from AF_PACKET, before that hook), so this runs on
// the Linux bridge.
//
// The machine's load moves the p99 of either from run to run, so the two
// take turns, three rounds of 200 round trips each (one every 10 ms), in
// one lab under one flood, and the medians of the rounds' p99 are
// compared.
//
// A measurement (make bench, the bench tag), logged, not held: it has
// measured 2.5x (docs/architecture.md), the two wake-ups of the splice's
// userland hops on a saturated machine. It fails if either loses a round
// trip or the rounds leave the plumbing changed.
func TestProbeAgainstNftLimit(t *testing.T) {
	l := newLab(t, "bridge")
	vm1, ext, hv, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("HV_NS"), l.get("VM1_PORT")
	d := l.startDaemon()
	pristine := l.snapshot()
	l.bg(vm1, "probe", "server", "--listen", l.get("VM1_IP")+":22")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "120s")
	l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "0", "--duration", "100s")
	time.Sleep(time.Second)

	const rounds, count = 3, 200
	probe := func(what string) float64 {
		t.Helper()
		time.Sleep(time.Second) // the policer settles under the flood
		p := l.bg(ext, "probe", "client", "--connect", l.get("VM1_IP")+":22", "--count", strconv.Itoa(count), "--interval", "10ms", "--timeout", "1s", "--json")
		if err := p.wait(t, 30*time.Second); err != nil {
			t.Fatalf("%s: probe: %v %s %s", what, err, p.out, p.err)
		}
		s := p.summary(t)
		t.Logf("%s: %d of %d round trips, p99 %.2f ms, max %.2f ms", what, s.Completed, s.Sent, s.P99MS, s.MaxMS)
		if s.Sent != count || s.Completed != s.Sent || s.Failed != 0 {
			t.Errorf("%s: the probe completed %d of %d round trips, want all", what, s.Completed, s.Sent)
		}
		return s.P99MS
	}
	table := "shtest_" + randName(6)
	rule := fmt.Sprintf("table netdev %s { chain in_vm1 { type filter hook ingress device %q priority 0; policy accept; tcp sport 22 accept; limit rate over 5000/second burst 50 packets drop; }; }", table, port)
	var nft, shaperd []float64
	for i := 1; i <= rounds; i++ {
		l.sh(hv, "nft '"+rule+"'")
		nft = append(nft, probe(fmt.Sprintf("round %d, nft netdev limit with tcp sport 22 accepted", i)))
		l.sh(hv, "nft delete table netdev "+table)

		d.must("quarantine", port, "--pps", "5000")
		shaperd = append(shaperd, probe(fmt.Sprintf("round %d, shaperd --pps 5000", i)))
		d.must("release", port)
	}
	median := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	mn, ms := median(nft), median(shaperd)
	t.Logf("median p99: shaperd %.2f ms, nft %.2f ms: %.2fx (issue 13 asks at most 1.5x); shaperd adds %.2f ms", ms, mn, ms/mn, ms-mn)
	if got := l.snapshot(); got != pristine {
		t.Errorf("the plumbing after the rounds differs from before:\n%s\nwant\n%s", got, pristine)
	}
}
