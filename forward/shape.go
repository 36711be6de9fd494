package forward

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"golang.org/x/sys/unix"
)

// Shape mode: a delay queue per direction.
//
// In shape mode a frame that its budgets refuse is not dropped: it waits in
// the direction's queue, a bounded FIFO, and leaves when it has waited the
// policy's Delay and the budgets admit it, so it leaves at the shaped rate.
// With a Delay every frame waits, including frames the budgets would admit
// at once. The queue is bounded in bytes (QueueBytes) and in time
// (QueueTime); a frame that would break a bound is dropped and counted
// (ReasonQueueFull, ReasonQueueTime). Bypass and control frames are never
// queued: they are policed by their own budgets at once, as in police mode,
// so that ssh to the VM does not wait behind a flood.
//
// The queue lives in storage allocated when the policy is applied: queueing
// and releasing a frame copy it and allocate nothing. A releaser goroutine
// per pipe, started by New and stopped by Forwarder.Close, sleeps until the
// head of the queue is due (its arrival plus Delay) or until the budgets
// will have the tokens for it, and writes released frames to the outgoing
// device. The logic takes the time as an argument (step, release); only
// the goroutines call time.Now.

// Mode says what a direction does with a frame its budgets refuse.
type Mode uint8

const (
	// Police drops a refused frame at once, counted under the budget's
	// reason. It is the zero value.
	Police Mode = iota
	// Shape queues a refused frame until the budgets admit it, and holds
	// every frame for the policy's Delay.
	Shape
	numModes
)

var modeNames = [numModes]string{Police: "police", Shape: "shape"}

// String returns "police" or "shape", the --mode flag's words.
func (m Mode) String() string {
	if m < numModes {
		return modeNames[m]
	}
	return "unknown"
}

// ParseMode parses the --mode flag's words, "police" and "shape".
func ParseMode(s string) (Mode, error) {
	for m, name := range modeNames {
		if s == name {
			return Mode(m), nil
		}
	}
	return 0, invalidPolicy("--mode %q is not a mode; use police or shape", s)
}

