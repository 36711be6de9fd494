package forward

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward/fakedev"
)

// replay is an input Device that returns the same frame, as many as asked,
// without allocating; it counts the frames it returned.
type replay struct {
	frame []byte
	reads atomic.Int64
}

func (d *replay) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for i := range bufs {
		sizes[i] = copy(bufs[i][offset:], d.frame)
	}
	d.reads.Add(int64(len(bufs)))
	return len(bufs), nil
}
func (d *replay) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (d *replay) Close() error                            { return nil }

// Reading a batch and forwarding it allocates nothing once the batch has
// grown to its size, in police and shape mode, passing and dropping.
func TestForwardBatchZeroAllocs(t *testing.T) {
	now := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		name string
		pol  Policy
	}{
		{"unlimited", Policy{}},
		{"policed", Policy{Aggregate: bucket.Limits{PPS: 5000, BytesPerSec: 1e6}}},
		{"shaped", Policy{Mode: Shape, Delay: time.Millisecond, Aggregate: bucket.Limits{PPS: 5000}}},
	} {
		from, _ := newPipes(t, tc.pol, Policy{}, now)
		from.out = discard{}
		r := newReader(&replay{frame: udpFlood(t)}, 0, false)
		cls := from.ins[0].cls
		step := func() {
			k, _, err := r.read()
			if err != nil {
				t.Fatal(err)
			}
			now = now.Add(100 * time.Microsecond)
			if _, err := from.forwardBatch(cls, from.out, r, k, now); err != nil {
				t.Fatal(err)
			}
		}
		for range 8 { // the batch grows to MaxReadBatch
			step()
		}
		if len(r.bufs) != MaxReadBatch {
			t.Fatalf("%s: batch of %d buffers after full reads, want %d", tc.name, len(r.bufs), MaxReadBatch)
		}
		if a := testing.AllocsPerRun(200, step); a != 0 {
			t.Errorf("%s: %v allocations per batch of %d frames, want 0", tc.name, a, MaxReadBatch)
		}
	}
}

// The batch starts with one buffer, doubles after each full read, and
// frames come out in the order they went in.
func TestReaderBatchGrowsInOrder(t *testing.T) {
	dev := fakedev.New(64)
	for i := range 40 {
		dev.Inject([]byte{byte(i)})
	}
	r := newReader(dev, 0, false)
	var sizes []int
	next := 0
	for next < 40 {
		k, _, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, k)
		for j := range k {
			if f := r.frame(j); len(f) != 1 || int(f[0]) != next {
				t.Fatalf("frame %d of a batch is %v, want [%d]", j, f, next)
			}
			next++
		}
	}
	want := []int{1, 2, 4, 8, 16, 9}
	if len(sizes) != len(want) {
		t.Fatalf("batches %v, want %v", sizes, want)
	}
	for i := range want {
		if sizes[i] != want[i] {
			t.Fatalf("batches %v, want %v", sizes, want)
		}
	}
}

// Relay copies every frame, in order, and returns when its input is closed.
func TestRelayCopiesAndStops(t *testing.T) {
	in, out := fakedev.New(256), fakedev.New(0)
	for i := range 200 {
		in.Inject([]byte{byte(i), 0xee})
	}
	done := make(chan error, 1)
	go func() { done <- Relay(in, out, 0, 0) }()
	waitFor(t, func() bool { return len(out.Written()) == 200 })
	for i, f := range out.Written() {
		if f[0] != byte(i) {
			t.Fatalf("frame %d is %v: out of order", i, f)
		}
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return after its input was closed")
	}
}

