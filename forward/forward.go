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
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/hashlimit"
	"github.com/shaperd/shaperd/rules"
)

// Device is a frame device that moves frames in batches, as wireguard-go's
// tun.Device does: a tap in production (OpenTap), a fake in tests
// (forward/fakedev).
//
// Read blocks until at least one frame is there, then reads frames while
// more are there without waiting, up to len(bufs): frame i into
// bufs[i][offset:], its length into sizes[i]. It returns how many it read.
// Each buffer should hold offset+MaxFrameBuffer bytes: a longer frame is
// cut to the buffer's length. One goroutine reads a Device at a time.
//
// Write sends bufs in order, one frame each, frame i being bufs[i][offset:],
// and returns how many it sent. When that is less than len(bufs), err says
// why bufs[n] was not sent, and the frames after it were not tried: the
// caller counts bufs[n] and may call again with the rest. Write may be
// called while a Read is blocked.
//
// offset is at least VnetHdrLen, and the VnetHdrLen bytes before a frame
// hold its offload header (struct virtio_net_hdr): a device with offloads
// reads a frame's header there and writes the header it finds there, so a
// GSO segment read from one such device is written to another as it came;
// a device without offloads zeroes it on Read and ignores it on Write.
//
// Close must unblock a pending Read, which then returns an error that
// errors.Is os.ErrClosed, as do Read and Write afterwards.
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	Write(bufs [][]byte, offset int) (n int, err error)
	Close() error
}

// Reason is why a frame was dropped. Its String is a short stable name used in
// status output and metrics.
type Reason uint8

// Drop reasons. Keep the strings stable: they are part of the status JSON and
// of the metrics, and docs/metrics.md lists them.
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
	ReasonGuardMAC                      // guard: the source MAC is not the VM's
	ReasonGuardIP                       // guard: the IPv4 or IPv6 source is not the VM's
	ReasonGuardARP                      // guard: ARP whose sender MAC or IP is not the VM's
	ReasonGuardND                       // guard: neighbour discovery whose source, target or link-layer option is not the VM's
	ReasonGuardDHCP                     // guard: a DHCP or DHCPv6 server message from the VM
	ReasonGuardRA                       // guard: an IPv6 router message from the VM, or a packet that could hide one
	ReasonFrameSize                     // larger than --max-frame
	ReasonSourceBudget                  // a class's per-source budget (per src) refused it
	ReasonDestBudget                    // a class's per-destination budget (per dst) refused it
	ReasonBypassConn                    // a new bypass connection over --bypass-conn-per-source for its source
	ReasonQuota                         // the tenant's quota refused it
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
	ReasonGuardMAC:        "guard_mac",
	ReasonGuardIP:         "guard_ip",
	ReasonGuardARP:        "guard_arp",
	ReasonGuardND:         "guard_nd",
	ReasonGuardDHCP:       "guard_dhcp",
	ReasonGuardRA:         "guard_ra",
	ReasonFrameSize:       "frame_size",
	ReasonSourceBudget:    "source_budget",
	ReasonDestBudget:      "destination_budget",
	ReasonBypassConn:      "bypass_conn_rate",
	ReasonQuota:           "quota",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Action is what Step did with a frame.
type Action uint8

const (
	// Drop: the frame is dropped, for Verdict.Reason.
	Drop Action = iota
	// Pass: the frame is to be written now.
	Pass
	// Queue: the frame was copied into the direction's shape queue; the
	// releaser writes it later, or drops it (queue_time, queue_flush). It
	// is counted as passed or dropped when it leaves the queue.
	Queue
)

var actionNames = [...]string{Drop: "drop", Pass: "pass", Queue: "queue"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "unknown"
}

// Verdict is what Step decided for one frame: pass it now, queue it (shape
// mode), or drop it for a reason.
type Verdict struct {
	Action Action
	Reason Reason // why, when Action is Drop
	Class  classify.Class
	// Rule is the name of the class of Policy.Rules that decided the
	// frame, "" when none did (the built-in class decided, or an earlier
	// step).
	Rule string
	rc   *RuleCounters // that class's counters
}

