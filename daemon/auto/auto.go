// Package auto is shaperd's automatic side: the watch loop, which flags
// the ports that flood from their counters and quarantines them (or only
// reports them, with dry_run; never an excluded port, nor beyond
// max_auto), the correlation of a group's router port, the escalation
// ladders of the quarantines a profile started, and Alertmanager's alerts.
//
// It decides; the daemon's manager does. An Engine takes its decisions in
// Manager.Update, on a consistent view of the quarantines under the
// manager's lock, and carries them out once that lock is released,
// through the Manager interface (a quarantine to start, a new spec to
// apply, a release, a hook, a save). Its own state (configuration,
// profiles, the counters' tracker, event counts) is guarded by its own
// mutex, which it takes inside Update or alone: the manager's lock comes
// first, and the Engine never calls the Manager while it holds its own.
package auto

import (
	"context"
	"fmt"
	"log/slog"
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

// Config is the watch loop's configuration (the run flags --watch,
// --exclude, --watch-interval, --flag-after, --max-auto, --dry-run).
type Config struct {
	Watch, Exclude []string
	// Interval is how often counters are read (default 500 ms).
	Interval time.Duration
	// FlagAfter is how long a port stays above the threshold to be flagged
	// (default 1 s).
	FlagAfter time.Duration
	// MaxAuto caps concurrent automatic quarantines (default 10 via
	// DefaultConfig; 0 refuses every one).
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

// DefaultConfig watches nothing, every 500 ms, flags after 1 s, and
// allows 10 automatic quarantines.
func DefaultConfig() Config {
	return Config{Interval: 500 * time.Millisecond, FlagAfter: time.Second, MaxAuto: 10}
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
	// by name (daemon.HealthEvents): every name is there from the
	// start, at 0. The daemon fills it in.
	Health map[string]uint64
}

// Engine is the automatic side of one manager; see the package comment.
// Its methods are safe for concurrent use. Use New.
type Engine struct {
	log *slog.Logger

	// mu guards what follows; taken after the manager's lock, never
	// before it.
	mu       sync.Mutex
	profiles profile.Set
	cfg      Config
	matcher  *detect.Matcher
	tracker  *detect.Tracker
	events   Events
	lastSave time.Time // when the ladders' positions were last saved
}

// New returns an Engine with the default quarantine profile and
// DefaultConfig, logging to log.
func New(log *slog.Logger) *Engine {
	e := &Engine{log: log, events: Events{Transitions: map[string]uint64{}, Hooks: map[string]uint64{}, Alerts: map[string]uint64{}}}
	if err := e.Configure(profile.Set{profile.Quarantine: profile.Default()}, DefaultConfig()); err != nil {
		panic(err) // the defaults are valid
	}
	return e
}

// Configure sets the profiles and the watch loop's configuration; the daemon
// calls it at start and on SIGHUP. Nothing changes if either is invalid
// (the error wraps api.ErrUsage). Running ladders keep the profile they
// started with.
func (e *Engine) Configure(profiles profile.Set, c Config) error {
	if err := CheckProfiles(profiles); err != nil {
		return err
	}
	if c.Interval <= 0 {
		c.Interval = DefaultConfig().Interval
	}
	if c.FlagAfter <= 0 {
		c.FlagAfter = DefaultConfig().FlagAfter
	}
	if c.MaxAuto < 0 {
		return api.Usagef("--max-auto %d: want 0 or more", c.MaxAuto)
	}
	matcher, err := detect.NewMatcher(c.Watch, c.Exclude)
	if err != nil {
		return api.Usagef("%v", err)
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
	tc.Interval, tc.FlagAfter, tc.Threshold = c.Interval, c.FlagAfter, q.Threshold
	if err := tc.Validate(); err != nil {
		return api.Usagef("%v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tracker == nil || e.tracker.Config() != tc {
		t, err := detect.NewTracker(tc)
		if err != nil {
			return api.Usagef("%v", err)
		}
		e.tracker = t
	}
	e.profiles, e.cfg, e.matcher = profiles, c, matcher
	return nil
}

// CheckProfiles checks that every profile's limits are valid quarantine
// flags.
func CheckProfiles(profiles profile.Set) error {
	for _, name := range slices.Sorted(maps.Keys(profiles)) {
		if _, err := intent.New().Apply(profiles[name].Limits, false); err != nil {
			return fmt.Errorf("profiles.%s.limits: %s", name, strings.TrimPrefix(err.Error(), api.ErrUsage.Error()+": "))
		}
	}
	return nil
}

// Profiles returns the configured profiles; the caller must not change
// the set.
func (e *Engine) Profiles() profile.Set {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.profiles
}

// Interval returns the configured --watch-interval.
func (e *Engine) Interval() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg.Interval
}

// Events returns copies of the event counters (Health left nil).
func (e *Engine) Events() Events {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.events
	ev.Transitions = maps.Clone(ev.Transitions)
	ev.Hooks = maps.Clone(ev.Hooks)
	ev.Alerts = maps.Clone(ev.Alerts)
	return ev
}

// WatchPorts returns the ports among names whose counters the next Observe
// wants: the watched ones, and every quarantined one on a ladder.
func (e *Engine) WatchPorts(m Manager, names []string) []string {
	var out []string
	m.View(func(tx Txn) {
		e.mu.Lock()
		defer e.mu.Unlock()
		out = e.matcher.Filter(nil, names)
		tx.Each(func(q Quarantine) {
			if p := q.Port(); q.Escalation() != nil && !slices.Contains(out, p) {
				out = append(out, p)
			}
		})
		for _, g := range e.cfg.Groups {
			if slices.Contains(names, g.Router) && !slices.Contains(out, g.Router) {
				out = append(out, g.Router)
			}
		}
	})
	return out
}

// needsLinks reports whether WatchPorts needs the host's link names: a
// --watch pattern or a group is configured.
func (e *Engine) needsLinks() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.matcher.Watches() || len(e.cfg.Groups) > 0
}

// RunWatch reads the counters of the watched ports every --watch-interval
// and hands them to Observe, until ctx ends.
func (e *Engine) RunWatch(ctx context.Context, m Manager) {
	interval := e.Interval()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Listing the links is a netlink dump of every link on the
		// host, splice taps included: with 100 quarantines it was three
		// quarters of an idle daemon's CPU. Only patterns and groups
		// need it; the ports on a ladder are known by name.
		var names []string
		if e.needsLinks() {
			var err error
			if names, err = m.Links(); err != nil {
				e.log.Warn("watch: cannot list links", "err", err)
				continue
			}
		}
		ports := e.WatchPorts(m, names)
		counters, err := detect.ReadCounters(ports)
		if err != nil {
			e.log.Debug("watch: reading counters", "err", err)
		}
		e.Observe(m, m.Now(), counters)
		if iv := e.Interval(); iv != interval {
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
// Its decisions are taken in m.Update and carried out after it (see
// actions): splices and releases run under each port's owner lock, as any
// change does.
func (e *Engine) Observe(m Manager, now time.Time, counters map[string]detect.Sample) {
	var act actions
	defer func() { e.do(m, act, now) }()
	m.Update(func(tx Txn) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.observeLocked(tx, now, counters, &act)
	})
}

func (e *Engine) observeLocked(tx Txn, now time.Time, counters map[string]detect.Sample, act *actions) {
	e.events.WatchedPorts = len(counters)
	flags := e.tracker.Observe(now, counters)
	if n := e.tracker.Untracked(); n > 0 {
		e.log.Warn("watch: too many ports; some are not tracked", "untracked", n)
	}
	var cand []detect.Flag
	for _, f := range flags {
		if !e.matcher.Match(f.Port) {
			continue
		}
		if _, ok := tx.Get(f.Port); ok {
			continue
		}
		cand = append(cand, f)
	}
	th := e.profiles[profile.Quarantine].Threshold
	for _, f := range cand {
		e.events.Flags++
		pps, bps := th.Offered(f.Rates)
		e.log.Warn("event: port flagged above the quarantine profile's threshold", "event", "flagged", "port", f.Port,
			"since", f.Since, "pps", math.Round(pps), "bps", math.Round(bps), "dry_run", e.cfg.DryRun)
	}
	if !e.cfg.DryRun && len(cand) > 0 {
		admit, refuse := detect.SplitAtCap(cand, autoCount(tx), e.cfg.MaxAuto)
		for _, f := range admit {
			act.starts = append(act.starts, start{port: f.Port, origin: api.OriginWatch,
				failed: func(err error) {
					e.events.AutoFailed++
					e.log.Error("event: automatic quarantine failed", "event", "auto_failed", "port", f.Port, "err", err)
				},
				started: func() {
					e.events.AutoStarted++
					e.log.Warn("event: automatic quarantine", "event", "auto_quarantine", "port", f.Port, "profile", profile.Quarantine)
				}})
		}
		for _, f := range refuse {
			e.events.AutoRefused++
			e.log.Error("event: automatic quarantine refused: --max-auto reached", "event", "max_auto", "port", f.Port,
				"max_auto", e.cfg.MaxAuto)
		}
	}
	e.correlateLocked(tx, act)
	dirty := false
	for _, p := range tx.Ports() {
		q, _ := tx.Get(p)
		esc := q.Escalation()
		if esc == nil || !q.Active() {
			continue
		}
		e.measureAvgLocked(tx, q, now, act)
		r, ok := e.tracker.Rates(p)
		if !ok {
			continue
		}
		pps, bps := esc.Profile.Threshold.Offered(r)
		if tr := esc.Ladder.Observe(now, pps, bps); tr != nil {
			e.transitionLocked(q, tr, act)
			dirty = true
		}
	}
	// The ladders' periods advance with every observation: save them now
	// and then, so a restart resumes close to where it stopped.
	if dirty || now.Sub(e.lastSave) >= 10*time.Second {
		if dirty || hasLadder(tx) {
			act.save = true
		}
		e.lastSave = now
	}
}

// autoCount counts the automatic quarantines: the watch loop's and the
// alerts'.
func autoCount(tx Txn) int {
	n := 0
	tx.Each(func(q Quarantine) {
		if o := q.Origin(); o == api.OriginWatch || o == api.OriginAlert {
			n++
		}
	})
	return n
}

func hasLadder(tx Txn) bool {
	found := false
	tx.Each(func(q Quarantine) { found = found || q.Escalation() != nil })
	return found
}

// correlateLocked limits the traffic to a group's router port when a member
// quarantined with a correlating profile is above its ladder's first rung
// of calm and the router port receives more than the profile's threshold.
// The quarantines to start go into act.
func (e *Engine) correlateLocked(tx Txn, act *actions) {
	for _, g := range e.cfg.Groups {
		if _, ok := tx.Get(g.Router); ok {
			continue
		}
		r, ok := e.tracker.Rates(g.Router)
		if !ok {
			continue
		}
		for _, p := range tx.Ports() {
			q, _ := tx.Get(p)
			esc := q.Escalation()
			if esc == nil || !esc.Profile.Correlate || esc.Ladder.Stage() == ladder.Probation || !matchAny(g.Members, p) {
				continue
			}
			th := esc.Profile.Threshold
			th.Direction = detect.ToVM
			if !th.Above(r) {
				continue
			}
			g, p, name := g, p, esc.Profile.Name
			act.starts = append(act.starts, start{port: g.Router, req: api.LimitRequest{Profile: &name}, origin: api.OriginCorrelation,
				failed: func(err error) {
					e.log.Error("event: correlated quarantine of a router port failed", "event", "correlation_failed",
						"group", g.Name, "router", g.Router, "member", p, "err", err)
				},
				started: func() {
					e.log.Warn("event: the flood shows on the group's router port: limiting the traffic to it", "event", "correlation",
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

// Flagged lists the watched ports flagged and not quarantined; call it
// inside Manager.Update, or with the manager's lock held and tx its view.
func (e *Engine) Flagged(tx Txn) []api.Flagged {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := []api.Flagged{}
	th := e.profiles[profile.Quarantine].Threshold
	for _, f := range e.tracker.AppendFlagged(nil) {
		if _, ok := tx.Get(f.Port); ok || !e.matcher.Match(f.Port) {
			continue
		}
		pps, bps := th.Offered(f.Rates)
		out = append(out, api.Flagged{Port: f.Port, Since: f.Since.UTC(), PPS: math.Round(pps), BPS: math.Round(bps)})
	}
	return out
}
