// Package metrics serves shaperd's Prometheus metrics at /metrics.
//
// The collector reads the forwarders' counters when Prometheus scrapes, not
// when frames pass: the hot path keeps its atomics and pays nothing for
// metrics. Every series is built at scrape time from one snapshot of the
// daemon (Source), so a scrape is consistent with itself and, once traffic
// stops, equal to what `shaperd status --json` prints.
//
// Names start with shaperd_; counters end in _total; units are in the name
// (bytes, seconds, packets_per_second, ratio). docs/metrics.md lists them all.
package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/internal/version"
	"github.com/shaperd/shaperd/quota"
)

// DefaultAddr is where the daemon serves metrics unless told otherwise:
// loopback only, since port names say which VMs are in trouble.
const DefaultAddr = "127.0.0.1:9750"

// Source is what the collector reads at scrape time: every quarantine's
// status and bucket fills at now, sorted by port. *daemon.Manager satisfies
// it; tests use a fake. It must be safe for concurrent use.
type Source interface {
	MetricsSnapshot(now time.Time) []daemon.PortMetrics
	// Events returns the counters of the watch loop, ladders and alerts.
	Events() daemon.Events
	// QuotaMetrics returns every quota tenant's figures at now, sorted by
	// tenant.
	QuotaMetrics(now time.Time) []daemon.QuotaMetrics
}

// Direction label values, as in the status JSON.
const (
	dirFromVM = "from_vm"
	dirToVM   = "to_vm"
)

