// Package forward is shaperd's hot loop: it moves frames between the two taps
// of a splice, one goroutine per direction, and asks classify and bucket what
// to do with each frame.
//
// A direction's input goroutines own their classifiers; the direction's
// budgets and its shape queue are shared by its input goroutines and its
// releaser under the pipe's mutex. Limits are changed from outside through
// SetPolicy, which publishes a new Policy that the owners pick up before
// their next frame. Counters are atomics, read concurrently by Stats.
//
// A direction polices (drops a frame its budgets refuse, at once) or shapes
// (queues it and releases it at the shaped rate, after a fixed delay); see
// Mode and shape.go.
//
// The forwarder knows devices only through the Device interface: a tap in
// production (OpenTap), a fake in tests. It does not know how a port was spliced.
package forward

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
)

// Device is a frame device: each Read returns one whole Ethernet frame, each
// Write sends one. Close must unblock a pending Read.
type Device interface {
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	Close() error
}

// Reason is why a frame was dropped. Its String is a short stable name used in
// status output and metrics.
type Reason uint8

// Drop reasons. Keep the strings stable: they are part of the status JSON and
// of the metrics, and the README lists them.
const (
	ReasonClassBudget     Reason = iota // the frame's class budget refused it
	ReasonAggregateBudget               // the port aggregate refused it
	ReasonBypassBudget                  // the bypass class's own budget refused it
	ReasonControlBudget                 // the control class's own budget refused it
	ReasonMalformed                     // too short to be an Ethernet frame
	ReasonWriteError                    // the outgoing device refused the write
	ReasonQueueFull                     // shape mode: the queue held --queue-bytes
	ReasonQueueTime                     // shape mode: waited, or would have waited, longer than --queue-time
	ReasonQueueFlush                    // shape mode: queued when the direction switched to police, or the forwarder stopped
	NumReasons
)

