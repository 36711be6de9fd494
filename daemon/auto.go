package daemon

import (
	"context"
	"fmt"
	"maps"
	"math"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
)

// Origins of a quarantine.
const (
	OriginManual      = api.OriginManual      // the command line or the control API
	OriginWatch       = api.OriginWatch       // flagged by the watch loop
	OriginAlert       = api.OriginAlert       // an Alertmanager webhook
	OriginCorrelation = api.OriginCorrelation // a group's router port, limited toward the router
)

// StageManual is the stage of a quarantine with no ladder.
const StageManual = api.StageManual

// WatchConfig is the watch loop's configuration (the run flags --watch,
// --exclude, --watch-interval, --flag-after, --max-auto, --dry-run).
type WatchConfig struct {
	Watch, Exclude []string
	// Interval is how often counters are read (default 500 ms).
	Interval time.Duration
	// FlagAfter is how long a port stays above the threshold to be flagged
	// (default 1 s).
	FlagAfter time.Duration
	// MaxAuto caps concurrent automatic quarantines (default 10 via
	// DefaultWatchConfig; 0 refuses every one).
	MaxAuto int
	// DryRun flags and reports without splicing.
	DryRun bool
	// Groups name tenants' router ports, for profiles with correlate.
	Groups []Group
}

// Group is a tenant's VM ports (glob patterns) and its router port: when a
// member quarantined with a correlating profile floods and the flood also
// shows on the router port (frames to it above the profile's threshold),
// the traffic to the router port is limited too.
type Group struct {
	Name    string
	Router  string
	Members []string
}

// DefaultWatchConfig watches nothing, every 500 ms, flags after 1 s, and
// allows 10 automatic quarantines.
func DefaultWatchConfig() WatchConfig {
	return WatchConfig{Interval: 500 * time.Millisecond, FlagAfter: time.Second, MaxAuto: 10}
}

// Events counts what the watch loop, the ladder and the alerts did, for
// metrics.
type Events struct {
	Flags        uint64            // ports flagged (dry runs included)
	AutoStarted  uint64            // automatic quarantines started
	AutoRefused  uint64            // flags refused by --max-auto
	AutoFailed   uint64            // automatic quarantines that failed
	Transitions  map[string]uint64 // by "from>to"
	Hooks        map[string]uint64 // on-block hook runs by result: ok, failed
	Alerts       map[string]uint64 // alerts by outcome
	WatchedPorts int               // ports whose counters are read
	// Health counts the events that say the daemon itself is not well,
	// by name (HealthEvents): every name is there from the start, at 0.
	Health map[string]uint64
}

// Health events (Events.Health, shaperd_health_events_total).
const (
	// EventLinkWatchLost: the netlink subscription to link changes
	// ended (the daemon subscribes again and checks every port).
	EventLinkWatchLost = "link_watch_lost"
	// EventGuardOff: an automatic quarantine started without the
	// anti-spoofing guard, the VM's addresses being unknown.
	EventGuardOff = "guard_off"
	// EventLimitsUnrecovered: a restart adopted a splice whose limits
	// it could not recover (not in the state file, and the intent on the
	// plumbing unreadable); it polices with a conservative default.
	EventLimitsUnrecovered = "limits_unrecovered"
	// EventWatchdogMissed: the service manager's watchdog was not fed
	// (a forwarder that should run has stopped).
	EventWatchdogMissed = "watchdog_missed"
	// EventForwarderPanic: a port's forwarder stopped after a contained
	// panic.
	EventForwarderPanic = "forwarder_panic"
	// EventStateNotSaved: a write of the state file failed (a full or
	// read-only state directory); status says so until one succeeds, and
	// the daemon tries again every tick.
	EventStateNotSaved = "state_not_saved"
	// EventSpliceTapGone: a tap of a port's splice was deleted (by hand);
	// the splice was made again, or the quarantine went pending.
	EventSpliceTapGone = "splice_tap_gone"
)

// HealthEvents are the names of Events.Health.
var HealthEvents = []string{EventLinkWatchLost, EventGuardOff, EventLimitsUnrecovered, EventWatchdogMissed, EventForwarderPanic, EventStateNotSaved, EventSpliceTapGone}

// healthEvents counts the health events; safe for concurrent use, and
// never waits for the manager's lock.
type healthEvents struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (h *healthEvents) add(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]uint64{}
	}
	h.n[name]++
}

func (h *healthEvents) snapshot() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]uint64, len(HealthEvents))
	for _, e := range HealthEvents {
		out[e] = h.n[e]
	}
	return out
}

// NoteWatchdogMissed counts a watchdog feed the daemon withheld.
func (m *Manager) NoteWatchdogMissed() { m.health.add(EventWatchdogMissed) }