var (
	portDirClass = []string{"port", "direction", "class"}

	descFrames = prometheus.NewDesc("shaperd_frames_total",
		"Frames seen by a quarantined port's forwarder, by direction, class and verdict (passed or dropped).",
		append(portDirClass, "verdict"), nil)
	descBytes = prometheus.NewDesc("shaperd_bytes_total",
		"Bytes of the frames in shaperd_frames_total (Ethernet header included, no FCS).",
		append(portDirClass, "verdict"), nil)
	descDrops = prometheus.NewDesc("shaperd_drops_total",
		"Frames dropped, by reason; summed over reasons it equals shaperd_frames_total{verdict=\"dropped\"}.",
		append(portDirClass, "reason"), nil)
	descReadErrors = prometheus.NewDesc("shaperd_read_errors_total",
		"Failed reads from the device a direction reads from.",
		[]string{"port", "direction"}, nil)
	descPanics = prometheus.NewDesc("shaperd_forwarder_panics_total",
		"Panics contained in a port's forwarding: the port's forwarder stopped, and the port takes its fail path (see status --json's warnings).",
		[]string{"port", "direction"}, nil)
	descTapDrops = prometheus.NewDesc("shaperd_tap_drops_total",
		"Frames the kernel dropped at a splice's tap queue before the forwarder read them (the taps' tx_dropped, since the taps were made): under a flood faster than the forwarder reads, most of the flood. In no class.",
		[]string{"port", "direction"}, nil)
	descKernelDrops = prometheus.NewDesc("shaperd_kernel_drops_total",
		"Frames the splice's kernel half (its BPF program) dropped before any tap, by reason: backstop (the direction's aggregate ceiling), class_backstop (a class's own ceiling), fail_closed (daemon gone or stale, with fail closed). In no class: the forwarder never saw them.",
		[]string{"port", "direction", "reason"}, nil)
	descKernelPassed = prometheus.NewDesc("shaperd_kernel_passed_total",
		"Frames the splice's kernel half let through, by where: main (the VM tap, or the net tap's queue to the VM), priority (bypass and control candidates), fail_open (the direct way, daemon gone or stale).",
		[]string{"port", "direction", "to"}, nil)
	descBackstop = prometheus.NewDesc("shaperd_backstop_packets_per_second",
		"A kernel backstop ceiling in force, by budget (aggregate or a class); absent when there is none.",
		[]string{"port", "direction", "budget"}, nil)
	descFill = prometheus.NewDesc("shaperd_bucket_fill_ratio",
		"How full a budget's token bucket is, from 0 (empty: frames are refused) to 1 (full: a whole burst would pass). Only dimensions with a rate.",
		[]string{"port", "direction", "budget", "dimension"}, nil)
	descLimitPackets = prometheus.NewDesc("shaperd_limit_packets_per_second",
		"A budget's configured packet rate; absent when the budget has no packet limit.",
		[]string{"port", "direction", "budget"}, nil)
	descLimitBytes = prometheus.NewDesc("shaperd_limit_bytes_per_second",
		"A budget's configured byte rate (bytes, not bits); absent when the budget has no byte limit.",
		[]string{"port", "direction", "budget"}, nil)
	descInfo = prometheus.NewDesc("shaperd_quarantine_info",
		"1 for every quarantine, with its splice backend, state (active, pending) and fail mode as labels.",
		[]string{"port", "backend", "state", "fail"}, nil)
	descSince = prometheus.NewDesc("shaperd_quarantine_start_time_seconds",
		"When the quarantine began, in seconds since the Unix epoch.",
		[]string{"port"}, nil)
	descCount = prometheus.NewDesc("shaperd_quarantines",
		"Quarantines by state.",
		[]string{"state"}, nil)
	descStage = prometheus.NewDesc("shaperd_quarantine_stage_info",
		"1 for every quarantine, with its ladder stage (manual, stage1, stage2, stage3, probation), profile and origin (manual, watch, alert) as labels.",
		[]string{"port", "stage", "profile", "origin"}, nil)
	descNextTransition = prometheus.NewDesc("shaperd_quarantine_next_transition_time_seconds",
		"When the quarantine's ladder next decides, in seconds since the Unix epoch; absent when nothing is scheduled.",
		[]string{"port"}, nil)
	descTransitions = prometheus.NewDesc("shaperd_ladder_transitions_total",
		"Ladder transitions by stage left (\"\" for a start) and stage entered (released for the end).",
		[]string{"from", "to"}, nil)
	descFlags = prometheus.NewDesc("shaperd_flags_total",
		"Watched ports flagged above the quarantine profile's threshold (dry runs included).",
		nil, nil)
	descAuto = prometheus.NewDesc("shaperd_auto_quarantines_total",
		"Automatic quarantines of flagged ports by result: started, refused (--max-auto) or failed.",
		[]string{"result"}, nil)
	descHooks = prometheus.NewDesc("shaperd_on_block_hook_runs_total",
		"Runs of profiles' on-block hooks by result: ok or failed.",
		[]string{"result"}, nil)
	descAlerts = prometheus.NewDesc("shaperd_alerts_total",
		"Alertmanager alerts received, by what they did (quarantined, probation, already_quarantined, unknown_port, ...).",
		[]string{"outcome"}, nil)
	descHealth = prometheus.NewDesc("shaperd_health_events_total",
		"Events that say the daemon itself is not well, by name: link_watch_lost, guard_off, limits_unrecovered, watchdog_missed, forwarder_panic, state_not_saved, splice_tap_gone. Every name is there from the start, at 0.",
		[]string{"event"}, nil)
	descBaselineDrops = prometheus.NewDesc("shaperd_baseline_drops_total",
		"Frames the kernel baseline (nftables) dropped on a port, by reason; a quarantined port's splice counts under the port. Every reason is present from the start at 0.",
		[]string{"port", "reason"}, nil)
	descGuardDrops = prometheus.NewDesc("shaperd_guard_drops_total",
		"Frames a kernel port guard (shaperd guard: nftables on a Linux bridge, OpenFlow flows on Open vSwitch) dropped from the VM, by reason; a quarantined port's splice counts under the port. Every reason is present from the start at 0.",
		[]string{"port", "reason"}, nil)
	descIsolateDrops = prometheus.NewDesc("shaperd_isolate_drops_total",
		"Frames a one-way isolation (shaperd isolate) dropped to or from the VM, by reason; a quarantined port's splice counts under the port. Every reason is present from the start at 0.",
		[]string{"port", "reason"}, nil)
	descWatched = prometheus.NewDesc("shaperd_watched_ports",
		"Ports whose counters the watch loop read at its latest step.",
		nil, nil)

	descQuotaCommit = prometheus.NewDesc("shaperd_quota_commit_bytes_per_second",
		"A quota tenant's committed rate, in bytes per second (commit_bps / 8).",
		[]string{"tenant"}, nil)
	descQuotaPercentile = prometheus.NewDesc("shaperd_quota_percentile_bytes_per_second",
		"A quota tenant's billed percentile of the period so far, the intervals not closed yet counting as zero, in bytes per second.",
		[]string{"tenant"}, nil)
	descQuotaProjected = prometheus.NewDesc("shaperd_quota_projected_bytes_per_second",
		"A quota tenant's projected bill: the period's rest repeating the samples so far under the burst policy, in bytes per second.",
		[]string{"tenant"}, nil)
	descQuotaBurstUsed = prometheus.NewDesc("shaperd_quota_burst_intervals_used",
		"Intervals of the period above the commit, the open one included once it is.",
		[]string{"tenant"}, nil)
	descQuotaBurstLeft = prometheus.NewDesc("shaperd_quota_burst_intervals_left",
		"Free intervals (the percentile's allowance) less those used; negative means the bill is above the commit.",
		[]string{"tenant"}, nil)
	descQuotaUsed = prometheus.NewDesc("shaperd_quota_interval_used_bytes",
		"Bytes the open interval has passed so far, bypass and control frames included, by billed lane (from_vm, to_vm, or sum).",
		[]string{"tenant", "lane"}, nil)
	descQuotaLimit = prometheus.NewDesc("shaperd_quota_interval_quota_bytes",
		"The open interval's byte quota: the commit's, or the burst ceiling's once the interval bursts (+Inf for a burst without a ceiling).",
		[]string{"tenant", "lane"}, nil)
	descQuotaBursting = prometheus.NewDesc("shaperd_quota_interval_burst",
		"1 while the open interval is a burst interval (its quota raised to the burst ceiling), else 0.",
		[]string{"tenant", "lane"}, nil)
	descQuotaPackets = prometheus.NewDesc("shaperd_quota_packets_total",
		"Frames the quota decided, by direction and verdict: passed, soft_drop (the probabilistic zone), cap_drop (the hard cap), bypass (ssh/rdp and ARP/ND: always passed, counted towards the bill).",
		[]string{"tenant", "direction", "verdict"}, nil)
	descQuotaBytes = prometheus.NewDesc("shaperd_quota_bytes_total",
		"Bytes of the frames in shaperd_quota_packets_total (Ethernet header included, no FCS).",
		[]string{"tenant", "direction", "verdict"}, nil)
	descQuotaPort = prometheus.NewDesc("shaperd_quota_port_info",
		"1 for every port of a quota tenant, with its state: spliced (by shaperd for the tenant), quarantined (the quarantine's forwarder applies the quota too) or waiting (not metered: missing or not spliceable yet).",
		[]string{"tenant", "port", "state"}, nil)
	descBuild = prometheus.NewDesc("shaperd_build_info",
		"1, with shaperd's version, commit and Go version as labels.",
		[]string{"version", "commit", "goversion"}, nil)
)