var reasonNames = [NumReasons]string{
	ReasonClassBudget:     "class_budget",
	ReasonAggregateBudget: "aggregate_budget",
	ReasonBypassBudget:    "bypass_budget",
	ReasonControlBudget:   "control_budget",
	ReasonMalformed:       "malformed",
	ReasonWriteError:      "write_error",
	ReasonQueueFull:       "queue_full",
	ReasonQueueTime:       "queue_time",
	ReasonQueueFlush:      "queue_flush",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Verdict is what Step decided for one frame: pass it now, queue it (shape
// mode), or drop it for a reason.
type Verdict struct {
	Pass bool
	// Queued, with Pass false, means the frame was copied into the
	// direction's shape queue: the releaser writes it later, or drops it
	// (queue_time, queue_flush). It is counted as passed or dropped when it
	// leaves the queue.
	Queued bool
	Reason Reason // valid when !Pass && !Queued
	Class  classify.Class
}

// Policy is the set of limits of one direction.
//
// Classes[classify.Bypass] and Classes[classify.Control] are the bypass and
// control budgets: frames of those classes are charged to them alone and not
// to the aggregate. Every other class is charged to its class budget (if it
// has limits) and to the aggregate, and both must admit the frame. Malformed
// frames follow the Other class's budget. The zero Policy admits everything.
//
// Mode says what happens to a frame the budgets refuse: dropped at once
// (Police, the zero value) or queued (Shape). The other shaping settings
// apply in shape mode only, and Validate rejects them in police mode.
// Bypass and control frames are never queued or delayed: they are policed
// by their own budgets in both modes.
type Policy struct {
	Aggregate bucket.Limits
	Classes   [classify.NumClasses]bucket.Limits

	// Mode is Police or Shape (--mode).
	Mode Mode
	// Delay is how long every queued frame waits at least before it may
	// leave (--delay); 0 for none, in which case a frame the budgets admit
	// while the queue is empty passes at once.
	Delay time.Duration
	// QueueBytes bounds the queue in bytes of frames, Ethernet header
	// included, no FCS (--queue-bytes); 0 for the default (see
	// QueueBounds). At least bucket.MaxFrame, at most MaxQueueBytes. To
	// sustain the shaped rate the queue must hold Delay's worth of it:
	// frames wait at least Delay, so a smaller queue caps the rate at
	// QueueBytes/Delay (the default always holds enough). The queue's
	// storage, about 1.25 times this plus 64 KiB, is allocated when the
	// policy is applied.
	QueueBytes int
	// QueueTime is the longest a frame may wait in the queue, its delay
	// included (--queue-time); 0 for Delay + DefaultQueueSlack. More than
	// Delay, at most MaxQueueTime.
	QueueTime time.Duration
}

// Validate checks every limit and shaping setting of p. Errors name the
// flag to fix without a direction: the caller adds the --to-vm- context.
// They wrap bucket.ErrInvalidLimits or ErrInvalidPolicy.
func (p *Policy) Validate() error {
	if err := p.validateShaping(); err != nil {
		return err
	}
	if err := p.Aggregate.Validate(); err != nil {
		return fmt.Errorf("aggregate: %w", err)
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		if err := p.Classes[c].Validate(); err != nil {
			return fmt.Errorf("class %s: %w", c, err)
		}
	}
	return nil
}

// ClassCounters are the counters of one class in one direction. Written by
// the direction's goroutines, read by anyone.
type ClassCounters struct {
	PassedPackets  atomic.Uint64
	PassedBytes    atomic.Uint64
	DroppedPackets atomic.Uint64
	DroppedBytes   atomic.Uint64
	Drops          [NumReasons]atomic.Uint64 // packets per reason
}

// ClassStats is a snapshot of ClassCounters.
type ClassStats struct {
	PassedPackets  uint64
	PassedBytes    uint64
	DroppedPackets uint64
	DroppedBytes   uint64
	Drops          [NumReasons]uint64
}

// DirStats is a snapshot of one direction.
type DirStats struct {
	Classes [classify.NumClasses]ClassStats
	// ReadErrors counts failed reads from the incoming device.
	ReadErrors uint64
}

// Pipe is one direction of a forwarder: it reads frames from one or more
// inputs (queues), and writes the ones its policy admits to out. Each input
// has its own goroutine and classifier; the budgets and the shape queue are
// the direction's, one set shared by its inputs and its releaser under mu.
// Other goroutines may call SetPolicy, Stats, Fill and Queue.
//
// A second input exists to keep frames that may be bypass or control out of
// the queue a flood fills: the splice steers them into a separate device in
// the kernel, and they are classified and charged here like any other frame.
type Pipe struct {
	dir classify.Direction
	ins []input
	out Device

	pending atomic.Pointer[Policy] // published by SetPolicy, picked up under mu

	mu       sync.Mutex     // guards current, agg, class, sh, q and inflight
	current  *Policy        // the policy the budgets were built from
	agg      *bucket.Budget // the port aggregate
	class    [classify.NumClasses]*bucket.Budget
	sh       shaping // the shaping settings of current
	q        queue   // the shape queue; empty, without storage, in police mode
	inflight int     // frames the releaser took out of q and is writing

	epoch time.Time     // the origin of the queue's arrival times
	wake  chan struct{} // signals the releaser; buffered, 1
	batch batch         // owned by the releaser

	counters   [classify.NumClasses]ClassCounters
	readErrors atomic.Uint64
	heartbeat  atomic.Int64 // unix ns of the owner's last loop iteration; 0 before start

	// nice is the scheduling priority of the input goroutines' threads; 0
	// leaves it alone.
	nice int

	log *slog.Logger
	// logEvery rate-limits per-frame logging.
	logEvery atomicSometimes
}

// input is one queue of a pipe: a device and the classifier that its reader
// goroutine owns.
type input struct {
	dev Device
	cls *classify.Classifier
}

// Input pairs a device with its own classifier for NewPipe. The classifier
// must not be used by anything else.
type Input struct {
	Dev Device
	Cls *classify.Classifier
}

// NewPipe returns a Pipe for one direction with at least one input.
func NewPipe(dir classify.Direction, ins []Input, out Device, p Policy, now time.Time, log *slog.Logger) (*Pipe, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if len(ins) == 0 {
		return nil, errors.New("forward: a pipe needs an input")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pp := &Pipe{dir: dir, out: out, log: log.With("direction", dir.String()), epoch: now, wake: make(chan struct{}, 1)}
	for _, in := range ins {
		if in.Cls == nil {
			return nil, errors.New("forward: an input without a classifier")
		}
		pp.ins = append(pp.ins, input{dev: in.Dev, cls: in.Cls})
	}
	pol := p
	if err := pp.apply(&pol, now); err != nil {
		return nil, err
	}
	pp.pending.Store(&pol)
	pp.logEvery.interval = int64(10 * time.Second)
	return pp, nil
}

// apply makes pol the owner's current policy, keeping bucket fills where the
// limits did not change, and sizing, flushing or keeping the queue. Caller
// holds mu (or owns a pipe no goroutine runs yet).
func (p *Pipe) apply(pol *Policy, now time.Time) error {
	var err error
	if p.agg == nil {
		if p.agg, err = bucket.New(pol.Aggregate, now); err != nil {
			return err
		}
	} else if p.current.Aggregate != pol.Aggregate {
		if err = p.agg.SetLimits(pol.Aggregate, now); err != nil {
			return err
		}
	}
	for c := range p.class {
		l := pol.Classes[c]
		switch {
		case l.Unlimited():
			p.class[c] = nil
		case p.class[c] == nil:
			if p.class[c], err = bucket.New(l, now); err != nil {
				return err
			}
		case p.current.Classes[c] != l:
			if err = p.class[c].SetLimits(l, now); err != nil {
				return err
			}
		}
	}
	p.applyShapingLocked(pol)
	p.current = pol
	return nil
}

// SetPolicy validates pol and publishes it; the owners apply it before the
// next frame, and the releaser at once. Switching from shape to police mode
// drops the frames still queued, counted as queue_flush (police mode drops
// at once, so they would have been dropped too); frames the releaser has
// already taken are written. Switching to shape mode, or changing
// QueueBytes, allocates the queue's storage then; frames that no longer
// fit a smaller queue are dropped as queue_full. Safe for concurrent use.
func (p *Pipe) SetPolicy(pol Policy) error {
	if err := pol.Validate(); err != nil {
		return err
	}
	p.pending.Store(&pol)
	p.signal()
	return nil
}

// Policy returns the most recently published policy.
func (p *Pipe) Policy() Policy { return *p.pending.Load() }

// Step decides what to do with one frame at time now, using the first
// input's classifier, and counts it. It does not write the frame; in shape
// mode it may queue a copy (Verdict.Queued). Only the first input's
// goroutine may call it. It does not allocate.
func (p *Pipe) Step(frame []byte, now time.Time) Verdict {
	return p.step(p.ins[0].cls, frame, now)
}

func (p *Pipe) step(cls *classify.Classifier, frame []byte, now time.Time) Verdict {
	n := len(frame)
	if n < 14 {
		return p.drop(classify.Malformed, ReasonMalformed, n)
	}
	c := cls.Classify(frame, now.UnixNano())
	p.mu.Lock()
	p.syncPolicyLocked(now)
	var r Reason
	if p.sh.mode == Shape && c != classify.Bypass && c != classify.Control {
		var wake bool
		r, wake = p.shapeLocked(c, frame, now)
		p.mu.Unlock()
		if wake {
			p.signal()
		}
		if r == queued {
			return Verdict{Queued: true, Class: c}
		}
	} else {
		r = p.admitLocked(c, n, now)
		p.mu.Unlock()
	}
	if r == admitted {
		return p.pass(c, n)
	}
	return p.drop(c, r, n)
}

// syncPolicyLocked applies the policy SetPolicy published, if it is new.
// Caller holds mu.
func (p *Pipe) syncPolicyLocked(now time.Time) {
	if pol := p.pending.Load(); pol != p.current {
		// Validated by SetPolicy, so this cannot fail for a well-formed
		// policy; if it does, keep the old one and say so.
		if err := p.apply(pol, now); err != nil {
			p.log.Error("cannot apply policy", "err", err)
			p.pending.CompareAndSwap(pol, p.current)
		}
	}
}

// admitted is admitLocked's answer for a frame that passes.
const admitted = NumReasons

// admitLocked charges a frame of class c and n bytes to its budgets, or
// returns why it may not pass. Caller holds mu and has synced the policy.
func (p *Pipe) admitLocked(c classify.Class, n int, now time.Time) Reason {
	switch c {
	case classify.Bypass:
		if b := p.class[c]; b != nil && bucket.Admit(now, n, b) >= 0 {
			return ReasonBypassBudget
		}
		return admitted
	case classify.Control:
		if b := p.class[c]; b != nil && bucket.Admit(now, n, b) >= 0 {
			return ReasonControlBudget
		}
		return admitted
	}
	budgetClass := c
	if c == classify.Malformed {
		budgetClass = classify.Other
	}
	switch bucket.Admit(now, n, p.class[budgetClass], p.agg) {
	case -1:
		return admitted
	case 0:
		return ReasonClassBudget
	default:
		return ReasonAggregateBudget
	}
}

func (p *Pipe) pass(c classify.Class, n int) Verdict {
	k := &p.counters[c]
	k.PassedPackets.Add(1)
	k.PassedBytes.Add(uint64(n))
	return Verdict{Pass: true, Class: c}
}

func (p *Pipe) drop(c classify.Class, r Reason, n int) Verdict {
	k := &p.counters[c]
	k.DroppedPackets.Add(1)
	k.DroppedBytes.Add(uint64(n))
	k.Drops[r].Add(1)
	return Verdict{Reason: r, Class: c}
}

// writeFailed moves a frame that Step passed but the device refused from
// passed to dropped.
func (p *Pipe) writeFailed(c classify.Class, n int) {
	k := &p.counters[c]
	k.PassedPackets.Add(^uint64(0))
	k.PassedBytes.Add(^uint64(n - 1))
	k.DroppedPackets.Add(1)
	k.DroppedBytes.Add(uint64(n))
	k.Drops[ReasonWriteError].Add(1)
}

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (p *Pipe) Stats() DirStats {
	var s DirStats
	for c := range p.counters {
		k := &p.counters[c]
		cs := &s.Classes[c]
		cs.PassedPackets = k.PassedPackets.Load()
		cs.PassedBytes = k.PassedBytes.Load()
		cs.DroppedPackets = k.DroppedPackets.Load()
		cs.DroppedBytes = k.DroppedBytes.Load()
		for r := range k.Drops {
			cs.Drops[r] = k.Drops[r].Load()
		}
	}
	s.ReadErrors = p.readErrors.Load()
	return s
}

// MaxFrameBuffer is the size of a read buffer: larger than any frame a tap
// with a jumbo MTU can deliver.
const MaxFrameBuffer = 65536

// run forwards the frames of input i until its device is closed. The calling
// goroutine owns that input's classifier.
func (p *Pipe) run(i int) error {
	in := &p.ins[i]
	if p.raisePriority() {
		defer runtime.UnlockOSThread()
	}
	buf := make([]byte, MaxFrameBuffer)
	for {
		n, err := in.dev.Read(buf)
		now := time.Now()
		p.heartbeat.Store(now.UnixNano())
		if err != nil {
			if isClosed(err) {
				return nil
			}
			p.readErrors.Add(1)
			if p.logEvery.ok(now) {
				p.log.Warn("read failed", "err", err)
			}
			// A tap whose link went away returns errors at once: do
			// not spin.
			time.Sleep(time.Millisecond)
			continue
		}
		v := p.step(in.cls, buf[:n], now)
		if !v.Pass {
			continue // dropped, or queued for the releaser
		}
		if _, err := p.out.Write(buf[:n]); err != nil {
			if isClosed(err) {
				return nil
			}
			p.writeFailed(v.Class, n)
			if p.logEvery.ok(now) {
				p.log.Warn("write failed", "err", err)
			}
		}
	}
}

// Heartbeat returns when the pipe's goroutine last read or tried to read a
// frame (zero before Run).
func (p *Pipe) Heartbeat() time.Time {
	ns := p.heartbeat.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Forwarder is both directions of one spliced port.
type Forwarder struct {
	FromVM *Pipe // reads the VM-side devices, writes the network-side device
	ToVM   *Pipe // reads the network-side device, writes the VM-side device

	devs []Device
	wg   sync.WaitGroup
	once sync.Once
	stop chan struct{} // closed by Close: stops the releasers
	done chan struct{}
}

// Devices are the devices of one splice.
type Devices struct {
	// VM carries frames from the VM (read) and to the VM (written).
	VM Device
	// Net took the port's place in the switch: frames from the VM are
	// written to it, frames to the VM read from it.
	Net Device
	// Priority, if not nil, carries frames from the VM that the splice
	// steered away from VM's queue because they may be bypass or control.
	Priority Device
}

// Config configures a Forwarder.
type Config struct {
	Classify classify.Config
	// ConnTableSize bounds the bypass connection table, in entries.
	ConnTableSize int
	FromVM, ToVM  Policy
	// Nice is the scheduling priority (-20..19) of the forwarding threads;
	// 0 leaves them at the daemon's.
	Nice int
	Log  *slog.Logger
}

// DefaultConnTableSize is the default bound of the bypass connection table.
const DefaultConnTableSize = 16384

// New returns a Forwarder over the devices of a splice. It validates
// everything before starting; on success one goroutine per input and one
// releaser per direction (idle in police mode) are running. Close stops
// them.
func New(cfg Config, d Devices) (*Forwarder, error) {
	if err := cfg.Classify.Validate(); err != nil {
		return nil, err
	}
	if cfg.Nice < -20 || cfg.Nice > 19 {
		return nil, fmt.Errorf("forward: nice %d: want -20..19", cfg.Nice)
	}
	if cfg.ConnTableSize <= 0 {
		cfg.ConnTableSize = DefaultConnTableSize
	}
	table := classify.NewConnTable(cfg.ConnTableSize)
	newCls := func(dir classify.Direction) *classify.Classifier {
		c, err := classify.New(dir, cfg.Classify, table)
		if err != nil {
			panic(err) // validated above
		}
		return c
	}
	fromIns := []Input{{Dev: d.VM, Cls: newCls(classify.FromVM)}}
	if d.Priority != nil {
		fromIns = append(fromIns, Input{Dev: d.Priority, Cls: newCls(classify.FromVM)})
	}
	now := time.Now()
	from, err := NewPipe(classify.FromVM, fromIns, d.Net, cfg.FromVM, now, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("from the VM: %w", err)
	}
	to, err := NewPipe(classify.ToVM, []Input{{Dev: d.Net, Cls: newCls(classify.ToVM)}}, d.VM, cfg.ToVM, now, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("to the VM: %w", err)
	}
	from.nice, to.nice = cfg.Nice, cfg.Nice
	f := &Forwarder{FromVM: from, ToVM: to, stop: make(chan struct{}), done: make(chan struct{})}
	f.devs = []Device{d.VM, d.Net}
	if d.Priority != nil {
		f.devs = append(f.devs, d.Priority)
	}
	for _, p := range []*Pipe{from, to} {
		for i := range p.ins {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				if err := p.run(i); err != nil {
					p.log.Error("forwarding stopped", "err", err)
				}
			}()
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.releaseLoop(f.stop)
		}()
	}
	go func() { f.wg.Wait(); close(f.done) }()
	return f, nil
}

// Done is closed when every goroutine has stopped (after Close).
func (f *Forwarder) Done() <-chan struct{} { return f.done }

// Close stops the forwarder, in this order: it tells the releasers to stop
// (one writing a batch finishes it or finds the device closed), closes
// every device, which unblocks the readers, waits for every goroutine, and
// then drops the frames still queued, counted as queue_flush. Safe to call
// more than once. Closing the fds of persistent taps leaves the taps in
// place (without carrier); removing them is the splice backend's job.
func (f *Forwarder) Close() error {
	var err error
	f.once.Do(func() {
		close(f.stop)
		var errs []error
		for _, d := range f.devs {
			errs = append(errs, d.Close())
		}
		err = errors.Join(errs...)
		<-f.done
		for _, p := range []*Pipe{f.FromVM, f.ToVM} {
			p.mu.Lock()
			p.flushLocked()
			p.mu.Unlock()
		}
	})
	return err
}

// Alive reports whether the forwarder's goroutines are still running.
func (f *Forwarder) Alive() bool {
	select {
	case <-f.done:
		return false
	default:
		return true
	}
}

// Pipe returns the pipe of direction d.
func (f *Forwarder) Pipe(d classify.Direction) *Pipe {
	if d == classify.ToVM {
		return f.ToVM
	}
	return f.FromVM
}

// atomicSometimes allows one event per interval; safe for concurrent use.
type atomicSometimes struct {
	interval int64 // ns
	last     atomic.Int64
}

func (s *atomicSometimes) ok(now time.Time) bool {
	t := now.UnixNano()
	l := s.last.Load()
	if t-l < s.interval {
		return false
	}
	return s.last.CompareAndSwap(l, t)
}
