package forward

import (
	"errors"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The read side of an input, shared by the pipes and by Relay (the bare
// tap pair the bench measures shaperd against), so that both pay for
// exactly the same I/O.

const (
	// MaxReadBatch is the most frames one Read of an input returns. The
	// batch starts at one buffer and doubles, up to this, each time a
	// Read fills it, and shrinks back a second after the last full one
	// (see shrinkAfter): an idle or lightly loaded input keeps one
	// MaxFrameBuffer buffer, a flooded one MaxReadBatch of them.
	MaxReadBatch = 16

	// yieldEvery is how often an input goroutine that is not locked to
	// its thread passes through the Go scheduler (runtime.Gosched). It
	// waits for frames in a system call (see OpenTap), never in the
	// scheduler, so without this the runtime sees one goroutine running
	// for ever: every 10 ms its monitor thread (sysmon) preempts it,
	// takes its P away, and then polls every 20 µs for a millisecond or
	// more. Measured at 10 kpps, evenly spaced: 4400 extra wake-ups a
	// second without the yield, 700 with it.
	//
	// A goroutine locked to its thread (--forwarder-nice, coalescing)
	// does not yield: for it a pass through the scheduler costs two
	// thread wake-ups (the runtime hands its P to an ordinary thread,
	// which hands it back: stoplockedm, startlockedm), and on a host
	// whose CPUs a flood keeps busy that ordinary thread waits its turn.
	// A bucket whose reader waits longer than its burst loses tokens:
	// with a yield every 5 ms, make bench-smoke (250-byte frames at max
	// load, --pps 5000, Linux bridge) delivered 4650-4894 pps in police
	// mode and 4658-4781 in shape mode over four runs; without it, the
	// limit (see docs/measurements.md). sysmon's preemption, every 10 ms, remains.
	yieldEvery = 5 * time.Millisecond
)

// Coalescing. At moderate rates every frame costs a wake-up of its reader
// (about 20 µs of CPU on the development VMs), whatever the reader then
// does with it. With a latency budget (Config.Coalesce), a reader that
// finds frames arriving closer together than the budget stops waiting for
// each: it sleeps for the budget, then reads everything that arrived
// meanwhile in one batch, so several frames share one wake-up. A frame
// waits at most the budget (plus the timer's slack, coalesceSlack) more
// than it would have. The reader goes back to waiting for each frame as
// soon as a sleep gathered fewer than two (the rate fell), and never sleeps
// after a read that filled its batch (frames are waiting anyway). So an
// idle or slow input adds no latency: the first frame after a pause is
// read the moment it arrives.

const (
	// MaxCoalesce bounds Config.Coalesce.
	MaxCoalesce = 10 * time.Millisecond
	// coalesceSlack is the timer slack of a coalescing reader's thread
	// (Linux's default, 50 µs, would add up to that to every sleep).
	coalesceSlack = time.Microsecond
)

// Pacing under overload. While the port aggregate refuses frames, every
// frame the reader wakes up for beyond the budget is read only to be
// dropped, and at a flood's rate (or the kernel backstop's, twice the
// budget by default) each costs a wake-up of its own: about 20 µs of CPU
// on the development VMs, 0.2 of a core at 10 kpps. So an input that may
// pace (the VM tap's, when bypass and control frames have a priority tap of
// their own that never waits) naps after a batch in which the aggregate
// refused a frame, once it has read everything that was waiting: the
// frames that arrive meanwhile wait in the tap's queue and are read
// together, and the bucket, empty at the start of the nap, refills during
// it. The nap is at most half the time the aggregate's buckets take to
// fill (see overloadNap), so no token is lost to a full bucket and the
// limit holds; a frame waits at most the nap more than it would have,
// only while the port is over its aggregate budget. Class budgets do not
// make an input nap: a flood confined to one class must not delay the
// VM's other traffic.

const (
	// MaxOverloadNap bounds an input's nap under overload. At the
	// backstop's default rate for --pps 5000 (10 kpps), a nap gathers
	// about 40 frames: one wake-up instead of 40. The default burst (10
	// ms) allows it: the nap is at most half the buckets' fill time.
	MaxOverloadNap = 4 * time.Millisecond
	// minOverloadNap: an aggregate whose buckets fill faster than twice
	// this (an operator's small --burst) makes no input nap.
	minOverloadNap = 50 * time.Microsecond
)

// overloadNap returns how long an input of a pipe with policy pol may nap
// after a batch the aggregate refused a frame of: MaxOverloadNap, or half
// the time the aggregate's emptiest bucket takes to fill if that is less,
// or 0 (no nap) in shape mode (the queue, not the aggregate, refuses
// there) or when that is under minOverloadNap. An aggregate without rates
// (none, or only Block) gets MaxOverloadNap: none never refuses, and a
// blocked one refuses everything.
func overloadNap(pol *Policy) time.Duration {
	if pol.Mode != Police {
		return 0
	}
	e := pol.Aggregate.Effective()
	d := MaxOverloadNap
	fill := func(depth int, perSec float64) time.Duration {
		return time.Duration(float64(depth) / perSec * float64(time.Second))
	}
	if e.PPS > 0 {
		d = min(d, fill(e.BurstPackets, e.PPS)/2)
	}
	if e.BytesPerSec > 0 {
		d = min(d, fill(e.BurstBytes, e.BytesPerSec)/2)
	}
	if d < minOverloadNap {
		return 0
	}
	return d
}

// reader reads one device in batches into buffers it owns. Not safe for
// concurrent use: it belongs to one input goroutine.
type reader struct {
	dev    Device
	bufs   [][]byte // len: the current batch size; every buffer VnetHdrLen+MaxFrameBuffer bytes, the frame at VnetHdrLen
	spare  [][]byte // buffers a shrink set aside, until the input is quiet (see release)
	sizes  []int
	yield  time.Time // when the goroutine last yielded
	full   time.Time // when a read last filled every buffer
	filled int       // frames of the last read
	cur    int       // the frame of the last read being decided
	one    [1][]byte // a frame to write

	coalesce time.Duration // the latency budget; 0: off
	locked   bool          // the goroutine is locked to its thread: never yield
	sleep    bool          // sleep for the budget before the next read
	last     time.Time     // when the last read returned
	ts       unix.Timespec // coalesce, for nanosleep
	// sleeps counts the sleeps of a coalescing reader, yields the
	// yields (for tests).
	sleeps, yields int
	// idles counts the times it let go of its batch for want of frames
	// (for tests, which read it while the reader waits).
	idles atomic.Int32
}

func newReader(dev Device, coalesce time.Duration, locked bool) *reader {
	return &reader{
		dev:      dev,
		locked:   locked,
		bufs:     [][]byte{make([]byte, VnetHdrLen+MaxFrameBuffer)},
		spare:    make([][]byte, 0, MaxReadBatch),
		sizes:    make([]int, MaxReadBatch),
		coalesce: coalesce,
		ts:       unix.NsecToTimespec(int64(coalesce)),
	}
}

// read reads the next batch and returns how many frames it holds and the
// time they were read at. After a batch that filled every buffer it adds
// buffers first (allocating only then, up to MaxReadBatch); a coalescing
// reader may sleep first; and every yieldEvery it yields, unless it is
// locked to its thread.
func (r *reader) read() (int, time.Time, error) {
	if r.filled == len(r.bufs) && len(r.bufs) < MaxReadBatch {
		for range len(r.bufs) {
			r.bufs = append(r.bufs, r.newBuf())
		}
	}
	if r.sleep {
		// A system call, not time.Sleep: the goroutine is locked to
		// its thread, and parking it would cost two more wake-ups.
		unix.Nanosleep(&r.ts, nil)
		r.sleeps++
	}
	n, err := r.readBatch()
	now := time.Now()
	if n == len(r.bufs) {
		r.full = now
	} else if len(r.bufs) > 1 && now.Sub(r.full) >= shrinkAfter {
		r.shrink(n)
	}
	if r.coalesce > 0 {
		r.sleep = err == nil && r.gather(n, now)
	}
	r.filled = n
	if !r.locked && now.Sub(r.yield) >= yieldEvery {
		r.yield = now
		r.yields++
		runtime.Gosched()
	}
	return n, now, err
}

// nap pauses the input for d under overload (see overloadNap): in a system
// call if the goroutine is locked to its thread (parking it would cost two
// more wake-ups), else in the scheduler.
func (r *reader) nap(d time.Duration) {
	if r.locked {
		ts := unix.NsecToTimespec(int64(d))
		unix.Nanosleep(&ts, nil)
		return
	}
	time.Sleep(d)
}

// readBatch reads into every buffer. A reader holding more than one
// (spares included) waits at most shrinkAfter for the first frame, if its
// device can (an IdleReader): an input that a flood left quiet lets go of
// the buffers the flood made it add, rather than keeping them until its next frame,
// which may never come (a port whose flood stopped; a queue that the next
// flood's flows do not hash to). Without this, a daemon's heap holds the
// batch of every input that ever had a flood, up to MaxReadBatch buffers
// each (1.1 MB): in a soak of floods rotating over ten ports, 11.5 MB of
// its 27 MB of live heap.
func (r *reader) readBatch() (int, error) {
	if len(r.bufs) > 1 || len(r.spare) > 0 {
		if ir, ok := r.dev.(IdleReader); ok {
			n, err := ir.ReadIdle(r.bufs, r.sizes[:len(r.bufs)], VnetHdrLen, shrinkAfter)
			if err != ErrIdle {
				return n, err
			}
			r.release()
			r.idles.Add(1)
		}
	}
	return r.dev.Read(r.bufs, r.sizes[:len(r.bufs)], VnetHdrLen)
}

// IdleReader is a Device whose Read can give up when no frame comes
// within idle, returning ErrIdle and no frame. It returns early if a frame
// comes; an interrupted wait may start idle again.
type IdleReader interface {
	ReadIdle(bufs [][]byte, sizes []int, offset int, idle time.Duration) (int, error)
}

// ErrIdle is what an IdleReader's ReadIdle returns when no frame came.
var ErrIdle = errors.New("forward: no frame within the idle time")

// shrinkAfter is how long a reader keeps the buffers a flood made it add
// after its last full batch: then the next read lets go of those it did
// not need, so that a port that was flooded goes back to holding one
// buffer per input (see MaxReadBatch).
const shrinkAfter = time.Second

// shrink keeps the buffers a read of n frames needed, rounded up to a
// power of two, and sets the others aside for the batch to grow into
// again: a flood's batches shrink and grow many times a second, and
// allocating (and zeroing) 64 KB buffers each time would be garbage for
// the collector and work for the forwarding thread.
func (r *reader) shrink(n int) {
	keep := 1
	for keep < n {
		keep *= 2
	}
	if keep >= len(r.bufs) {
		return
	}
	r.spare = append(r.spare, r.bufs[keep:]...)
	clear(r.bufs[keep:])
	r.bufs = r.bufs[:keep]
}

// newBuf returns a buffer for the batch to grow by: a spare one, or a new
// one.
func (r *reader) newBuf() []byte {
	if k := len(r.spare); k > 0 {
		b := r.spare[k-1]
		r.spare[k-1] = nil
		r.spare = r.spare[:k-1]
		return b
	}
	return make([]byte, VnetHdrLen+MaxFrameBuffer)
}

// release lets go of every buffer but one, spares included, for the
// collector to take: the input has been quiet (see readBatch).
func (r *reader) release() {
	clear(r.bufs[1:])
	r.bufs = r.bufs[:1]
	clear(r.spare)
	r.spare = r.spare[:0]
}

// gather decides whether to sleep before the next read, after a read of n
// frames that returned at now: not after a full batch; after a sleep, if
// the sleep gathered two frames or more; after a wait for a frame, if
// frames came in two or more at once, or within the budget of the last.
func (r *reader) gather(n int, now time.Time) bool {
	gap := now.Sub(r.last)
	r.last = now
	switch {
	case n == len(r.bufs):
		return false
	case r.sleep:
		return n >= 2
	default:
		return n >= 2 || gap < r.coalesce
	}
}

// frame returns frame i of the last batch.
func (r *reader) frame(i int) []byte { return r.bufs[i][VnetHdrLen : VnetHdrLen+r.sizes[i]] }

// hdr returns the offload header of frame i.
func (r *reader) hdr(i int) []byte { return r.bufs[i][:VnetHdrLen] }

// withHdr returns frame i after its offload header, for Write at offset
// VnetHdrLen.
func (r *reader) withHdr(i int) []byte { return r.bufs[i][:VnetHdrLen+r.sizes[i]] }

// Relay copies every frame from in to out with no logic at all, at the
// scheduling priority nice (0: unchanged) and with the latency budget
// coalesce (0: off), until in or out is closed. It reads and writes
// exactly as a pipe does (the same reader, one write per frame), so the
// bench measures it as the floor of the forwarder's cost: what remains
// above it is shaperd's logic. Write errors other than a closed device are
// ignored. An input opened with offload delivers GSO segments (there is no
// budget for them to overflow).
func Relay(in, out Device, nice int, coalesce time.Duration) error {
	p := &Pipe{nice: nice, log: slog.New(slog.DiscardHandler)}
	locked := p.lockThread(coalesce)
	if locked {
		defer runtime.UnlockOSThread()
	}
	// No budgets: the input may hand over GSO segments whole (a tap
	// opened with offload).
	if g, ok := in.(gsoSetter); ok {
		if err := g.SetGSO(true); err != nil && isClosed(err) {
			return nil
		}
	}
	r := newReader(in, coalesce, locked)
	for {
		k, _, err := r.read()
		if err != nil {
			if isClosed(err) {
				return nil
			}
			time.Sleep(time.Millisecond)
			continue
		}
		for j := range k {
			r.one[0] = r.withHdr(j)
			if _, err := out.Write(r.one[:], VnetHdrLen); err != nil && isClosed(err) {
				return nil
			}
		}
	}
}