// Collector is a prometheus.Collector over a Source. It keeps no state
// between scrapes. Safe for concurrent use if the Source is.
type Collector struct {
	src    Source
	now    func() time.Time
	series seriesCache
}

// NewCollector returns a collector reading src; now is the clock used for
// bucket fills (time.Now when nil).
func NewCollector(src Source, now func() time.Time) *Collector {
	if now == nil {
		now = time.Now
	}
	return &Collector{src: src, now: now}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFrames, descBytes, descDrops, descReadErrors, descPanics, descTapDrops, descKernelDrops, descKernelPassed, descBackstop, descFill,
		descLimitPackets, descLimitBytes, descInfo, descSince, descCount, descBuild,
		descStage, descNextTransition, descTransitions, descFlags, descAuto, descHooks, descAlerts, descHealth, descWatched, descBaselineDrops, descGuardDrops, descIsolateDrops,
		descQuotaCommit, descQuotaPercentile, descQuotaProjected, descQuotaBurstUsed, descQuotaBurstLeft,
		descQuotaUsed, descQuotaLimit, descQuotaBursting, descQuotaPackets, descQuotaBytes, descQuotaPort} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, version.Version(), version.Commit(), version.Go())
	states := c.collectPorts(ch)
	for _, s := range sortedKeys(states) {
		ch <- prometheus.MustNewConstMetric(descCount, prometheus.GaugeValue, float64(states[s]), string(s))
	}
	ev := c.src.Events()
	for _, k := range sortedKeys(ev.Transitions) {
		from, to, _ := strings.Cut(k, ">")
		ch <- prometheus.MustNewConstMetric(descTransitions, prometheus.CounterValue, float64(ev.Transitions[k]), from, to)
	}
	ch <- prometheus.MustNewConstMetric(descFlags, prometheus.CounterValue, float64(ev.Flags))
	for _, x := range []struct {
		result string
		v      uint64
	}{{"started", ev.AutoStarted}, {"refused", ev.AutoRefused}, {"failed", ev.AutoFailed}} {
		ch <- prometheus.MustNewConstMetric(descAuto, prometheus.CounterValue, float64(x.v), x.result)
	}
	for _, r := range []string{"ok", "failed"} {
		ch <- prometheus.MustNewConstMetric(descHooks, prometheus.CounterValue, float64(ev.Hooks[r]), r)
	}
	for _, k := range sortedKeys(ev.Alerts) {
		ch <- prometheus.MustNewConstMetric(descAlerts, prometheus.CounterValue, float64(ev.Alerts[k]), k)
	}
	for _, e := range daemon.HealthEvents {
		ch <- prometheus.MustNewConstMetric(descHealth, prometheus.CounterValue, float64(ev.Health[e]), e)
	}
	ch <- prometheus.MustNewConstMetric(descWatched, prometheus.GaugeValue, float64(ev.WatchedPorts))
	for _, q := range c.src.QuotaMetrics(c.now()) {
		collectQuota(ch, &q)
	}
	if bs, ok := c.src.(BaselineSource); ok {
		// A failed read of the kernel's counters leaves the series out
		// (rather than reporting 0s that would look like resets).
		if list, err := bs.BaselineStatus(""); err == nil {
			for _, b := range list {
				for _, r := range sortedKeys(b.Drops) {
					ch <- prometheus.MustNewConstMetric(descBaselineDrops, prometheus.CounterValue, float64(b.Drops[r]), b.Port, r)
				}
			}
		}
	}
	if ps, ok := c.src.(PolicySource); ok {
		// As above: a failed read leaves the series out.
		if gs, isos, err := ps.PolicyStatus(""); err == nil {
			for _, g := range gs {
				for _, r := range sortedKeys(g.Drops) {
					ch <- prometheus.MustNewConstMetric(descGuardDrops, prometheus.CounterValue, float64(g.Drops[r]), g.Port, r)
				}
			}
			for _, i := range isos {
				for _, r := range sortedKeys(i.Drops) {
					ch <- prometheus.MustNewConstMetric(descIsolateDrops, prometheus.CounterValue, float64(i.Drops[r]), i.Port, r)
				}
			}
		}
	}
}

