package quota

import (
	"errors"
	"fmt"
	"time"
)

// SnapshotVersion is the version of Snapshot this package writes and reads.
const SnapshotVersion = 1

// Snapshot is an Account's persistent state: the samples of the current
// period, the open interval's counts and the offered bytes the burst
// policy learns from. It is plain data, serializable as JSON: a month of
// 5-minute intervals is about 18 000 numbers per billed direction.
type Snapshot struct {
	Version  int            `json:"version"`
	Tenant   string         `json:"tenant"`
	Interval time.Duration  `json:"interval_ns"`
	Taken    time.Time      `json:"taken"`
	Lanes    []LaneSnapshot `json:"lanes"`
	// Clean, if not nil, says the snapshot was taken at a clean stop
	// (see RestoreAfterCleanStop). Snapshot leaves it nil; the caller
	// sets it.
	Clean *CleanStop `json:"clean,omitempty"`
}

// CleanStop marks a snapshot taken at a clean stop, after every forwarder
// that charged the Account had stopped: the open interval's counts are
// complete up to Taken. Ports holds what the caller needs to learn what
// passed while nothing metered the tenant's ports.
type CleanStop struct {
	Ports []PortMeter `json:"ports"`
}

// PortMeter is one of a tenant's ports, as its interface counters stood at
// a clean stop. Ifindex 0 means the port did not exist then.
type PortMeter struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	// FromVMBytes and ToVMBytes are the host port's rx_bytes (frames from
	// the VM) and tx_bytes (frames to the VM), Ethernet headers included,
	// as the forwarder counts a frame.
	FromVMBytes uint64 `json:"from_vm_bytes"`
	ToVMBytes   uint64 `json:"to_vm_bytes"`
}

// Unmetered is what passed a tenant's ports, in bytes per direction, while
// no forwarder metered them.
type Unmetered struct {
	FromVM, ToVM int64
}

// LaneSnapshot is one billed direction's state.
type LaneSnapshot struct {
	// Name is from_vm, to_vm (billed max, to_vm, from_vm) or sum.
	Name        string    `json:"name"`
	PeriodStart time.Time `json:"period_start"`
	// Samples are the bytes of the period's closed intervals, in order;
	// the open interval is number len(Samples).
	Samples []int64 `json:"samples"`
	// The open interval's bytes passed (non-bypass, bypass), offered, and
	// whether it was raised to the burst quota.
	Normal  int64 `json:"normal"`
	Bypass  int64 `json:"bypass"`
	Offered int64 `json:"offered"`
	Burst   bool  `json:"burst"`
	// History holds the offered bytes of the last closed intervals, oldest
	// first, across periods.
	History []int64 `json:"history"`
}

// ErrSnapshotMismatch means a snapshot does not fit the Account's
// configuration (another tenant, interval, billed direction or period
// alignment): its samples cannot be carried over. The caller should say
// so and start the tenant afresh (or restore it under its old settings).
var ErrSnapshotMismatch = errors.New("quota snapshot does not match the tenant's configuration")

// Snapshot closes the intervals that ended before now (as Tick does) and
// returns a copy of the Account's persistent state, which Tick then counts
// as saved. Safe for concurrent use.
func (a *Account) Snapshot(now time.Time) Snapshot {
	ns := now.UnixNano()
	s := Snapshot{Version: SnapshotVersion, Tenant: a.cfg.Tenant, Interval: a.cfg.Interval, Taken: now.UTC()}
	for _, l := range a.lanes {
		l.mu.Lock()
		if ns >= l.end {
			l.advanceLocked(ns)
		}
		l.dirty = false
		ls := LaneSnapshot{
			Name:        l.name,
			PeriodStart: time.Unix(0, l.periodStart).UTC(),
			Samples:     append([]int64{}, l.samples...),
			Normal:      l.normal,
			Bypass:      l.bypass,
			Offered:     l.offered,
			Burst:       l.burst,
			History:     make([]int64, 0, l.histLen),
		}
		for i := range l.histLen {
			ls.History = append(ls.History, l.hist[(l.histPos-l.histLen+i+len(l.hist))%len(l.hist)])
		}
		l.mu.Unlock()
		s.Lanes = append(s.Lanes, ls)
	}
	return s
}

