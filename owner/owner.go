// Package owner holds the one owner of a VM port's plumbing: the splice
// that puts the port behind a pair of taps, and the forwarder that runs on
// them. Whatever wants a port spliced (a quarantine, a quota tenant, or
// both) says so with a Want; the owner makes the plumbing match it:
//
//   - a Want of the kind in place only changes the forwarder's policies
//     (forward.Pipe.SetPolicy) and the intent recorded on the plumbing;
//   - a Want of another kind (a tenant's port quarantined, or its
//     quarantine ended) re-splices with the new options;
//   - a Want of None, or a port that is gone, reverts the splice.
//
// The owner knows nothing of quarantines, ladders or tenants: only splice
// options, forwarder policies and an intent string. It does its slow work
// (the backends' tools, netlink, tap devices) under its own lock, which
// the daemon takes before any lock of its own and never while holding
// one.
package owner

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

// Kind is whom a splice is made for; the daemon decides what each means.
type Kind uint8

const (
	None       Kind = iota // nothing wants the port spliced
	Quarantine             // a quarantine's options and limits
	Tenant                 // a quota tenant's defaults and hooks
)

// Want is what a port's contributors want of it.
type Want struct {
	Kind Kind
	// Options are the splice's; with FailFallback a backend that cannot
	// fail open is asked again for a fail-closed splice.
	Options      splice.Options
	FailFallback bool
	// Classify, FromVM and ToVM are the forwarder's.
	Classify     classify.Config
	FromVM, ToVM forward.Policy
	// Intent is recorded on the plumbing (splice.IntentRecorder), for a
	// daemon that loses its state file.
	Intent string
	// Backstop is the kernel half's pre-policer, by direction
	// (steer.FromVM, steer.ToVM), written into a splice that has one
	// (splice.Kernel).
	Backstop [2]steer.Backstop
}

// Env is what every owner needs from the host. Its fields are read only.
type Env struct {
	Backends []splice.Backend
	// OpenTap opens one of a splice's taps; OpenQueues the TapQueues
	// queues of its VM or net tap (multi-queue when TapQueues > 1), with
	// offload when the splice's taps take GSO segments (splice.Offloader).
	// Without OpenQueues, OpenTap opens every tap with one queue and no
	// offloads.
	OpenTap    func(name string) (forward.Device, error)
	OpenQueues func(name string, n int, offload bool) ([]forward.Device, error)
	// TakeQueues opens the queues of a tap whose creating file the splice
	// hands over (splice.TapHolder), that file first; nil:
	// forward.TapQueues. A tap whose file is taken is attached to no
	// second time for its first queue (see splice.TapHolder for why).
	TakeQueues func(first *os.File, name string, n int, offload bool) ([]forward.Device, error)
	TapQueues  int
	// Coalesce is the forwarders' latency budget for sharing a wake-up
	// (forward.Config.Coalesce).
	Coalesce time.Duration
	// PortExists reports whether a link of that name exists.
	PortExists func(name string) bool
	// Nice is the forwarding threads' priority (-20..19, 0 = the
	// daemon's own).
	Nice int
	Log  *slog.Logger
	// Stopped, if set, is called when a forwarder stops while its owner
	// still runs it.
	Stopped func(port string, fwd *forward.Forwarder)
	// Usage wraps an error the operator can fix (a port on no bridge, a
	// fail mode the backend lacks), so the caller can tell it apart.
	Usage func(error) error
}

// Outcome is what Apply did.
type Outcome uint8

const (
	Unchanged Outcome = iota // nothing to do (or nothing that could be done: the port is gone)
	Updated                  // new policies in the running forwarder
	Spliced                  // a new splice and forwarder
	Reverted                 // the splice is gone
)

// Port is the owner of one port's plumbing. Lock it for Apply, Adopt and
// Stop; State is safe at any time.
type Port struct {
	name string
	env  *Env
	op   sync.Mutex

	mu   sync.Mutex // guards the fields below, for State
	sp   splice.Splice
	fwd  *forward.Forwarder
	kind Kind
}

// New returns the owner of port, holding nothing.
func New(port string, env *Env) *Port { return &Port{name: port, env: env} }

// Name is the port's name.
func (p *Port) Name() string { return p.name }

// Lock takes the owner: one change of the port at a time.
func (p *Port) Lock() { p.op.Lock() }

// Unlock releases the owner.
func (p *Port) Unlock() { p.op.Unlock() }

// State returns the splice, the forwarder and the kind they were made for;
// nil and None when the port holds nothing.
func (p *Port) State() (splice.Splice, *forward.Forwarder, Kind) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sp, p.fwd, p.kind
}

// Idle reports whether the owner holds nothing.
func (p *Port) Idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sp == nil && p.fwd == nil
}