// A batch that the device refuses in part: the releaser counts the refused
// frame as write_error and writes the rest.
func TestReleaseCountsEachRefusedFrame(t *testing.T) {
	now := time.Unix(1700000000, 0)
	from, _ := newPipes(t, Policy{Mode: Shape, Delay: time.Millisecond}, Policy{}, now)
	f := udpFlood(t)
	for range 5 {
		if v := from.Step(f, now); v.Action != Queue {
			t.Fatalf("not queued: %+v", v)
		}
	}
	out := &refuse{at: 2, err: errors.New("no carrier")}
	if _, err := from.release(now.Add(2*time.Millisecond), out); err != nil {
		t.Fatal(err)
	}
	passed, dropped, drops := dirTotals(from.Stats())
	if passed != 4 || dropped != 1 || drops[ReasonWriteError] != 1 || out.written != 4 {
		t.Errorf("passed %d, dropped %d (%s), written %d; want 4 passed and written, 1 write_error",
			passed, dropped, dropsString(drops), out.written)
	}
}

// refuse is an outgoing Device that refuses the frame at index at (counted
// over all its writes) with err.
type refuse struct {
	at, seen, written int
	err               error
}

func (d *refuse) Read([][]byte, []int, int) (int, error) { return 0, os.ErrClosed }
func (d *refuse) Close() error                           { return nil }
func (d *refuse) Write(bufs [][]byte, _ int) (int, error) {
	for i := range bufs {
		d.seen++
		if d.seen-1 == d.at {
			return i, d.err
		}
		d.written++
	}
	return len(bufs), nil
}

// A coalescing reader sleeps only while frames come closer together than
// its budget, never after a full batch, and stops as soon as a sleep
// gathers fewer than two frames.
func TestReaderCoalescingDecisions(t *testing.T) {
	const budget = time.Millisecond
	t0 := time.Unix(1700000000, 0)
	steps := []struct {
		n     int           // frames read
		after time.Duration // since the previous read returned
		want  bool          // sleep before the next read
	}{
		{1, time.Hour, false},             // a frame after a pause: read at once
		{1, 5 * time.Millisecond, false},  // slower than the budget
		{1, 300 * time.Microsecond, true}, // faster: start
		{3, time.Millisecond, true},       // the sleep gathered 3: go on
		{2, time.Millisecond, true},
		{1, time.Millisecond, false}, // gathered 1: back to waiting
		{1, 2 * time.Millisecond, false},
		{2, 2 * time.Millisecond, true}, // two at once after a wait: start
		{4, time.Millisecond, false},    // a full batch (4 buffers): frames are waiting
	}
	r := newReader(nil, budget, false)
	r.bufs = make([][]byte, 4)
	now := t0
	for i, s := range steps {
		now = now.Add(s.after)
		r.sleep = r.gather(s.n, now)
		if r.sleep != s.want {
			t.Fatalf("step %d (%d frames, %v after the last): sleep %v, want %v", i, s.n, s.after, r.sleep, s.want)
		}
	}
	if off := newReader(nil, 0, false); off.coalesce != 0 || off.sleep {
		t.Fatal("a reader without a budget coalesces")
	}
}

// The VM and net inputs coalesce with the forwarder's budget; the priority
// input (bypass and control) never does; a budget out of range is refused.
func TestCoalesceConfig(t *testing.T) {
	vm, nt, prio := fakedev.New(1), fakedev.New(1), fakedev.New(1)
	f, err := New(Config{Coalesce: 300 * time.Microsecond}, Devices{VM: vm, Net: nt, Priority: prio})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := []time.Duration{f.FromVM.ins[0].coalesce, f.FromVM.ins[1].coalesce, f.ToVM.ins[0].coalesce}; got[0] != 300*time.Microsecond ||
		got[1] != 0 || got[2] != 300*time.Microsecond {
		t.Errorf("budgets of the VM, priority and net inputs: %v, want [300µs 0 300µs]", got)
	}
	for _, c := range []time.Duration{-time.Microsecond, MaxCoalesce + 1} {
		if _, err := New(Config{Coalesce: c}, Devices{VM: fakedev.New(1), Net: fakedev.New(1)}); err == nil || !strings.Contains(err.Error(), "--coalesce") {
			t.Errorf("Coalesce %v: %v, want an error naming --coalesce", c, err)
		}
	}
}

