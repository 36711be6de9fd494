package integration

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/splice"
)

// statusBaselines is status --json's baselines.
func (d *daemon) baselines() []api.Baseline {
	d.l.t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(d.must("status", "--json")), &st); err != nil {
		d.l.t.Fatal(err)
	}
	return st.Baselines
}

// expiresRe is the remaining lifetime nft prints for a dynamic set's
// element (a meter, a flow): it changes by itself from one listing to the
// next.
var expiresRe = regexp.MustCompile(` expires [0-9hms.]+`)

// TestBaselineDaemon: the baseline end to end through the daemon. The
// command line sets a per-source limit (10/min, burst 10) on vm1's port;
// status lists it; a brute force of 200 SYNs/s to port 22 from one source
// gets at most the burst and one more through, and the drops equal sent -
// received in status and in /metrics. kill -9 and a restart adopt the
// table: `nft list ruleset` is the same (elements' expiry times aside). A
// quarantine of the port (its net tap takes its place in the bridge) keeps
// the baseline in force: a second source's brute force is held the same
// and counted under the port. Releasing and removing leaves `nft list
// ruleset` identical to before.
func TestBaselineDaemon(t *testing.T) {
	l := newLab(t, "bridge")
	hv, vm1, ext, ext2 := l.get("HV_NS"), l.get("VM1_NS"), l.get("EXT_NS"), l.get("EXT2_NS")
	vmIP, extIP, ext2IP, port := l.get("VM1_IP"), l.get("EXT_IP"), l.get("EXT2_IP"), l.get("VM1_PORT")
	l.nftCount(vm1, "eth0", map[string]string{
		"ext":  "ip saddr " + extIP + " tcp dport 22 tcp flags & (syn|ack) == syn",
		"ext2": "ip saddr " + ext2IP + " tcp dport 22 tcp flags & (syn|ack) == syn",
	})
	l.bg(vm1, "probe", "server", "--listen", vmIP+":22")
	before := l.ruleset(hv)
	dir := t.TempDir()
	d := l.startDaemonIn(dir, "--metrics-addr", metricsAddr)

	// Bad input changes nothing.
	if code, _, e := d.cli("baseline", port, "--to-vm-new-conn-per-source", "10/week"); code != 2 {
		t.Fatalf("bad unit: exit %d %s", code, e)
	}
	if code, _, e := d.cli("baseline", "--remove", port); code != 3 {
		t.Fatalf("remove of nothing: exit %d %s", code, e)
	}
	if got := l.ruleset(hv); got != before {
		t.Fatalf("bad input changed the ruleset:\n%s", got)
	}

	d.must("baseline", port, "--to-vm-new-conn-per-source", "10/min")
	bl := d.baselines()
	if len(bl) != 1 || bl[0].Port != port || bl[0].Origin != api.BaselineFromCLI || bl[0].Limits.ToVMNewConnPerSource != "10/min" {
		t.Fatalf("status baselines: %+v", bl)
	}

	// Brute force from one source: the burst of 10, then one every 6 s.
	flood := l.bg(ext, "flood", "--dst", vmIP, "--dport", "22", "--proto", "syn", "--pps", "200", "--duration", "5s", "--json")
	if err := flood.wait(t, 30*time.Second); err != nil {
		t.Fatalf("flood: %v %s", err, flood.err)
	}
	fs := flood.flood(t)
	time.Sleep(200 * time.Millisecond)
	passed := l.count(vm1, "ext")
	drops := d.baselines()[0].Drops["per_source_to_vm"]
	m := l.scrape(metricsAddr)
	mdrops := m.value(t, "shaperd_baseline_drops_total", "port", port, "reason", "per_source_to_vm")
	t.Logf("brute force: %d SYNs in %.1fs; vm1 received %d; dropped %d (status), %.0f (/metrics)", fs.Sent, fs.Seconds, passed, drops, mdrops)
	if fs.Sent < 500 {
		t.Fatalf("the flood sent %d SYNs, want at least 500 (100/s): the test did not brute-force", fs.Sent)
	}
	if passed < 10 || passed > 12 {
		t.Errorf("vm1 received %d SYNs of the brute force, want 10-12 (burst 10, then one every 6 s)", passed)
	}
	if drops != fs.Sent-passed || mdrops != float64(drops) {
		t.Errorf("drops: status %d, /metrics %.0f; want sent %d - received %d = %d", drops, mdrops, fs.Sent, passed, fs.Sent-passed)
	}

	// kill -9 and a restart: the table is adopted, not duplicated.
	norm := func(s string) string { return expiresRe.ReplaceAllString(s, "") }
	installed := norm(l.ruleset(hv))
	if strings.Count(installed, "table bridge shaperd_baseline") != 1 {
		t.Fatalf("ruleset after the set:\n%s", installed)
	}
	d.kill9()
	d = l.startDaemonIn(dir, "--metrics-addr", metricsAddr)
	if got := norm(l.ruleset(hv)); got != installed {
		t.Fatalf("after kill -9 and a restart the ruleset differs:\n--- before\n%s\n--- after\n%s", installed, got)
	}
	if bl := d.baselines(); len(bl) != 1 || bl[0].Drops["per_source_to_vm"] != drops {
		t.Fatalf("after the restart: %+v, want the same baseline with its %d drops", bl, drops)
	}

	// A quarantine: the net tap takes the port's place in the bridge, and
	// carries its baseline.
	d.must("quarantine", port, "--pps", "100000", "--to-vm-pps", "100000")
	_, nt := splice.TapNames(port)
	if !strings.Contains(l.sh(hv, "bridge link show"), nt) {
		t.Fatalf("the net tap %s is not in the bridge", nt)
	}
	flood2 := l.bg(ext2, "flood", "--dst", vmIP, "--dport", "22", "--proto", "syn", "--pps", "200", "--duration", "3s", "--json")
	if err := flood2.wait(t, 30*time.Second); err != nil {
		t.Fatalf("flood: %v %s", err, flood2.err)
	}
	fs2 := flood2.flood(t)
	time.Sleep(200 * time.Millisecond)
	passed2 := l.count(vm1, "ext2")
	drops2 := d.baselines()[0].Drops["per_source_to_vm"] - drops
	t.Logf("brute force while quarantined: %d SYNs; vm1 received %d; dropped %d", fs2.Sent, passed2, drops2)
	if passed2 < 10 || passed2 > 12 || drops2 != fs2.Sent-passed2 {
		t.Errorf("while quarantined: vm1 received %d of %d SYNs (want 10-12), drops %d (want %d): the baseline is not in force behind the splice", passed2, fs2.Sent, drops2, fs2.Sent-passed2)
	}

	d.must("release", port)
	d.must("baseline", "--remove", port)
	if bl := d.baselines(); len(bl) != 0 {
		t.Fatalf("after remove: %+v", bl)
	}
	if after := l.ruleset(hv); after != before {
		t.Fatalf("after remove the ruleset differs:\n--- before\n%s\n--- after\n%s", before, after)
	}
}
