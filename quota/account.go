package quota

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Verdict is Admit's answer for one frame.
type Verdict uint8

const (
	// Pass: forward the frame; its bytes are counted.
	Pass Verdict = iota
	// DropSoft: dropped by the probabilistic zone between Soft and the
	// interval's quota.
	DropSoft
	// DropCap: dropped by the hard cap: the frame would take the interval
	// past its quota (less the bypass reserve).
	DropCap
	numVerdicts
)

var verdictNames = [...]string{Pass: "pass", DropSoft: "quota_soft", DropCap: "quota_cap"}

// String returns "pass", "quota_soft" or "quota_cap", names fit for a drop
// reason counter. It does not allocate.
func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return "invalid"
}

// unlimited is the quota of a burst interval without a ceiling.
const unlimited = math.MaxInt64

// Account is one tenant's quota: the samples of the current billing
// period, the open interval's counts and the burst policy. It is shared by
// the forwarders of all the tenant's ports, both directions, and safe for
// concurrent use: each billed direction (one for sum, to_vm and from_vm,
// two for max) has its own mutex, held for a few arithmetic operations per
// frame; an unbilled direction takes no lock. Admit and AdmitFluid do not
// allocate.
//
// Intervals advance lazily: Admit closes the open interval when a frame
// arrives after its end, and Tick does the same for idle tenants. Nothing
// reads the clock; every method takes the time.
type Account struct {
	cfg   Config
	lanes []*lane
	// route maps a frame's direction to the lane that bills it; nil means
	// the direction is not billed.
	route [numDirs]*lane
	// count counts the frames of unbilled directions; a lane counts its
	// own under its mutex.
	count [numDirs]dirCounters
}

// lane is one billed stream: a direction, or both summed.
type lane struct {
	mu sync.Mutex
	// Constant after New.
	name     string
	interval int64 // ns
	period   Period
	pct      float64
	qc       int64 // commit quota of an interval, bytes
	qb       int64 // burst quota of an interval, bytes; unlimited if no ceiling
	softFrac float64
	exponent float64
	reserve  float64 // bypass reserve, fraction of the quota
	burstRes int     // configured burst reserve, or AutoBurstReserve

	// The current period.
	periodStart int64   // ns
	n           int     // intervals in the period
	free        int     // intervals the percentile leaves unbilled
	keep        int     // burst intervals never spent on purpose
	samples     []int64 // bytes of the closed intervals, index = interval; cap: the longest period
	above       int     // closed intervals above qc

	// The open interval: samples[len(samples)] once closed.
	start, end int64   // ns
	normal     int64   // bytes of non-bypass frames passed
	bypass     int64   // bytes of bypass and control frames passed
	offered    int64   // bytes offered, passed or dropped, bypass included
	burst      bool    // the quota was raised to qb
	quota      int64   // qc, or qb once burst
	softB      int64   // bytes at which drops start: softFrac of quota
	reserveB   int64   // bytes kept for bypass: reserve of quota
	theta      float64 // projected gain (bytes) needed to burst; +Inf: none
	dirty      bool    // changed since the last Snapshot: see Tick
	frac       float64 // AdmitFluid's carried fraction of a byte

	// Offered bytes of the last closed intervals (a ring, across periods):
	// what the burst policy learns from.
	hist    []int64
	histLen int
	histPos int
	scratch []float64

	// Frames counted by direction (a sum lane counts both).
	count [numDirs]laneCounters
}

// dirCounters counts an unbilled direction's frames by verdict, bypass
// apart: index numVerdicts.
type dirCounters struct {
	pkts, bytes [numVerdicts + 1]atomic.Uint64
	_           [64]byte // keep the directions on separate cache lines
}

// laneCounters is dirCounters for a billed direction, under the lane's
// mutex.
type laneCounters struct {
	pkts, bytes [numVerdicts + 1]uint64
}