// A coalescing reader still reads every frame, in order, and sleeps when
// frames come faster than its budget.
func TestReaderCoalescesBatches(t *testing.T) {
	dev := fakedev.New(256)
	r := newReader(dev, 200*time.Microsecond, false)
	go func() {
		for i := range 200 {
			dev.Inject([]byte{byte(i)})
			time.Sleep(20 * time.Microsecond)
		}
	}()
	next := 0
	for next < 200 {
		k, _, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		for j := range k {
			if f := r.frame(j); f[0] != byte(next) {
				t.Fatalf("frame %d read as %d", next, f[0])
			}
			next++
		}
	}
	if r.sleeps == 0 {
		t.Error("200 frames 20 µs apart and a budget of 200 µs: the reader never slept")
	}
}

// A reader lets go of the buffers a flood made it add once a read returns
// less than a full batch a second after the last full one.
func TestReaderShrinksAfterAFlood(t *testing.T) {
	dev := fakedev.New(256)
	r := newReader(dev, 0, false)
	for range 100 {
		dev.Inject([]byte{1})
	}
	for got := 0; got < 100; {
		k, _, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		got += k
	}
	if len(r.bufs) != MaxReadBatch {
		t.Fatalf("%d buffers after a flood, want %d", len(r.bufs), MaxReadBatch)
	}
	dev.Inject([]byte{2})
	if k, _, _ := r.read(); k != 1 || len(r.bufs) != MaxReadBatch {
		t.Fatalf("read %d frames, %d buffers: shrank within a second of the flood", k, len(r.bufs))
	}
	r.full = r.full.Add(-shrinkAfter)
	dev.Inject([]byte{3})
	if k, _, _ := r.read(); k != 1 || len(r.bufs) != 1 {
		t.Fatalf("read %d frames, %d buffers a second after the flood, want 1 buffer", k, len(r.bufs))
	}
}

// counted is an input Device that returns n frames per Read (at most as
// many as it is given buffers), without allocating.
type counted struct{ n int }

func (d *counted) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	k := min(d.n, len(bufs))
	for i := range k {
		sizes[i] = 60
	}
	return k, nil
}
func (d *counted) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (d *counted) Close() error                            { return nil }

// A flood's batch shrinks and grows again many times; it grows into the
// buffers its shrink set aside, allocating nothing.
func TestReaderRegrowsIntoSpares(t *testing.T) {
	dev := &counted{n: MaxReadBatch}
	r := newReader(dev, 0, false)
	grow := func() {
		for len(r.bufs) < MaxReadBatch {
			if _, _, err := r.read(); err != nil {
				t.Fatal(err)
			}
		}
	}
	grow()
	cycle := func() {
		dev.n = 1
		r.full = r.full.Add(-shrinkAfter)
		if k, _, _ := r.read(); k != 1 || len(r.bufs) != 1 {
			t.Fatalf("read %d frames, %d buffers, a second after the last full batch; want 1, 1", k, len(r.bufs))
		}
		dev.n = MaxReadBatch
		grow()
	}
	if a := testing.AllocsPerRun(20, cycle); a != 0 {
		t.Errorf("%v allocations to shrink to 1 buffer and grow back to %d, want 0", a, MaxReadBatch)
	}
	if len(r.spare) != 0 {
		t.Errorf("%d spares with the batch at its size, want 0", len(r.spare))
	}
}

// TestReaderYieldsOnlyUnlocked: a reader yields to the scheduler every
// yieldEvery, unless its goroutine is locked to its thread, where a yield
// costs two thread wake-ups (see yieldEvery).
func TestReaderYieldsOnlyUnlocked(t *testing.T) {
	for _, locked := range []bool{false, true} {
		r := newReader(&replay{frame: udpFlood(t)}, 0, locked)
		for deadline := time.Now().Add(4 * yieldEvery); time.Now().Before(deadline); {
			if _, _, err := r.read(); err != nil {
				t.Fatal(err)
			}
		}
		switch {
		case locked && r.yields != 0:
			t.Errorf("a locked reader yielded %d times", r.yields)
		// The first read yields, and so does the first read yieldEvery
		// after it: however slowly a loaded machine runs the loop, 4
		// yieldEvery of reads hold two.
		case !locked && r.yields < 2:
			t.Errorf("an unlocked reader yielded %d times in %v, want one every %v", r.yields, 4*yieldEvery, yieldEvery)
		}
	}
}