// Restore replaces the Account's state with s, after a restart, and
// applies the crash rule. The interval that was open when s was taken was
// cut short: whatever passed in it after s was taken is unknown, so it
// counts as having reached its quota: the commit, or if it had been raised
// to a burst interval, the burst ceiling (it then counts as a burst
// interval; without a ceiling it is marked just above the commit). Every
// later interval up to the one containing now was not seen at all and
// counts as at the commit quota too, the one containing now included:
// other than bypass frames, nothing more passes in it. The reserves for
// bypass count as used in all of them. So a lost partial count can never
// push the bill over the commit.
//
// Restore checks s completely before changing anything: on error (wrapping
// ErrSnapshotMismatch or describing the damage) the Account is unchanged.
func (a *Account) Restore(s Snapshot, now time.Time) error {
	if err := a.check(s); err != nil {
		return err
	}
	a.restore(s, now, nil)
	return nil
}

// RestoreAfterCleanStop restores s, a snapshot taken at a clean stop
// (s.Clean set), without the crash rule when that is safe: now is still in
// the interval that was open when s was taken, in every billed direction,
// and u is what passed meanwhile. The open interval then keeps its counts,
// with u added as passed bytes (non-bypass): a daemon restarted for an
// upgrade does not cost the tenant the rest of the interval. Otherwise (no
// s.Clean, another interval, or u unknown: nil) it applies the crash rule,
// as Restore does. It reports whether it restored without the crash rule.
// On error the Account is unchanged.
func (a *Account) RestoreAfterCleanStop(s Snapshot, now time.Time, u *Unmetered) (clean bool, err error) {
	if err := a.check(s); err != nil {
		return false, err
	}
	if s.Clean == nil || u == nil || u.FromVM < 0 || u.ToVM < 0 {
		u = nil
	}
	return a.restore(s, now, u), nil
}

// AddUnmetered adds u, bytes that passed the tenant's ports while no
// forwarder metered them (between a restart's restore and the forwarders'
// start), to the interval open at now, as passed non-bypass bytes. Safe
// for concurrent use.
func (a *Account) AddUnmetered(now time.Time, u Unmetered) {
	ns := now.UnixNano()
	for _, l := range a.lanes {
		var extra int64
		if a.route[FromVM] == l {
			extra += max(u.FromVM, 0)
		}
		if a.route[ToVM] == l {
			extra += max(u.ToVM, 0)
		}
		l.mu.Lock()
		if ns >= l.end {
			l.advanceLocked(ns)
		}
		l.normal = min(l.normal+extra, maxBytes)
		l.offered = min(l.offered+extra, maxBytes)
		l.mu.Unlock()
	}
}

// check validates s against the Account's configuration.
func (a *Account) check(s Snapshot) error {
	if s.Version != SnapshotVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrSnapshotMismatch, s.Version, SnapshotVersion)
	}
	if s.Tenant != a.cfg.Tenant {
		return fmt.Errorf("%w: snapshot of tenant %q, not %q", ErrSnapshotMismatch, s.Tenant, a.cfg.Tenant)
	}
	if s.Interval != a.cfg.Interval {
		return fmt.Errorf("%w: interval %v, now %v", ErrSnapshotMismatch, s.Interval, a.cfg.Interval)
	}
	if len(s.Lanes) != len(a.lanes) {
		return fmt.Errorf("%w: %d billed directions, now %d (direction %s)", ErrSnapshotMismatch, len(s.Lanes), len(a.lanes), a.cfg.Direction)
	}
	for i, l := range a.lanes {
		if err := l.check(s.Lanes[i]); err != nil {
			return err
		}
	}
	return nil
}

// restore loads a checked snapshot; with u, and now still in every lane's
// open interval, without the crash rule (reported true).
func (a *Account) restore(s Snapshot, now time.Time, u *Unmetered) bool {
	ns := now.UnixNano()
	if u != nil {
		for i := range a.lanes {
			if ns >= openEnd(s.Lanes[i], s.Interval) || ns < s.Taken.UnixNano() {
				u = nil
				break
			}
		}
	}
	for i, l := range a.lanes {
		extra := int64(-1) // the crash rule
		if u != nil {
			extra = 0
			if a.route[FromVM] == l {
				extra += u.FromVM
			}
			if a.route[ToVM] == l {
				extra += u.ToVM
			}
		}
		l.mu.Lock()
		l.restoreLocked(s.Lanes[i], ns, extra)
		l.mu.Unlock()
	}
	return u != nil
}

// openEnd returns when the interval open in ls ends, in ns.
func openEnd(ls LaneSnapshot, interval time.Duration) int64 {
	return ls.PeriodStart.UnixNano() + int64(len(ls.Samples)+1)*int64(interval)
}

// The times an Account handles: where UnixNano is defined, with a margin.
var (
	minTime = time.Date(1700, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2250, 1, 1, 0, 0, 0, 0, time.UTC)
)