// Counters are one direction's counts since the Account was created.
// Frames of an unbilled direction count as passed. AdmitFluid counts bytes
// only.
type Counters struct {
	PassedPackets, PassedBytes     uint64
	SoftDropPackets, SoftDropBytes uint64
	CapDropPackets, CapDropBytes   uint64
	// Bypass counts bypass and control frames, all passed (not included
	// in Passed).
	BypassPackets, BypassBytes uint64
}

// New returns an Account for cfg with the period containing now opened:
// the intervals of the period before now count as zero (Restore a
// Snapshot to carry samples across restarts). It returns an error naming
// the setting to fix if cfg is invalid.
func New(cfg Config, now time.Time) (*Account, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Account{cfg: cfg}
	mk := func(name string) *lane {
		l := newLane(cfg, name)
		l.resetTo(now.UnixNano())
		a.lanes = append(a.lanes, l)
		return l
	}
	switch cfg.Direction {
	case BillMax:
		a.route[FromVM] = mk("from_vm")
		a.route[ToVM] = mk("to_vm")
	case BillSum:
		l := mk("sum")
		a.route[FromVM], a.route[ToVM] = l, l
	case BillToVM:
		a.route[ToVM] = mk("to_vm")
	case BillFromVM:
		a.route[FromVM] = mk("from_vm")
	}
	return a, nil
}

func newLane(cfg Config, name string) *lane {
	iv := cfg.Interval
	longest := int(cfg.Period.longest() / iv)
	l := &lane{
		name:     name,
		interval: int64(iv),
		period:   cfg.Period,
		pct:      cfg.Percentile,
		qc:       cfg.commitBytes(iv),
		qb:       unlimited,
		softFrac: cfg.Soft,
		exponent: cfg.Exponent,
		reserve:  cfg.BypassReserve,
		burstRes: cfg.BurstReserve,
		samples:  make([]int64, 0, longest),
		hist:     make([]int64, longest),
		scratch:  make([]float64, 0, longest),
	}
	if cfg.BurstCeiling != 0 {
		l.qb = rateBytes(cfg.BurstCeiling, iv)
	}
	return l
}

// Config returns the Account's configuration.
func (a *Account) Config() Config { return a.cfg }

// Admit decides one frame of n bytes travelling in direction d at now, and
// counts it. bypass marks the bypass and control classes: they always pass
// and count towards the bill. rnd is a uniformly random 32-bit value (see
// Rand) that decides frames in the probabilistic zone: the frame is dropped
// when rnd < p·2³². The forwarder calls it after its own budgets have
// admitted the frame. Frames of an unbilled direction always pass. Safe for
// concurrent use; it does not allocate.
func (a *Account) Admit(d Dir, n int, bypass bool, now time.Time, rnd uint32) Verdict {
	if d >= numDirs || n < 0 {
		return Pass
	}
	k := numVerdicts // the counter index: the verdict, or bypass
	l := a.route[d]
	if l == nil {
		if !bypass {
			k = Pass
		}
		c := &a.count[d]
		c.pkts[k].Add(1)
		c.bytes[k].Add(uint64(n))
		return Pass
	}
	v := Pass
	ns := now.UnixNano()
	l.mu.Lock()
	if ns >= l.end {
		l.advanceLocked(ns)
	}
	l.offered += int64(n)
	if bypass {
		l.bypass += int64(n)
	} else {
		v = l.decideLocked(int64(n), ns, rnd)
		k = v
	}
	c := &l.count[d]
	c.pkts[k]++
	c.bytes[k] += uint64(n)
	l.mu.Unlock()
	return v
}

// decideLocked is Admit's decision for a non-bypass frame. Caller holds mu.
func (l *lane) decideLocked(n, ns int64, rnd uint32) Verdict {
	if !l.burst && l.level()+n > l.softB {
		l.considerBurstLocked(n, ns)
	}
	level := l.level()
	if l.quota == unlimited {
		l.normal += n
		return Pass
	}
	if level+n > l.quota {
		return DropCap
	}
	if level > l.softB {
		if p := l.dropProb(level); float64(rnd) < p*(1<<32) {
			return DropSoft
		}
	}
	l.normal += n
	return Pass
}