// Configure sets the profiles and the watch loop's configuration; the daemon
// calls it at start and on SIGHUP. Nothing changes if either is invalid.
// Running ladders keep the profile they started with.
func (m *Manager) Configure(profiles profile.Set, w WatchConfig) error {
	if err := CheckProfiles(profiles); err != nil {
		return err
	}
	if w.Interval <= 0 {
		w.Interval = DefaultWatchConfig().Interval
	}
	if w.FlagAfter <= 0 {
		w.FlagAfter = DefaultWatchConfig().FlagAfter
	}
	if w.MaxAuto < 0 {
		return usagef("--max-auto %d: want 0 or more", w.MaxAuto)
	}
	matcher, err := detect.NewMatcher(w.Watch, w.Exclude)
	if err != nil {
		return usagef("%v", err)
	}
	profiles = maps.Clone(profiles)
	if profiles == nil {
		profiles = profile.Set{}
	}
	q, ok := profiles[profile.Quarantine]
	if !ok {
		q = profile.Default()
		profiles[profile.Quarantine] = q
	}
	tc := detect.DefaultConfig()
	tc.Interval, tc.FlagAfter, tc.Threshold = w.Interval, w.FlagAfter, q.Threshold
	if err := tc.Validate(); err != nil {
		return usagef("%v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tracker == nil || m.tracker.Config() != tc {
		t, err := detect.NewTracker(tc)
		if err != nil {
			return usagef("%v", err)
		}
		m.tracker = t
	}
	m.profiles, m.watch, m.matcher = profiles, w, matcher
	return nil
}

// CheckProfiles checks that every profile's limits are valid quarantine
// flags.
func CheckProfiles(profiles profile.Set) error {
	for _, name := range slices.Sorted(maps.Keys(profiles)) {
		if _, err := intent.New().Apply(profiles[name].Limits, false); err != nil {
			return fmt.Errorf("profiles.%s.limits: %s", name, strings.TrimPrefix(err.Error(), ErrUsage.Error()+": "))
		}
	}
	return nil
}

// WatchInterval returns the configured --watch-interval.
func (m *Manager) WatchInterval() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.watch.Interval
}

// WatchPorts returns the ports among names whose counters the next Observe
// wants: the watched ones, and every quarantined one on a ladder.
func (m *Manager) WatchPorts(names []string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.matcher.Filter(nil, names)
	for p, q := range m.q {
		if q.lad != nil && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, g := range m.watch.Groups {
		if slices.Contains(names, g.Router) && !slices.Contains(out, g.Router) {
			out = append(out, g.Router)
		}
	}
	return out
}

// RunWatch reads the counters of the watched ports every --watch-interval
// and hands them to Observe, until ctx ends.
func (m *Manager) RunWatch(ctx context.Context) {
	interval := m.WatchInterval()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		names, err := m.host.Links()
		if err != nil {
			m.log.Warn("watch: cannot list links", "err", err)
			continue
		}
		ports := m.WatchPorts(names)
		counters, err := detect.ReadCounters(ports)
		if err != nil {
			m.log.Debug("watch: reading counters", "err", err)
		}
		m.Observe(m.host.Now(), counters)
		if iv := m.WatchInterval(); iv != interval {
			interval = iv
			t.Reset(iv)
		}
	}
}

// Observe is one step of the watch loop at now: it updates the rates of the
// ports in counters, quarantines the watched ports flagged above the
// quarantine profile's threshold (or only reports them with --dry-run),
// and moves every ladder.
//
// Its decisions are taken under Manager.mu and carried out after it is
// released (see autoActions): splices and releases run under each port's
// owner lock, as any change does.
func (m *Manager) Observe(now time.Time, counters map[string]detect.Sample) {
	var act autoActions
	defer func() { m.do(act, now) }()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.events.WatchedPorts = len(counters)
	flags := m.tracker.Observe(now, counters)
	if n := m.tracker.Untracked(); n > 0 {
		m.log.Warn("watch: too many ports; some are not tracked", "untracked", n)
	}
	var cand []detect.Flag
	for _, f := range flags {
		if !m.matcher.Match(f.Port) {
			continue
		}
		if _, ok := m.q[f.Port]; ok {
			continue
		}
		cand = append(cand, f)
	}
	th := m.profiles[profile.Quarantine].Threshold
	for _, f := range cand {
		m.events.Flags++
		pps, bps := th.Offered(f.Rates)
		m.log.Warn("event: port flagged above the quarantine profile's threshold", "event", "flagged", "port", f.Port,
			"since", f.Since, "pps", math.Round(pps), "bps", math.Round(bps), "dry_run", m.watch.DryRun)
	}
	if !m.watch.DryRun && len(cand) > 0 {
		admit, refuse := detect.SplitAtCap(cand, m.autoLocked(), m.watch.MaxAuto)
		for _, f := range admit {
			act.starts = append(act.starts, autoStart{port: f.Port, origin: OriginWatch,
				failed: func(err error) {
					m.events.AutoFailed++
					m.log.Error("event: automatic quarantine failed", "event", "auto_failed", "port", f.Port, "err", err)
				},
				started: func() {
					m.events.AutoStarted++
					m.log.Warn("event: automatic quarantine", "event", "auto_quarantine", "port", f.Port, "profile", profile.Quarantine)
				}})
		}
		for _, f := range refuse {
			m.events.AutoRefused++
			m.log.Error("event: automatic quarantine refused: --max-auto reached", "event", "max_auto", "port", f.Port,
				"max_auto", m.watch.MaxAuto)
		}
	}
	m.correlateLocked(now, &act)
	dirty := false
	for _, p := range m.portsLocked() {
		q := m.q[p]
		if q.lad == nil || q.state != StateActive {
			continue
		}
		m.measureAvgLocked(q, now, &act)
		r, ok := m.tracker.Rates(p)
		if !ok {
			continue
		}
		pps, bps := q.prof.Threshold.Offered(r)
		if tr := q.lad.Observe(now, pps, bps); tr != nil {
			m.transitionLocked(q, tr, &act)
			dirty = true
		}
	}
	// The ladders' periods advance with every observation: save them now
	// and then, so a restart resumes close to where it stopped.
	if dirty || now.Sub(m.lastLadderSave) >= 10*time.Second {
		if dirty || m.hasLadderLocked() {
			act.save = true
		}
		m.lastLadderSave = now
	}
}