// MarshalText encodes m as its String, for JSON and YAML.
func (m Mode) MarshalText() ([]byte, error) {
	if m >= numModes {
		return nil, invalidPolicy("--mode %d is not a mode; use police or shape", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText decodes the words of ParseMode.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

const (
	// DefaultQueueSlack is how much longer than its Delay a frame may wait
	// by default: QueueTime defaults to Delay + DefaultQueueSlack. Under a
	// sustained overload the queue stays full to its time bound, so this
	// is what a frame waits beyond the delay asked for (10 ms: a 200 ms
	// delay stays within 5%). Raise QueueTime to absorb longer bursts, as
	// tbf's latency does.
	DefaultQueueSlack = 10 * time.Millisecond
	// MaxQueueTime bounds Delay and QueueTime.
	MaxQueueTime = time.Minute
	// DefaultQueueBytesUnshaped is QueueBytes's default when the aggregate
	// has no rate (shape mode used for its delay only), in bytes.
	DefaultQueueBytesUnshaped = 16 << 20
	// MinDefaultQueueBytes and MaxDefaultQueueBytes clamp QueueBytes's
	// default computed from the aggregate's rates, in bytes.
	MinDefaultQueueBytes = 64 << 10
	MaxDefaultQueueBytes = 64 << 20
	// MaxQueueBytes bounds QueueBytes, in bytes.
	MaxQueueBytes = 1 << 30
	// QueueBytesPerFrame is how many bytes of QueueBytes each queued frame
	// slot costs: a queue holds at most QueueBytes/QueueBytesPerFrame+1
	// frames, whatever their sizes (64 is about the smallest Ethernet
	// frame, so only a queue of tiny frames is bounded by this).
	QueueBytesPerFrame = 64
)

// ErrInvalidPolicy is wrapped by every error of Policy.Validate about the
// shaping settings (bucket.ErrInvalidLimits by those about the limits). The
// message names the flag to fix (--mode, --delay, --queue-bytes,
// --queue-time); the caller adds the --to-vm- context for that direction.
// Report it to the operator as a usage error; do not retry.
var ErrInvalidPolicy = errors.New("invalid policy")

type policyError struct{ msg string }

func (e *policyError) Error() string        { return e.msg }
func (e *policyError) Is(target error) bool { return target == ErrInvalidPolicy }

func invalidPolicy(format string, args ...any) error {
	return &policyError{msg: fmt.Sprintf(format, args...)}
}

// validateShaping checks Mode, Delay, QueueBytes and QueueTime.
func (p *Policy) validateShaping() error {
	if p.Mode >= numModes {
		return invalidPolicy("--mode %d is not a mode; use police or shape", p.Mode)
	}
	if p.Mode == Police {
		switch {
		case p.Delay != 0:
			return invalidPolicy("--delay %v needs --mode shape: police mode drops at once and delays nothing", p.Delay)
		case p.QueueBytes != 0:
			return invalidPolicy("--queue-bytes %db needs --mode shape: police mode has no queue", p.QueueBytes)
		case p.QueueTime != 0:
			return invalidPolicy("--queue-time %v needs --mode shape: police mode has no queue", p.QueueTime)
		}
		return nil
	}
	switch {
	case p.Delay < 0:
		return invalidPolicy("--delay %v is negative; use a duration such as 200ms, or 0 for none", p.Delay)
	case p.Delay > MaxQueueTime:
		return invalidPolicy("--delay %v is longer than %v; use at most %v", p.Delay, MaxQueueTime, MaxQueueTime)
	case p.QueueBytes < 0:
		return invalidPolicy("--queue-bytes %db is negative; use at least %db, or 0 for the default (what the rates release in --queue-time)",
			p.QueueBytes, bucket.MaxFrame)
	case p.QueueBytes > 0 && p.QueueBytes < bucket.MaxFrame:
		return invalidPolicy("--queue-bytes %db is smaller than the largest frame, %d bytes with two VLAN tags; use at least %db",
			p.QueueBytes, bucket.MaxFrame, bucket.MaxFrame)
	case p.QueueBytes > MaxQueueBytes:
		return invalidPolicy("--queue-bytes %db is more than a queue may hold; use at most %db (1024mb)", p.QueueBytes, MaxQueueBytes)
	case p.QueueTime < 0:
		return invalidPolicy("--queue-time %v is negative; use more than --delay, or 0 for the default (--delay plus %v)",
			p.QueueTime, DefaultQueueSlack)
	case p.QueueTime > 0 && p.QueueTime <= p.Delay:
		return invalidPolicy("--queue-time %v is not longer than --delay %v, so every frame would expire; use more than the delay, or 0 for the default (--delay plus %v)",
			p.QueueTime, p.Delay, DefaultQueueSlack)
	case p.QueueTime > MaxQueueTime:
		return invalidPolicy("--queue-time %v is longer than %v; use at most %v", p.QueueTime, MaxQueueTime, MaxQueueTime)
	}
	return nil
}

// QueueBounds returns the queue's bounds in force under p, defaults filled
// in: bytes of frames (Ethernet header included, no FCS) and the longest
// wait, delay included. Both are 0 in police mode.
//
// QueueTime defaults to Delay + DefaultQueueSlack. QueueBytes defaults to
// what the aggregate's rates can release in that time, plus its burst
// (frames counted as bucket.MaxFrame bytes when only a packet rate is set),
// clamped to MinDefaultQueueBytes..MaxDefaultQueueBytes, or
// DefaultQueueBytesUnshaped when the aggregate has no rate.
func (p Policy) QueueBounds() (bytes int, maxWait time.Duration) {
	if p.Mode != Shape {
		return 0, 0
	}
	maxWait = p.QueueTime
	if maxWait == 0 {
		maxWait = p.Delay + DefaultQueueSlack
	}
	bytes = p.QueueBytes
	if bytes == 0 {
		bytes = defaultQueueBytes(p.Aggregate, maxWait)
	}
	return bytes, maxWait
}

func defaultQueueBytes(l bucket.Limits, wait time.Duration) int {
	e := l.Effective()
	b := math.Inf(1)
	if e.BytesPerSec > 0 {
		b = e.BytesPerSec*wait.Seconds() + float64(e.BurstBytes)
	}
	if e.PPS > 0 {
		b = min(b, (e.PPS*wait.Seconds()+float64(e.BurstPackets))*bucket.MaxFrame)
	}
	if math.IsInf(b, 1) {
		return DefaultQueueBytesUnshaped
	}
	return int(min(max(math.Ceil(b), MinDefaultQueueBytes), MaxDefaultQueueBytes))
}

// QueueStats is a snapshot of one direction's queue.
type QueueStats struct {
	// Mode, Delay, MaxBytes and MaxTime are the settings in force (see
	// Policy.QueueBounds); MaxBytes and MaxTime are 0 in police mode.
	Mode     Mode
	Delay    time.Duration
	MaxBytes int
	MaxTime  time.Duration
	// Frames and Bytes are what the queue holds now, in frames and in
	// bytes of frames.
	Frames int
	Bytes  int
	// OldestAge is how long the oldest queued frame has waited; 0 when
	// the queue is empty.
	OldestAge time.Duration
}

// Queue returns the occupancy of the direction's queue at now. Like Fill,
// it reflects the policy the owner applied, and briefly takes mu. Safe for
// concurrent use.
func (p *Pipe) Queue(now time.Time) QueueStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A policy just published applies at the next frame or release;
	// report it as in force already, so that status agrees with a change
	// the moment it returns.
	p.syncPolicyLocked(now)
	s := QueueStats{
		Mode:     p.sh.mode,
		Delay:    time.Duration(p.sh.delay),
		MaxBytes: p.q.limit,
		MaxTime:  time.Duration(p.sh.maxWait),
		Frames:   p.q.count,
		Bytes:    p.q.bytes,
	}
	if p.q.count > 0 {
		s.OldestAge = max(time.Duration(p.nanos(now)-p.q.descs[p.q.head].at), 0)
	}
	return s
}

// shaping holds the shaping settings in force, in the units the hot path
// uses. The zero value is police mode.
type shaping struct {
	mode    Mode
	delay   int64 // ns every frame waits
	maxWait int64 // ns a frame may wait at most, delay included
	// admitWait is the longest predicted wait shapeLocked queues a frame
	// for: halfway between delay and maxWait (see applyShapingLocked). Under a sustained overload
	// the queue fills up to this prediction, so the other half of the
	// slack absorbs a releaser that wakes late on a busy host; with no
	// margin every frame would be due at the very edge of maxWait, and
	// any lateness would expire it and waste its slot in the budget.
	admitWait int64
	// nsPerFrame and nsPerByte are the aggregate's rates as the time one
	// frame or one byte takes, 0 without a rate: shapeLocked refuses at
	// once a frame that would wait longer than maxWait behind the queue at
	// those rates, rather than queue it to expire.
	nsPerFrame float64
	nsPerByte  float64
}

// nanos returns now as nanoseconds since the pipe's epoch, on the
// monotonic clock when both carry a reading.
func (p *Pipe) nanos(now time.Time) int64 { return int64(now.Sub(p.epoch)) }

// applyShapingLocked makes pol's shaping settings current: it sizes the
// queue, or flushes and frees it when pol polices. Caller holds mu (or owns
// a pipe no goroutine runs yet).
func (p *Pipe) applyShapingLocked(pol *Policy) {
	if pol.Mode != Shape {
		if p.sh.mode == Shape {
			p.flushLocked()
			p.q = queue{}
		}
		p.sh = shaping{}
		return
	}
	limit, wait := pol.QueueBounds()
	sh := shaping{mode: Shape, delay: int64(pol.Delay), maxWait: int64(wait)}
	sh.admitWait = sh.maxWait
	if pps := pol.Aggregate.PPS; pps > 0 {
		sh.nsPerFrame = 1e9 / pps
	}
	if bps := pol.Aggregate.BytesPerSec; bps > 0 {
		sh.nsPerByte = 1e9 / bps
	}
	// Keep half the slack as a margin, but never so much that less than
	// one frame's time of slack is left for the queue to fill: at low
	// rates the queue must still hold the next frame when the head leaves.
	slack := sh.maxWait - sh.delay
	frameTime := int64(max(sh.nsPerFrame, 1522*sh.nsPerByte))
	sh.admitWait -= max(min(slack/2, slack-frameTime), 0)
	p.sh = sh
	if p.q.limit != limit {
		p.resizeQueueLocked(limit)
	}
}

// resizeQueueLocked moves the queue into new storage bounded by limit
// bytes, in order; frames that no longer fit are dropped as queue_full.
// It allocates: it runs when a policy is applied, not per frame.
func (p *Pipe) resizeQueueLocked(limit int) {
	old := p.q
	p.q = newQueue(limit)
	for old.count > 0 {
		d := old.descs[old.head]
		if hf := old.frame(d); !p.q.push(hf[:VnetHdrLen], hf[VnetHdrLen:], d) {
			p.dropDescLocked(d, ReasonQueueFull)
		}
		old.pop()
	}
}

// flushLocked drops every queued frame as queue_flush.
func (p *Pipe) flushLocked() {
	for p.q.count > 0 {
		p.dropDescLocked(p.q.descs[p.q.head], ReasonQueueFlush)
		p.q.pop()
	}
}

// expireLocked drops the head frames that have waited longer than maxWait
// at t (ns since the epoch).
func (p *Pipe) expireLocked(t int64) {
	for p.q.count > 0 {
		d := p.q.descs[p.q.head]
		if t-d.at <= p.sh.maxWait {
			return
		}
		p.dropDescLocked(d, ReasonQueueTime)
		p.q.pop()
	}
}

// dropDescLocked counts a queued frame dropped, under its class and the
// class of the rules that decided it. Caller holds mu.
func (p *Pipe) dropDescLocked(d qdesc, r Reason) {
	p.drop(d.class, p.descCounters(d), "", r, d.cost())
}

// descCounters returns the counters of the class of the rules that
// decided a queued frame, or nil. Caller holds mu.
func (p *Pipe) descCounters(d qdesc) *RuleCounters {
	if d.rule < 0 || int(d.rule) >= len(p.rt) {
		return nil
	}
	return p.rt[d.rule].c
}

// shapeLocked decides a frame (not bypass, not control) in shape mode at
// now, described by d (its class, and the budget it is charged to when it
// leaves): it passes at once (Pass) only without a delay and with an
// empty queue; otherwise it is queued (Queue), or dropped for reason r.
// wake reports that the queue was empty and the releaser must be told.
// Caller holds mu.
func (p *Pipe) shapeLocked(d qdesc, frame, hdr []byte, now time.Time) (act Action, r Reason, wake bool) {
	n := len(frame)
	t := p.nanos(now)
	p.expireLocked(t)
	d.n = uint32(n)
	if r, ok := p.hopelessLocked(d); !ok {
		return Drop, r, false
	}
	q := &p.q
	if p.sh.delay == 0 && q.count == 0 && p.inflight == 0 {
		switch r, ok := p.admitDescLocked(d, t, now); {
		case ok:
			p.vclock = max(p.vclock, t)
			return Pass, 0, false
		case r == ReasonQuota:
			return Drop, r, false
		}
	}
	if p.lateLocked(t) {
		return Drop, ReasonQueueTime, false
	}
	d.at = t
	if !q.push(hdr, frame, d) {
		return Drop, ReasonQueueFull, false
	}
	if q.count == 1 && p.inflight == 0 {
		// The releaser, signalled, would find the head due then; so
		// may an input goroutine (releaseDue), if the releaser is
		// slow to wake.
		p.due.Store(t + p.sh.delay + 1)
	}
	return Queue, 0, q.count == 1
}

// admitDescLocked runs steps 5 and 6 for a frame leaving the queue (or
// passing it at once): its deferred class budget and the aggregate must
// hold its tokens at bt (the budgets' time, see takeDueLocked), and the
// quota admit it at now; then both budgets are charged. It reports whether
// the frame passes, and why not. Caller holds mu.
func (p *Pipe) admitDescLocked(d qdesc, bt int64, now time.Time) (Reason, bool) {
	class, agg := p.budgetsFor(d)
	w := d.cost()
	if class != nil && !class.FitsN(bt, w.pkts, w.bytes) {
		return ReasonClassBudget, false
	}
	if agg != nil && !agg.FitsN(bt, w.pkts, w.bytes) {
		return ReasonAggregateBudget, false
	}
	if q := p.current.Quota; q != nil && !q.Admit(now, p.dir, w.bytes, false) {
		return ReasonQuota, false
	}
	if class != nil {
		class.TakeN(bt, w.pkts, w.bytes)
	}
	if agg != nil {
		agg.TakeN(bt, w.pkts, w.bytes)
	}
	return 0, true
}

// lateLocked reports whether a frame arriving at t (ns since the epoch)
// would wait longer than admitWait: the frames ahead of it cannot leave
// before the head is due, and then leave no faster than the aggregate's
// rates (with no burst in hand, as under a sustained overload). Caller
// holds mu.
func (p *Pipe) lateLocked(t int64) bool {
	q := &p.q
	if q.count == 0 || (p.sh.nsPerFrame == 0 && p.sh.nsPerByte == 0) {
		return false
	}
	start := max(q.descs[q.head].at+p.sh.delay-t, 0)
	drain := max(float64(q.count)*p.sh.nsPerFrame, float64(q.bytes)*p.sh.nsPerByte)
	return float64(start)+drain > float64(p.sh.admitWait)
}

// budgetsFor returns the class budget and the aggregate that a queued
// frame is charged to when it leaves: the budget of the class of the rules
// that decided it if that class shapes, or of its built-in class, or none
// when a police-mode class charged it on arrival. Caller holds mu.
func (p *Pipe) budgetsFor(d qdesc) (class, agg *bucket.Budget) {
	switch {
	case !d.charge:
	case d.rule >= 0:
		if int(d.rule) < len(p.rt) {
			class = p.rt[d.rule].budget
		}
	default:
		class = p.class[d.bclass]
	}
	return class, p.agg
}

// hopelessLocked returns why a queued frame can never be admitted while
// the limits stay as they are (a budget blocks, or the frame is larger
// than a byte bucket's depth); ok when it can be. Such a frame is refused
// at once, as in police mode: waiting would not help.
func (p *Pipe) hopelessLocked(d qdesc) (r Reason, ok bool) {
	class, agg := p.budgetsFor(d)
	if hopeless(class, d.cost()) {
		return ReasonClassBudget, false
	}
	if hopeless(agg, d.cost()) {
		return ReasonAggregateBudget, false
	}
	return 0, true
}

func hopeless(b *bucket.Budget, w cost) bool {
	if b == nil {
		return false
	}
	l := b.Limits()
	e := l.Effective()
	return l.Block || (l.BytesPerSec > 0 && w.bytes > e.BurstBytes) || (l.PPS > 0 && w.pkts > e.BurstPackets)
}

// waitMargin is added to a computed token wait, so that a releaser woken
// at the computed time finds the tokens there despite rounding.
const waitMargin = time.Microsecond

// waitLocked returns how long from t (ns since the epoch) until the budgets of a queued
// frame hold the tokens for it. Caller holds mu.
func (p *Pipe) waitLocked(d qdesc, t int64) time.Duration {
	class, agg := p.budgetsFor(d)
	return max(tokenWait(class, d.cost(), t), tokenWait(agg, d.cost(), t)) + waitMargin
}

// tokenWait returns how long from t (ns) until b holds what w costs.
func tokenWait(b *bucket.Budget, w cost, t int64) time.Duration {
	if b == nil {
		return 0
	}
	l := b.Limits().Effective()
	pk, by := b.Fill(t)
	var s float64
	if l.PPS > 0 {
		if need := float64(w.pkts) - pk*float64(l.BurstPackets); need > 0 {
			s = need / l.PPS
		}
	}
	if l.BytesPerSec > 0 {
		if need := float64(w.bytes) - by*float64(l.BurstBytes); need > 0 {
			s = max(s, need/l.BytesPerSec)
		}
	}
	return time.Duration(math.Ceil(s * 1e9))
}

// batch holds the frames the releaser took out of the queue under mu, to
// write without it. It belongs to the releaser.
type batch struct {
	buf  []byte
	used int
	k    int
	off  [maxBatch]int32 // of the frame's offload header, VnetHdrLen bytes before it
	n    [maxBatch]int32 // the frame's length
	w    [maxBatch]cost
	cls  [maxBatch]classify.Class
	rc   [maxBatch]*RuleCounters
	// frames are the frames of buf with their headers, for Write at
	// offset VnetHdrLen.
	frames [maxBatch][]byte
}

const (
	maxBatch   = 64
	batchBytes = 2 * (VnetHdrLen + MaxFrameBuffer) // at least one frame of any size
)

func (b *batch) room(n int) bool { return b.k < maxBatch && b.used+VnetHdrLen+n <= len(b.buf) }

// add copies hf, a frame after its offload header, into the batch.
func (b *batch) add(hf []byte, w cost, c classify.Class, rc *RuleCounters) {
	b.off[b.k], b.n[b.k], b.w[b.k], b.cls[b.k], b.rc[b.k] = int32(b.used), int32(len(hf)-VnetHdrLen), w, c, rc
	b.used += copy(b.buf[b.used:], hf)
	b.k++
}

// frame returns frame i after its offload header.
func (b *batch) frame(i int) []byte { return b.buf[b.off[i] : b.off[i]+VnetHdrLen+b.n[i]] }

// release writes to out, in order, the queued frames that are due at now
// and that the budgets admit, and drops the expired ones. It returns when
// it should be called next, and publishes it in due: the zero Time when
// the queue is empty (a frame queued into an empty queue signals the
// releaser), now when more frames are ready. It returns an error only when
// out is closed; the frames it could not write are counted as queue_flush.
// The caller holds relMu (a test driving a pipe from one goroutine need
// not). It does not allocate after its first call.
func (p *Pipe) release(now time.Time, out Device) (time.Time, error) {
	b := &p.batch
	if b.buf == nil {
		b.buf = make([]byte, batchBytes)
	}
	b.k, b.used = 0, 0
	// Deferred unlocks here: a panic in the release path (see
	// Forwarder.runInput) must not leave mu held.
	next := func() time.Time {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.syncPolicyLocked(now)
		next := p.takeDueLocked(now, b)
		p.inflight = b.k
		if next.IsZero() {
			p.due.Store(0)
		} else {
			p.due.Store(p.nanos(next) + 1)
		}
		return next
	}()
	if b.k == 0 {
		return next, nil
	}
	// The whole batch in one Write; a frame the device refuses is
	// counted, and the rest written in another.
	for i := range b.k {
		b.frames[i] = b.frame(i)
	}
	var closed error
	for i := 0; i < b.k; {
		n, err := out.Write(b.frames[i:b.k], VnetHdrLen)
		for j := i; j < i+n; j++ {
			p.pass(b.cls[j], b.rc[j], "", b.w[j])
		}
		i += n
		if err == nil || i >= b.k {
			break
		}
		if isClosed(err) {
			closed = err
			for ; i < b.k; i++ {
				p.drop(b.cls[i], b.rc[i], "", ReasonQueueFlush, b.w[i])
			}
			break
		}
		p.drop(b.cls[i], b.rc[i], "", ReasonWriteError, b.w[i])
		if p.logEvery.ok(now) {
			p.log.Warn("write failed", "err", err)
		}
		i++
	}
	p.mu.Lock()
	p.inflight = 0
	clear(b.rc[:b.k])
	clear(b.frames[:b.k])
	p.mu.Unlock()
	return next, closed
}

// takeDueLocked moves into b the head frames that are due at now and that
// the budgets admit (charging them), dropping expired and hopeless ones on
// the way, and returns when to look again. Caller holds mu.
//
// The budgets are charged on a virtual clock, vclock: the time at which a
// releaser that always woke on time would have released each frame. A
// bucket holds only its burst, so a releaser that wakes late on a busy host
// (waiting for a CPU, or for mu behind a flood) would otherwise lose the
// tokens that accrued beyond the burst, and the port would get less than
// its rate: measured on two loaded cores, 60% of a 2500 pps stage. With
// the virtual clock a late releaser catches up, releasing back to back the
// frames an on-time one would have spread out, as long as it is no later
// than the queue's slack (QueueTime - Delay), the lateness a queued frame
// is allowed too. So over any window W the budgets pass at most burst +
// rate*(W + slack). Under a sustained overload that is exactly the rate
// while the releaser is late by less than half the slack (the margin
// applyShapingLocked keeps) plus the burst's time; later than that, head
// frames expire, and the slots they leave are more than the burst holds.
func (p *Pipe) takeDueLocked(now time.Time, b *batch) time.Time {
	if p.sh.mode != Shape {
		return time.Time{}
	}
	q := &p.q
	t := p.nanos(now)
	floor := t - (p.sh.maxWait - p.sh.delay)
	for q.count > 0 {
		d := q.descs[q.head]
		n := d.len()
		age := t - d.at
		if age > p.sh.maxWait {
			p.dropDescLocked(d, ReasonQueueTime)
			q.pop()
			continue
		}
		if age < p.sh.delay {
			return p.epoch.Add(time.Duration(d.at + p.sh.delay))
		}
		if r, ok := p.hopelessLocked(d); !ok {
			p.dropDescLocked(d, r)
			q.pop()
			continue
		}
		if !b.room(n) {
			return now
		}
		// The frame became due at d.at+delay; an on-time releaser
		// would not have charged it earlier, nor before the frame it
		// released last.
		vt := max(p.vclock, floor, d.at+p.sh.delay)
		r, ok := p.admitDescLocked(d, vt, now)
		if !ok && r != ReasonQuota {
			// When would the tokens have been there? If that has
			// passed, the on-time releaser would have released the
			// frame then.
			w := int64(p.waitLocked(d, vt))
			if vt+w > t {
				// Wake when the tokens are there, or to drop
				// the frame when it expires, whichever comes
				// first.
				due := min(vt+w, d.at+p.sh.maxWait+1)
				return p.epoch.Add(time.Duration(due))
			}
			vt += w
			r, ok = p.admitDescLocked(d, vt, now)
		}
		switch {
		case ok:
			p.vclock = vt
		case r == ReasonQuota:
			p.dropDescLocked(d, ReasonQuota)
			q.pop()
			continue
		default:
			// A budget charged or reconfigured at a later time
			// than vt (see syncPolicyLocked) counts vt as that
			// time: no catching up for this frame.
			p.vclock = t
			continue
		}
		b.add(q.frame(d), d.cost(), d.class, p.descCounters(d))
		q.pop()
	}
	return time.Time{}
}

// releaseDue runs release at now on the calling input goroutine if a
// release is due and nobody else is running one. Under a flood the input
// goroutine runs flat out and the releaser, sleeping on a timer, competes
// with it (and with the flood's sender) for a CPU and for mu: measured on
// two loaded cores, it woke 20-80 ms late several times a second, more
// than the queue's slack, and a 2500 pps stage released 75% of its rate.
// The input goroutine is running anyway, so it releases on time; the
// releaser still does when the input is idle. It allocates nothing.
func (p *Pipe) releaseDue(now time.Time) {
	if d := p.due.Load(); d == 0 || p.nanos(now) < d-1 || !p.relMu.TryLock() {
		return
	}
	defer p.relMu.Unlock() // also when release panics (see Forwarder.runInput)
	// An error means out is closed: this goroutine finds that out at
	// its next read or write.
	p.release(now, p.out)
}

// signal wakes the releaser without blocking.
func (p *Pipe) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// releaseLoop is the releaser goroutine: it calls release when the queue's
// head is due, when signalled (a frame entered an empty queue, or a new
// policy was published), and stops when stop is closed or out is.
func (p *Pipe) releaseLoop(stop <-chan struct{}) {
	if p.raisePriority() {
		defer runtime.UnlockOSThread()
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		p.relMu.Lock()
		next, err := p.release(time.Now(), p.out)
		p.relMu.Unlock()
		if err != nil {
			return
		}
		var fire <-chan time.Time
		if !next.IsZero() {
			d := time.Until(next)
			if d <= 0 {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			timer.Reset(d)
			fire = timer.C
		}
		select {
		case <-stop:
			timer.Stop()
			return
		case <-p.wake:
			timer.Stop()
		case <-fire:
		}
	}
}

// raisePriority locks the calling goroutine to its thread and sets the
// thread's nice value to p.nice, reporting whether it locked (the caller
// then unlocks when it returns). With nice 0 it does nothing.
//
// The budgets refill while a forwarding thread waits for a CPU, but a
// bucket holds only its burst: a long wait loses tokens, and the port gets
// less than its limit. So these threads run ahead of ordinary work.
func (p *Pipe) raisePriority() bool { return p.lockThread(0) }

// lockThread is raisePriority for an input goroutine that coalesces
// wake-ups (coalesce > 0): it also locks, and sets the thread's timer slack
// to coalesceSlack so that its sleeps end on time.
func (p *Pipe) lockThread(coalesce time.Duration) bool {
	if p.nice == 0 && coalesce == 0 {
		return false
	}
	runtime.LockOSThread()
	if p.nice != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), p.nice); err != nil {
			p.log.Warn("cannot raise the forwarder's priority", "nice", p.nice, "err", err)
		}
	}
	if coalesce != 0 {
		if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(coalesceSlack), 0, 0, 0); err != nil {
			p.log.Warn("cannot set the forwarder's timer slack", "err", err)
		}
	}
	return true
}