// level is how full the open interval is for non-bypass frames: their
// bytes plus the bypass bytes or the room reserved for them, whichever is
// more.
func (l *lane) level() int64 { return l.normal + max(l.bypass, l.reserveB) }

// dropProb is the drop probability at level bytes of a finite quota, level
// in (softB, quota]: ((level-soft)/(quota-soft))^exponent.
func (l *lane) dropProb(level int64) float64 {
	zone := l.quota - l.softB
	if zone <= 0 {
		return 0
	}
	x := float64(level-l.softB) / float64(zone)
	if x >= 1 {
		return 1
	}
	if l.exponent != 1 {
		x = math.Pow(x, l.exponent)
	}
	return x
}

// considerBurstLocked raises the open interval's quota to the burst quota
// if its projected gain beats the threshold. Caller holds mu.
//
// The projection assumes the rest of the interval is offered at the
// average rate seen so far in it: the bytes offered before the n bytes
// being decided, over the time elapsed (offered bytes include what was
// dropped, so a capped interval keeps learning its demand). The gain is what the
// burst quota would deliver beyond the commit quota. Raising the quota
// spends nothing yet: a burst interval is only counted once its bytes pass
// the commit quota.
func (l *lane) considerBurstLocked(n, ns int64) {
	if math.IsInf(l.theta, 1) || l.qb <= l.qc {
		return
	}
	elapsed := max(ns-l.start, l.interval/64)
	proj := float64(l.offered-n) * float64(l.interval) / float64(elapsed)
	if gain := math.Min(proj, float64(l.qb)) - float64(l.qc); gain > l.theta*tieMargin && gain > 0 {
		l.setQuotaLocked(true)
	}
}

func (l *lane) setQuotaLocked(burst bool) {
	l.burst = burst
	l.quota = l.qc
	if burst {
		l.quota = l.qb
		l.dirty = true
	}
	if l.quota == unlimited {
		l.softB, l.reserveB = unlimited, 0
		return
	}
	l.softB = int64(l.softFrac * float64(l.quota))
	l.reserveB = int64(l.reserve * float64(l.quota))
}

// AdmitFluid offers n bytes of non-bypass traffic in direction d, which
// arrived evenly over a short time ending at now, as a fluid, as if split into infinitely small frames, and returns how
// many pass: full speed below the soft level, the expected share
// 1-p(level) in the probabilistic zone (integrated in small steps of the
// level), nothing past the quota. It runs the same interval, burst and
// drop logic as Admit, for simulations on a simulated clock. Counters see
// bytes, not packets. Safe for concurrent use; it does not allocate.
func (a *Account) AdmitFluid(d Dir, n int64, now time.Time) int64 {
	if d >= numDirs || n <= 0 {
		return 0
	}
	l := a.route[d]
	if l == nil {
		a.count[d].bytes[Pass].Add(uint64(n))
		return n
	}
	ns := now.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	if ns >= l.end {
		l.advanceLocked(ns)
	}
	l.offered += n
	var passed, soft int64
	rem := n
	for rem > 0 {
		if !l.burst && l.level()+rem > l.softB {
			l.considerBurstLocked(rem, ns)
		}
		level := l.level()
		if l.quota == unlimited {
			passed += rem
			l.normal += rem
			rem = 0
			break
		}
		if level >= l.quota {
			break
		}
		if level < l.softB {
			take := min(rem, l.softB-level)
			l.normal += take
			passed += take
			rem -= take
			continue
		}
		piece := min(rem, max(1, (l.quota-l.softB)/256))
		want := float64(piece)*(1-l.dropProb(level)) + l.frac
		adm := math.Floor(want)
		l.frac = want - adm
		take := min(int64(adm), l.quota-level)
		l.normal += take
		passed += take
		soft += piece - take
		rem -= piece
	}
	lc := &l.count[d]
	lc.bytes[Pass] += uint64(passed)
	lc.bytes[DropSoft] += uint64(soft)
	lc.bytes[DropCap] += uint64(rem)
	return passed
}

