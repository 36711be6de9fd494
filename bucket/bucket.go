// Package bucket holds the per-port packet and byte budgets that police a
// VM's traffic on the forwarding hot path.
//
// A Budget is two token buckets, one in packets and one in bytes, that must
// both admit a frame, each a golang.org/x/time/rate Limiter. Time is passed
// in by the caller as integer monotonic nanoseconds (the forwarder's one
// clock), never read from the clock, so that tests run on a manual clock;
// the Limiters get it as a time.Time built from those nanoseconds, which
// costs no clock reading and no allocation. Checking and charging a frame
// allocates nothing.
package bucket

import (
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/time/rate"
)

// MaxFrame is the largest Ethernet frame shaperd forwards, in bytes: 1500
// bytes of payload, 14 of header and two 802.1Q tags (8), without FCS.
// A byte bucket must be at least this deep, or the largest frames could
// never pass.
const MaxFrame = 1522

// DefaultBurstTime is how much of a rate a default burst holds: a bucket
// whose depth is not configured holds 10 ms worth of its rate.
const DefaultBurstTime = 10 * time.Millisecond

// maxDefaultBurst caps a default burst computed from an absurdly large rate,
// so that the conversion to int stays defined. Real rates are far below it
// (10 ms of 100 Gbit/s is 125 MB).
const maxDefaultBurst = math.MaxInt32

// ErrInvalidLimits is wrapped by every error from Limits.Validate, New and
// SetLimits that rejects a configuration. The message names the flag to fix
// (--pps, --bps, --burst, --burst-bytes); callers should report it to the
// operator as a usage error, not retry.
var ErrInvalidLimits = errors.New("invalid limits")

// limitsError is a Validate failure: its text names the flag to fix and it
// matches ErrInvalidLimits under errors.Is.
type limitsError struct{ msg string }

func (e *limitsError) Error() string        { return e.msg }
func (e *limitsError) Is(target error) bool { return target == ErrInvalidLimits }

func invalid(format string, args ...any) error {
	return &limitsError{msg: fmt.Sprintf(format, args...)}
}

// Limits configures a Budget. The zero value admits everything.
//
// A burst given without its rate (BurstPackets without PPS, BurstBytes
// without BytesPerSec) is accepted and unused: that dimension has no limit.
// It is still checked on its own (not negative; BurstBytes at least
// MaxFrame), and Effective reports it as given, so that status shows the
// operator a burst that does nothing.
type Limits struct {
	// PPS is the packet rate in packets per second; 0 means no packet limit.
	PPS float64
	// BytesPerSec is the byte rate in bytes per second (not bits); 0 means
	// no byte limit. The --bps flag takes tc syntax and is converted.
	BytesPerSec float64
	// BurstPackets is the depth of the packet bucket in packets; 0 means the
	// default: DefaultBurstTime worth of PPS, rounded up, at least 1.
	BurstPackets int
	// BurstBytes is the depth of the byte bucket in bytes; 0 means the
	// default: DefaultBurstTime worth of BytesPerSec, rounded up, at least
	// MaxFrame. A frame larger than the depth is never admitted.
	BurstBytes int
	// Block admits nothing at all, whatever the rates (used when a stage
	// blocks a class). The buckets keep refilling while blocked.
	Block bool
}

// Validate checks l and returns an error that names the flag to fix and
// wraps ErrInvalidLimits, or nil. It has no direction or port context:
// callers may wrap it ("ingress: %w"). It rejects negative, NaN and
// infinite rates (use 0 for no limit), negative bursts, and a BurstBytes
// smaller than MaxFrame.
func (l Limits) Validate() error {
	if err := checkRate("--pps", l.PPS, "packets/s", "no packet limit"); err != nil {
		return err
	}
	if err := checkRate("--bps", l.BytesPerSec, "bytes/s", "no byte limit"); err != nil {
		return err
	}
	if l.BurstPackets < 0 {
		return invalid("--burst %d is negative; use a depth in packets of at least 1, or 0 for the default (%v of --pps)",
			l.BurstPackets, DefaultBurstTime)
	}
	if l.BurstBytes < 0 {
		return invalid("--burst-bytes %db is negative; use at least %db, or 0 for the default (%v of --bps)",
			l.BurstBytes, MaxFrame, DefaultBurstTime)
	}
	if l.BurstBytes > 0 && l.BurstBytes < MaxFrame {
		return invalid("--burst-bytes %db is smaller than the largest frame, %d bytes with two VLAN tags; use at least %db",
			l.BurstBytes, MaxFrame, MaxFrame)
	}
	return nil
}

