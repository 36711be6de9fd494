//go:build bench

package integration

// TestBaselineCost is a measurement, not a check: it logs what the baseline
// costs and fails only if the path breaks. It runs in make bench (the
// bench tag), not in make test, whose time it does not need.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/baseline"
)

// busyCPU is the machine's busy CPU time so far, all cores (/proc/stat:
// everything but idle and iowait).
func busyCPU(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
	var busy int64
	for i, s := range f {
		n, _ := strconv.ParseInt(s, 10, 64)
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is in user already
			continue
		}
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

func median(x []float64) float64 {
	s := append([]float64(nil), x...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// TestBaselineCost measures what the baseline costs (logged, not held: the
// machine is shared, see docs/baseline.md): the baseline on 100 ports with
// every limit above the offered load, 64-byte UDP frames (one flow) from
// vm1 to the external host at the generator's maximum; the machine's busy
// CPU per delivered frame with the baseline and without, in alternating
// windows of one run; then the bypass probe's p99 to vm1 with and without.
// It fails only if the baseline drops anything or the path breaks.
func TestBaselineCost(t *testing.T) {
	l := newLab(t, "bridge")
	vm1, ext := l.get("VM1_NS"), l.get("EXT_NS")
	ports := append(l.extraPorts(96), l.get("VM1_PORT"), l.get("VM2_PORT"), l.get("EXT_PORT"), l.get("EXT2_PORT"))
	above := baseline.Limits{
		NewTCPFromVM: baseline.PerSecond(1e6, 10000), NewUDPFromVM: baseline.PerSecond(1e6, 10000),
		NewTCPToVM: baseline.PerSecond(1e6, 10000), NewUDPToVM: baseline.PerSecond(1e6, 10000),
		NewPerSourceToVM: baseline.PerSecond(1e6, 10000),
		PPSFromVM:        baseline.PerSecond(1e7, 100000), PPSToVM: baseline.PerSecond(1e7, 100000),
	}
	desired := map[string]baseline.Limits{}
	for _, p := range ports {
		desired[p] = above
	}
	m := l.baselineManager()
	set := func(on bool) {
		t.Helper()
		d := desired
		if !on {
			d = nil
		}
		if err := m.Apply(d); err != nil {
			t.Fatal(err)
		}
	}
	const rounds, window = 4, 3 * time.Second
	const perfWindows = 2
	_, perfErr := exec.LookPath("perf")
	flood := l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "64",
		"--src-port-range", "5000-5000", "--pps", "0", "--duration", ((2*rounds+perfWindows)*(window+time.Second) + 15*time.Second).String(), "--json")
	time.Sleep(2 * time.Second)
	var perFrame [2][]float64
	var rate [2][]float64
	for r := 0; r < rounds; r++ {
		for _, on := range []bool{false, true} {
			set(on)
			time.Sleep(500 * time.Millisecond)
			c0 := busyCPU(t)
			f0, t0 := l.counterAt(ext, "eth0", "rx_packets")
			time.Sleep(window)
			c1 := busyCPU(t)
			f1, t1 := l.counterAt(ext, "eth0", "rx_packets")
			i := 0
			if on {
				i = 1
			}
			perFrame[i] = append(perFrame[i], float64(c1-c0)/float64(f1-f0))
			rate[i] = append(rate[i], float64(f1-f0)/t1.Sub(t0).Seconds())
		}
	}
	// The same-window figure (docs/baseline.md, "Figures"): perf samples
	// of the generator's thread (the whole path runs in its softirq) under
	// the baseline's hooks, against the rest, in one window: steadier than
	// the machine's CPU, which takes in whatever else the host runs.
	var share []float64
	if perfErr != nil {
		t.Logf("perf is not installed: no same-window figure")
	} else {
		set(true)
		for i := 0; i < perfWindows; i++ {
			time.Sleep(500 * time.Millisecond)
			share = append(share, baselineShare(t, window))
		}
	}
	if err := flood.wait(t, time.Minute); err != nil {
		t.Fatalf("flood: %v %s", err, flood.err)
	}
	off, on := median(perFrame[0]), median(perFrame[1])
	t.Logf("64-byte frames at the generator's maximum through one port, baseline on 100 ports with limits above the load (%d windows of %v each):", rounds, window)
	t.Logf("  without: %.0f ns of machine CPU per delivered frame (median; all %v), %.0f frames/s", off, perFrame[0], median(rate[0]))
	t.Logf("  with:    %.0f ns of machine CPU per delivered frame (median; all %v), %.0f frames/s", on, perFrame[1], median(rate[1]))
	t.Logf("  ratio %.3f (target at most 1.10)", on/off)
	if len(share) > 0 {
		t.Logf("  same window (perf): the baseline's rules cost %v of the rest of the generator thread's CPU per frame (target at most +10%%)", percents(share))
	}
	set(true)
	for p, reasons := range mustStats(t, m) {
		for r, c := range reasons {
			t.Errorf("limits above the load dropped %d frames on %s for %s", c.Packets, p, r)
		}
	}

	// The bypass probe to vm1, alternately without and with the baseline.
	l.bg(vm1, "probe", "server", "--listen", l.get("VM1_IP")+":22")
	time.Sleep(300 * time.Millisecond)
	var p99 [2][]float64
	for r := 0; r < 3; r++ {
		for _, on := range []bool{false, true} {
			set(on)
			p := l.bg(ext, "probe", "client", "--connect", l.get("VM1_IP")+":22", "--count", "200", "--interval", "10ms", "--json")
			if err := p.wait(t, time.Minute); err != nil {
				t.Fatalf("probe: %v %s %s", err, p.out, p.err)
			}
			s := p.summary(t)
			i := 0
			if on {
				i = 1
			}
			p99[i] = append(p99[i], s.P99MS)
		}
	}
	t.Logf("bypass probe p99: without %.3f ms (median; all %v), with %.3f ms (all %v); ratio %.2f (target at most 1.2)",
		median(p99[0]), p99[0], median(p99[1]), p99[1], median(p99[1])/median(p99[0]))
	set(false)
}

// baselineShare records every CPU with perf for d and returns, among the
// samples of the flood generator's thread (comm "flood": the frame's whole
// path runs in its softirq), those under the bridge family's nftables hook
// (nft_do_chain_bridge: the baseline's chains, both hooks) divided by the
// others: the baseline's cost relative to the rest of a frame's path, from
// one window.
func baselineShare(t *testing.T, d time.Duration) float64 {
	t.Helper()
	data := filepath.Join(t.TempDir(), "perf.data")
	if out, err := exec.Command("perf", "record", "-q", "-a", "-g", "-F", "2000", "-o", data, "--", "sleep", strconv.Itoa(int(d.Seconds()))).CombinedOutput(); err != nil {
		t.Fatalf("perf record: %v\n%s", err, out)
	}
	out, err := exec.Command("perf", "script", "-i", data, "--comm", "flood", "-F", "ip,sym").Output()
	if err != nil {
		t.Fatalf("perf script: %v", err)
	}
	var total, nft int
	for _, stack := range strings.Split(string(out), "\n\n") {
		if strings.TrimSpace(stack) == "" {
			continue
		}
		total++
		if strings.Contains(stack, "nft_do_chain_bridge") {
			nft++
		}
	}
	if total == nft || total < 1000 {
		t.Fatalf("perf: %d samples of the generator, %d under the baseline's hooks: too few to read", total, nft)
	}
	return float64(nft) / float64(total-nft)
}

func percents(x []float64) string {
	var b strings.Builder
	for i, v := range x {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "+%.1f%%", 100*v)
	}
	return b.String()
}