// autoActions are the changes that an observation or an alert decided
// under Manager.mu, for do to carry out once it is released.
type autoActions struct {
	starts []autoStart
	specs  []specChange
	// releases are quarantines their ladder released.
	releases []*quarantine
	hooks    []hookRun
	save     bool
}

// autoStart is a quarantine to start; failed or started runs under
// Manager.mu with its outcome.
type autoStart struct {
	port    string
	req     api.LimitRequest
	origin  api.Origin
	failed  func(error)
	started func()
}

// specChange is a quarantine whose spec changed from prev to what it is
// now: its owner applies it, or it goes back to prev.
type specChange struct {
	q    *quarantine
	prev intent.Spec
	what string // for the log: "ladder" or "avg_frame"
}

type hookRun struct {
	port string
	argv []string
}

// do carries out act; the caller holds no lock.
func (m *Manager) do(act autoActions, now time.Time) {
	for _, s := range act.starts {
		_, err := m.quarantine(s.port, s.req, false, s.origin, now)
		m.mu.Lock()
		if err != nil {
			s.failed(err)
		} else {
			s.started()
		}
		m.mu.Unlock()
	}
	for _, c := range act.specs {
		if err := m.applyIntent(c.q, c.prev); err != nil {
			m.log.Error("ladder: cannot apply the new limits; the old ones stay", "port", c.q.port, "change", c.what, "err", err)
		}
	}
	for _, q := range act.releases {
		o := m.lockOwner(q.port)
		m.mu.Lock()
		same := m.q[q.port] == q
		m.mu.Unlock()
		if same {
			if err := m.release(o); err != nil {
				m.log.Error("ladder: release failed; the quarantine stays in probation", "port", q.port, "err", err)
			}
		}
		m.unlockOwner(o)
	}
	for _, h := range act.hooks {
		go m.runHook(h.port, h.argv)
	}
	if act.save {
		m.save()
	}
}

// applyIntent has q's owner apply q's spec, which changed from prev under
// Manager.mu; if that fails the spec goes back to prev. A quarantine that
// is not active gets it when it is. The caller holds no lock.
func (m *Manager) applyIntent(q *quarantine, prev intent.Spec) error {
	o := m.lockOwner(q.port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	live := m.q[q.port] == q && q.state == StateActive
	m.mu.Unlock()
	if !live {
		return nil
	}
	if err := m.reconcile(o); err != nil {
		m.mu.Lock()
		if m.q[q.port] == q {
			q.spec = prev
		}
		m.mu.Unlock()
		return err
	}
	return nil
}

// correlateLocked limits the traffic to a group's router port when a member
// quarantined with a correlating profile is above its ladder's first rung
// of calm and the router port receives more than the profile's threshold.
// The quarantines to start go into act.
func (m *Manager) correlateLocked(now time.Time, act *autoActions) {
	for _, g := range m.watch.Groups {
		if _, ok := m.q[g.Router]; ok {
			continue
		}
		r, ok := m.tracker.Rates(g.Router)
		if !ok {
			continue
		}
		for _, p := range m.portsLocked() {
			q := m.q[p]
			if q.lad == nil || !q.prof.Correlate || q.lad.Stage() == ladder.Probation || !matchAny(g.Members, p) {
				continue
			}
			th := q.prof.Threshold
			th.Direction = detect.ToVM
			if !th.Above(r) {
				continue
			}
			g, p, name := g, p, q.prof.Name
			act.starts = append(act.starts, autoStart{port: g.Router, req: api.LimitRequest{Profile: &name}, origin: OriginCorrelation,
				failed: func(err error) {
					m.log.Error("event: correlated quarantine of a router port failed", "event", "correlation_failed",
						"group", g.Name, "router", g.Router, "member", p, "err", err)
				},
				started: func() {
					m.log.Warn("event: the flood shows on the group's router port: limiting the traffic to it", "event", "correlation",
						"group", g.Name, "router", g.Router, "member", p, "router_pps", math.Round(r.ToVM.PPS))
				}})
			act.save = true
			break
		}
	}
}

func matchAny(patterns []string, name string) bool {
	for _, pat := range patterns {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	return false
}