// Apply makes the port's plumbing match w (see the package comment). It
// also reports whether the port exists. On error what was in place stays,
// except a splice of the wrong kind, which is gone. The caller holds the
// owner's lock.
func (p *Port) Apply(w Want) (Outcome, bool, error) {
	exists := p.env.PortExists(p.name)
	sp, fwd, kind := p.State()
	if exists && w.Kind != None && sp != nil && fwd != nil && kind == w.Kind {
		return Updated, true, p.setPolicies(w)
	}
	out := Unchanged
	if sp != nil || fwd != nil {
		if err := p.revert(); err != nil {
			return Unchanged, exists, err
		}
		out = Reverted
	}
	if !exists || w.Kind == None {
		return out, exists, nil
	}
	sp, fwd, err := p.splice(w)
	if err != nil {
		return out, true, err
	}
	p.take(sp, fwd, w.Kind)
	p.record(sp, w.Intent)
	p.backstop(sp, w.Backstop)
	for _, warn := range sp.Warnings() {
		p.env.Log.Warn("splice warning", "port", p.name, "warning", warn)
	}
	return Spliced, true, nil
}

// Adopt takes over sp, a splice found on the host at the daemon's start,
// and runs a forwarder on it as w asks. If the forwarder cannot start, sp
// stays the owner's, for the next Apply to revert and make again. A
// splice.Remnant (a splice made only in part, or whose bridge is gone)
// runs no forwarder: Adopt releases it and returns an error. The
// caller holds the owner's lock.
func (p *Port) Adopt(sp splice.Splice, w Want) error {
	if r, ok := sp.(splice.Remnant); ok {
		// Its taps lead nowhere: no forwarder; what is left goes.
		err := fmt.Errorf("adopt %s: %s", p.name, r.Remnant())
		if rerr := sp.Release(); rerr != nil {
			p.mu.Lock()
			p.sp, p.kind = sp, w.Kind // for the next Apply to release
			p.mu.Unlock()
			return errors.Join(err, rerr)
		}
		return fmt.Errorf("%w; released what was left of it", err)
	}
	fwd, err := p.start(sp, w)
	if err != nil {
		p.mu.Lock()
		p.sp, p.kind = sp, w.Kind
		p.mu.Unlock()
		return err
	}
	p.take(sp, fwd, w.Kind)
	p.record(sp, w.Intent)
	p.backstop(sp, w.Backstop)
	return nil
}

// Stop stops the forwarder and leaves the splice in place, for the next
// daemon to adopt. The caller holds the owner's lock.
func (p *Port) Stop() error {
	p.mu.Lock()
	fwd := p.fwd
	p.fwd = nil
	p.mu.Unlock()
	if fwd == nil {
		return nil
	}
	return fwd.Close()
}

func (p *Port) take(sp splice.Splice, fwd *forward.Forwarder, k Kind) {
	p.mu.Lock()
	p.sp, p.fwd, p.kind = sp, fwd, k
	p.mu.Unlock()
	go p.watch(fwd)
}

// setPolicies puts w's policies into the forwarder, both directions or
// neither, and records w's intent.
func (p *Port) setPolicies(w Want) error {
	sp, fwd, _ := p.State()
	prev := fwd.FromVM.Policy()
	// SetPolicy validates before publishing, so a failure leaves the old
	// policy in force.
	if err := fwd.FromVM.SetPolicy(w.FromVM); err != nil {
		return p.usage(err)
	}
	if err := fwd.ToVM.SetPolicy(w.ToVM); err != nil {
		fwd.FromVM.SetPolicy(prev)
		return p.usage(err)
	}
	p.record(sp, w.Intent)
	p.backstop(sp, w.Backstop)
	return nil
}

// backstop writes b into sp's kernel half, if it has one. A failure is
// logged: the forwarder still polices.
func (p *Port) backstop(sp splice.Splice, b [2]steer.Backstop) {
	k, ok := sp.(splice.Kernel)
	if !ok {
		return
	}
	for _, d := range []steer.Dir{steer.FromVM, steer.ToVM} {
		if err := k.SetBackstop(d, b[d]); err != nil {
			p.env.Log.Warn("cannot set the kernel backstop; the forwarder still polices", "port", p.name, "direction", d, "err", err)
		}
	}
}

// splice makes a splice as w asks and starts its forwarder; on failure
// nothing of it is left.
func (p *Port) splice(w Want) (splice.Splice, *forward.Forwarder, error) {
	b, err := p.backend()
	if err != nil {
		return nil, nil, err
	}
	opt := w.Options
	if d, ok := b.(splice.FailDefaulter); ok && w.FailFallback {
		opt.FailOpen = d.FailOpenByDefault()
	}
	sp, err := b.Splice(p.name, opt)
	if err != nil && errors.Is(err, splice.ErrFailOpen) && w.FailFallback {
		opt.FailOpen = false
		sp, err = b.Splice(p.name, opt)
	}
	if err != nil {
		if errors.Is(err, splice.ErrFailOpen) || errors.Is(err, splice.ErrSpliced) {
			return nil, nil, p.usage(err)
		}
		return nil, nil, fmt.Errorf("splice %s: %w", p.name, err)
	}
	fwd, err := p.start(sp, w)
	if err != nil {
		if rerr := sp.Release(); rerr != nil {
			p.env.Log.Error("rollback of a failed splice failed", "port", p.name, "err", rerr)
			err = errors.Join(err, rerr)
		}
		return nil, nil, err
	}
	return sp, fwd, nil
}