// maxBytes bounds a snapshot's byte counts (an interval of a month at 10
// Tbit/s is 3.3e18 bytes), so that sums of them cannot overflow.
const maxBytes = 1 << 61

// check validates a lane snapshot against l's configuration.
func (l *lane) check(s LaneSnapshot) error {
	if s.Name != l.name {
		return fmt.Errorf("%w: direction %q where %q is billed", ErrSnapshotMismatch, s.Name, l.name)
	}
	if s.PeriodStart.Before(minTime) || s.PeriodStart.After(maxTime) {
		return fmt.Errorf("%w: %s: period start %s is out of range", ErrSnapshotMismatch, s.Name, s.PeriodStart.Format(time.RFC3339))
	}
	ps, pe := l.period.Bounds(s.PeriodStart)
	if !ps.Equal(s.PeriodStart) {
		return fmt.Errorf("%w: %s: period start %s is not the start of a period %s", ErrSnapshotMismatch, s.Name, s.PeriodStart.Format(time.RFC3339), l.period)
	}
	n := int(pe.Sub(ps) / time.Duration(l.interval))
	if len(s.Samples) >= n {
		return fmt.Errorf("%w: %s: %d closed samples in a period of %d intervals", ErrSnapshotMismatch, s.Name, len(s.Samples), n)
	}
	if len(s.History) > len(l.hist) {
		return fmt.Errorf("%w: %s: %d history entries, at most %d", ErrSnapshotMismatch, s.Name, len(s.History), len(l.hist))
	}
	for _, vs := range [][]int64{s.Samples, s.History, {s.Normal, s.Bypass, s.Offered}} {
		for _, v := range vs {
			if v < 0 || v > maxBytes {
				return fmt.Errorf("%w: %s: byte count %d is out of range", ErrSnapshotMismatch, s.Name, v)
			}
		}
	}
	return nil
}

// restoreLocked loads a checked lane snapshot and applies the crash rule
// up to ns; with extra >= 0 (a clean stop, ns in the open interval), the
// open interval keeps its counts plus extra passed bytes instead. Caller
// holds mu.
func (l *lane) restoreLocked(s LaneSnapshot, ns int64, extra int64) {
	l.openPeriodLocked(s.PeriodStart.UnixNano())
	l.samples = append(l.samples[:0], s.Samples...)
	for _, v := range l.samples {
		if v > l.qc {
			l.above++
		}
	}
	l.histLen, l.histPos = 0, 0
	for _, v := range s.History {
		l.pushHist(v)
	}
	l.start = l.periodStart + int64(len(l.samples))*l.interval
	l.end = l.start + l.interval
	l.openIntervalLocked()
	l.bypass, l.offered = s.Bypass, s.Offered
	if extra >= 0 {
		l.setQuotaLocked(s.Burst)
		l.normal = min(s.Normal+extra, maxBytes)
		l.offered = min(s.Offered+extra, maxBytes)
		l.thresholdLocked()
		return
	}
	l.atQuotaLocked(s.Burst, s.Normal)
	// The intervals the daemon did not see: each at the commit quota.
	if gap := (ns - l.end) / l.interval; gap > int64(2*l.n+len(l.hist)) {
		// Too long ago to walk: everything of the period containing ns
		// is unknown.
		l.histLen, l.histPos = 0, 0
		l.resetTo(ns)
		for i := range l.samples {
			l.samples[i] = l.qc
		}
		l.atQuotaLocked(false, 0)
	}
	for ns >= l.end {
		l.closeLocked()
		l.start, l.end = l.end, l.end+l.interval
		if len(l.samples) == l.n {
			l.openPeriodLocked(l.start)
		}
		l.openIntervalLocked()
		l.atQuotaLocked(false, 0)
	}
	l.thresholdLocked()
}

// atQuotaLocked marks the open interval as having reached its quota, with
// the bypass reserve used, keeping counts already above that. A burst
// interval without a ceiling is marked just above the commit.
func (l *lane) atQuotaLocked(burst bool, normal int64) {
	l.setQuotaLocked(burst)
	l.bypass = max(l.bypass, l.reserveB)
	if l.quota == unlimited {
		l.normal = max(normal, l.qc+1-l.bypass)
	} else {
		l.normal = max(normal, l.quota-l.bypass)
	}
	l.offered = max(l.offered, l.normal+l.bypass)
}

func (l *lane) pushHist(v int64) {
	l.hist[l.histPos] = v
	l.histPos = (l.histPos + 1) % len(l.hist)
	l.histLen = min(l.histLen+1, len(l.hist))
}
