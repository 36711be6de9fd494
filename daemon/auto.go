package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/units"
)

// Origins of a quarantine.
const (
	OriginManual      = "manual"      // the command line or the control API
	OriginWatch       = "watch"       // flagged by the watch loop
	OriginAlert       = "alert"       // an Alertmanager webhook
	OriginCorrelation = "correlation" // a group's router port, limited toward the router
)

// StageManual is the stage of a quarantine with no ladder.
const StageManual = string(ladder.Manual)

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
}

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
		if _, err := NewSpec().Apply(profiles[name].Limits, false); err != nil {
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
		names, err := listLinks()
		if err != nil {
			m.log.Warn("watch: cannot list links", "err", err)
			continue
		}
		ports := m.WatchPorts(names)
		counters, err := detect.ReadCounters(ports)
		if err != nil {
			m.log.Debug("watch: reading counters", "err", err)
		}
		m.Observe(time.Now(), counters)
		if iv := m.WatchInterval(); iv != interval {
			interval = iv
			t.Reset(iv)
		}
	}
}

func listLinks() ([]string, error) {
	ents, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ents))
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
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
		active := 0
		for _, q := range m.q {
			if q.spec.Origin == OriginWatch {
				active++
			}
		}
		admit, refuse := detect.SplitAtCap(cand, active, m.watch.MaxAuto)
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
	origin  string
	failed  func(error)
	started func()
}

