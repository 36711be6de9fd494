package main

import "time"

// pacer spreads packets evenly at pps packets per second from start, in
// small batches. The schedule is integer nanosecond arithmetic: after t
// the pacer has released exactly floor(pps*t) packets, minus what it
// forgave.
//
// When the sender wakes late (a busy CPU, a stall), the missed packets are
// not sent back to back: they are caught up at no more than catchup times
// the target rate, in runs of at most burst packets (a GCRA limit), so a
// policer under test sees a bounded excess and the long-run offered rate
// still meets the target. A debt beyond maxDebt packets (1 s worth: a
// long stall, or a sender that cannot reach the rate) is forgiven and counted in behind:
// a nonzero behind means the target was not met.
//
// The zero value is not usable; use newPacer. Not safe for concurrent use.
type pacer struct {
	pps     int64 // target, packets per second, > 0
	burst   int64 // most packets released back to back, > 0
	maxDebt int64 // most packets owed before forgiving, >= burst
	start   time.Time
	acct    int64 // packets sent or forgiven
	behind  int64 // packets forgiven

	// GCRA for the catch-up cap: one packet per capT, at most burst at once.
	capT time.Duration // 1/(catchup*pps), at least 1 ns
	tat  time.Duration // theoretical arrival time, since start
	last time.Duration // now at the last next(), since start
}

// catchup is how much faster than the target a late sender may catch up.
const catchup = 2

func newPacer(pps, burst int64, start time.Time) *pacer {
	burst = max(burst, 1)
	return &pacer{
		pps:     pps,
		burst:   burst,
		maxDebt: max(burst, pps),
		start:   start,
		capT:    max(time.Duration(1e9/(catchup*pps)), 1),
	}
}

// due returns how many packets the schedule allows after elapsed.
func (p *pacer) due(elapsed time.Duration) int64 {
	ns := int64(elapsed)
	if ns <= 0 {
		return 0
	}
	return ns/1e9*p.pps + ns%1e9*p.pps/1e9
}

// at returns the elapsed time at which the schedule allows n packets:
// ceil(n*1e9/pps) nanoseconds, without overflow.
func (p *pacer) at(n int64) time.Duration {
	q, r := n/p.pps, n%p.pps
	return time.Duration(q*1e9 + (r*1e9+p.pps-1)/p.pps)
}

// next returns how many packets (at most limit) may be sent at now, or 0
// and how long to wait before asking again. Call sent with the number
// actually sent before the next call.
func (p *pacer) next(now time.Time, limit int) (int, time.Duration) {
	el := now.Sub(p.start)
	p.last = el
	owed := p.due(el) - p.acct
	if owed > p.maxDebt {
		p.behind += owed - p.maxDebt
		p.acct += owed - p.maxDebt
		owed = p.maxDebt
	}
	if owed <= 0 {
		return 0, p.at(p.acct+1) - el
	}
	// Catch-up cap: packets whose GCRA arrival time fits within burst.
	tat := max(p.tat, el)
	tau := time.Duration(p.burst-1) * p.capT
	if tat > el+tau {
		return 0, tat - tau - el
	}
	capN := int64((el+tau-tat)/p.capT) + 1
	return int(min(owed, capN, int64(limit))), 0
}

// sent records n packets as sent at the time of the last next call.
func (p *pacer) sent(n int) {
	p.acct += int64(n)
	p.tat = max(p.tat, p.last) + time.Duration(n)*p.capT
}
