package auto

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/units"
)

// The escalation ladder of a profile: starting and resuming a quarantine's
// ladder, the limits of its stages, its transitions and the on-block hook.

// Escalation is a quarantine's ladder: the manager keeps it with the
// quarantine, under its lock, and persists Ladder's position.
type Escalation struct {
	Ladder  *ladder.Ladder
	Profile profile.Profile // the ladder's profile
	// AvgFrom is when the forwarder started measuring the average frame
	// size for a ladder that has none; zero when not measuring.
	AvgFrom time.Time
}

// Spliced notes that the quarantine's splice is in place at now: a ladder
// without an average frame size starts measuring it.
func (esc *Escalation) Spliced(now time.Time) {
	esc.AvgFrom = time.Time{}
	if esc.Ladder.AvgFrame() == 0 {
		esc.AvgFrom = now
	}
}

// ProfileFor returns the profile a quarantine of origin runs: a router port
// limited by correlation has its ladder on the traffic to it.
func ProfileFor(p profile.Profile, origin api.Origin) profile.Profile {
	if origin == api.OriginCorrelation {
		p.Threshold.Direction = detect.ToVM
		p.Ladder.Threshold = p.Threshold
	}
	return p
}

// AvgFrameWindow is how long the forwarder measures the average frame size
// of a laddered quarantine that had no watch history.
const AvgFrameWindow = 10 * time.Second

// measureAvgLocked sets the ladder's average frame size from the
// forwarder's first AvgFrameWindow when the watch had no history of the
// port, and applies the byte budgets that follow from it.
func (e *Engine) measureAvgLocked(tx Txn, q Quarantine, now time.Time, act *actions) {
	esc := q.Escalation()
	if esc.Ladder.AvgFrame() > 0 || esc.AvgFrom.IsZero() || now.Sub(esc.AvgFrom) < AvgFrameWindow {
		return
	}
	var pkts, bytes uint64
	var ok bool
	switch esc.Profile.Threshold.Direction {
	case detect.ToVM:
		pkts, bytes, ok = tx.Offered(q, false)
	case detect.Either:
		p1, b1, ok1 := tx.Offered(q, true)
		p2, b2, _ := tx.Offered(q, false)
		pkts, bytes, ok = p1+p2, b1+b2, ok1
	default:
		pkts, bytes, ok = tx.Offered(q, true)
	}
	if !ok {
		return
	}
	esc.AvgFrom = time.Time{}
	if pkts == 0 {
		e.log.Info("ladder: no frames in the first window; the byte budget stays off", "port", q.Port())
		return
	}
	avg := float64(bytes) / float64(pkts)
	lim := esc.Ladder.SetAvgFrame(avg)
	e.log.Info("event: ladder's average frame size measured by the forwarder", "event", "avg_frame", "port", q.Port(),
		"avg_frame", math.Round(avg), "bytes_per_second", math.Round(lim.BytesPerSec))
	if err := applyLadder(q, lim, q.Spec().Stage, "avg_frame", act); err != nil {
		e.log.Error("applying the ladder's byte budget", "port", q.Port(), "err", err)
	}
}

// transitionLocked decides what a ladder transition does: new limits, or
// the release of the splice, and the on-block hook (carried out by do); it
// logs it and counts it.
func (e *Engine) transitionLocked(q Quarantine, tr *ladder.Transition, act *actions) {
	key := string(tr.From) + ">" + string(tr.To)
	e.events.Transitions[key]++
	e.log.Warn("event: ladder transition", "event", "ladder", "port", q.Port(), "from", tr.From, "to", tr.To,
		"reason", tr.Reason, "saturation", math.Round(tr.Saturation*1000)/1000, "pps", tr.Limits.PPS,
		"bytes_per_second", math.Round(tr.Limits.BytesPerSec), "delay", tr.Limits.Delay, "block", tr.Limits.Block)
	if tr.To == ladder.Released {
		act.releases = append(act.releases, q)
		return
	}
	if err := applyLadder(q, tr.Limits, api.Stage(tr.To), "ladder", act); err != nil {
		e.log.Error("ladder: cannot apply the new limits; the old ones stay", "port", q.Port(), "to", tr.To, "err", err)
	}
	if onBlock := q.Escalation().Profile.OnBlock; tr.RunOnBlockHook && len(onBlock) > 0 {
		act.hooks = append(act.hooks, hookRun{q.Port(), append(slices.Clone(onBlock), q.Port())})
	}
}