// Tick closes every interval that ended before now, in every billed
// direction, and returns how many it closed (summed over directions) and
// whether the Account holds something a restart must not lose since the
// last Snapshot: a closed interval, or the open interval raised to a burst
// interval. The daemon calls it every second or so, and when save is true
// persists a Snapshot (Store.Save); if that fails it should try again at
// the next Tick. A raise lost in the moment before it is saved is what the
// burst reserve (Config.BurstReserve) covers. Safe for concurrent use; it
// does not allocate.
func (a *Account) Tick(now time.Time) (closed int, save bool) {
	ns := now.UnixNano()
	for _, l := range a.lanes {
		l.mu.Lock()
		if ns >= l.end {
			closed += l.advanceLocked(ns)
		}
		save = save || l.dirty
		l.mu.Unlock()
	}
	return closed, save
}

// Counters returns direction d's counts.
func (a *Account) Counters(d Dir) Counters {
	if d >= numDirs {
		return Counters{}
	}
	var pk, by [numVerdicts + 1]uint64
	if l := a.route[d]; l != nil {
		l.mu.Lock()
		pk, by = l.count[d].pkts, l.count[d].bytes
		l.mu.Unlock()
	} else {
		c := &a.count[d]
		for i := range pk {
			pk[i], by[i] = c.pkts[i].Load(), c.bytes[i].Load()
		}
	}
	return Counters{
		PassedPackets: pk[Pass], PassedBytes: by[Pass],
		SoftDropPackets: pk[DropSoft], SoftDropBytes: by[DropSoft],
		CapDropPackets: pk[DropCap], CapDropBytes: by[DropCap],
		BypassPackets: pk[numVerdicts], BypassBytes: by[numVerdicts],
	}
}

// resetTo opens the period and interval containing ns with nothing
// recorded before it: the period's earlier intervals are zero and the
// history is empty.
func (l *lane) resetTo(ns int64) {
	l.openPeriodLocked(ns)
	idx := int((ns - l.periodStart) / l.interval)
	l.samples = l.samples[:idx]
	clear(l.samples)
	l.start = l.periodStart + int64(idx)*l.interval
	l.end = l.start + l.interval
	l.openIntervalLocked()
	l.thresholdLocked()
}

// openPeriodLocked sets the period containing ns, with no samples yet.
func (l *lane) openPeriodLocked(ns int64) {
	ps, pe := l.period.Bounds(time.Unix(0, ns))
	l.periodStart = ps.UnixNano()
	l.n = int(pe.Sub(ps) / time.Duration(l.interval))
	l.free = FreeIntervals(l.n, l.pct)
	l.keep = l.burstRes
	if l.keep < 0 {
		l.keep = l.free / 50
	}
	l.samples = l.samples[:0]
	l.above = 0
}

func (l *lane) openIntervalLocked() {
	l.normal, l.bypass, l.offered, l.frac = 0, 0, 0, 0
	l.setQuotaLocked(false)
}

// advanceLocked closes the open interval and every later one that ended at
// or before ns, opens the one containing ns, and returns how many it
// closed. Caller holds mu and has checked ns >= l.end.
func (l *lane) advanceLocked(ns int64) int {
	// A gap longer than a period and the history together leaves nothing
	// of the past to keep: jump.
	if gap := (ns - l.end) / l.interval; gap > int64(l.n+len(l.hist)) {
		l.closeLocked()
		l.histLen, l.histPos = 0, 0
		l.resetTo(ns)
		return 1 + int(gap)
	}
	closed := 0
	for ns >= l.end {
		l.closeLocked()
		closed++
		l.start, l.end = l.end, l.end+l.interval
		if len(l.samples) == l.n {
			l.openPeriodLocked(l.start)
		}
		l.openIntervalLocked()
	}
	l.thresholdLocked()
	return closed
}

