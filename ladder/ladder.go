// Package ladder is the escalation ladder of seed 001 for one quarantined
// port: a state machine over the offered load, with time passed in.
//
// The rungs, with the default profile and frames of 250 bytes on average:
//
//	stage1     10000 pps, 2.5 MB/s (TargetPPS × AVGPKT), 200 ms delay
//	stage2      2500 pps, 625 kB/s (× Stage2Factor), 400 ms delay (× DelayFactor2)
//	stage3     block everything but the bypass and control classes; run the on-block hook
//
// Escalation: at the end of stage 1's period (Stage1Duration), if the offered
// load was above the stage's budget (pps or bytes/s) for more than
// SaturationShare of the period, go to stage 2; otherwise stay in stage 1
// and start a new period. Stage 2 escalates to stage 3 the same way after
// Stage2Duration. Stage 3 has no period: it lasts until the traffic calms.
//
// Probation: once the offered load has stayed at or below the profile's
// Threshold for ClearAfter, from any stage, the ladder goes to probation one
// rung down, and steps down one more rung per further ClearAfter of calm:
//
//	stage3 → probation (stage 2's limits) → probation (stage 1's) → released
//	stage2 → probation (stage 1's limits) → released
//	stage1 → probation (stage 1's limits) → released
//
// Stage 1 has no rung below it with limits, so probation from stage 1 keeps
// stage 1's limits and only marks the port as on its way out. If the offered
// load goes above the Threshold during probation, the ladder returns at once
// to the stage whose limits are in force, with a new period, so that it can
// escalate again.
//
// Calm takes precedence: when probation is due at the same observation as the
// end of a saturated period, the ladder steps down. Traffic between a
// stage's budget and the threshold both saturates and is calm; such a VM is
// under the threshold that flags VMs in the first place, so it is released.
//
// A Ladder has no goroutine and no lock: it belongs to the daemon's goroutine
// that owns the port's quarantine.
package ladder

import (
	"math"
	"time"
)

// Stage is the status name of a rung of the ladder, shown by status.
type Stage string

const (
	// Stage1 shapes to TargetPPS and TargetPPS × the average frame size.
	Stage1 Stage = "stage1"
	// Stage2 shapes to Stage2Factor of stage 1's budgets, with the delay
	// multiplied by DelayFactor2.
	Stage2 Stage = "stage2"
	// Stage3 blocks everything but the bypass and control classes.
	Stage3 Stage = "stage3"
	// Probation keeps a lower rung's limits while traffic stays calm.
	Probation Stage = "probation"
	// Manual is a quarantine set by hand. A Ladder never uses it; it is
	// here so that status has one list of stage names.
	Manual Stage = "manual"
	// Released is where the ladder ends: the daemon reverts the splice.
	// Status never shows it.
	Released Stage = "released"
)

// Limits are what a rung asks the forwarder to enforce on the offered
// direction(s).
type Limits struct {
	// PPS is the packet budget in packets per second.
	PPS float64
	// BytesPerSec is the byte budget in bytes per second (not bits). 0 means
	// no byte budget: the average frame size is not known yet (see
	// Ladder.SetAvgFrame).
	BytesPerSec float64
	// Delay is the delay queue's delay in shape mode; police mode ignores it.
	Delay time.Duration
	// Block admits nothing but the bypass and control classes; PPS,
	// BytesPerSec and Delay are then 0.
	Block bool
}

// Reasons for a Transition, constant strings for the event log.
const (
	ReasonStart     = "start"           // Start: the ladder begins at stage 1
	ReasonSaturated = "saturated"       // a stage's period ended saturated
	ReasonCalm      = "calm"            // ClearAfter of calm: probation, one rung down
	ReasonStepDown  = "step down"       // ClearAfter more of calm in probation
	ReasonRelease   = "release"         // the last step down: revert the splice
	ReasonRelapse   = "above threshold" // probation ended by traffic above the threshold
)

// Transition is a change of stage or limits, to be applied, logged, counted
// and shown by the daemon.
type Transition struct {
	// From is the stage left; "" for Start.
	From Stage
	// To is the stage entered; Released means revert the splice.
	To Stage
	// At is the time of the observation that caused the transition, or of
	// Start. Limits apply from At.
	At time.Time
	// Limits are the limits of To (zero for Released).
	Limits Limits
	// RunOnBlockHook is true on the transition into Stage3: run the
	// profile's on-block hook, if any, with the port as its argument.
	RunOnBlockHook bool
	// Reason is one of the Reason constants.
	Reason string
	// Saturation is the share of the ended period during which the offered
	// load was above the budget, for ReasonSaturated; 0 otherwise.
	Saturation float64
}

// Ladder is the escalation state of one port. The zero Ladder is not
// usable; use New, then Start.
type Ladder struct {
	cfg      Config
	stage    Stage // "" before Start
	rung     int   // 1..3: whose limits are in force
	avgFrame float64

	lastObs     time.Time     // latest Observe (or Start)
	periodStart time.Time     // start of the stage's period (stage1, stage2)
	observed    time.Duration // observed time in the period
	saturated   time.Duration // of which above the budget

	calm      bool      // the latest interval was at or below the threshold
	calmSince time.Time // start of the calm that counts toward ClearAfter
}

