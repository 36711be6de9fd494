package quota

import (
	"slices"
	"time"
)

// Report is a tenant's billing period so far, as `shaperd quota report
// --json` prints it and `status --json` lists it under "quotas". Rates are
// in bits per second.
type Report struct {
	Tenant    string `json:"tenant"`
	CommitBPS uint64 `json:"commit_bps"`
	// PercentileBPS is the billed percentile of the period so far: over
	// all of the period's intervals, the ones not closed yet counting as
	// zero.
	PercentileBPS uint64 `json:"percentile_bps"`
	// BurstIntervalsUsed counts the period's intervals above the commit,
	// the open one included once it is; BurstIntervalsLeft is the free
	// intervals less those. Negative means the bill is above the commit
	// (only bypass traffic can do that). Billed max reports the direction
	// with the fewest left.
	BurstIntervalsUsed int `json:"burst_intervals_used"`
	BurstIntervalsLeft int `json:"burst_intervals_left"`
	// ProjectedBPS is the bill at the end of the period if the rest of it
	// repeats the closed samples so far, in order, with the engine's rule
	// applied: a repeated interval above the commit keeps its rate only
	// while burst intervals (less the reserve) are left, and is capped at
	// the commit after that.
	ProjectedBPS uint64 `json:"projected_bps"`
	// Samples are the period's closed intervals, in order: start and
	// average rate. Billed max shows the larger direction of each
	// interval, sum the sum.
	Samples []Sample `json:"samples"`
}

// Sample is one closed interval.
type Sample struct {
	Start time.Time `json:"start"`
	BPS   uint64    `json:"bps"`
}

// Report closes the intervals that ended before now (as Tick does) and
// returns the period so far. Safe for concurrent use.
func (a *Account) Report(now time.Time) Report {
	ns := now.UnixNano()
	iv := a.cfg.Interval
	r := Report{Tenant: a.cfg.Tenant, CommitBPS: uint64(a.cfg.Commit), BurstIntervalsLeft: int(^uint(0) >> 1), Samples: []Sample{}}
	var (
		samples []int64
		period  int64 // the first lane's period start, ns
	)
	for li, l := range a.lanes {
		l.mu.Lock()
		if ns >= l.end {
			l.advanceLocked(ns)
		}
		s := slices.Clone(l.samples)
		n, free, qc, keep := l.n, l.free, l.qc, l.keep
		left := l.burstLeft()
		ps := l.periodStart
		l.mu.Unlock()

		r.PercentileBPS = max(r.PercentileBPS, BytesToBPS(NearestRank(s, n, a.cfg.Percentile), iv))
		r.ProjectedBPS = max(r.ProjectedBPS, BytesToBPS(project(s, n, qc, left, keep, a.cfg.Percentile), iv))
		r.BurstIntervalsUsed = max(r.BurstIntervalsUsed, free-left)
		r.BurstIntervalsLeft = min(r.BurstIntervalsLeft, left)
		if li == 0 {
			samples, period = s, ps
			for i := range s {
				r.Samples = append(r.Samples, Sample{Start: time.Unix(0, ps+int64(i)*int64(iv)).UTC()})
			}
		} else if ps == period {
			// The same period: interval by interval. Lanes can be a
			// period apart: one already advanced past now (a forwarder's
			// clock a little ahead at the boundary), or restored so.
			for i := range min(len(s), len(samples)) {
				samples[i] = max(samples[i], s[i])
			}
		}
	}
	for i := range r.Samples {
		r.Samples[i].BPS = BytesToBPS(samples[i], iv)
	}
	return r
}

// project returns the percentile at the end of a period of n intervals
// whose closed samples so far are s, if the remaining intervals repeat s
// in order and intervals above the commit quota qc keep their bytes only
// while more than keep of the left burst intervals remain.
func project(s []int64, n int, qc int64, left, keep int, pct float64) int64 {
	if len(s) == 0 {
		return 0
	}
	all := make([]int64, n)
	copy(all, s)
	for j := len(s); j < n; j++ {
		v := s[(j-len(s))%len(s)]
		if v > qc {
			if left > keep {
				left--
			} else {
				v = qc
			}
		}
		all[j] = v
	}
	return NearestRank(all, n, pct)
}