// specChange is a quarantine whose spec changed from prev to what it is
// now: its owner applies it, or it goes back to prev.
type specChange struct {
	q    *quarantine
	prev Spec
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
func (m *Manager) applyIntent(q *quarantine, prev Spec) error {
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
			g, p := g, p
			act.starts = append(act.starts, autoStart{port: g.Router, req: api.LimitRequest{"profile": q.prof.Name}, origin: OriginCorrelation,
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

// profileFor returns the profile a quarantine of origin runs: a router port
// limited by correlation has its ladder on the traffic to it.
func profileFor(p profile.Profile, origin string) profile.Profile {
	if origin == OriginCorrelation {
		p.Threshold.Direction = detect.ToVM
		p.Ladder.Threshold = p.Threshold
	}
	return p
}

func (m *Manager) hasLadderLocked() bool {
	for _, q := range m.q {
		if q.lad != nil {
			return true
		}
	}
	return false
}

// AvgFrameWindow is how long the forwarder measures the average frame size
// of a laddered quarantine that had no watch history.
const AvgFrameWindow = 10 * time.Second

// measureAvgLocked sets the ladder's average frame size from the
// forwarder's first AvgFrameWindow when the watch had no history of the
// port, and applies the byte budgets that follow from it.
func (m *Manager) measureAvgLocked(q *quarantine, now time.Time, act *autoActions) {
	_, fwd := m.qSpliceLocked(q)
	if q.lad.AvgFrame() > 0 || fwd == nil || q.avgFrom.IsZero() || now.Sub(q.avgFrom) < AvgFrameWindow {
		return
	}
	var pkts, bytes uint64
	switch q.prof.Threshold.Direction {
	case detect.ToVM:
		pkts, bytes = offeredOf(fwd, false)
	case detect.Either:
		p1, b1 := offeredOf(fwd, true)
		p2, b2 := offeredOf(fwd, false)
		pkts, bytes = p1+p2, b1+b2
	default:
		pkts, bytes = offeredOf(fwd, true)
	}
	q.avgFrom = time.Time{}
	if pkts == 0 {
		m.log.Info("ladder: no frames in the first window; the byte budget stays off", "port", q.port)
		return
	}
	avg := float64(bytes) / float64(pkts)
	lim := q.lad.SetAvgFrame(avg)
	m.log.Info("event: ladder's average frame size measured by the forwarder", "event", "avg_frame", "port", q.port,
		"avg_frame", math.Round(avg), "bytes_per_second", math.Round(lim.BytesPerSec))
	if err := m.applyLadderLocked(q, lim, q.spec.Stage, "avg_frame", act); err != nil {
		m.log.Error("applying the ladder's byte budget", "port", q.port, "err", err)
	}
}

// offeredOf sums the frames the forwarder saw in one direction, passed or
// dropped.
func offeredOf(fwd *forward.Forwarder, fromVM bool) (pkts, bytes uint64) {
	st := fwd.ToVM.Stats()
	if fromVM {
		st = fwd.FromVM.Stats()
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		cs := st.Classes[c]
		pkts += cs.PassedPackets + cs.DroppedPackets
		bytes += cs.PassedBytes + cs.DroppedBytes
	}
	return pkts, bytes
}

// transitionLocked decides what a ladder transition does: new limits, or
// the release of the splice, and the on-block hook (carried out by do); it
// logs it and counts it.
func (m *Manager) transitionLocked(q *quarantine, tr *ladder.Transition, act *autoActions) {
	key := string(tr.From) + ">" + string(tr.To)
	m.events.Transitions[key]++
	m.log.Warn("event: ladder transition", "event", "ladder", "port", q.port, "from", tr.From, "to", tr.To,
		"reason", tr.Reason, "saturation", math.Round(tr.Saturation*1000)/1000, "pps", tr.Limits.PPS,
		"bytes_per_second", math.Round(tr.Limits.BytesPerSec), "delay", tr.Limits.Delay, "block", tr.Limits.Block)
	if tr.To == ladder.Released {
		act.releases = append(act.releases, q)
		return
	}
	if err := m.applyLadderLocked(q, tr.Limits, string(tr.To), "ladder", act); err != nil {
		m.log.Error("ladder: cannot apply the new limits; the old ones stay", "port", q.port, "to", tr.To, "err", err)
	}
	if tr.RunOnBlockHook && len(q.prof.OnBlock) > 0 {
		act.hooks = append(act.hooks, hookRun{q.port, append(slices.Clone(q.prof.OnBlock), q.port)})
	}
}

// applyLadderLocked puts the ladder's limits into q's spec; do has q's
// owner apply them (into its forwarder, when q runs).
func (m *Manager) applyLadderLocked(q *quarantine, lim ladder.Limits, stage, what string, act *autoActions) error {
	spec := ladderSpec(q.spec, q.prof, lim)
	spec.Stage = stage
	if err := spec.Validate(); err != nil {
		return err
	}
	act.specs = append(act.specs, specChange{q: q, prev: q.spec, what: what})
	q.spec = spec
	return nil
}

// ladderSpec returns s with the ladder's limits on the threshold's
// direction(s).
func ladderSpec(s Spec, p profile.Profile, lim ladder.Limits) Spec {
	var dirs []*DirSpec
	switch p.Threshold.Direction {
	case detect.ToVM:
		dirs = []*DirSpec{&s.ToVM}
	case detect.Either:
		dirs = []*DirSpec{&s.FromVM, &s.ToVM}
	default:
		dirs = []*DirSpec{&s.FromVM}
	}
	for _, d := range dirs {
		d.Burst, d.BurstBytes = nil, nil
		if lim.Block {
			zero := 0.0
			d.PPS, d.BPS = &zero, nil
			d.Mode, d.Delay, d.QueueBytes, d.QueueTime = "", nil, nil, nil
			continue
		}
		pps := lim.PPS
		d.PPS = &pps
		d.BPS = nil
		if lim.BytesPerSec > 0 {
			r := units.Rate(math.Round(lim.BytesPerSec * 8))
			d.BPS = &r
		}
		if p.Shape {
			delay := Duration(lim.Delay)
			d.Mode, d.Delay = "shape", &delay
			// The queue's time bound follows the delay: a tenth more
			// (at least forward.DefaultQueueSlack), the tolerance issue
			// 6 gives the delay. Under a flood the queue stays full to
			// that bound, and a releaser woken a little late by a busy
			// host must not find the head expired: that loses the
			// slot, and the stage delivers less than its budget.
			qt := Duration(lim.Delay + max(forward.DefaultQueueSlack, lim.Delay/10))
			d.QueueTime = &qt
		} else {
			d.Mode, d.Delay, d.QueueBytes, d.QueueTime = "", nil, nil, nil
		}
	}
	return s
}

// HookTimeout bounds an on-block hook's run.
const HookTimeout = 2 * time.Minute

// runHook runs a profile's on-block hook; its result is an event.
func (m *Manager) runHook(port string, argv []string) {
	if m.hookRunner != nil {
		m.hookRunner(port, argv)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	msg := strings.TrimSpace(string(out))
	if len(msg) > 512 {
		msg = msg[:512] + "..."
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.events.Hooks["failed"]++
		m.log.Error("event: on-block hook failed", "event", "on_block", "port", port, "argv", argv, "err", err, "output", msg)
		return
	}
	m.events.Hooks["ok"]++
	m.log.Warn("event: on-block hook ran", "event", "on_block", "port", port, "argv", argv, "output", msg)
}

// SetHookRunner replaces how on-block hooks run (for tests).
func (m *Manager) SetHookRunner(run func(port string, argv []string)) { m.hookRunner = run }

// SetClock replaces the clock that stamps new quarantines (for tests that
// drive Observe with a simulated clock).
func (m *Manager) SetClock(now func() time.Time) { m.clock = now }

// profileLocked resolves the profile a quarantine request names, if any:
// "profile" in req, or the quarantine profile when req names no aggregate
// limit. It returns req without "profile".
func (m *Manager) profileLocked(req api.LimitRequest) (*profile.Profile, api.LimitRequest, error) {
	req = maps.Clone(req)
	if req == nil {
		req = api.LimitRequest{}
	}
	name, named := req["profile"]
	delete(req, "profile")
	if !named && !HasLimitFlag(req) {
		name = profile.Quarantine
	}
	if name == "" {
		if named {
			return nil, nil, usagef("--profile needs a name")
		}
		return nil, req, nil
	}
	p, ok := m.profiles[name]
	if !ok {
		return nil, nil, usagef("no profile %q (the config defines %s)", name, strings.Join(slices.Sorted(maps.Keys(m.profiles)), ", "))
	}
	if p.UseLadder {
		for _, f := range aggregateFlags {
			for _, pre := range ladderPrefixes(p.Threshold.Direction) {
				if _, ok := req[pre+f]; ok {
					return nil, nil, usagef("--%s%s conflicts with profile %s, whose ladder sets those limits; omit it, or give limits without a profile",
						pre, f, name)
				}
			}
		}
	}
	return &p, req, nil
}

func ladderPrefixes(d detect.Direction) []string {
	switch d {
	case detect.ToVM:
		return []string{"to-vm-"}
	case detect.Either:
		return []string{"", "to-vm-"}
	}
	return []string{""}
}

// startLadderLocked starts q's ladder at stage 1 at now, with the average
// frame size of the watch history, and puts stage 1's limits into q.spec.
func (m *Manager) startLadderLocked(q *quarantine, p profile.Profile, now time.Time) error {
	p = profileFor(p, q.spec.Origin)
	l, err := ladder.New(p.Ladder)
	if err != nil {
		return usagef("profile %s: %v", p.Name, err)
	}
	avg := 0.0
	if r, ok := m.tracker.WindowRates(q.port); ok {
		avg = r.FromVM.AvgFrame
		if p.Threshold.Direction == detect.ToVM {
			avg = r.ToVM.AvgFrame
		}
	}
	tr := l.Start(now, avg)
	spec := ladderSpec(q.spec, p, tr.Limits)
	spec.Stage = string(tr.To)
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("profile %s: stage 1: %w", p.Name, err)
	}
	q.spec, q.lad, q.prof = spec, l, p
	m.events.Transitions[">"+string(tr.To)]++
	m.log.Info("event: ladder started", "event", "ladder", "port", q.port, "to", tr.To, "pps", tr.Limits.PPS,
		"avg_frame", math.Round(avg), "bytes_per_second", math.Round(tr.Limits.BytesPerSec), "delay", tr.Limits.Delay)
	return nil
}

// resumeLadderLocked gives a restored quarantine its ladder back: from the
// saved position, else from the stage its intent names.
func (m *Manager) resumeLadderLocked(q *quarantine, saved *ladder.State, now time.Time) {
	if q.spec.Profile == "" || q.spec.Stage == "" {
		return
	}
	p, ok := m.profiles[q.spec.Profile]
	p = profileFor(p, q.spec.Origin)
	if !ok || !p.UseLadder {
		m.log.Warn("event: restored quarantine's profile is gone or has no ladder; its limits stay as they were",
			"event", "ladder_lost", "port", q.port, "profile", q.spec.Profile, "stage", q.spec.Stage)
		q.spec.Stage = ""
		return
	}
	l, err := ladder.New(p.Ladder)
	if err != nil {
		return
	}
	st := ladder.State{Stage: ladder.Stage(q.spec.Stage), LastObs: now, PeriodStart: now}
	switch st.Stage {
	case ladder.Stage1, ladder.Probation:
		st.Rung = 1
	case ladder.Stage2:
		st.Rung = 2
	case ladder.Stage3:
		st.Rung = 3
	}
	if saved != nil && saved.Stage == st.Stage {
		st = *saved
	}
	if err := l.Resume(st, now); err != nil {
		m.log.Warn("ladder state not resumable; restarting its period", "port", q.port, "err", err)
		return
	}
	q.lad, q.prof = l, p
}

// ErrUnknownPort is returned by Alert for a port that does not exist here.
var ErrUnknownPort = errors.New("no such port on this host")

// Alert handles one alert from the webhook: a firing alert quarantines port
// with the quarantine profile (a port already quarantined is left as it
// is, so repeated notifications are idempotent); a resolved one starts the
// probation of its ladder. It returns what it did, for the log.
func (m *Manager) Alert(port string, firing bool) (string, error) {
	if err := checkPortName(port); err != nil {
		return "", err
	}
	outcome := ""
	defer func() {
		if outcome != "" {
			m.mu.Lock()
			m.events.Alerts[outcome]++
			m.mu.Unlock()
		}
	}()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return "", ErrClosed
	}
	now := m.clock()
	q, ok := m.q[port]
	switch {
	case firing && ok:
		m.mu.Unlock()
		outcome = "already_quarantined"
		return outcome, nil
	case firing:
		m.mu.Unlock()
		if !m.portExists(port) {
			outcome = "unknown_port"
			return outcome, ErrUnknownPort
		}
		if _, err := m.quarantine(port, nil, false, OriginAlert, now); err != nil {
			outcome = "failed"
			return outcome, err
		}
		outcome = "quarantined"
		m.log.Warn("event: quarantine by alert", "event", "alert_quarantine", "port", port, "profile", profile.Quarantine)
		return outcome, nil
	case !ok:
		m.mu.Unlock()
		outcome = "resolved_not_quarantined"
		return outcome, nil
	case q.lad == nil:
		m.mu.Unlock()
		outcome = "resolved_no_ladder"
		return outcome, nil
	}
	tr := q.lad.Probation(now)
	if tr == nil {
		m.mu.Unlock()
		outcome = "resolved_already_probation"
		return outcome, nil
	}
	act := autoActions{save: true}
	m.transitionLocked(q, tr, &act)
	m.mu.Unlock()
	m.do(act, now)
	outcome = "probation"
	return outcome, nil
}

// Events returns copies of the event counters.
func (m *Manager) Events() Events {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events
	e.Transitions = maps.Clone(e.Transitions)
	e.Hooks = maps.Clone(e.Hooks)
	e.Alerts = maps.Clone(e.Alerts)
	return e
}

// flaggedLocked lists the watched ports flagged and not quarantined.
func (m *Manager) flaggedLocked() []api.Flagged {
	out := []api.Flagged{}
	th := m.profiles[profile.Quarantine].Threshold
	for _, f := range m.tracker.AppendFlagged(nil) {
		if _, ok := m.q[f.Port]; ok || !m.matcher.Match(f.Port) {
			continue
		}
		pps, bps := th.Offered(f.Rates)
		out = append(out, api.Flagged{Port: f.Port, Since: f.Since.UTC(), PPS: math.Round(pps), BPS: math.Round(bps)})
	}
	return out
}
