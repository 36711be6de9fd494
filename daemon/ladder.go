package daemon

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/units"
)

// The escalation ladder of a profile: starting and resuming a quarantine's
// ladder, the limits of its stages, its transitions and the on-block hook.

// profileFor returns the profile a quarantine of origin runs: a router port
// limited by correlation has its ladder on the traffic to it.
func profileFor(p profile.Profile, origin api.Origin) profile.Profile {
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
	if err := m.applyLadderLocked(q, tr.Limits, api.Stage(tr.To), "ladder", act); err != nil {
		m.log.Error("ladder: cannot apply the new limits; the old ones stay", "port", q.port, "to", tr.To, "err", err)
	}
	if tr.RunOnBlockHook && len(q.prof.OnBlock) > 0 {
		act.hooks = append(act.hooks, hookRun{q.port, append(slices.Clone(q.prof.OnBlock), q.port)})
	}
}

// applyLadderLocked puts the ladder's limits into q's spec; do has q's
// owner apply them (into its forwarder, when q runs).
func (m *Manager) applyLadderLocked(q *quarantine, lim ladder.Limits, stage api.Stage, what string, act *autoActions) error {
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
func ladderSpec(s intent.Spec, p profile.Profile, lim ladder.Limits) intent.Spec {
	var dirs []*intent.DirSpec
	switch p.Threshold.Direction {
	case detect.ToVM:
		dirs = []*intent.DirSpec{&s.ToVM}
	case detect.Either:
		dirs = []*intent.DirSpec{&s.FromVM, &s.ToVM}
	default:
		dirs = []*intent.DirSpec{&s.FromVM}
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
			delay := intent.Duration(lim.Delay)
			d.Mode, d.Delay = "shape", &delay
			// The queue's time bound follows the delay: a tenth more
			// (at least forward.DefaultQueueSlack), the tolerance issue
			// 6 gives the delay. Under a flood the queue stays full to
			// that bound, and a releaser woken a little late by a busy
			// host must not find the head expired: that loses the
			// slot, and the stage delivers less than its budget.
			qt := intent.Duration(lim.Delay + max(forward.DefaultQueueSlack, lim.Delay/10))
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
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	out, err := m.host.RunHook(ctx, argv)
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

// profileLocked resolves the profile a quarantine request names, if any:
// req.Profile, or the quarantine profile when req names no limit. It
// returns req without Profile.
func (m *Manager) profileLocked(req api.LimitRequest) (*profile.Profile, api.LimitRequest, error) {
	named := req.Profile != nil
	name := ""
	if named {
		name = *req.Profile
	}
	req.Profile = nil
	if !named && !req.HasLimit() {
		name = profile.Quarantine
	}
	if name == "" {
		if named {
			return nil, req, usagef("--profile needs a name")
		}
		return nil, req, nil
	}
	p, ok := m.profiles[name]
	if !ok {
		return nil, req, usagef("no profile %q (the config defines %s)", name, strings.Join(slices.Sorted(maps.Keys(m.profiles)), ", "))
	}
	if p.UseLadder {
		for _, f := range api.AggregateFlags {
			for _, d := range ladderDirs(&req, p.Threshold.Direction) {
				if d.change.NamesAggregate(f) {
					return nil, req, usagef("--%s%s conflicts with profile %s, whose ladder sets those limits; omit it, or give limits without a profile",
						d.prefix, f, name)
				}
			}
		}
	}
	return &p, req, nil
}

// ladderDir is a direction of req that a ladder limits, with its flags'
// prefix.
type ladderDir struct {
	prefix string
	change api.DirChange
}

// ladderDirs returns the directions of req a ladder on threshold direction
// d limits.
func ladderDirs(req *api.LimitRequest, d detect.Direction) []ladderDir {
	from, to := ladderDir{"", req.FromVM}, ladderDir{"to-vm-", req.ToVM}
	switch d {
	case detect.ToVM:
		return []ladderDir{to}
	case detect.Either:
		return []ladderDir{from, to}
	}
	return []ladderDir{from}
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
	spec.Stage = api.Stage(tr.To)
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
