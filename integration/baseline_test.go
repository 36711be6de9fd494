package integration

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/baseline"
)

// The kernel baseline (issue 18, item 1): per-port limits in one
// bridge-family nftables table, installed through the baseline package in
// the lab's hypervisor namespace.

// baselineManager returns a baseline.Manager for the lab's hypervisor
// namespace.
func (l *lab) baselineManager() *baseline.Manager {
	l.t.Helper()
	f, err := os.Open("/run/netns/" + l.get("HV_NS"))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { f.Close() })
	m, err := baseline.New(baseline.Options{NetNS: int(f.Fd())})
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

// extraPorts adds n veth pairs to the lab's bridge (blpNNN on br0, the
// peer blqNNN unattached), so that a test can install on as many ports as
// a busy host has. They go with the lab's namespace.
func (l *lab) extraPorts(n int) []string {
	l.t.Helper()
	var b strings.Builder
	var names []string
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("blp%03d", i)
		names = append(names, p)
		fmt.Fprintf(&b, "link add %s type veth peer name blq%03d\nlink set %s master %s up\nlink set blq%03d up\n", p, i, p, l.get("BRIDGE"), i)
	}
	cmd := inNS(l.get("HV_NS"), "ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("add %d ports: %v\n%s", n, err, out)
	}
	return names
}

// ruleset is `nft list ruleset` in ns.
func (l *lab) ruleset(ns string) string {
	l.t.Helper()
	return l.sh(ns, "nft list ruleset")
}

// nftCount installs, in ns, a netdev table counting on dev's ingress the
// frames each named match selects (name -> nft match, such as
// "ip saddr 198.18.0.100 tcp dport 22"); count reads one of them.
func (l *lab) nftCount(ns, dev string, matches map[string]string) {
	l.t.Helper()
	var b strings.Builder
	b.WriteString("table netdev bltest {\n")
	for name := range matches {
		fmt.Fprintf(&b, "counter %s {}\n", name)
	}
	fmt.Fprintf(&b, "chain in { type filter hook ingress device %s priority -500;\n", dev)
	for name, m := range matches {
		fmt.Fprintf(&b, "%s counter name %s\n", m, name)
	}
	b.WriteString("}\n}\n")
	cmd := inNS(ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("nft in %s: %v\n%s\n%s", ns, err, out, b.String())
	}
}

var packetsRe = regexp.MustCompile(`packets (\d+)`)

