package intent

// The backstop: the kernel half's pre-policer (package steer), per
// direction, in packets per second. It drops what is far beyond the
// quarantine's budgets before it reaches a tap, so a flood costs the
// forwarder only what the backstop lets through; the forwarder still
// polices exactly. Its ceilings follow the port's budgets whenever they
// change (quarantine, set, the ladder's stages, a tenant's quota level).

import (
	"math"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice/steer"
)

const (
	// BackstopFactor is how far above a budget its default ceiling is:
	// every class budget's, and the aggregate's in shape mode.
	BackstopFactor = 2
	// PoliceBackstopFactor is how far above the aggregate budget its
	// default ceiling is in police mode, plus what the class ceilings let
	// through above their budgets (see BackstopFor). In police mode every
	// frame above the budget is dropped by the forwarder, so what the
	// ceiling passes above it is read, classified and dropped for nothing:
	// the forwarder's reads are most of what a flood costs it. A quarter
	// above the budget, with a burst of twice the budget's, still hands
	// the forwarder more than its budget admits whenever the offered load
	// is above it. Shape mode keeps BackstopFactor: its queue turns
	// bursts into delay, not drops.
	PoliceBackstopFactor = 1.25
	// BackstopMinPPS is the least default ceiling, in packets per second:
	// a budget of 0 (a class blocked) still lets this through to the
	// forwarder, which counts and drops it.
	BackstopMinPPS = 100
	// BackstopBurstTime is the default ceilings' burst: this much of the
	// ceiling's rate, at least BackstopMinBurst frames and twice the
	// budget's own burst.
	BackstopBurstTime = 0.05 // seconds
	BackstopMinBurst  = 32
	// MinFrame is the smallest Ethernet frame (without FCS), for a byte
	// budget's packet ceiling: the most frames it could admit.
	MinFrame = 60
)

// backstopFor returns direction d's backstop for the budgets p in force:
//
//   - the aggregate ceiling: d.Backstop if set; else, in shape mode,
//     BackstopFactor times the aggregate pps budget (with only a byte
//     budget, what it admits in minimum-size frames); in police mode,
//     PoliceBackstopFactor times that budget plus, for each class with a
//     ceiling of its own, what that ceiling lets through above the class's
//     budget (frames the forwarder drops by class, which the kernel has
//     already charged to the aggregate), never more than the shape mode's
//     ceiling; none without an aggregate budget;
//   - each class with a budget of its own (tcp-syn, udp from --syn-pps and
//     --udp-pps; icmp from --icmp-bps, in minimum-size frames) gets a
//     ceiling of its own, BackstopFactor times that budget, so a flood of
//     one class is dropped in the kernel before it can crowd out the VM's
//     other traffic in the aggregate ceiling;
//   - every ceiling at least BackstopMinPPS, with a burst of
//     BackstopBurstTime of its rate (at least BackstopMinBurst, and twice
//     the budget's own burst);
//   - nothing at all with d.BackstopOff (--backstop none).
//
// Bypass and control candidates are never charged (see package steer).
func BackstopFor(d DirSpec, p forward.Policy) steer.Backstop {
	var b steer.Backstop
	if d.BackstopOff {
		return b
	}
	excess := 0.0 // what the class ceilings pass above their budgets
	for _, c := range []struct {
		steer    steer.Class
		classify classify.Class
	}{{steer.ClassSyn, classify.TCPSyn}, {steer.ClassUDP, classify.UDP}, {steer.ClassICMP, classify.ICMP}} {
		l := p.Classes[c.classify]
		b.Classes[c.steer] = defaultCeiling(l, BackstopFactor)
		if b.Classes[c.steer].PPS > 0 {
			excess += b.Classes[c.steer].PPS - budgetPPS(l)
		}
	}
	switch {
	case d.Backstop != nil:
		b.Aggregate = ceiling(*d.Backstop, 0)
	case p.Mode == forward.Police:
		loose := defaultCeiling(p.Aggregate, BackstopFactor)
		b.Aggregate = defaultCeiling(p.Aggregate, PoliceBackstopFactor)
		if b.Aggregate.PPS > 0 {
			pps := math.Min(b.Aggregate.PPS+excess, loose.PPS)
			b.Aggregate = ceiling(pps, 2*p.Aggregate.Effective().BurstPackets)
		}
	default:
		b.Aggregate = defaultCeiling(p.Aggregate, BackstopFactor)
	}
	return b
}

// budgetPPS is the most frames per second budget l admits: its pps, or
// its byte rate in minimum-size frames; +Inf for no budget.
func budgetPPS(l bucket.Limits) float64 {
	pps := math.Inf(1)
	if l.PPS > 0 {
		pps = l.PPS
	}
	if l.BytesPerSec > 0 {
		pps = math.Min(pps, l.BytesPerSec/MinFrame)
	}
	if l.Block {
		pps = 0
	}
	return pps
}

// defaultCeiling is the default ceiling of one budget, factor times what
// it admits; none for no budget.
func defaultCeiling(l bucket.Limits, factor float64) steer.Ceiling {
	pps := budgetPPS(l)
	if math.IsInf(pps, 1) {
		return steer.Ceiling{}
	}
	return ceiling(math.Max(factor*pps, BackstopMinPPS), 2*l.Effective().BurstPackets)
}

func ceiling(pps float64, budgetBurst int) steer.Ceiling {
	burst := math.Max(math.Ceil(pps*BackstopBurstTime), math.Max(BackstopMinBurst, float64(budgetBurst)))
	return steer.Ceiling{PPS: pps, Burst: burst}
}

// apiBackstop reports b as status shows it; nil when it limits nothing.
func APIBackstop(b steer.Backstop) *api.Backstop {
	out := &api.Backstop{Classes: map[string]float64{}}
	if b.Aggregate.PPS > 0 {
		pps, burst := b.Aggregate.PPS, b.Aggregate.Burst
		out.PPS, out.Burst = &pps, &burst
	}
	for c := steer.Class(1); c < steer.NumClasses; c++ {
		if b.Classes[c].PPS > 0 {
			out.Classes[c.String()] = b.Classes[c].PPS
		}
	}
	if out.PPS == nil && len(out.Classes) == 0 {
		return nil
	}
	return out
}