func checkRate(flag string, v float64, unit, zero string) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return invalid("%s %v is not a rate; use a positive number of %s, or 0 for %s", flag, v, unit, zero)
	case v < 0:
		return invalid("%s %v %s is negative; use a positive rate, or 0 for %s", flag, v, unit, zero)
	}
	return nil
}

// Effective returns l with the default bursts filled in for every dimension
// that has a rate: what a Budget enforces and what status shows. Bursts of
// a dimension without a rate are returned as given.
func (l Limits) Effective() Limits {
	if l.PPS > 0 && l.BurstPackets == 0 {
		l.BurstPackets = defaultBurst(l.PPS, 1)
	}
	if l.BytesPerSec > 0 && l.BurstBytes == 0 {
		l.BurstBytes = defaultBurst(l.BytesPerSec, MaxFrame)
	}
	return l
}

// defaultBurst returns DefaultBurstTime worth of perSec, rounded up, at
// least min.
func defaultBurst(perSec float64, min int) int {
	b := math.Ceil(perSec * DefaultBurstTime.Seconds())
	if b > maxDefaultBurst {
		return maxDefaultBurst
	}
	return max(int(b), min)
}

// Unlimited reports whether l admits every frame: no packet limit, no byte
// limit, not blocked.
func (l Limits) Unlimited() bool {
	return l.PPS == 0 && l.BytesPerSec == 0 && !l.Block
}

// Budget is a packet bucket and a byte bucket that must both admit a frame.
// A dimension without a rate has no bucket and costs nothing.
//
// A Budget has one owner, the forwarding goroutine of one direction of one
// port, and is not safe for concurrent use: Fits followed by Take is only
// all-or-nothing if nobody else charges in between, and SetLimits must not
// race with either. To change limits from the control plane, hand the new
// Limits to the owner.
//
// Times are the caller's monotonic clock in nanoseconds (the forwarder's:
// ns since its pipe's epoch); any origin will do, as long as one Budget
// always gets readings of the same clock. A time earlier than one already
// used counts as that earlier-used time, so a clock that steps back neither
// refills nor drains the buckets twice.
//
// The zero Budget admits everything; use New.
type Budget struct {
	limits Limits
	block  bool
	pkts   *rate.Limiter // nil: no packet limit; tokens are packets
	bytes  *rate.Limiter // nil: no byte limit; tokens are bytes
	last   int64         // latest time charged or configured at, ns
}

// stamp is the caller's nanosecond reading as the time.Time x/time/rate
// takes: only differences between readings matter to a Limiter, and
// time.Unix builds one without reading a clock or allocating.
func stamp(ns int64) time.Time { return time.Unix(0, ns) }

// New returns a Budget enforcing l, with both buckets full at now (ns), or
// an error from l.Validate.
func New(l Limits, now int64) (*Budget, error) {
	b := &Budget{last: now}
	if err := b.SetLimits(l, now); err != nil {
		return nil, err
	}
	return b, nil
}

// Limits returns the limits as configured, without default bursts filled in
// (see Limits.Effective).
func (b *Budget) Limits() Limits { return b.limits }

// SetLimits changes the limits in place at now (ns), effective for the next
// frame. Each bucket keeps its current tokens (refilled at the old rate up
// to now), capped at its new depth; a bucket that had no rate before starts
// full; a dimension whose rate becomes 0 stops counting. On a validation
// error b is unchanged.
func (b *Budget) SetLimits(l Limits, now int64) error {
	if err := l.Validate(); err != nil {
		return err
	}
	now = b.clamp(now)
	e := l.Effective()
	b.pkts = setLimiter(b.pkts, e.PPS, e.BurstPackets, now)
	b.bytes = setLimiter(b.bytes, e.BytesPerSec, e.BurstBytes, now)
	b.limits = l
	b.block = l.Block
	b.last = now
	return nil
}