func (l *lab) count(ns, name string) uint64 {
	l.t.Helper()
	out := l.sh(ns, "nft list counter netdev bltest "+name)
	m := packetsRe.FindStringSubmatch(out)
	if m == nil {
		l.t.Fatalf("counter %s in %s: %q", name, ns, out)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

type floodSummary struct {
	Sent    uint64  `json:"sent"`
	Seconds float64 `json:"seconds"`
	PPS     float64 `json:"pps"`
	Errors  uint64  `json:"errors"`
}

func (p *proc) flood(t *testing.T) floodSummary {
	t.Helper()
	var s floodSummary
	if err := json.Unmarshal(p.out.Bytes(), &s); err != nil {
		t.Fatalf("flood output %q: %v (stderr %q)", p.out.String(), err, p.err.String())
	}
	return s
}

func mustStats(t *testing.T, m *baseline.Manager) map[string]map[baseline.Reason]baseline.Counter {
	t.Helper()
	st, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBaselineInstall100: the baseline on 100 bridge ports (the lab's four
// and 96 more veths) installs in one transaction in under 5 s, as one table
// with one chain pair for the one distinct limits value; a restarted
// manager adopts it without change; removing every port leaves
// `nft list ruleset` exactly as before.
func TestBaselineInstall100(t *testing.T) {
	l := newLab(t, "bridge")
	hv := l.get("HV_NS")
	ports := append(l.extraPorts(96), l.get("VM1_PORT"), l.get("VM2_PORT"), l.get("EXT_PORT"), l.get("EXT2_PORT"))
	// Someone else's rules in the same namespace, which must be left alone.
	l.sh(hv, `nft 'table bridge someone { chain c { type filter hook forward priority 0; meta l4proto sctp drop; }; }'`)
	before := l.ruleset(hv)

	lim := baseline.Limits{
		NewTCPFromVM: baseline.PerSecond(1000, 50), NewUDPFromVM: baseline.PerSecond(1000, 50),
		NewTCPToVM: baseline.PerSecond(1000, 50), NewUDPToVM: baseline.PerSecond(1000, 50),
		NewPerSourceToVM: baseline.PerMinute(10, 10),
		PPSFromVM:        baseline.PerSecond(100000, 1000), PPSToVM: baseline.PerSecond(100000, 1000),
	}
	desired := map[string]baseline.Limits{}
	for _, p := range ports {
		desired[p] = lim
	}
	m := l.baselineManager()
	t0 := time.Now()
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	t.Logf("installed on %d ports in %v", len(ports), took)
	if took > 5*time.Second {
		t.Errorf("installing on %d ports took %v, want under 5s", len(ports), took)
	}
	rs := l.ruleset(hv)
	terse := l.sh(hv, "nft -t list ruleset") // without set elements (meters change by the ms)
	if n := strings.Count(rs, "table bridge "+baseline.TableName+" "); n != 1 {
		t.Errorf("%d baseline tables, want 1", n)
	}
	if n := strings.Count(rs, "\n\tchain "); n != 4+1 {
		t.Errorf("%d chains (with someone's one), want 5: two base chains and one pair for the one limits value\n%s", n, rs)
	}
	for _, p := range ports {
		if strings.Count(rs, `"`+p+`" : jump`) != 2 {
			t.Errorf("port %s is not in both port maps", p)
		}
	}
	// A restarted daemon's manager adopts the table: nothing changes.
	m2 := l.baselineManager()
	got, err := m2.Installed()
	if err != nil || len(got) != len(ports) {
		t.Fatalf("Installed: %d ports, %v; want %d", len(got), err, len(ports))
	}
	if err := m2.Apply(desired); err != nil {
		t.Fatal(err)
	}
	if rs2 := l.sh(hv, "nft -t list ruleset"); rs2 != terse {
		t.Errorf("a restarted manager's Apply changed the ruleset:\n%s", rs2)
	}
	if got2, err := m2.Installed(); err != nil || strings.Join(got2, ",") != strings.Join(got, ",") {
		t.Errorf("after a restarted manager's Apply: %v, %v", got2, err)
	}
	// The traffic path works with the baseline on (limits above load).
	l.sh(l.get("VM1_NS"), l.bin+"/probe ping --dst "+l.get("EXT_IP")+" --count 3")

	t0 = time.Now()
	if err := m2.Apply(nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed from %d ports in %v", len(ports), time.Since(t0))
	if after := l.ruleset(hv); after != before {
		t.Errorf("ruleset after removing the baseline differs from before:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

// TestBaselineBruteForce: 200 new ssh connections/s (SYNs to port 22) from
// one external source to vm1, whose baseline allows 10 new connections per
// minute per source with a burst of 10. A token bucket of 10/min, burst 10,
// passes at most 10 + 10*W/60 in any window of W (the burst, then one every
// 6 s; so 10 per minute once the burst is spent): over the 20 s flood that
// is 10 + 20/6, at most 14 (one token may be on its way at the start), and
// at least 10 + 2. Meanwhile a second source opens 8 real connections (within its own
// burst), spread over the flood: all succeed. The drop counter for
// (vm1, per_source_to_vm) equals the SYNs sent minus those vm1 received.
func TestBaselineBruteForce(t *testing.T) {
	l := newLab(t, "bridge")
	vm1, ext, ext2 := l.get("VM1_NS"), l.get("EXT_NS"), l.get("EXT2_NS")
	vmIP, extIP, ext2IP := l.get("VM1_IP"), l.get("EXT_IP"), l.get("EXT2_IP")
	port := l.get("VM1_PORT")
	l.nftCount(vm1, "eth0", map[string]string{
		"ext":  "ip saddr " + extIP + " tcp dport 22 tcp flags & (syn|ack) == syn",
		"ext2": "ip saddr " + ext2IP + " tcp dport 22 tcp flags & (syn|ack) == syn",
	})
	l.bg(vm1, "probe", "server", "--listen", vmIP+":22")
	time.Sleep(300 * time.Millisecond)

	m := l.baselineManager()
	if err := m.Apply(map[string]baseline.Limits{port: {NewPerSourceToVM: baseline.PerMinute(10, 10)}}); err != nil {
		t.Fatal(err)
	}
	const dur = 20 * time.Second
	flood := l.bg(ext, "flood", "--dst", vmIP, "--dport", "22", "--proto", "syn", "--pps", "200", "--duration", dur.String(), "--json")
	second := l.bg(ext2, "probe", "client", "--connect", vmIP+":22", "--new-conn", "--count", "8", "--interval", "2s", "--connect-timeout", "3s", "--json")
	if err := flood.wait(t, dur+20*time.Second); err != nil {
		t.Fatalf("flood: %v %s", err, flood.err)
	}
	fs := flood.flood(t)
	if err := second.wait(t, 40*time.Second); err != nil {
		t.Errorf("second source: %v: %s %s", err, second.out, second.err)
	}
	ps := second.summary(t)
	passed, passed2 := l.count(vm1, "ext"), l.count(vm1, "ext2")
	drops := mustStats(t, m)[port][baseline.ReasonPerSourceToVM]
	t.Logf("flood sent %d SYNs in %.1fs (%.0f/s); vm1 received %d; dropped %d (counter); second source %d/%d connections, %d SYNs received",
		fs.Sent, fs.Seconds, fs.PPS, passed, drops.Packets, ps.Completed, ps.Sent, passed2)
	// The generator paces 200/s; on a loaded shared host it falls behind
	// and forgives debt over 1 s (one run at load 6-10 sent 148/s). The
	// check below is about the limiter, which needs only a flood far
	// above its 10/min: at least 100/s, 600 times the limit.
	if fs.Sent < uint64(100*dur.Seconds()) {
		t.Fatalf("the flood sent %d SYNs in %v, want at least %d (it was asked for 200/s): the test did not brute-force", fs.Sent, dur, int(100*dur.Seconds()))
	}
	lo, hi := uint64(10+math.Floor(fs.Seconds/6)-1), uint64(10+math.Ceil(fs.Seconds/6)+1)
	if passed < lo || passed > hi {
		t.Errorf("vm1 received %d of the flood's SYNs in %.1fs, want %d-%d (burst 10, then 10/min)", passed, fs.Seconds, lo, hi)
	}
	if ps.Sent != 8 || ps.Completed != 8 || ps.Failed != 0 {
		t.Errorf("the second source completed %d of %d connections, want all 8", ps.Completed, ps.Sent)
	}
	if drops.Packets != fs.Sent-passed {
		t.Errorf("drop counter (%s, %s) = %d, want sent %d - received %d = %d", port, baseline.ReasonPerSourceToVM, drops.Packets, fs.Sent, passed, fs.Sent-passed)
	}
	if err := m.Apply(nil); err != nil {
		t.Fatal(err)
	}
}

// TestBaselineConnFlood: vm1 opens new TCP connections at the flood
// tool's maximum rate against a baseline of 2000 new connections/s (burst
// 1000: half a second at the rate, so that the generator's scheduling gaps
// on a shared host, which leave the bucket full and waste what would have
// flowed in, stay shorter than the bucket; with burst 20 and 200, two runs
// at load 10-15 on 2 cores delivered 7.5% less). The external host receives
// (SYNs - burst) / seconds within 5% of 2000/s, while an established connection from vm1 keeps working: every
// round trip of a probe started before the flood completes. The drop
// counter (vm1, new_tcp_from_vm) equals the SYNs that entered the bridge
// from vm1 (counted on the port by a table of the test's own) minus those
// the external host received.
func TestBaselineConnFlood(t *testing.T) {
	l := newLab(t, "bridge")
	hv, vm1, ext := l.get("HV_NS"), l.get("VM1_NS"), l.get("EXT_NS")
	vmIP, extIP, port := l.get("VM1_IP"), l.get("EXT_IP"), l.get("VM1_PORT")
	syn := "ip saddr " + vmIP + " tcp dport 9 tcp flags & (syn|ack) == syn"
	l.nftCount(ext, "eth0", map[string]string{"syn": syn})
	l.nftCount(hv, port, map[string]string{"syn": syn})
	l.bg(ext, "probe", "server", "--listen", extIP+":22")
	time.Sleep(300 * time.Millisecond)

	const rate, burst = 2000, 1000
	m := l.baselineManager()
	if err := m.Apply(map[string]baseline.Limits{port: {NewTCPFromVM: baseline.PerSecond(rate, burst)}}); err != nil {
		t.Fatal(err)
	}
	const dur = 10 * time.Second
	probe := l.bg(vm1, "probe", "client", "--connect", extIP+":22", "--count", "130", "--interval", "100ms", "--timeout", "2s", "--json")
	time.Sleep(500 * time.Millisecond)
	flood := l.bg(vm1, "flood", "--dst", extIP, "--dport", "9", "--proto", "syn", "--pps", "0", "--duration", dur.String(), "--json")
	// What ext receives, second by second (to tell a steady rate from a
	// generator that stalls).
	var perSecond []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last uint64
		for i := 0; i < int(dur/time.Second)+1; i++ {
			time.Sleep(time.Second)
			out, err := inNS(ext, "nft", "list", "counter", "netdev", "bltest", "syn").Output()
			if m := packetsRe.FindSubmatch(out); err == nil && m != nil {
				n, _ := strconv.ParseUint(string(m[1]), 10, 64)
				perSecond = append(perSecond, strconv.FormatUint(n-last, 10))
				last = n
			}
		}
	}()
	if err := flood.wait(t, dur+30*time.Second); err != nil {
		t.Fatalf("flood: %v %s", err, flood.err)
	}
	fs := flood.flood(t)
	<-done
	t.Logf("ext received per second: %s", strings.Join(perSecond, " "))
	if err := probe.wait(t, 30*time.Second); err != nil {
		t.Errorf("established connection: %v: %s %s", err, probe.out, probe.err)
	}
	ps := probe.summary(t)
	time.Sleep(200 * time.Millisecond)
	got, entered := l.count(ext, "syn"), l.count(hv, "syn")
	drops := mustStats(t, m)[port][baseline.ReasonNewTCPFromVM]
	got2 := (float64(got) - burst) / fs.Seconds
	t.Logf("flood sent %d SYNs in %.2fs (%.0f/s); %d entered the bridge; ext received %d (%.0f/s after the burst); dropped %d (counter); established probe %d/%d, p99 %.2f ms",
		fs.Sent, fs.Seconds, fs.PPS, entered, got, got2, drops.Packets, ps.Completed, ps.Sent, ps.P99MS)
	if fs.PPS < 5*rate {
		t.Fatalf("the flood offered only %.0f/s, not a flood against %d/s", fs.PPS, rate)
	}
	if !within(got2, rate, 0.05) {
		t.Errorf("ext received %.0f new connections/s, want %d within 5%%", got2, rate)
	}
	if ps.Sent == 0 || ps.Completed != ps.Sent || ps.Failed != 0 {
		t.Errorf("the established connection completed %d of %d round trips, want all", ps.Completed, ps.Sent)
	}
	if drops.Packets != entered-got {
		t.Errorf("drop counter (%s, %s) = %d, want entered %d - received %d = %d", port, baseline.ReasonNewTCPFromVM, drops.Packets, entered, got, entered-got)
	}
	if err := m.Apply(nil); err != nil {
		t.Fatal(err)
	}
}