// queue is a FIFO of frames in preallocated storage: the bytes of the
// frames in a ring of bytes (each frame contiguous, so it can be written
// in one call) and a ring of descriptors. push and pop copy and allocate
// nothing. It holds at most limit bytes of frames and len(descs) frames.
// Not safe for concurrent use: the pipe's mu guards it. The zero queue
// holds nothing and refuses every frame.
type queue struct {
	buf   []byte
	descs []qdesc
	head  int // index in descs of the oldest frame
	count int // frames held
	bytes int // sum of their lengths
	limit int // bound on bytes
	wpos  int // offset in buf just past the newest frame
}

// qdesc describes one queued frame.
type qdesc struct {
	at  int64  // arrival, ns since the pipe's epoch
	off uint32 // offset in buf
	n   uint32 // length in bytes
	// rule is the class of the rules that decided the frame, -1 for
	// none; class is its built-in class, for the counters.
	rule  int16
	class classify.Class
	// charge says that a class budget is charged when the frame leaves:
	// the rule's (a class with mode shape), or, without a rule, that of
	// built-in class bclass. A police-mode class charged it on arrival.
	charge bool
	bclass classify.Class
	// pkts and wire are the frame's cost (see cost), 0 for a plain frame
	// of n bytes.
	pkts uint16
	wire uint32
}

