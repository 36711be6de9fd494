package metrics

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/internal/version"
	"github.com/shaperd/shaperd/quota"
)

// fakeSource returns whatever snapshot it holds; safe for concurrent use.
type fakeSource struct {
	mu     sync.Mutex
	snap   []daemon.PortMetrics
	quotas []daemon.QuotaMetrics
	calls  int
	at     time.Time
}

func (f *fakeSource) QuotaMetrics(now time.Time) []daemon.QuotaMetrics {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.quotas
}

// oneTenant is a tenant billed max over two ports, one spliced and one
// quarantined; from the VM its open interval burst without a ceiling.
func oneTenant() daemon.QuotaMetrics {
	return daemon.QuotaMetrics{
		Report: api.QuotaReport{Tenant: "acme", CommitBPS: 100_000_000, PercentileBPS: 80_000_000, ProjectedBPS: 95_000_000,
			BurstIntervalsUsed: 3, BurstIntervalsLeft: 440},
		Ports: []api.QuotaPort{{Port: "vm-1-00c9", State: "spliced"}, {Port: "vm-2-00c9", State: "quarantined"}},
		Lanes: []daemon.QuotaLane{
			{Name: "from_vm", UsedBytes: 4_000_000_000, QuotaBytes: -1, Burst: true},
			{Name: "to_vm", UsedBytes: 1_000_000, QuotaBytes: 3_750_000_000},
		},
		FromVM: quota.Counters{PassedPackets: 10, PassedBytes: 15000, SoftDropPackets: 2, SoftDropBytes: 3000,
			CapDropPackets: 5, CapDropBytes: 7500, BypassPackets: 1, BypassBytes: 66},
	}
}

func (f *fakeSource) MetricsSnapshot(now time.Time) []daemon.PortMetrics {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.at = now
	return f.snap
}

func (f *fakeSource) Events() daemon.Events {
	return daemon.Events{Transitions: map[string]uint64{"stage1>stage2": 2}, Flags: 3, Alerts: map[string]uint64{"quarantined": 1}}
}

func (f *fakeSource) set(s []daemon.PortMetrics) {
	f.mu.Lock()
	f.snap = s
	f.mu.Unlock()
}

func ptr[T any](v T) *T { return &v }