// Quota is a tenant's quota account (package quota), shared by the ports
// of a tenant and safe for concurrent use. The forwarder asks it about
// every frame the earlier steps passed, after the port aggregate (step 6),
// under the pipe's mutex, so Admit must be quick, must not block and must
// not call back into the pipe.
type Quota interface {
	// Admit decides whether a frame of n bytes (Ethernet frame, no FCS)
	// travelling in direction dir may pass at now, and counts it if so.
	// must is true for bypass and control frames: they pass whatever
	// Admit returns, and the quota must count them (they are part of the
	// bill) and keep room for them. In shape mode a queued frame is
	// asked about when it leaves the queue. It allocates nothing.
	Admit(now time.Time, dir classify.Direction, n int, must bool) bool
}

// Policy is the set of limits of one direction.
//
// Every frame goes through these steps, in this order:
//
//  1. Guard: from the VM, with Guard set, a spoofed frame is dropped
//     (guard_mac, guard_ip, guard_arp, guard_nd, guard_dhcp, guard_ra).
//  2. Control: ARP and neighbour discovery are charged to
//     Classes[classify.Control] alone (control_budget).
//  3. Bypass: frames of the bypassed connections (ssh, rdp) are charged
//     to Classes[classify.Bypass] alone (bypass_budget), and a new one
//     (a SYN) also to the per-source limit BypassConnPerSource
//     (bypass_conn_rate). Bypass and control frames then skip to step 6.
//  4. Classes: a frame above MaxFrame is dropped (frame_size); then the
//     classes of Rules are tried in order (see package rules): the first
//     that matches and whose budgets admit the frame decides; over its
//     budgets its action drops the frame (class_budget, source_budget,
//     destination_budget), continues with the next class, or reclassifies
//     it. A frame no class decides is charged to its built-in class,
//     Classes[c] (malformed frames to Classes[classify.Other]).
//  5. The port aggregate (aggregate_budget).
//  6. The tenant's Quota, which counts every passed byte, bypass and
//     control included, and may refuse the others (quota).
//  7. In shape mode, the delay queue (queue_full, queue_time); the class
//     budgets of step 4 that shape (the built-in classes, and classes
//     with mode shape), the aggregate and the quota are then applied
//     when a frame leaves the queue, the budgets of classes with mode
//     police on arrival.
//
// Budgets are all-or-nothing: a frame that a later step refuses is
// charged to none of the budgets that admitted it. The zero Policy admits
// everything.
//
// Mode says what happens to a frame the budgets refuse: dropped at once
// (Police, the zero value) or queued (Shape). The other shaping settings
// apply in shape mode only, and Validate rejects them in police mode.
// Bypass and control frames are never queued or delayed: they are policed
// by their own budgets in both modes.
type Policy struct {
	Aggregate bucket.Limits
	Classes   [classify.NumClasses]bucket.Limits

	// Guard, when not nil, is the anti-spoofing guard of a from-VM pipe
	// (--guard, --guard-mac, --guard-ip). A to-VM pipe refuses a policy
	// with a guard.
	Guard *guard.Guard
	// Rules are the classes of step 4 (--class, and the config file's
	// classes); nil for none.
	Rules *rules.Set
	// MaxFrame drops frames longer than this many bytes (Ethernet header
	// included, no FCS) at step 4 (--max-frame); 0 for no limit,
	// otherwise MinMaxFrame to MaxFrameBuffer. Bypass and control frames
	// are not concerned.
	MaxFrame int
	// BypassConnPerSource limits new bypass connections (a SYN without
	// ACK in the bypass class) to this many per source address (IPv6 per
	// /64) per minute, all of them at once at most
	// (--bypass-conn-per-source); 0 for no limit. The sources are tracked
	// in a table of hashlimit.DefaultSize entries that evicts the least
	// limited first.
	BypassConnPerSource int
	// Quota, when not nil, is the tenant's quota account of step 6.
	Quota Quota

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

// Bounds of Policy.MaxFrame and Policy.BypassConnPerSource.
const (
	MinMaxFrame            = 60
	MaxBypassConnPerSource = 1_000_000
)

// Validate checks every limit and shaping setting of p. Errors name the
// flag to fix without a direction: the caller adds the --to-vm- context.
// They wrap bucket.ErrInvalidLimits or ErrInvalidPolicy.
func (p *Policy) Validate() error {
	if err := p.validateShaping(); err != nil {
		return err
	}
	if p.MaxFrame != 0 && (p.MaxFrame < MinMaxFrame || p.MaxFrame > MaxFrameBuffer) {
		return invalidPolicy("--max-frame %db: want %d to %d bytes, or 0 for no limit", p.MaxFrame, MinMaxFrame, MaxFrameBuffer)
	}
	if p.BypassConnPerSource < 0 || p.BypassConnPerSource > MaxBypassConnPerSource {
		return invalidPolicy("--bypass-conn-per-source %d: want 1 to %d new connections per source per minute, or 0 for no limit",
			p.BypassConnPerSource, MaxBypassConnPerSource)
	}
	for i := range p.Rules.Len() {
		if cl := p.Rules.Class(i); cl.Mode == rules.Shape && p.Mode != Shape {
			return invalidPolicy("--class %s: mode shape queues frames, and the direction polices; add --mode shape, or use mode police", cl.Name)
		}
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
// the direction's goroutines, read by anyone. The dropped packets are the
// sum of Drops (see snapshot): one atomic add fewer per dropped frame, and
// a snapshot whose total always equals the sum of its reasons.
type ClassCounters struct {
	PassedPackets atomic.Uint64
	PassedBytes   atomic.Uint64
	DroppedBytes  atomic.Uint64
	Drops         [NumReasons]atomic.Uint64 // packets per reason
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
	// Panics counts the panics contained in the direction's input
	// goroutines (see Forwarder.Failure).
	Panics uint64
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

	mu      sync.Mutex     // guards current, agg, class, rt, ruleCounters, bypassConn, top, sh, q, inflight and vclock
	current *Policy        // the policy the budgets were built from
	agg     *bucket.Budget // the port aggregate
	class   [classify.NumClasses]*bucket.Budget
	// rt is the state of each class of current.Rules; ruleCounters the
	// same counters by name, kept across policies.
	rt           []ruleRT
	ruleCounters map[string]*RuleCounters
	bypassConn   *hashlimit.Table // --bypass-conn-per-source; nil when off
	top          *topK            // the VM's top destinations; from-VM pipes only
	sh           shaping          // the shaping settings of current
	q            queue            // the shape queue; empty, without storage, in police mode
	inflight     int              // frames the releaser took out of q and is writing
	vclock       int64            // the budgets' virtual clock in shape mode, ns since epoch (see takeDueLocked)

	epoch time.Time     // the origin of the queue's arrival times
	wake  chan struct{} // signals the releaser; buffered, 1
	// relMu is held by whoever runs release: the releaser goroutine, or
	// an input goroutine that finds a release due (see releaseDue). It
	// guards batch, and is taken before mu.
	relMu sync.Mutex
	batch batch // owned by the holder of relMu
	// due is when release should run next, as ns since epoch plus 1; 0
	// when nothing is queued. Written by release.
	due atomic.Int64

	counters   [classify.NumClasses]ClassCounters
	readErrors atomic.Uint64
	panics     atomic.Uint64
	// holder is the classifier of the input goroutine that holds mu in
	// step, nil when no step holds it: a goroutine that panics in step
	// unlocks mu on its way out (see Forwarder.runInput).
	holder    atomic.Pointer[classify.Classifier]
	heartbeat atomic.Int64 // unix ns of the owner's last loop iteration; 0 before start
	// nap is overloadNap of the current policy, in ns: how long a pacing
	// input pauses after a batch the aggregate refused a frame of.
	nap atomic.Int64
	// naps counts its inputs' naps (for tests).
	naps atomic.Int64

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
	dev      Device
	cls      *classify.Classifier
	r        *reader // its reader, once its goroutine runs; read by that goroutine only
	coalesce time.Duration
	out      Device  // where its passed frames go
	gso      gsoRole // which budgets decide whether it may read GSO segments
	gsoOn    bool    // its device was told it may (under mu)
	// pace lets it nap while the port aggregate refuses frames (see
	// overloadNap): set for the VM tap's queues when bypass and control
	// frames have a priority tap of their own.
	pace bool
}

// Input pairs a device with its own classifier for NewPipe. The classifier
// must not be used by anything else.
type Input struct {
	Dev Device
	Cls *classify.Classifier
	// Coalesce is the input's latency budget for coalescing wake-ups
	// (see Config.Coalesce); 0 turns it off.
	Coalesce time.Duration
	// Out, if not nil, is where the frames this input passes are
	// written, instead of the pipe's out (the paired queue of a
	// multi-queue tap). The releaser writes to the pipe's out.
	Out Device
	// gso says whether Dev may be handed GSO segments, and under which
	// budgets (New sets it; NewPipe's callers get none).
	gso gsoRole
	// pace lets the input nap while the aggregate refuses frames (see
	// overloadNap). New sets it for the VM tap when a priority tap
	// carries bypass and control frames; NewPipe's callers get none.
	pace bool
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
	if err := p.validateFor(dir); err != nil {
		return nil, err
	}
	pp := &Pipe{dir: dir, out: out, log: log.With("direction", dir.String()), epoch: now, wake: make(chan struct{}, 1)}
	if dir == classify.FromVM {
		pp.top = newTopK()
	}
	for _, in := range ins {
		if in.Cls == nil {
			return nil, errors.New("forward: an input without a classifier")
		}
		if in.Coalesce < 0 || in.Coalesce > MaxCoalesce {
			return nil, fmt.Errorf("forward: --coalesce %v: want 0 (off) to %v", in.Coalesce, MaxCoalesce)
		}
		o := in.Out
		if o == nil {
			o = out
		}
		pp.ins = append(pp.ins, input{dev: in.Dev, cls: in.Cls, coalesce: in.Coalesce, out: o, gso: in.gso, pace: in.pace})
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
		if p.agg, err = bucket.New(pol.Aggregate, p.nanos(now)); err != nil {
			return err
		}
	} else if p.current.Aggregate != pol.Aggregate {
		if err = p.agg.SetLimits(pol.Aggregate, p.nanos(now)); err != nil {
			return err
		}
	}
	for c := range p.class {
		l := pol.Classes[c]
		switch {
		case l.Unlimited():
			p.class[c] = nil
		case p.class[c] == nil:
			if p.class[c], err = bucket.New(l, p.nanos(now)); err != nil {
				return err
			}
		case p.current.Classes[c] != l:
			if err = p.class[c].SetLimits(l, p.nanos(now)); err != nil {
				return err
			}
		}
	}
	if err := p.applyRulesLocked(pol, now); err != nil {
		return err
	}
	p.applyShapingLocked(pol)
	p.nap.Store(int64(overloadNap(pol)))
	p.current = pol
	p.applyGSOLocked()
	return nil
}

// validateFor checks what depends on the direction: only a from-VM pipe
// has a guard.
func (p *Policy) validateFor(dir classify.Direction) error {
	if p.Guard != nil && dir != classify.FromVM {
		return invalidPolicy("--guard checks frames from the VM: a to-VM direction has no guard")
	}
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
	if err := pol.validateFor(p.dir); err != nil {
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
// mode it may queue a copy (Action Queue). Only the first input's
// goroutine may call it. It does not allocate.
func (p *Pipe) Step(frame []byte, now time.Time) Verdict {
	return p.step(p.ins[0].cls, frame, nil, single(len(frame)), now)
}

// step decides frame, whose offload header is hdr (VnetHdrLen bytes, or nil
// for none) and which costs w (see cost), at now, with cls.
func (p *Pipe) step(cls *classify.Classifier, frame, hdr []byte, w cost, now time.Time) Verdict {
	if len(frame) < 14 {
		return p.drop(classify.Malformed, nil, "", ReasonMalformed, w)
	}
	// The classifier's clock (the bypass table's idle timeouts) is the
	// pipe's: monotonic nanoseconds since its epoch, as the shape queue's
	// and the per-address tables'. A wall clock stepped by NTP would age
	// the table's entries at once, or keep them for hours.
	t := p.nanos(now)
	c := cls.Classify(frame, t)
	f := cls.Frame()
	p.lockFor(cls)
	p.syncPolicyLocked(now)
	if p.top != nil {
		p.top.add(f)
	}
	pol := p.current
	// Step 1: the guard.
	if g := pol.Guard; g != nil {
		if v := g.Check(f); v != guard.Pass {
			p.unlockFor()
			return p.drop(c, nil, "", guardReasons[v], w)
		}
	}
	// Steps 2 and 3: control and bypass, never queued.
	if c == classify.Control || c == classify.Bypass {
		r, ok := p.priorityLocked(c, f, w, now, t)
		p.unlockFor()
		if ok {
			return p.pass(c, nil, "", w)
		}
		return p.drop(c, nil, "", r, w)
	}
	// Step 4: the classes.
	if pol.MaxFrame > 0 && w.largest > pol.MaxFrame {
		p.unlockFor()
		return p.drop(c, nil, "", ReasonFrameSize, w)
	}
	var d decision
	p.classesLocked(&d, c, f, w, t)
	if d.dropped {
		p.unlockFor()
		return p.drop(c, d.rc, d.name, d.reason, w)
	}
	act, r := Pass, Reason(0)
	if p.sh.mode == Shape {
		// Step 7, with 5 and 6 when the frame leaves the queue.
		desc := qdesc{class: c, bclass: d.bclass, rule: int16(d.rule), charge: d.deferred, pkts: uint16(w.pkts), wire: uint32(w.bytes)}
		var wake bool
		act, r, wake = p.shapeLocked(desc, frame, hdr, now)
		if act != Drop && !d.deferred {
			p.takeLocked(&d, w, t) // a police-mode class charges on arrival
		}
		p.unlockFor()
		if wake {
			p.signal()
		}
		if act == Queue {
			return Verdict{Action: Queue, Class: c, Rule: d.name, rc: d.rc}
		}
	} else {
		// Steps 5 and 6.
		var ok bool
		if r, ok = p.finishLocked(&d, w, now, t); !ok {
			act = Drop
		}
		p.unlockFor()
	}
	if act == Pass {
		return p.pass(c, d.rc, d.name, w)
	}
	return p.drop(c, d.rc, d.name, r, w)
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
		// The budgets were reconfigured at now: the releaser's
		// virtual clock cannot charge them earlier (see takeDueLocked).
		p.vclock = max(p.vclock, p.nanos(now))
	}
}

// pass counts a frame passed, under its class and, if a class of the
// rules decided it, under that class (rc, named name).
func (p *Pipe) pass(c classify.Class, rc *RuleCounters, name string, w cost) Verdict {
	p.counters[c].passed(w)
	if rc != nil {
		rc.passed(w)
	}
	return Verdict{Action: Pass, Class: c, Rule: name, rc: rc}
}

// drop counts a frame dropped for reason r, as pass counts.
func (p *Pipe) drop(c classify.Class, rc *RuleCounters, name string, r Reason, w cost) Verdict {
	p.counters[c].dropped(r, w)
	if rc != nil {
		rc.dropped(r, w)
	}
	return Verdict{Action: Drop, Reason: r, Class: c, Rule: name, rc: rc}
}

func (k *ClassCounters) passed(w cost) {
	k.PassedPackets.Add(uint64(w.pkts))
	k.PassedBytes.Add(uint64(w.bytes))
}

func (k *ClassCounters) dropped(r Reason, w cost) {
	k.DroppedBytes.Add(uint64(w.bytes))
	k.Drops[r].Add(uint64(w.pkts))
}

// writeFailed moves a frame that Step passed but the device refused from
// passed to dropped.
func (p *Pipe) writeFailed(c classify.Class, rc *RuleCounters, w cost) {
	for _, k := range []*ClassCounters{&p.counters[c], rc.counters()} {
		if k == nil {
			continue
		}
		k.PassedPackets.Add(-uint64(w.pkts))
		k.PassedBytes.Add(-uint64(w.bytes))
		k.dropped(ReasonWriteError, w)
	}
}

func (rc *RuleCounters) counters() *ClassCounters {
	if rc == nil {
		return nil
	}
	return &rc.ClassCounters
}

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (p *Pipe) Stats() DirStats {
	var s DirStats
	for c := range p.counters {
		s.Classes[c] = p.counters[c].snapshot()
	}
	s.ReadErrors = p.readErrors.Load()
	s.Panics = p.panics.Load()
	return s
}

// MaxFrameBuffer is the size of a read buffer: larger than any frame a tap
// with a jumbo MTU can deliver.
const MaxFrameBuffer = 65536

// run forwards the frames of input i until its device is closed. The calling
// goroutine owns that input's classifier.
//
// Frames are read in batches (see reader) and decided in order; each frame
// a decision passes is written at once, before the next is decided, so
// that a frame passed at once is never overtaken by a frame queued after it
// in shape mode and released by the releaser.
func (p *Pipe) run(i int) error {
	in := &p.ins[i]
	locked := p.lockThread(in.coalesce)
	if locked {
		defer runtime.UnlockOSThread()
	}
	r := newReader(in.dev, in.coalesce, locked)
	in.r = r
	for {
		k, now, err := r.read()
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
		over, err := p.forwardBatch(in.cls, in.out, r, k, now)
		if err != nil {
			return nil // out was closed
		}
		if over && in.pace && k < len(r.bufs) {
			if d := time.Duration(p.nap.Load()); d > 0 {
				p.naps.Add(1)
				r.nap(d)
			}
		}
	}
}

// forwardBatch decides the k frames of r's last batch, read at now, and
// writes those it passes to out. It reports whether the port aggregate
// refused one of them (see overloadNap), and returns an error only when out
// is closed. It does not allocate.
func (p *Pipe) forwardBatch(cls *classify.Classifier, out Device, r *reader, k int, now time.Time) (over bool, _ error) {
	for j := range k {
		r.cur = j
		f, hdr := r.frame(j), r.hdr(j)
		w := frameCost(hdr, f)
		v := p.step(cls, f, hdr, w, now)
		p.releaseDue(now)
		if v.Action != Pass {
			over = over || v.Reason == ReasonAggregateBudget
			continue // dropped, or queued for the releaser
		}
		r.one[0] = r.withHdr(j)
		if _, err := out.Write(r.one[:], VnetHdrLen); err != nil {
			if isClosed(err) {
				return over, err
			}
			p.writeFailed(v.Class, v.rc, w)
			if p.logEvery.ok(now) {
				p.log.Warn("write failed", "err", err)
			}
		}
	}
	return over, nil
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

	failure atomic.Pointer[Failure] // the first contained panic

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
	// VMQueues and NetQueues are more queues of the VM and net taps
	// (multi-queue taps), each read by a goroutine of its own. They are
	// paired by index: what is read on VMQueues[i] is written to
	// NetQueues[i], and the other way round, so that a flow, which the
	// kernel keeps on one queue of a tap by its hash, is read and
	// written by one goroutine in each direction and stays in order. A
	// queue without a pair writes to VM or Net.
	VMQueues, NetQueues []Device
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
	// Coalesce is the latency budget, 0 to MaxCoalesce, that the readers
	// of the VM and net taps may add to a frame to share one wake-up
	// among several frames (--coalesce; 0, the zero value, turns it
	// off). The priority tap, which carries bypass and control frames,
	// never coalesces. See reader.
	Coalesce time.Duration
	Log      *slog.Logger
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
	if cfg.Coalesce < 0 || cfg.Coalesce > MaxCoalesce {
		return nil, fmt.Errorf("forward: --coalesce %v: want 0 (off) to %v", cfg.Coalesce, MaxCoalesce)
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
	// The VM tap's inputs may nap while the aggregate refuses frames
	// only if bypass and control frames do not wait with them: when they
	// have a tap of their own. The net tap carries them to the VM, so its
	// inputs never nap.
	pace := d.Priority != nil
	fromIns := []Input{{Dev: d.VM, Cls: newCls(classify.FromVM), Coalesce: cfg.Coalesce, gso: gsoOthers, pace: pace}}
	if d.Priority != nil {
		fromIns = append(fromIns, Input{Dev: d.Priority, Cls: newCls(classify.FromVM)})
	}
	toIns := []Input{{Dev: d.Net, Cls: newCls(classify.ToVM), Coalesce: cfg.Coalesce, gso: gsoAll}}
	pair := func(qs []Device, i int) Device {
		if i < len(qs) {
			return qs[i]
		}
		return nil
	}
	for i, q := range d.VMQueues {
		fromIns = append(fromIns, Input{Dev: q, Cls: newCls(classify.FromVM), Coalesce: cfg.Coalesce, Out: pair(d.NetQueues, i), gso: gsoOthers, pace: pace})
	}
	for i, q := range d.NetQueues {
		toIns = append(toIns, Input{Dev: q, Cls: newCls(classify.ToVM), Coalesce: cfg.Coalesce, Out: pair(d.VMQueues, i), gso: gsoAll})
	}
	now := time.Now()
	from, err := NewPipe(classify.FromVM, fromIns, d.Net, cfg.FromVM, now, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("from the VM: %w", err)
	}
	to, err := NewPipe(classify.ToVM, toIns, d.VM, cfg.ToVM, now, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("to the VM: %w", err)
	}
	from.nice, to.nice = cfg.Nice, cfg.Nice
	f := &Forwarder{FromVM: from, ToVM: to, stop: make(chan struct{}), done: make(chan struct{})}
	f.devs = []Device{d.VM, d.Net}
	if d.Priority != nil {
		f.devs = append(f.devs, d.Priority)
	}
	f.devs = append(append(f.devs, d.VMQueues...), d.NetQueues...)
	for _, p := range []*Pipe{from, to} {
		for i := range p.ins {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				if err := f.runInput(p, i); err != nil {
					p.log.Error("forwarding stopped", "err", err)
				}
			}()
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.contain(p, nil)
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

// Failure is a panic contained in one of a forwarder's input goroutines.
type Failure struct {
	Direction classify.Direction
	Value     string // what the goroutine panicked with
	Frame     string // the frame it was deciding, in hex (at most MaxFailureFrame bytes), "" if none
	Stack     string
}

// MaxFailureFrame bounds the bytes of a frame a Failure keeps.
const MaxFailureFrame = 2048

// Failure returns the first panic a forwarder contained, nil if none. A
// forwarder that contained one has stopped (it closes itself): its port
// takes its splice's fail path, and the rest of the daemon goes on.
func (f *Forwarder) Failure() *Failure { return f.failure.Load() }

// lockFor takes mu for a step of the input whose classifier is cls.
func (p *Pipe) lockFor(cls *classify.Classifier) {
	p.mu.Lock()
	p.holder.Store(cls)
}

// unlockFor releases what lockFor took.
func (p *Pipe) unlockFor() {
	p.holder.Store(nil)
	p.mu.Unlock()
}

// runInput runs input i of p and contains a panic in it (contain): whatever a frame
// does to the code that decides it (a decoder's bug, a policy's), it stops
// this forwarder only, never the daemon. The panic is logged with the
// frame's hex and counted (DirStats.Panics), mu is released if the step
// held it, and the forwarder closes itself: its port's kernel half sees
// no more heartbeats and takes the fail path (open: the direct way;
// closed: dropped).
func (f *Forwarder) runInput(p *Pipe, i int) error {
	defer f.contain(p, &p.ins[i])
	return p.run(i)
}

// contain, deferred by a goroutine of f running for p (for input in, nil
// for the releaser), recovers from a panic in it: see runInput. The shape
// queue's release path unlocks with defer, so a panic in it leaves no
// lock held either.
func (f *Forwarder) contain(p *Pipe, in *input) {
	v := recover()
	if v == nil {
		return
	}
	if in != nil && p.holder.Load() == in.cls {
		p.holder.Store(nil)
		p.mu.Unlock()
	}
	p.panics.Add(1)
	fl := &Failure{Direction: p.dir, Value: fmt.Sprint(v), Stack: string(debug.Stack())}
	if in != nil {
		if r := in.r; r != nil && r.cur < r.filled {
			fr := r.frame(r.cur)
			fl.Frame = hex.EncodeToString(fr[:min(len(fr), MaxFailureFrame)])
		}
	}
	f.failure.CompareAndSwap(nil, fl)
	p.log.Error("the forwarder panicked and stopped; the port takes its fail path", "panic", fl.Value, "frame", fl.Frame, "stack", fl.Stack)
	go f.Close() // Close waits for this goroutine
}