// New returns a Ladder for cfg, not started, or an error from cfg.Validate.
func New(cfg Config) (*Ladder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Ladder{cfg: cfg}, nil
}

// Config returns the configuration l was built with.
func (l *Ladder) Config() Config { return l.cfg }

// Start puts the ladder in stage 1 at now, whatever its state, and returns
// the transition with stage 1's limits. avgFrame is AVGPKT in bytes per
// frame (detect.Tracker.Window); 0 (or a value that is not a positive
// number) means unknown: stage 1 then has no byte budget until SetAvgFrame.
func (l *Ladder) Start(now time.Time, avgFrame float64) *Transition {
	from := l.stage
	*l = Ladder{cfg: l.cfg, stage: Stage1, rung: 1, avgFrame: cleanAvg(avgFrame), lastObs: now, periodStart: now}
	return &Transition{From: from, To: Stage1, At: now, Limits: l.Limits(), Reason: ReasonStart}
}

func cleanAvg(avg float64) float64 {
	if math.IsNaN(avg) || math.IsInf(avg, 0) || avg <= 0 {
		return 0
	}
	return avg
}

// SetAvgFrame sets the average frame size in bytes, once the daemon has
// measured it (the forwarder's first 10 s when the watch had no history),
// and returns the limits now in force, recomputed from it, for the daemon to
// apply. Every rung's byte budget derives from it.
func (l *Ladder) SetAvgFrame(avg float64) Limits {
	l.avgFrame = cleanAvg(avg)
	return l.Limits()
}

// AvgFrame returns the average frame size in bytes the budgets derive
// from; 0 if unknown.
func (l *Ladder) AvgFrame() float64 { return l.avgFrame }

// Stage returns the current stage: "" before Start, Released at the end.
func (l *Ladder) Stage() Stage { return l.stage }

// Limits returns the limits in force: the current rung's; zero before Start
// and after release.
func (l *Ladder) Limits() Limits {
	if l.stage == "" || l.stage == Released {
		return Limits{}
	}
	return l.cfg.limits(l.rung, l.avgFrame)
}

// NextTransition returns when the ladder will next decide (status shows it as
// next_transition): the end of the stage's period, or the end of ClearAfter
// of calm if that comes first. The decision may be to stay, and it is taken
// by the first Observe at or after that time. It is zero when nothing is
// scheduled: before Start, after release, and in stage 3 while the traffic is
// not calm.
func (l *Ladder) NextTransition() time.Time {
	var next time.Time
	switch l.stage {
	case Stage1, Stage2:
		next = l.periodStart.Add(l.period())
	case Stage3, Probation:
	default:
		return time.Time{}
	}
	if l.calm {
		if c := l.calmSince.Add(l.cfg.ClearAfter); next.IsZero() || c.Before(next) {
			next = c
		}
	}
	return next
}

func (l *Ladder) period() time.Duration {
	if l.stage == Stage2 {
		return l.cfg.Stage2Duration
	}
	return l.cfg.Stage1Duration
}

// Observe records the load offered by the VM over the interval since the
// previous Observe (or Start) up to now, and returns the transition this
// causes, or nil. At most one transition happens per call.
//
// offeredPPS (packets per second) and offeredBitsPerSec (bits per second,
// of frame bytes) must be the load the VM offers before policing, in the
// direction of the profile's threshold (detect.Threshold.Offered of the
// port's detect.Tracker rates): the port's RX counters still count frames
// that the forwarder drops. Delivered rates would never exceed the budget.
//
// An observation not later than the previous one, before Start or after
// release is ignored.
func (l *Ladder) Observe(now time.Time, offeredPPS, offeredBitsPerSec float64) *Transition {
	if l.stage == "" || l.stage == Released {
		return nil
	}
	dt := now.Sub(l.lastObs)
	if dt <= 0 {
		return nil
	}
	prev := l.lastObs
	l.lastObs = now

	if l.stage == Stage1 || l.stage == Stage2 {
		l.observed += dt
		if l.overBudget(offeredPPS, offeredBitsPerSec) {
			l.saturated += dt
		}
	}
	if l.cfg.Threshold.Exceeded(offeredPPS, offeredBitsPerSec) {
		l.calm = false
	} else if !l.calm {
		l.calm, l.calmSince = true, prev
	}
	calmDue := l.calm && now.Sub(l.calmSince) >= l.cfg.ClearAfter

	switch l.stage {
	case Probation:
		if !l.calm {
			return l.move(now, stageOf(l.rung), l.rung, ReasonRelapse, 0)
		}
		if !calmDue {
			return nil
		}
		l.calmSince = now
		if l.rung == 1 {
			return l.move(now, Released, 0, ReasonRelease, 0)
		}
		return l.move(now, Probation, l.rung-1, ReasonStepDown, 0)
	case Stage3:
		if calmDue {
			l.calmSince = now
			return l.move(now, Probation, 2, ReasonCalm, 0)
		}
		return nil
	}

	// Stage 1 or 2.
	if calmDue {
		l.calmSince = now
		return l.move(now, Probation, 1, ReasonCalm, 0)
	}
	if now.Before(l.periodStart.Add(l.period())) {
		return nil
	}
	share := 0.0
	if l.observed > 0 {
		share = float64(l.saturated) / float64(l.observed)
	}
	if share <= l.cfg.SaturationShare {
		// Not saturated: stay, with a new period.
		l.newPeriod(now)
		return nil
	}
	return l.move(now, stageOf(l.rung+1), l.rung+1, ReasonSaturated, share)
}