// setLimiter returns lim reconfigured to perSec and burst at now, a new full
// limiter if lim is nil, or nil if perSec is 0.
func setLimiter(lim *rate.Limiter, perSec float64, burst int, now int64) *rate.Limiter {
	if perSec == 0 {
		return nil
	}
	if lim == nil {
		// A new Limiter holds burst tokens; advancing to now keeps it full.
		return rate.NewLimiter(rate.Limit(perSec), burst)
	}
	lim.SetLimitAt(stamp(now), rate.Limit(perSec)) // refill at the old rate up to now
	lim.SetBurstAt(stamp(now), burst)              // tokens above the new depth are cut at the next use
	return lim
}

// clamp returns now, or the latest time b has used if now is earlier.
func (b *Budget) clamp(now int64) int64 { return max(now, b.last) }

// Fits reports whether a frame of n bytes would be admitted at now (ns):
// the budget is not blocked, the packet bucket holds at least one packet
// and the byte bucket at least n bytes. It charges nothing. A frame larger
// than the byte bucket's depth never fits.
func (b *Budget) Fits(now int64, n int) bool { return b.FitsN(now, 1, n) }

// FitsN is Fits for k frames of n bytes in all (a GSO segment that the
// kernel will send as k frames): the packet bucket must hold k packets.
func (b *Budget) FitsN(now int64, k, n int) bool {
	if b.block {
		return false
	}
	t := stamp(b.clamp(now))
	if b.pkts != nil && b.pkts.TokensAt(t) < float64(k) {
		return false
	}
	if b.bytes != nil && n > 0 && b.bytes.TokensAt(t) < float64(n) {
		return false
	}
	return true
}

// Take charges one packet and n bytes at now (ns). Call it only after Fits
// returned true at the same now for every budget the frame needs (or use
// Admit, which does both). Take on a frame that does not fit charges the
// buckets that have room and not the others; a blocked budget charges
// nothing.
func (b *Budget) Take(now int64, n int) { b.TakeN(now, 1, n) }

// TakeN is Take for k frames of n bytes in all (see FitsN).
func (b *Budget) TakeN(now int64, k, n int) {
	if b.block {
		return
	}
	now = b.clamp(now)
	b.last = now
	if b.pkts != nil {
		b.pkts.AllowN(stamp(now), k)
	}
	if b.bytes != nil && n > 0 {
		b.bytes.AllowN(stamp(now), n)
	}
}

// Admit checks every non-nil budget at now (ns) and, only if all of them
// admit a frame of n bytes, charges all of them. It returns -1 when the
// frame is admitted, else the index in budgets of the first budget that
// refused; a refused frame is charged to no budget. With no non-nil
// budgets it admits. It allocates nothing, and it keeps no reference to
// budgets.
//
// The usual call is Admit(now, len(frame), aggregate, class), with the
// caller's own goroutine owning every budget.
func Admit(now int64, n int, budgets ...*Budget) int {
	for i, b := range budgets {
		if b != nil && !b.Fits(now, n) {
			return i
		}
	}
	for _, b := range budgets {
		if b != nil {
			b.Take(now, n)
		}
	}
	return -1
}

// Fill returns how full each bucket is at now (ns), as a fraction from 0
// (empty) to 1 (full), for metrics. A dimension without a rate reports 1.
// Block does not change the fill.
func (b *Budget) Fill(now int64) (packets, bytes float64) {
	t := stamp(b.clamp(now))
	return fill(b.pkts, t), fill(b.bytes, t)
}

func fill(lim *rate.Limiter, t time.Time) float64 {
	if lim == nil {
		return 1
	}
	f := lim.TokensAt(t) / float64(lim.Burst())
	return min(max(f, 0), 1)
}
