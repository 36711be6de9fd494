package forward

import (
	"log/slog"
	"runtime"
	"time"
)

// The read side of an input, shared by the pipes and by Relay (the bare
// tap pair the bench measures shaperd against), so that both pay for
// exactly the same I/O.

const (
	// MaxReadBatch is the most frames one Read of an input returns. The
	// batch starts at one buffer and doubles, up to this, each time a
	// Read fills it: an idle or lightly loaded input keeps one
	// MaxFrameBuffer buffer, a flooded one MaxReadBatch of them.
	MaxReadBatch = 16

	// yieldEvery is how often an input goroutine passes through the Go
	// scheduler (runtime.Gosched). It waits for frames in a system call
	// (see OpenTap), never in the scheduler, so without this the runtime
	// sees one goroutine running for ever: every 10 ms its monitor
	// thread (sysmon) preempts it, takes its P away, and then polls every
	// 20 µs for a millisecond or more. Measured at 10 kpps, evenly
	// spaced: 4400 extra wake-ups a second without the yield, 700 with
	// it.
	yieldEvery = 5 * time.Millisecond
)

// reader reads one device in batches into buffers it owns. Not safe for
// concurrent use: it belongs to one input goroutine.
type reader struct {
	dev    Device
	bufs   [][]byte // len: the current batch size; every buffer MaxFrameBuffer bytes
	sizes  []int
	yield  time.Time // when the goroutine last yielded
	filled int       // frames of the last read
	one    [1][]byte // a frame to write
}

func newReader(dev Device) *reader {
	return &reader{
		dev:   dev,
		bufs:  [][]byte{make([]byte, MaxFrameBuffer)},
		sizes: make([]int, MaxReadBatch),
	}
}

// read reads the next batch and returns how many frames it holds and the
// time they were read at. After a batch that filled every buffer it adds
// buffers first (allocating only then, up to MaxReadBatch), and every
// yieldEvery it yields.
func (r *reader) read() (int, time.Time, error) {
	if r.filled == len(r.bufs) && len(r.bufs) < MaxReadBatch {
		for range len(r.bufs) {
			r.bufs = append(r.bufs, make([]byte, MaxFrameBuffer))
		}
	}
	n, err := r.dev.Read(r.bufs, r.sizes[:len(r.bufs)])
	now := time.Now()
	r.filled = n
	if now.Sub(r.yield) >= yieldEvery {
		r.yield = now
		runtime.Gosched()
	}
	return n, now, err
}

// frame returns frame i of the last batch.
func (r *reader) frame(i int) []byte { return r.bufs[i][:r.sizes[i]] }

// Relay copies every frame from in to out with no logic at all, at the
// scheduling priority nice (0: unchanged), until in or out is closed. It
// reads and writes exactly as a pipe does (the same reader, one write per
// frame), so the bench measures it as the floor of the forwarder's cost:
// what remains above it is shaperd's logic. Write errors other than a
// closed device are ignored.
func Relay(in, out Device, nice int) error {
	p := &Pipe{nice: nice, log: slog.New(slog.DiscardHandler)}
	if p.raisePriority() {
		defer runtime.UnlockOSThread()
	}
	r := newReader(in)
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
			r.one[0] = r.frame(j)
			if _, err := out.Write(r.one[:]); err != nil && isClosed(err) {
				return nil
			}
		}
	}
}