// PolicySource is a Source that has port guards and isolations:
// *daemon.Manager. The collector asks it at scrape time (a netlink read, or
// an ovs-ofctl dump-flows, of the counters).
type PolicySource interface {
	PolicyStatus(port string) ([]api.Guard, []api.Isolation, error)
}

// BaselineSource is a Source that has kernel baselines: *daemon.Manager.
// The collector asks it at scrape time (a netlink read of the counters).
type BaselineSource interface {
	BaselineStatus(port string) ([]api.Baseline, error)
}

// collectPorts sends the per-port series of every quarantine, with the
// series cache taken only for them (not over the baseline's and the port
// policies' reads of the kernel below), and returns the count of ports in
// each state.
func (c *Collector) collectPorts(ch chan<- prometheus.Metric) map[api.State]int {
	c.series.begin()
	defer c.series.end()
	// Known states always appear, so that dashboards and alerts see 0
	// rather than no data.
	states := map[api.State]int{api.StateActive: 0, api.StatePending: 0}
	for _, pm := range c.src.MetricsSnapshot(c.now()) {
		q := &pm.Status
		states[q.State]++
		ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, q.Port, q.Backend, string(q.State), string(q.Fail))
		ch <- prometheus.MustNewConstMetric(descStage, prometheus.GaugeValue, 1, q.Port, string(q.Stage), q.Profile, string(q.Origin))
		if q.NextTransition != nil {
			ch <- prometheus.MustNewConstMetric(descNextTransition, prometheus.GaugeValue, float64(q.NextTransition.UnixNano())/1e9, q.Port)
		}
		if !q.Since.IsZero() {
			ch <- prometheus.MustNewConstMetric(descSince, prometheus.GaugeValue, float64(q.Since.UnixNano())/1e9, q.Port)
		}
		c.series.collectDir(ch, q.Port, dirFromVM, &q.Directions.FromVM)
		c.series.collectDir(ch, q.Port, dirToVM, &q.Directions.ToVM)
		if pm.Running {
			c.series.collectFill(ch, q.Port, dirFromVM, &pm.FromVMFill)
			c.series.collectFill(ch, q.Port, dirToVM, &pm.ToVMFill)
		}
	}
	return states
}