// closeLocked records the open interval's sample and offered bytes.
func (l *lane) closeLocked() {
	l.dirty = true
	total := l.normal + l.bypass
	if len(l.samples) < cap(l.samples) {
		l.samples = append(l.samples, total)
	}
	if total > l.qc {
		l.above++
	}
	l.pushHist(l.offered)
}

// idx is the open interval's index in its period.
func (l *lane) idx() int { return len(l.samples) }

// burstLeft is how many burst intervals the period has left: the free
// intervals less those above the commit, the open one included.
func (l *lane) burstLeft() int {
	used := l.above
	if l.normal+l.bypass > l.qc {
		used++
	}
	return l.free - used
}

// gain is what the burst quota delivers beyond the commit quota for an
// interval offered o bytes.
func (l *lane) gain(o int64) float64 {
	return float64(min(o, l.qb)) - float64(min(o, l.qc))
}

// thresholdLocked sets theta, the gain in bytes an interval must be
// projected to beat to be raised to the burst quota. Caller holds mu.
//
// The policy spends burst intervals as if the rest of the period will
// offer what the past offered. avail (the intervals left, less the
// reserve) over the remaining intervals is the share phi of the future
// that may burst; the threshold is the gain that only a share phi of past
// intervals beat. Until a tenth of a period of history exists, the history
// is taken to be that long, which spends greedily at first: the threshold
// then rises as tokens are spent and history accumulates. With no history
// of gains, or more tokens than candidates, every interval above the
// commit may burst.
func (l *lane) thresholdLocked() {
	l.theta = math.Inf(1)
	if l.qb <= l.qc {
		return
	}
	remaining := l.n - l.idx()
	avail := l.free - l.above - l.keep
	if avail <= 0 || remaining <= 0 {
		return
	}
	l.theta = 0
	if avail >= remaining {
		return
	}
	phi := float64(avail) / float64(remaining)
	k := int(phi * float64(max(l.histLen, len(l.hist)/10)))
	s := l.scratch[:0]
	for i := range l.histLen {
		if g := l.gain(l.hist[i]); g > 0 {
			s = append(s, g)
		}
	}
	if len(s) <= k {
		return
	}
	// The (k+1)-th largest past gain: intervals must beat it.
	l.theta = selectDesc(s, k)
}

// selectDesc returns the element that would be at index k if s were sorted
// in descending order, reordering s: quickselect with a three-way
// partition, so that runs of equal gains (every interval at the burst
// ceiling gains the same) stay linear. It does not allocate.
func selectDesc(s []float64, k int) float64 {
	lo, hi := 0, len(s) // s[lo:hi] holds the answer
	for hi-lo > 1 {
		a, b, c := s[lo], s[lo+(hi-lo)/2], s[hi-1]
		pivot := max(min(a, b), min(max(a, b), c)) // median of three
		// s[lo:gt] > pivot, s[gt:i] == pivot, s[lt:hi] < pivot.
		gt, i, lt := lo, lo, hi
		for i < lt {
			switch v := s[i]; {
			case v > pivot:
				s[gt], s[i] = s[i], s[gt]
				gt++
				i++
			case v < pivot:
				lt--
				s[lt], s[i] = s[i], s[lt]
			default:
				i++
			}
		}
		switch {
		case k < gt:
			hi = gt
		case k < lt:
			return pivot
		default:
			lo = lt
		}
	}
	return s[k]
}

// tieMargin is how much a projected gain must beat the threshold by.
// Projections are noisy and re-evaluated frame after frame, so a run of
// intervals with equal gains would otherwise win about half the time
// against a threshold they only tie with.
const tieMargin = 1.02
