package integration

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
)

// Quota lab settings: 2 s intervals in a 1 h period (1800 intervals), a
// commit of 8 Mbit/s (2 000 000 bytes an interval; the soft zone starts at
// 1 500 000), and a burst ceiling equal to the commit so that no burst
// interval muddles the counts.
const (
	quotaMetrics  = "127.0.0.1:19752"
	quotaCommit   = 8_000_000
	quotaInterval = 2 * time.Second
)

func quotaReport(t *testing.T, d *daemon, tenant string) api.QuotaReport {
	t.Helper()
	var r api.QuotaReport
	if err := json.Unmarshal([]byte(d.must("quota", "report", tenant, "--json")), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func quotaStatus(t *testing.T, d *daemon) api.Status {
	t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(d.must("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// quotaCounts reads a tenant's quota packet counters from the VM, by
// verdict.
func (l *lab) quotaCounts(tenant string) map[string]float64 {
	l.t.Helper()
	s := l.scrape(quotaMetrics)
	out := map[string]float64{}
	for _, v := range []string{"passed", "soft_drop", "cap_drop", "bypass"} {
		out[v] = s.value(l.t, "shaperd_quota_packets_total", "tenant", tenant, "direction", "from_vm", "verdict", v)
	}
	return out
}

func diffCounts(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k := range b {
		out[k] = b[k] - a[k]
	}
	return out
}

// untilPhase sleeps until now is between lo and hi into a quota interval.
func untilPhase(lo, hi time.Duration) {
	for {
		ph := time.Duration(time.Now().UnixNano() % int64(quotaInterval))
		if ph >= lo && ph < hi {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestQuotaLab: a tenant of two lab ports on the real bridge, with 2 s
// intervals. A flood at 90% of the commit enters the probabilistic zone
// (soft drops, no cap drop); a flood at 5x the commit is capped, and the
// closed intervals stay at or under the commit. A kill -9 and a restart on
// the same state keep the samples, count the interval cut short at its
// quota, adopt the splices without duplicating taps, and enforce again.
// Removing the tenant restores the plumbing exactly; a tenant whose second
// port does not exist leaves nothing behind.
func TestQuotaLab(t *testing.T) {
	l := newLab(t, "bridge")
	ext, vm1ns := l.get("EXT_NS"), l.get("VM1_NS")
	vm1, vm2 := l.get("VM1_PORT"), l.get("VM2_PORT")
	dir := t.TempDir()
	d := l.startDaemonIn(dir, "--metrics-addr", quotaMetrics)
	pristine := l.snapshot()

	// All or nothing: the first port would splice, the second does not
	// exist: refused, exit 2, nothing left.
	code, _, errOut := d.cli("quota", "add", "acme", "--ports", vm1+",nosuch0", "--commit", "8mbit")
	if code != 2 || !strings.Contains(errOut, "nosuch0: no such port") {
		t.Fatalf("add with a missing port: exit %d, %s", code, errOut)
	}
	if got := l.snapshot(); got != pristine {
		t.Fatalf("a refused add changed the plumbing:\n%s", got)
	}

	// Keep clear of the end of the hour-long period: its samples restart.
	if left := time.Until(time.Now().Truncate(time.Hour).Add(time.Hour)); left < 90*time.Second {
		t.Logf("waiting %v for the next period", left.Round(time.Second))
		time.Sleep(left + time.Second)
	}
	d.must("quota", "add", "acme", "--ports", vm1+","+vm2, "--commit", "8mbit", "--interval", "2s", "--period", "1h", "--burst-ceiling", "8mbit")
	taps, filters := l.plumbing(vm1)
	st := quotaStatus(t, d)
	if len(st.Quarantines) != 0 || len(st.Quotas) != 1 || len(st.Quotas[0].Ports) != 2 ||
		st.Quotas[0].Ports[0].State != api.QuotaPortSpliced || st.Quotas[0].Ports[1].State != api.QuotaPortSpliced {
		t.Fatalf("status after add: quarantines %d, quotas %+v", len(st.Quarantines), st.Quotas)
	}
	if taps == 0 {
		t.Fatal("no shaperd taps after quota add")
	}
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "120s")
	flood := func(pps int, dur time.Duration) *proc {
		return l.bg(vm1ns, "flood", "--dst", l.get("EXT_IP"), "--size", "1000", "--pps", fmt.Sprint(pps), "--duration", dur.String())
	}

	// 1. 900 pps of 1000-byte frames, 90% of the commit: every interval
	// enters the soft zone (1.5 MB) and none reaches the cap (2 MB).
	c0 := l.quotaCounts("acme")
	flood(900, 7*time.Second).wait(t, 15*time.Second)
	c1 := l.quotaCounts("acme")
	soft := diffCounts(c0, c1)
	t.Logf("at 90%% of the commit: %v", soft)
	if soft["soft_drop"] == 0 || soft["cap_drop"] != 0 || soft["passed"] < 5000 {
		t.Errorf("at 90%% of the commit: %v; want soft drops and no cap drop", soft)
	}

	// 2. 5000 pps, 5x the commit: capped. Each interval passes 1.5 MB at
	// full speed, then crosses the soft zone (its last 0.5 MB: about
	// 2900 soft drops expected, more or less 640, as the drop
	// probability nears 1), then is capped (about 5100 cap drops). The
	// comparison is made over three whole intervals, read at their
	// boundaries: the flood's first and last intervals are partial, and
	// over them it once went the other way (soft 16133, cap 14699). The
	// soft count has a long tail (the last frames before the cap each wait
	// for a pass at a drop probability near 1): in 20 000 intervals of the
	// quota package's own arithmetic at this load, two whole intervals
	// had more soft than cap drops 0.32% of the time (CI run r16 hit it:
	// soft 9858, cap 6182), three 0.05%.
	p := flood(5000, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	untilPhase(20*time.Millisecond, 200*time.Millisecond)
	w0 := l.quotaCounts("acme")
	rx0, r0 := l.counterAt(ext, "eth0", "rx_packets")
	time.Sleep(5 * time.Second)
	untilPhase(20*time.Millisecond, 200*time.Millisecond)
	whole := diffCounts(w0, l.quotaCounts("acme"))
	rx1, r1 := l.counterAt(ext, "eth0", "rx_packets")
	rx := float64(rx1-rx0) / r1.Sub(r0).Seconds()
	p.wait(t, 15*time.Second)
	c2 := l.quotaCounts("acme")
	hard := diffCounts(c1, c2)
	t.Logf("at 5x the commit: %v; over three whole intervals: %v; the external host received %.0f pps (the commit is 1000 pps of these frames)", hard, whole, rx)
	if hard["cap_drop"] == 0 || hard["soft_drop"] == 0 || whole["cap_drop"] < whole["soft_drop"] {
		t.Errorf("at 5x the commit: %v, over three whole intervals %v; want cap drops, more than soft drops in whole intervals", hard, whole)
	}
	if rx > 1050 || rx < 850 {
		t.Errorf("the external host received %.0f pps through the quota, want about 1000 (8 Mbit/s of 1000-byte frames)", rx)
	}
	r := quotaReport(t, d, "acme")
	var busy []uint64
	for _, s := range r.Samples {
		if s.BPS > quotaCommit {
			t.Errorf("interval %s at %d bit/s, above the commit", s.Start.Format(time.RFC3339), s.BPS)
		}
		if s.BPS > quotaCommit*9/10 {
			busy = append(busy, s.BPS)
		}
	}
	t.Logf("intervals above 90%% of the commit: %v; percentile %d, used %d, left %d", busy, r.PercentileBPS, r.BurstIntervalsUsed, r.BurstIntervalsLeft)
	if len(busy) < 3 || r.BurstIntervalsUsed != 0 {
		t.Errorf("capped intervals %v (want 3 or more near the commit), burst intervals used %d (want 0)", busy, r.BurstIntervalsUsed)
	}
	// status --json --no-quota-samples: the same keys, the samples left
	// out (what shaperd top and the human status ask for).
	var lite api.Status
	if err := json.Unmarshal([]byte(d.must("status", "--json", "--no-quota-samples")), &lite); err != nil {
		t.Fatal(err)
	}
	full := quotaStatus(t, d)
	if len(full.Quotas) != 1 || len(full.Quotas[0].Samples) == 0 || len(lite.Quotas) != 1 || lite.Quotas[0].Samples == nil ||
		len(lite.Quotas[0].Samples) != 0 || lite.Quotas[0].Tenant != "acme" || lite.Quotas[0].CommitBPS != full.Quotas[0].CommitBPS {
		t.Errorf("status --json --no-quota-samples: %+v; full status: %d tenants", lite.Quotas, len(full.Quotas))
	}

	// 3. kill -9 mid-interval, once the last close is saved (the tick
	// saves within 0.5 s of a close), and start again on the same state.
	untilPhase(800*time.Millisecond, 1200*time.Millisecond)
	before := quotaReport(t, d, "acme")
	d.kill9()
	killed := time.Now()
	cut := killed.Truncate(quotaInterval)
	d2 := l.startDaemonIn(dir, "--metrics-addr", quotaMetrics)
	started := time.Now()
	t.Logf("answering %v after the kill", started.Sub(killed).Round(time.Millisecond))
	// Read once the interval the daemon started in has closed too.
	time.Sleep(time.Until(started.Truncate(quotaInterval).Add(quotaInterval + 200*time.Millisecond)))
	after := quotaReport(t, d2, "acme")
	n := len(before.Samples)
	if len(after.Samples) <= n || !slices.Equal(after.Samples[:n], before.Samples) {
		t.Fatalf("samples after the restart do not extend those before:\nbefore %d: %v\nafter  %d: %v", n, before.Samples[max(0, n-5):], len(after.Samples), after.Samples[max(0, n-5):])
	}
	// The interval cut short, and the one the daemon started in (it did
	// not see its beginning), count at the commit's quota.
	if !after.Samples[n].Start.Equal(cut) {
		t.Errorf("first sample after those before starts at %s, want the interval cut short, %s", after.Samples[n].Start, cut)
	}
	for _, s := range after.Samples[n:] {
		if s.Start.After(started) {
			break
		}
		if s.BPS != quotaCommit {
			t.Errorf("interval %s (cut short, or not seen from its start) counts %d bit/s, want the commit %d", s.Start.Format(time.RFC3339Nano), s.BPS, quotaCommit)
		}
	}
	t.Logf("after the restart: %d samples before, %d after; from the cut-short one: %v", n, len(after.Samples), after.Samples[n:])
	if t2, f2 := l.plumbing(vm1); t2 != taps || f2 != filters {
		t.Errorf("after the restart: %d taps (was %d), filters\n%s\nwere\n%s", t2, taps, f2, filters)
	}
	st = quotaStatus(t, d2)
	if len(st.Quarantines) != 0 || len(st.Quotas) != 1 || st.Quotas[0].Ports[0].State != api.QuotaPortSpliced || st.Quotas[0].Ports[1].State != api.QuotaPortSpliced {
		t.Errorf("status after the restart: quarantines %d, quotas %+v", len(st.Quarantines), st.Quotas)
	}

	// 4. Enforced again after the restart.
	c3 := l.quotaCounts("acme")
	p = flood(5000, 6*time.Second)
	time.Sleep(1 * time.Second)
	rx = l.rxRate(ext, "eth0", 4*time.Second)
	p.wait(t, 15*time.Second)
	again := diffCounts(c3, l.quotaCounts("acme"))
	t.Logf("after the restart at 5x the commit: %v; received %.0f pps", again, rx)
	if again["cap_drop"] == 0 || rx > 1050 {
		t.Errorf("after the restart: %v, %.0f pps received; want the cap enforced", again, rx)
	}

	// 5. Remove: the plumbing is as before the tenant.
	d2.must("quota", "remove", "acme")
	if got := l.snapshot(); got != pristine {
		t.Errorf("plumbing after quota remove differs from before the tenant:\n%s\nwas\n%s", got, pristine)
	}
	if st := quotaStatus(t, d2); len(st.Quotas) != 0 {
		t.Errorf("quotas after remove: %+v", st.Quotas)
	}
}

// TestQuotaCleanRestart: a daemon stopped cleanly (SIGTERM) and started
// again within the same interval keeps the interval's count, and adds what
// the port's counters show passed meanwhile, instead of counting the
// interval at the commit as after a crash (TestQuotaLab). A steady flow at
// half the commit: the interval of the restart is billed what the external
// host received in it (never less; more by at most what the port took in
// while no forwarder ran, which the tc splice dropped).
func TestQuotaCleanRestart(t *testing.T) {
	const interval = 10 * time.Second
	l := newLab(t, "bridge")
	ext, vm1ns, vm1 := l.get("EXT_NS"), l.get("VM1_NS"), l.get("VM1_PORT")
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	if left := time.Until(time.Now().Truncate(time.Hour).Add(time.Hour)); left < 60*time.Second {
		t.Logf("waiting %v for the next period", left.Round(time.Second))
		time.Sleep(left + time.Second)
	}
	d.must("quota", "add", "acme", "--ports", vm1, "--commit", "8mbit", "--interval", interval.String(), "--period", "1h", "--burst-ceiling", "8mbit")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
	// 500 pps of 1000-byte frames: 4 Mbit/s, half the commit.
	l.bg(vm1ns, "flood", "--dst", l.get("EXT_IP"), "--size", "1000", "--pps", "500", "--duration", "45s")
	const flow = 4_000_000

	// What the external host receives in the interval of the restart:
	// its rx_bytes read just after the interval starts and just after it
	// ends, scaled to the interval.
	time.Sleep(time.Second)
	iv := time.Now().Truncate(interval).Add(interval)
	time.Sleep(time.Until(iv))
	rx0, t0 := l.counterAt(ext, "eth0", "rx_bytes")
	// Stop 2 s into the interval, and start again at once.
	time.Sleep(time.Until(iv.Add(2 * time.Second)))
	d.stop()
	stopped := time.Now()
	d2 := l.startDaemonIn(dir)
	started := time.Now()
	t.Logf("stopped %v into the interval, answering again %v later", stopped.Sub(iv).Round(time.Millisecond), started.Sub(stopped).Round(time.Millisecond))
	if !started.Before(iv.Add(interval)) {
		t.Fatalf("the restart took until the next interval (%v); it must be in the same one to test the clean stop", started.Sub(stopped))
	}
	if !strings.Contains(d2.logBuf.String(), "clean stop") {
		t.Errorf("the restart did not restore from a clean stop:\n%s", d2.logBuf.String())
	}
	time.Sleep(time.Until(iv.Add(interval)))
	rx1, t1 := l.counterAt(ext, "eth0", "rx_bytes")
	received := float64(rx1-rx0) * 8 / t1.Sub(t0).Seconds()
	// Read once the interval after the restart's has closed too.
	time.Sleep(time.Until(iv.Add(2*interval + time.Second)))
	r := quotaReport(t, d2, "acme")
	bps := map[int64]uint64{}
	for _, s := range r.Samples {
		bps[s.Start.UnixNano()] = s.BPS
	}
	cut, next := float64(bps[iv.UnixNano()]), float64(bps[iv.Add(interval).UnixNano()])
	t.Logf("interval of the restart: billed %.0f bit/s, the external host received %.0f; the next interval: billed %.0f (the flow: %d; the commit: %d)",
		cut, received, next, flow, quotaCommit)
	if cut < received*0.99 || cut > received*1.03 {
		t.Errorf("the interval of the clean restart is billed %.0f bit/s; want what the host received, %.0f, at most 1%% less (timing) or 3%% more (the restart's blackout); the crash rule would bill the commit, %d",
			cut, received, quotaCommit)
	}
	if !within(next, flow, 0.05) {
		t.Errorf("the interval after the restart is billed %.0f bit/s, want the flow's %d within 5%%", next, flow)
	}
}