func collectQuota(ch chan<- prometheus.Metric, q *daemon.QuotaMetrics) {
	tenant := q.Report.Tenant
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	gauge(descQuotaCommit, float64(q.Report.CommitBPS)/8, tenant)
	gauge(descQuotaPercentile, float64(q.Report.PercentileBPS)/8, tenant)
	gauge(descQuotaProjected, float64(q.Report.ProjectedBPS)/8, tenant)
	gauge(descQuotaBurstUsed, float64(q.Report.BurstIntervalsUsed), tenant)
	gauge(descQuotaBurstLeft, float64(q.Report.BurstIntervalsLeft), tenant)
	for _, l := range q.Lanes {
		gauge(descQuotaUsed, float64(l.UsedBytes), tenant, l.Name)
		limit := math.Inf(1)
		if l.QuotaBytes >= 0 {
			limit = float64(l.QuotaBytes)
		}
		gauge(descQuotaLimit, limit, tenant, l.Name)
		burst := 0.0
		if l.Burst {
			burst = 1
		}
		gauge(descQuotaBursting, burst, tenant, l.Name)
	}
	for _, d := range []struct {
		name string
		c    *quota.Counters
	}{{dirFromVM, &q.FromVM}, {dirToVM, &q.ToVM}} {
		for _, v := range []struct {
			verdict      string
			pkts, nbytes uint64
		}{
			{"passed", d.c.PassedPackets, d.c.PassedBytes},
			{"soft_drop", d.c.SoftDropPackets, d.c.SoftDropBytes},
			{"cap_drop", d.c.CapDropPackets, d.c.CapDropBytes},
			{"bypass", d.c.BypassPackets, d.c.BypassBytes},
		} {
			ch <- prometheus.MustNewConstMetric(descQuotaPackets, prometheus.CounterValue, float64(v.pkts), tenant, d.name, v.verdict)
			ch <- prometheus.MustNewConstMetric(descQuotaBytes, prometheus.CounterValue, float64(v.nbytes), tenant, d.name, v.verdict)
		}
	}
	for _, p := range q.Ports {
		gauge(descQuotaPort, 1, tenant, p.Port, p.State)
	}
}