// backend is the first backend that handles the port.
func (p *Port) backend() (splice.Backend, error) {
	var errs []error
	for _, b := range p.env.Backends {
		ok, err := b.Handles(p.name)
		if ok {
			return b, nil
		}
		if err != nil {
			if errors.Is(err, splice.ErrNoPort) || errors.Is(err, splice.ErrNotBridged) || errors.Is(err, splice.ErrSpliced) {
				return nil, p.usage(err)
			}
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, p.usage(fmt.Errorf("%s: no splice backend can handle this port (it must be a member of a Linux bridge or an Open vSwitch bridge)", p.name))
}

// start opens sp's taps and runs a forwarder on them.
func (p *Port) start(sp splice.Splice, w Want) (*forward.Forwarder, error) {
	var opened []forward.Device
	closeAll := func() {
		for _, d := range opened {
			d.Close()
		}
	}
	open := func(name string) (forward.Device, error) {
		d, err := p.env.OpenTap(name)
		if err == nil {
			opened = append(opened, d)
		}
		return d, err
	}
	// Offloads (GSO segments through the forwarder) on all of the
	// splice's taps, where the backend takes them.
	o, ok := sp.(splice.Offloader)
	offload := ok && o.Offloads()
	holder, _ := sp.(splice.TapHolder)
	queues := func(name string, n int) ([]forward.Device, error) {
		if holder != nil {
			if f := holder.TakeTap(name); f != nil {
				take := p.env.TakeQueues
				if take == nil {
					take = forward.TapQueues
				}
				if p.env.OpenQueues == nil {
					n = 1 // as OpenTap: one queue
				}
				ds, err := take(f, name, n, offload)
				opened = append(opened, ds...)
				return ds, err
			}
		}
		if p.env.OpenQueues == nil {
			d, err := open(name)
			return []forward.Device{d}, err
		}
		ds, err := p.env.OpenQueues(name, n, offload)
		opened = append(opened, ds...)
		return ds, err
	}
	n := max(p.env.TapQueues, 1)
	vms, err := queues(sp.VMTap(), n)
	if err != nil {
		closeAll()
		return nil, err
	}
	nts, err := queues(sp.NetTap(), n)
	if err != nil {
		closeAll()
		return nil, err
	}
	vm, nt := vms[0], nts[0]
	var prio forward.Device
	if name := sp.PriorityTap(); name != "" {
		// One queue: the priority tap has one reader.
		ps, err := queues(name, 1)
		if err != nil {
			closeAll()
			return nil, err
		}
		prio = ps[0]
	}
	cfg := forward.Config{Classify: w.Classify, FromVM: w.FromVM, ToVM: w.ToVM, Nice: p.env.Nice, Coalesce: p.env.Coalesce, Log: p.env.Log.With("port", p.name)}
	fwd, err := forward.New(cfg, forward.Devices{VM: vm, Net: nt, Priority: prio, VMQueues: vms[1:], NetQueues: nts[1:]})
	if err != nil {
		closeAll()
		return nil, err
	}
	return fwd, nil
}

// Revert stops the forwarder and reverts the splice, whatever is left of
// it (a tap deleted by hand): the next Apply splices again. The caller
// holds the owner's lock.
func (p *Port) Revert() error { return p.revert() }

// revert stops the forwarder, then reverts the splice. The forwarder goes
// first so nothing writes into taps that are being removed. A splice whose
// release failed stays the owner's, for the next Apply to finish.
func (p *Port) revert() error {
	if err := p.Stop(); err != nil {
		p.env.Log.Warn("closing forwarder", "port", p.name, "err", err)
	}
	sp, _, _ := p.State()
	if sp == nil {
		return nil
	}
	if err := sp.Release(); err != nil {
		return fmt.Errorf("release %s: %w", p.name, err)
	}
	p.mu.Lock()
	p.sp, p.kind = nil, None
	p.mu.Unlock()
	return nil
}

// record keeps an intent on the plumbing. Failing that is not fatal: the
// daemon's state file has it too.
func (p *Port) record(sp splice.Splice, intent string) {
	r, ok := sp.(splice.IntentRecorder)
	if !ok || intent == "" {
		return
	}
	if err := r.SetIntent(intent); err != nil {
		p.env.Log.Warn("cannot record the intent on the plumbing; only the state file has it", "port", p.name, "err", err)
	}
}

// watch reports a forwarder that stops while the owner still runs it.
func (p *Port) watch(fwd *forward.Forwarder) {
	<-fwd.Done()
	p.mu.Lock()
	still := p.fwd == fwd
	p.mu.Unlock()
	if still && p.env.Stopped != nil {
		p.env.Stopped(p.name, fwd)
	}
}

func (p *Port) usage(err error) error {
	if p.env.Usage == nil {
		return err
	}
	return p.env.Usage(err)
}