// applyLadder puts the ladder's limits into q's spec; do has q's owner
// apply them (into its forwarder, when q runs).
func applyLadder(q Quarantine, lim ladder.Limits, stage api.Stage, what string, act *actions) error {
	prev := q.Spec()
	spec := ladderSpec(prev, q.Escalation().Profile, lim)
	spec.Stage = stage
	if err := spec.Validate(); err != nil {
		return err
	}
	act.specs = append(act.specs, specChange{q: q, prev: prev, what: what})
	q.SetSpec(spec)
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
func (e *Engine) runHook(m Manager, port string, argv []string) {
	ctx, cancel := context.WithTimeout(context.Background(), HookTimeout)
	defer cancel()
	out, err := m.RunHook(ctx, argv)
	msg := strings.TrimSpace(string(out))
	if len(msg) > 512 {
		msg = msg[:512] + "..."
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		e.events.Hooks["failed"]++
		e.log.Error("event: on-block hook failed", "event", "on_block", "port", port, "argv", argv, "err", err, "output", msg)
		return
	}
	e.events.Hooks["ok"]++
	e.log.Warn("event: on-block hook ran", "event", "on_block", "port", port, "argv", argv, "output", msg)
}

// Dir is a direction of a request that a ladder limits, with its flags'
// prefix ("" or "to-vm-").
type Dir struct {
	Prefix string
	Change api.DirChange
}

// Dirs returns the directions of req that a ladder on threshold
// direction d limits.
func Dirs(req *api.LimitRequest, d detect.Direction) []Dir {
	from, to := Dir{"", req.FromVM}, Dir{"to-vm-", req.ToVM}
	switch d {
	case detect.ToVM:
		return []Dir{to}
	case detect.Either:
		return []Dir{from, to}
	}
	return []Dir{from}
}

// LeavesLadder reports whether a set of req takes a quarantine on esc off
// its ladder: it names an aggregate limit of a direction the ladder
// limits.
func LeavesLadder(req *api.LimitRequest, esc *Escalation) bool {
	if esc == nil {
		return false
	}
	for _, d := range Dirs(req, esc.Profile.Threshold.Direction) {
		if d.Change.HasAggregate() {
			return true
		}
	}
	return false
}

// StartLadder starts the ladder of a new quarantine of port with profile
// p at now, with the average frame size of the watch history: it returns
// spec with stage 1's limits and the quarantine's Escalation. Call it
// with the manager's lock held (a quarantine being made).
func (e *Engine) StartLadder(port string, spec intent.Spec, p profile.Profile, now time.Time) (intent.Spec, *Escalation, error) {
	p = ProfileFor(p, spec.Origin)
	l, err := ladder.New(p.Ladder)
	if err != nil {
		return spec, nil, api.Usagef("profile %s: %v", p.Name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	avg := 0.0
	if r, ok := e.tracker.WindowRates(port); ok {
		avg = r.FromVM.AvgFrame
		if p.Threshold.Direction == detect.ToVM {
			avg = r.ToVM.AvgFrame
		}
	}
	tr := l.Start(now, avg)
	next := ladderSpec(spec, p, tr.Limits)
	next.Stage = api.Stage(tr.To)
	if err := next.Validate(); err != nil {
		return spec, nil, fmt.Errorf("profile %s: stage 1: %w", p.Name, err)
	}
	e.events.Transitions[">"+string(tr.To)]++
	e.log.Info("event: ladder started", "event", "ladder", "port", port, "to", tr.To, "pps", tr.Limits.PPS,
		"avg_frame", math.Round(avg), "bytes_per_second", math.Round(tr.Limits.BytesPerSec), "delay", tr.Limits.Delay)
	return next, &Escalation{Ladder: l, Profile: p}, nil
}

// ResumeLadder gives a restored quarantine of port its ladder back: from
// the saved position, else from the stage its intent names. It returns
// spec, without its stage if the profile is gone or has no ladder, and
// the Escalation, nil if none.
func (e *Engine) ResumeLadder(port string, spec intent.Spec, saved *ladder.State, now time.Time) (intent.Spec, *Escalation) {
	if spec.Profile == "" || spec.Stage == "" {
		return spec, nil
	}
	p, ok := e.Profiles()[spec.Profile]
	p = ProfileFor(p, spec.Origin)
	if !ok || !p.UseLadder {
		e.log.Warn("event: restored quarantine's profile is gone or has no ladder; its limits stay as they were",
			"event", "ladder_lost", "port", port, "profile", spec.Profile, "stage", spec.Stage)
		spec.Stage = ""
		return spec, nil
	}
	l, err := ladder.New(p.Ladder)
	if err != nil {
		return spec, nil
	}
	st := ladder.State{Stage: ladder.Stage(spec.Stage), LastObs: now, PeriodStart: now}
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
		e.log.Warn("ladder state not resumable; restarting its period", "port", port, "err", err)
		return spec, nil
	}
	return spec, &Escalation{Ladder: l, Profile: p}
}