func (sc *seriesCache) collectDir(ch chan<- prometheus.Metric, port, dir string, d *api.Direction) {
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- sc.metric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	for _, class := range sortedKeys(d.Classes) {
		cs := d.Classes[class]
		counter(descFrames, cs.PassedPackets, port, dir, class, "passed")
		counter(descFrames, cs.DroppedPackets, port, dir, class, "dropped")
		counter(descBytes, cs.PassedBytes, port, dir, class, "passed")
		counter(descBytes, cs.DroppedBytes, port, dir, class, "dropped")
		for _, reason := range sortedKeys(cs.Drops) {
			counter(descDrops, cs.Drops[reason], port, dir, class, reason)
		}
	}
	counter(descReadErrors, d.ReadErrors, port, dir)
	counter(descPanics, d.Panics, port, dir)
	counter(descTapDrops, d.TapDrops, port, dir)
	for _, reason := range sortedKeys(d.KernelDrops) {
		counter(descKernelDrops, d.KernelDrops[reason], port, dir, reason)
	}
	for _, to := range sortedKeys(d.KernelPassed) {
		counter(descKernelPassed, d.KernelPassed[to], port, dir, to)
	}
	if b := d.Backstop; b != nil {
		if b.PPS != nil {
			ch <- sc.metric(descBackstop, prometheus.GaugeValue, *b.PPS, port, dir, "aggregate")
		}
		for _, c := range sortedKeys(b.Classes) {
			ch <- sc.metric(descBackstop, prometheus.GaugeValue, b.Classes[c], port, dir, c)
		}
	}
	for _, b := range []struct {
		name string
		l    api.Limits
	}{{"aggregate", d.Limits}, {classify.Bypass.String(), d.BypassLimits}, {classify.Control.String(), d.ControlLimits}} {
		if b.l.PPS != nil {
			ch <- sc.metric(descLimitPackets, prometheus.GaugeValue, *b.l.PPS, port, dir, b.name)
		}
		if b.l.BitsPerSecond != nil {
			ch <- sc.metric(descLimitBytes, prometheus.GaugeValue, float64(*b.l.BitsPerSecond)/8, port, dir, b.name)
		}
	}
}

func (sc *seriesCache) collectFill(ch chan<- prometheus.Metric, port, dir string, f *forward.DirFill) {
	one := func(budget string, b forward.BudgetFill) {
		if b.PacketsLimited {
			ch <- sc.metric(descFill, prometheus.GaugeValue, b.Packets, port, dir, budget, "packets")
		}
		if b.BytesLimited {
			ch <- sc.metric(descFill, prometheus.GaugeValue, b.Bytes, port, dir, budget, "bytes")
		}
	}
	one("aggregate", f.Aggregate)
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		one(c.String(), f.Classes[c])
	}
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}

// NewRegistry returns a registry with shaperd's collector over src and the
// Go runtime and process collectors.
func NewRegistry(src Source) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(src, nil),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler returns the /metrics handler for reg. A collector's error is
// logged and the rest of the scrape still served.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	return promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            promLogger{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
}

// promLogger adapts slog to promhttp.Logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// Server serves /metrics over TCP.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port) and returns a Server ready to Serve, so a
// taken or invalid address fails at start rather than later.
func Listen(addr string, src Source, log *slog.Logger) (*Server, error) {
	return ListenOptions(addr, src, log, Options{})
}

// Options add to the metrics listener.
type Options struct {
	// Handlers are served beside /metrics, by pattern ("POST /path").
	Handlers map[string]http.Handler
	// CertFile and KeyFile serve everything over TLS.
	CertFile, KeyFile string
	// NoMetrics serves the Handlers alone: a listener of their own.
	NoMetrics bool
}

// ListenOptions is Listen with extra handlers and optional TLS.
func ListenOptions(addr string, src Source, log *slog.Logger, opt Options) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	flag := "metrics: --metrics-addr"
	if opt.NoMetrics {
		flag = "alerts: --alerts-addr"
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("%s %q: want host:port, e.g. %s, or \"\" to disable: %w", flag, addr, DefaultAddr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	mux := http.NewServeMux()
	if !opt.NoMetrics {
		mux.Handle("GET /metrics", Handler(NewRegistry(src), log))
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "shaperd: metrics are at /metrics")
		})
	}
	for pattern, h := range opt.Handlers {
		mux.Handle(pattern, h)
	}
	if opt.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(opt.CertFile, opt.KeyFile)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("metrics: TLS certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	s := &Server{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}}
	return s, nil
}

// Addr returns the address the server listens on (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve answers requests until Shutdown; it then returns nil.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops listening and waits for scrapes in flight until ctx ends.
// Safe to call more than once, and before Serve.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.ln.Close() // Shutdown closes it only if Serve ran
	return err
}