// overBudget reports whether the offered load is above the current rung's
// packet or byte budget.
func (l *Ladder) overBudget(pps, bitsPerSec float64) bool {
	lim := l.Limits()
	return pps > lim.PPS || (lim.BytesPerSec > 0 && bitsPerSec/8 > lim.BytesPerSec)
}

func (l *Ladder) newPeriod(now time.Time) {
	l.periodStart, l.observed, l.saturated = now, 0, 0
}

// move enters stage to with rung's limits at now and returns the transition.
func (l *Ladder) move(now time.Time, to Stage, rung int, reason string, share float64) *Transition {
	from := l.stage
	l.stage, l.rung = to, rung
	l.newPeriod(now)
	tr := &Transition{From: from, To: to, At: now, Limits: l.Limits(), Reason: reason, Saturation: share}
	tr.RunOnBlockHook = to == Stage3
	return tr
}

// stageOf returns the stage whose limits are rung's.
func stageOf(rung int) Stage {
	switch rung {
	case 1:
		return Stage1
	case 2:
		return Stage2
	}
	return Stage3
}

// State is a Ladder's position, for the daemon's state file: a restarted
// daemon resumes the ladder where it was instead of starting over.
type State struct {
	Stage       Stage         `json:"stage"`
	Rung        int           `json:"rung"`
	AvgFrame    float64       `json:"avg_frame"`
	LastObs     time.Time     `json:"last_obs"`
	PeriodStart time.Time     `json:"period_start"`
	Observed    time.Duration `json:"observed"`
	Saturated   time.Duration `json:"saturated"`
	Calm        bool          `json:"calm"`
	CalmSince   time.Time     `json:"calm_since"`
}

// State returns l's position.
func (l *Ladder) State() State {
	return State{Stage: l.stage, Rung: l.rung, AvgFrame: l.avgFrame, LastObs: l.lastObs, PeriodStart: l.periodStart,
		Observed: l.observed, Saturated: l.saturated, Calm: l.calm, CalmSince: l.calmSince}
}

// Resume puts l at the position s, as saved by State. now is the time of
// the resumption: the time the daemon was down counts as neither calm nor
// saturated, so the period resumes where it stopped. A position that is not
// one a Ladder can be in is refused and l is left as it was.
func (l *Ladder) Resume(s State, now time.Time) error {
	switch {
	case s.Stage == Stage1 && s.Rung == 1, s.Stage == Stage2 && s.Rung == 2, s.Stage == Stage3 && s.Rung == 3,
		s.Stage == Probation && s.Rung >= 1 && s.Rung <= 2:
	default:
		return invalid("saved stage %q with rung %d is not a position of the ladder", s.Stage, s.Rung)
	}
	if s.Observed < 0 || s.Saturated < 0 || s.Saturated > s.Observed {
		return invalid("saved period %v with %v saturated is not possible", s.Observed, s.Saturated)
	}
	down := time.Duration(0)
	if now.After(s.LastObs) && !s.LastObs.IsZero() {
		down = now.Sub(s.LastObs)
	}
	*l = Ladder{cfg: l.cfg, stage: s.Stage, rung: s.Rung, avgFrame: cleanAvg(s.AvgFrame),
		lastObs: now, periodStart: s.PeriodStart.Add(down), observed: s.Observed, saturated: s.Saturated,
		calm: s.Calm, calmSince: s.CalmSince.Add(down)}
	if l.lastObs.IsZero() {
		l.lastObs = now
	}
	return nil
}

// Probation starts probation at now as if the traffic had been calm for
// ClearAfter (an operator's or an alert's "resolved"): one rung down, and
// further rungs down per ClearAfter of calm. It returns the transition, or
// nil if the ladder is not started, released, or already in probation.
func (l *Ladder) Probation(now time.Time) *Transition {
	if l.stage == "" || l.stage == Released || l.stage == Probation {
		return nil
	}
	if !now.After(l.lastObs) {
		now = l.lastObs
	}
	l.lastObs = now
	l.calm, l.calmSince = true, now
	rung := l.rung - 1
	if rung < 1 {
		rung = 1
	}
	return l.move(now, Probation, rung, ReasonCalm, 0)
}