// onePort is a quarantine of vm-1-00c9 under a UDP flood: udp passed 100
// and dropped 900 frames to the aggregate from the VM; to the VM one bypass
// frame passed. Only two classes and two reasons, to keep expectations short.
func onePort(udpPassed uint64) daemon.PortMetrics {
	q := api.Quarantine{
		Port: "vm-1-00c9", State: "active", Backend: "tc", Fail: "closed",
		Since: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	q.Directions.FromVM = api.Direction{
		Limits:       api.Limits{PPS: ptr(5000.0), BurstPackets: ptr(50)},
		BypassLimits: api.Limits{PPS: ptr(2000.0), BitsPerSecond: ptr(uint64(100_000_000))},
		Classes: map[string]api.ClassStats{
			"udp":    {PassedPackets: udpPassed, PassedBytes: udpPassed * 250, DroppedPackets: 900, DroppedBytes: 900 * 250, Drops: map[string]uint64{"aggregate_budget": 900, "class_budget": 0}},
			"bypass": {Drops: map[string]uint64{"aggregate_budget": 0, "class_budget": 0}},
		},
		ReadErrors: 3,
	}
	q.Directions.ToVM = api.Direction{
		Classes: map[string]api.ClassStats{
			"udp":    {Drops: map[string]uint64{"aggregate_budget": 0, "class_budget": 0}},
			"bypass": {PassedPackets: 1, PassedBytes: 66, Drops: map[string]uint64{"aggregate_budget": 0, "class_budget": 0}},
		},
	}
	pm := daemon.PortMetrics{Status: q, Running: true}
	pm.FromVMFill.Aggregate = forward.BudgetFill{Packets: 0.25, Bytes: 1, PacketsLimited: true}
	pm.FromVMFill.Classes[classify.Bypass] = forward.BudgetFill{Packets: 1, Bytes: 0.5, PacketsLimited: true, BytesLimited: true}
	pm.ToVMFill.Aggregate = forward.BudgetFill{Packets: 1, Bytes: 1} // no limits: no series
	return pm
}

func TestCollector(t *testing.T) {
	pending := daemon.PortMetrics{Status: api.Quarantine{Port: "vm-2-00c9", State: "pending", Fail: "closed"}}
	pending.FromVMFill.Aggregate = forward.BudgetFill{Packets: 0.5, PacketsLimited: true} // not running: ignored
	src := &fakeSource{snap: []daemon.PortMetrics{onePort(100), pending}}
	t0 := time.Unix(1e9, 0)
	c := NewCollector(src, func() time.Time { return t0 })

	const want = `
# HELP shaperd_frames_total Frames seen by a quarantined port's forwarder, by direction, class and verdict (passed or dropped).
# TYPE shaperd_frames_total counter
shaperd_frames_total{class="bypass",direction="from_vm",port="vm-1-00c9",verdict="dropped"} 0
shaperd_frames_total{class="bypass",direction="from_vm",port="vm-1-00c9",verdict="passed"} 0
shaperd_frames_total{class="udp",direction="from_vm",port="vm-1-00c9",verdict="dropped"} 900
shaperd_frames_total{class="udp",direction="from_vm",port="vm-1-00c9",verdict="passed"} 100
shaperd_frames_total{class="bypass",direction="to_vm",port="vm-1-00c9",verdict="dropped"} 0
shaperd_frames_total{class="bypass",direction="to_vm",port="vm-1-00c9",verdict="passed"} 1
shaperd_frames_total{class="udp",direction="to_vm",port="vm-1-00c9",verdict="dropped"} 0
shaperd_frames_total{class="udp",direction="to_vm",port="vm-1-00c9",verdict="passed"} 0
# HELP shaperd_bytes_total Bytes of the frames in shaperd_frames_total (Ethernet header included, no FCS).
# TYPE shaperd_bytes_total counter
shaperd_bytes_total{class="bypass",direction="from_vm",port="vm-1-00c9",verdict="dropped"} 0
shaperd_bytes_total{class="bypass",direction="from_vm",port="vm-1-00c9",verdict="passed"} 0
shaperd_bytes_total{class="udp",direction="from_vm",port="vm-1-00c9",verdict="dropped"} 225000
shaperd_bytes_total{class="udp",direction="from_vm",port="vm-1-00c9",verdict="passed"} 25000
shaperd_bytes_total{class="bypass",direction="to_vm",port="vm-1-00c9",verdict="dropped"} 0
shaperd_bytes_total{class="bypass",direction="to_vm",port="vm-1-00c9",verdict="passed"} 66
shaperd_bytes_total{class="udp",direction="to_vm",port="vm-1-00c9",verdict="dropped"} 0
shaperd_bytes_total{class="udp",direction="to_vm",port="vm-1-00c9",verdict="passed"} 0
# HELP shaperd_drops_total Frames dropped, by reason; summed over reasons it equals shaperd_frames_total{verdict="dropped"}.
# TYPE shaperd_drops_total counter
shaperd_drops_total{class="bypass",direction="from_vm",port="vm-1-00c9",reason="aggregate_budget"} 0
shaperd_drops_total{class="bypass",direction="from_vm",port="vm-1-00c9",reason="class_budget"} 0
shaperd_drops_total{class="udp",direction="from_vm",port="vm-1-00c9",reason="aggregate_budget"} 900
shaperd_drops_total{class="udp",direction="from_vm",port="vm-1-00c9",reason="class_budget"} 0
shaperd_drops_total{class="bypass",direction="to_vm",port="vm-1-00c9",reason="aggregate_budget"} 0
shaperd_drops_total{class="bypass",direction="to_vm",port="vm-1-00c9",reason="class_budget"} 0
shaperd_drops_total{class="udp",direction="to_vm",port="vm-1-00c9",reason="aggregate_budget"} 0
shaperd_drops_total{class="udp",direction="to_vm",port="vm-1-00c9",reason="class_budget"} 0
# HELP shaperd_read_errors_total Failed reads from the device a direction reads from.
# TYPE shaperd_read_errors_total counter
shaperd_read_errors_total{direction="from_vm",port="vm-1-00c9"} 3
shaperd_read_errors_total{direction="to_vm",port="vm-1-00c9"} 0
shaperd_read_errors_total{direction="from_vm",port="vm-2-00c9"} 0
shaperd_read_errors_total{direction="to_vm",port="vm-2-00c9"} 0
# HELP shaperd_bucket_fill_ratio How full a budget's token bucket is, from 0 (empty: frames are refused) to 1 (full: a whole burst would pass). Only dimensions with a rate.
# TYPE shaperd_bucket_fill_ratio gauge
shaperd_bucket_fill_ratio{budget="aggregate",dimension="packets",direction="from_vm",port="vm-1-00c9"} 0.25
shaperd_bucket_fill_ratio{budget="bypass",dimension="bytes",direction="from_vm",port="vm-1-00c9"} 0.5
shaperd_bucket_fill_ratio{budget="bypass",dimension="packets",direction="from_vm",port="vm-1-00c9"} 1
# HELP shaperd_limit_packets_per_second A budget's configured packet rate; absent when the budget has no packet limit.
# TYPE shaperd_limit_packets_per_second gauge
shaperd_limit_packets_per_second{budget="aggregate",direction="from_vm",port="vm-1-00c9"} 5000
shaperd_limit_packets_per_second{budget="bypass",direction="from_vm",port="vm-1-00c9"} 2000
# HELP shaperd_limit_bytes_per_second A budget's configured byte rate (bytes, not bits); absent when the budget has no byte limit.
# TYPE shaperd_limit_bytes_per_second gauge
shaperd_limit_bytes_per_second{budget="bypass",direction="from_vm",port="vm-1-00c9"} 1.25e+07
# HELP shaperd_quarantine_info 1 for every quarantine, with its splice backend, state (active, pending) and fail mode as labels.
# TYPE shaperd_quarantine_info gauge
shaperd_quarantine_info{backend="tc",fail="closed",port="vm-1-00c9",state="active"} 1
shaperd_quarantine_info{backend="",fail="closed",port="vm-2-00c9",state="pending"} 1
# HELP shaperd_quarantine_start_time_seconds When the quarantine began, in seconds since the Unix epoch.
# TYPE shaperd_quarantine_start_time_seconds gauge
shaperd_quarantine_start_time_seconds{port="vm-1-00c9"} 1.735787045e+09
# HELP shaperd_quarantines Quarantines by state.
# TYPE shaperd_quarantines gauge
shaperd_quarantines{state="active"} 1
shaperd_quarantines{state="pending"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"shaperd_frames_total", "shaperd_bytes_total", "shaperd_drops_total", "shaperd_read_errors_total",
		"shaperd_bucket_fill_ratio", "shaperd_limit_packets_per_second", "shaperd_limit_bytes_per_second",
		"shaperd_quarantine_info", "shaperd_quarantine_start_time_seconds", "shaperd_quarantines"); err != nil {
		t.Error(err)
	}
	if !src.at.Equal(t0) {
		t.Errorf("source asked at %v, want the collector's clock %v", src.at, t0)
	}

	// Counters are read at scrape time: a new snapshot shows at once.
	src.set([]daemon.PortMetrics{onePort(150)})
	if got := value(t, c, "shaperd_frames_total", map[string]string{"port": "vm-1-00c9", "direction": "from_vm", "class": "udp", "verdict": "passed"}); got != 150 {
		t.Errorf("after the counter moved: %v, want 150", got)
	}
}

// value gathers c and returns the one series of name with exactly labels.
func value(t *testing.T, c prometheus.Collector, name string, labels map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func TestCollectorQuota(t *testing.T) {
	src := &fakeSource{quotas: []daemon.QuotaMetrics{oneTenant()}}
	c := NewCollector(src, nil)
	const want = `
# HELP shaperd_quota_commit_bytes_per_second A quota tenant's committed rate, in bytes per second (commit_bps / 8).
# TYPE shaperd_quota_commit_bytes_per_second gauge
shaperd_quota_commit_bytes_per_second{tenant="acme"} 1.25e+07
# HELP shaperd_quota_percentile_bytes_per_second A quota tenant's billed percentile of the period so far, the intervals not closed yet counting as zero, in bytes per second.
# TYPE shaperd_quota_percentile_bytes_per_second gauge
shaperd_quota_percentile_bytes_per_second{tenant="acme"} 1e+07
# HELP shaperd_quota_projected_bytes_per_second A quota tenant's projected bill: the period's rest repeating the samples so far under the burst policy, in bytes per second.
# TYPE shaperd_quota_projected_bytes_per_second gauge
shaperd_quota_projected_bytes_per_second{tenant="acme"} 1.1875e+07
# HELP shaperd_quota_burst_intervals_used Intervals of the period above the commit, the open one included once it is.
# TYPE shaperd_quota_burst_intervals_used gauge
shaperd_quota_burst_intervals_used{tenant="acme"} 3
# HELP shaperd_quota_burst_intervals_left Free intervals (the percentile's allowance) less those used; negative means the bill is above the commit.
# TYPE shaperd_quota_burst_intervals_left gauge
shaperd_quota_burst_intervals_left{tenant="acme"} 440
# HELP shaperd_quota_interval_used_bytes Bytes the open interval has passed so far, bypass and control frames included, by billed lane (from_vm, to_vm, or sum).
# TYPE shaperd_quota_interval_used_bytes gauge
shaperd_quota_interval_used_bytes{lane="from_vm",tenant="acme"} 4e+09
shaperd_quota_interval_used_bytes{lane="to_vm",tenant="acme"} 1e+06
# HELP shaperd_quota_interval_quota_bytes The open interval's byte quota: the commit's, or the burst ceiling's once the interval bursts (+Inf for a burst without a ceiling).
# TYPE shaperd_quota_interval_quota_bytes gauge
shaperd_quota_interval_quota_bytes{lane="from_vm",tenant="acme"} +Inf
shaperd_quota_interval_quota_bytes{lane="to_vm",tenant="acme"} 3.75e+09
# HELP shaperd_quota_interval_burst 1 while the open interval is a burst interval (its quota raised to the burst ceiling), else 0.
# TYPE shaperd_quota_interval_burst gauge
shaperd_quota_interval_burst{lane="from_vm",tenant="acme"} 1
shaperd_quota_interval_burst{lane="to_vm",tenant="acme"} 0
# HELP shaperd_quota_packets_total Frames the quota decided, by direction and verdict: passed, soft_drop (the probabilistic zone), cap_drop (the hard cap), bypass (ssh/rdp and ARP/ND: always passed, counted towards the bill).
# TYPE shaperd_quota_packets_total counter
shaperd_quota_packets_total{direction="from_vm",tenant="acme",verdict="bypass"} 1
shaperd_quota_packets_total{direction="from_vm",tenant="acme",verdict="cap_drop"} 5
shaperd_quota_packets_total{direction="from_vm",tenant="acme",verdict="passed"} 10
shaperd_quota_packets_total{direction="from_vm",tenant="acme",verdict="soft_drop"} 2
shaperd_quota_packets_total{direction="to_vm",tenant="acme",verdict="bypass"} 0
shaperd_quota_packets_total{direction="to_vm",tenant="acme",verdict="cap_drop"} 0
shaperd_quota_packets_total{direction="to_vm",tenant="acme",verdict="passed"} 0
shaperd_quota_packets_total{direction="to_vm",tenant="acme",verdict="soft_drop"} 0
# HELP shaperd_quota_bytes_total Bytes of the frames in shaperd_quota_packets_total (Ethernet header included, no FCS).
# TYPE shaperd_quota_bytes_total counter
shaperd_quota_bytes_total{direction="from_vm",tenant="acme",verdict="bypass"} 66
shaperd_quota_bytes_total{direction="from_vm",tenant="acme",verdict="cap_drop"} 7500
shaperd_quota_bytes_total{direction="from_vm",tenant="acme",verdict="passed"} 15000
shaperd_quota_bytes_total{direction="from_vm",tenant="acme",verdict="soft_drop"} 3000
shaperd_quota_bytes_total{direction="to_vm",tenant="acme",verdict="bypass"} 0
shaperd_quota_bytes_total{direction="to_vm",tenant="acme",verdict="cap_drop"} 0
shaperd_quota_bytes_total{direction="to_vm",tenant="acme",verdict="passed"} 0
shaperd_quota_bytes_total{direction="to_vm",tenant="acme",verdict="soft_drop"} 0
# HELP shaperd_quota_port_info 1 for every port of a quota tenant, with its state: spliced (by shaperd for the tenant), quarantined (the quarantine's forwarder applies the quota too) or waiting (not metered: missing or not spliceable yet).
# TYPE shaperd_quota_port_info gauge
shaperd_quota_port_info{port="vm-1-00c9",state="spliced",tenant="acme"} 1
shaperd_quota_port_info{port="vm-2-00c9",state="quarantined",tenant="acme"} 1
`
	names := []string{"shaperd_quota_commit_bytes_per_second", "shaperd_quota_percentile_bytes_per_second", "shaperd_quota_projected_bytes_per_second",
		"shaperd_quota_burst_intervals_used", "shaperd_quota_burst_intervals_left", "shaperd_quota_interval_used_bytes",
		"shaperd_quota_interval_quota_bytes", "shaperd_quota_interval_burst", "shaperd_quota_packets_total", "shaperd_quota_bytes_total",
		"shaperd_quota_port_info"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// No tenants, no quota series.
	if n := testutil.CollectAndCount(NewCollector(&fakeSource{}, nil), names...); n != 0 {
		t.Errorf("%d quota series without tenants", n)
	}
}

func TestCollectorNoQuarantines(t *testing.T) {
	c := NewCollector(&fakeSource{}, nil)
	const want = `
# HELP shaperd_quarantines Quarantines by state.
# TYPE shaperd_quarantines gauge
shaperd_quarantines{state="active"} 0
shaperd_quarantines{state="pending"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "shaperd_quarantines", "shaperd_frames_total"); err != nil {
		t.Error(err)
	}
}

// TestCollectorLint holds the names to Prometheus conventions (units,
// _total on counters, no camel case) as promlint checks them.
func TestCollectorLint(t *testing.T) {
	src := &fakeSource{snap: []daemon.PortMetrics{onePort(1)}, quotas: []daemon.QuotaMetrics{oneTenant()}}
	problems, err := testutil.CollectAndLint(NewCollector(src, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestServer: the endpoint serves shaperd's metrics with the Go runtime's
// and the process's, and Shutdown stops it (twice is fine).
func TestServer(t *testing.T) {
	base := runtime.NumGoroutine()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	src := &fakeSource{snap: []daemon.PortMetrics{onePort(7)}}
	s, err := Listen("127.0.0.1:0", src, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	url := "http://" + s.Addr().String() + "/metrics"
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	for _, s := range []string{
		`shaperd_frames_total{class="udp",direction="from_vm",port="vm-1-00c9",verdict="passed"} 7`,
		"go_goroutines ", "go_memstats_heap_alloc_bytes ", "process_cpu_seconds_total ", `shaperd_build_info{commit="` + version.Commit() + `",goversion="` + runtime.Version() + `",version="` + version.Version() + `"} 1`,
		"promhttp_metric_handler_requests_total",
	} {
		if !strings.Contains(string(body), s) {
			t.Errorf("/metrics lacks %q", s)
		}
	}
	if r, err := hc.Get("http://" + s.Addr().String() + "/nope"); err == nil {
		r.Body.Close()
		if r.StatusCode != 404 {
			t.Errorf("GET /nope: %s, want 404", r.Status)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	s.Shutdown(ctx)
	if _, err := hc.Get(url); err == nil {
		t.Error("still serving after Shutdown")
	}
	// Nothing left running.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines after Shutdown, %d before Listen", runtime.NumGoroutine(), base)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestListenErrors(t *testing.T) {
	for _, addr := range []string{"9750", "localhost", "127.0.0.1:notaport"} {
		if s, err := Listen(addr, &fakeSource{}, nil); err == nil {
			s.Shutdown(context.Background())
			t.Errorf("Listen(%q): no error", addr)
		} else if !strings.Contains(err.Error(), "--metrics-addr") {
			t.Errorf("Listen(%q): %v: does not name the flag", addr, err)
		}
	}
	// A taken address fails at once.
	s, err := Listen("127.0.0.1:0", &fakeSource{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	if s2, err := Listen(s.Addr().String(), &fakeSource{}, nil); err == nil {
		s2.Shutdown(context.Background())
		t.Errorf("second Listen on %s: no error", s.Addr())
	}
}

// NoMetrics: a listener that serves its handlers alone (the webhook's own,
// alerts_addr): no /metrics there, and its errors name --alerts-addr.
func TestListenNoMetrics(t *testing.T) {
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	hook := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	s, err := ListenOptions("127.0.0.1:0", &fakeSource{}, nil, Options{NoMetrics: true, Handlers: map[string]http.Handler{"POST /hook": hook}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	go s.Serve()
	base := "http://" + s.Addr().String()
	for _, c := range []struct {
		method, path string
		want         int
	}{{"GET", "/metrics", 404}, {"GET", "/", 404}, {"POST", "/hook", 204}} {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		r, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != c.want {
			t.Errorf("%s %s: %s, want %d", c.method, c.path, r.Status, c.want)
		}
	}
	if _, err := ListenOptions("localhost", &fakeSource{}, nil, Options{NoMetrics: true}); err == nil || !strings.Contains(err.Error(), "--alerts-addr") {
		t.Errorf("a bad address: %v, want an error naming --alerts-addr", err)
	}
}

// The health events are exported from the start, each at 0, so that an
// alert rule on them sees 0 rather than no data.
func TestHealthEventsFromTheStart(t *testing.T) {
	c := NewCollector(&fakeSource{}, nil)
	for _, e := range daemon.HealthEvents {
		if v := value(t, c, "shaperd_health_events_total", map[string]string{"event": e}); v != 0 {
			t.Errorf("shaperd_health_events_total{event=%q} = %v, want 0", e, v)
		}
	}
}