func (d qdesc) len() int { return int(d.n) }

// cost returns what the queued frame costs the budgets and counters.
func (d qdesc) cost() cost {
	if d.pkts == 0 {
		return single(d.len())
	}
	return cost{pkts: int(d.pkts), bytes: int(d.wire), largest: d.len()}
}

// newQueue returns an empty queue bounded by limit bytes of frames. Each
// frame is stored after its offload header (VnetHdrLen bytes), so its
// storage is limit, plus a header for each frame it can hold, plus one
// largest frame: a frame that does not fit at the end of the ring wastes
// at most that much, so a frame within the byte bound always finds
// contiguous room.
func newQueue(limit int) queue {
	frames := limit/QueueBytesPerFrame + 1
	return queue{
		buf:   make([]byte, limit+frames*VnetHdrLen+VnetHdrLen+MaxFrameBuffer),
		descs: make([]qdesc, frames),
		limit: limit,
	}
}

// push copies hdr (zeros when nil) and frame to the tail, described by d
// (its arrival, class, budget and cost; push sets the offset and length);
// it reports false, holding nothing more, if a bound would be exceeded.
func (q *queue) push(hdr, frame []byte, d qdesc) bool {
	n := len(frame)
	if q.count == len(q.descs) || q.bytes+n > q.limit || n > MaxFrameBuffer {
		return false
	}
	size := VnetHdrLen + n
	off := q.wpos
	if q.count == 0 {
		off = 0
	} else if h := int(q.descs[q.head].off); q.wpos > h {
		// Frames occupy [h, wpos): room at the end, or else at the start.
		if len(q.buf)-q.wpos < size {
			if h < size {
				return false
			}
			off = 0
		}
	} else if h-q.wpos < size {
		// Wrapped: frames occupy [h, end) and [0, wpos).
		return false
	}
	if hdr == nil {
		clear(q.buf[off : off+VnetHdrLen])
	} else {
		copy(q.buf[off:off+VnetHdrLen], hdr)
	}
	copy(q.buf[off+VnetHdrLen:], frame)
	d.off, d.n = uint32(off), uint32(n)
	q.descs[(q.head+q.count)%len(q.descs)] = d
	q.count++
	q.bytes += n
	q.wpos = off + size
	return true
}

// frame returns the frame d describes after its offload header; valid
// until it is popped.
func (q *queue) frame(d qdesc) []byte { return q.buf[d.off : int(d.off)+VnetHdrLen+d.len()] }

// pop removes the head frame; the queue must not be empty.
func (q *queue) pop() {
	q.bytes -= q.descs[q.head].len()
	q.head = (q.head + 1) % len(q.descs)
	q.count--
	if q.count == 0 {
		q.head, q.wpos = 0, 0
	}
}