// The aggregate's nap: at most MaxOverloadNap, at most half the time its
// emptiest bucket takes to fill, none in shape mode or below
// minOverloadNap.
func TestOverloadNap(t *testing.T) {
	for _, tc := range []struct {
		name string
		pol  Policy
		want time.Duration
	}{
		{"default burst", Policy{Aggregate: bucket.Limits{PPS: 5000}}, MaxOverloadNap},
		{"burst of 1 ms", Policy{Aggregate: bucket.Limits{PPS: 5000, BurstPackets: 5}}, 500 * time.Microsecond},
		{"byte bucket fills first", Policy{Aggregate: bucket.Limits{PPS: 5000, BytesPerSec: 1e6, BurstBytes: 2000}}, time.Millisecond},
		{"fills in 80 µs", Policy{Aggregate: bucket.Limits{PPS: 25000, BurstPackets: 2}}, 0},
		{"shape", Policy{Mode: Shape, Delay: time.Millisecond, Aggregate: bucket.Limits{PPS: 5000}}, 0},
		{"blocked", Policy{Aggregate: bucket.Limits{Block: true}}, MaxOverloadNap},
	} {
		if got := overloadNap(&tc.pol); got != tc.want {
			t.Errorf("%s: nap %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Under overload only the VM tap's inputs nap, and only when bypass and
// control frames have a priority tap: not the priority tap's own input,
// not the net tap's (it carries bypass frames to the VM), not without a
// priority tap, and not for a class budget's refusals.
func TestOnlyTheVMTapNaps(t *testing.T) {
	flood := udpFlood(t)
	toVM := frame(t, false, &layers.UDP{SrcPort: 9, DstPort: 40000}, 200, 0)
	over := Policy{Aggregate: bucket.Limits{PPS: 1, BurstPackets: 3}}
	classOver := Policy{Classes: [classify.NumClasses]bucket.Limits{classify.UDP: {PPS: 1, BurstPackets: 3}}}
	for _, tc := range []struct {
		name          string
		pol           Policy
		priority      bool
		into          string // vm, priority or net
		class         classify.Class
		napsFrom, any bool
	}{
		{"aggregate refuses from the VM", over, true, "vm", classify.UDP, true, true},
		{"no priority tap", over, false, "vm", classify.UDP, false, false},
		{"the priority tap's input", over, true, "priority", classify.UDP, false, false},
		{"the net tap's input", over, true, "net", classify.UDP, false, false},
		{"a class budget refuses", classOver, true, "vm", classify.UDP, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, nt, prio := fakedev.New(256), fakedev.New(256), fakedev.New(256)
			d := Devices{VM: vm, Net: nt}
			if tc.priority {
				d.Priority = prio
			}
			f, err := New(Config{FromVM: tc.pol, ToVM: tc.pol}, d)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			in, fr, p := vm, flood, f.FromVM
			switch tc.into {
			case "priority":
				in = prio
			case "net":
				in, fr, p = nt, toVM, f.ToVM
			}
			const frames = 100
			for range frames {
				in.Inject(fr)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				s := p.Stats().Classes[tc.class]
				if s.PassedPackets+s.DroppedPackets == frames {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("frames not decided: %+v", s)
				}
				time.Sleep(time.Millisecond)
			}
			// The last batch's nap, if any, is counted before its read.
			time.Sleep(10 * time.Millisecond)
			naps := f.FromVM.naps.Load() + f.ToVM.naps.Load()
			if tc.napsFrom && f.FromVM.naps.Load() == 0 {
				t.Errorf("the VM tap's input never napped under overload")
			}
			if !tc.any && naps != 0 {
				t.Errorf("%d naps, want none", naps)
			}
		})
	}
}
