package daemon

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
)

// A port has one owner, whatever wants it spliced: its quarantine, its
// quota tenant, or both. The owner holds the port's splice and the
// forwarder on it, and is the only code that makes, changes or reverts
// them. Quarantines and tenants are its contributors: they say what they
// want (a quarantine's limits, a tenant's quota hooks) under Manager.mu,
// and reconcile makes the plumbing match:
//
//   - a quarantine that is not being released wants the port spliced with
//     its options and limits, plus the tenant's hooks if the port is a
//     tenant's;
//   - otherwise a tenant wants it spliced with the default bypass and
//     control budgets and only the quota;
//   - otherwise nothing wants it, and the splice is reverted.
//
// A wanted splice of the kind already in place only gets the new policy
// (forward.Pipe.SetPolicy); a change of kind (a tenant's port quarantined,
// or its quarantine released) re-splices. A port that does not exist is
// not spliced: its quarantine waits, pending.
//
// Locking: owner.op serialises the changes to one port, and the slow work
// (the splice, the taps, tc and OVS, virsh, the link check) runs under it
// and never under Manager.mu, so status, metrics, the webhook and the
// changes to other ports never wait for it. op is taken before
// Manager.mu, never while holding it.
type owner struct {
	port string
	op   sync.Mutex

	// Guarded by Manager.mu; written only with op held too.
	sp   splice.Splice      // nil: not spliced
	fwd  *forward.Forwarder // nil: no forwarder runs
	forQ bool               // sp was made for a quarantine (else for a tenant)
}

// lockOwner returns port's owner with its op lock held, creating it if
// needed. Release it with unlockOwner.
func (m *Manager) lockOwner(port string) *owner {
	for {
		m.mu.Lock()
		o := m.owners[port]
		if o == nil {
			o = &owner{port: port}
			m.owners[port] = o
		}
		m.mu.Unlock()
		o.op.Lock()
		m.mu.Lock()
		same := m.owners[port] == o
		m.mu.Unlock()
		if same {
			return o
		}
		o.op.Unlock() // forgotten meanwhile: take the new one
	}
}

// ownerLocked returns port's owner, creating it if needed, without its op
// lock: for Restore, which runs before anything else can change a port.
func (m *Manager) ownerLocked(port string) *owner {
	o := m.owners[port]
	if o == nil {
		o = &owner{port: port}
		m.owners[port] = o
	}
	return o
}

// unlockOwner releases o's op lock; an owner that holds nothing and that
// nothing wants is forgotten.
func (m *Manager) unlockOwner(o *owner) {
	m.mu.Lock()
	_, q := m.q[o.port]
	_, t := m.quotas.byPort[o.port]
	if o.sp == nil && o.fwd == nil && !q && !t && m.owners[o.port] == o {
		delete(m.owners, o.port)
	}
	m.mu.Unlock()
	o.op.Unlock()
}

// reconcileOne takes port's owner and reconciles it; for callers that hold
// no owner.
func (m *Manager) reconcileOne(port string) error {
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	return m.reconcile(o)
}

// qSpliceLocked returns q's splice and forwarder: the owner's, if it made
// them for a quarantine. Caller holds m.mu.
func (m *Manager) qSpliceLocked(q *quarantine) (splice.Splice, *forward.Forwarder) {
	if o := m.owners[q.port]; o != nil && o.forQ {
		return o.sp, o.fwd
	}
	return nil, nil
}

// tSpliceLocked returns the splice and forwarder a tenant port has of its
// own (not its quarantine's). Caller holds m.mu.
func (m *Manager) tSpliceLocked(tp *tenantPort) (splice.Splice, *forward.Forwarder) {
	if o := m.owners[tp.port]; o != nil && !o.forQ {
		return o.sp, o.fwd
	}
	return nil, nil
}

// plan is what an owner's port should have, taken under Manager.mu.
type plan struct {
	q    *quarantine // the quarantine that wants the port, or nil
	tp   *tenantPort // the tenant port that wants it, or nil
	spec Spec        // the quarantine's, or the tenant splice's defaults
	// from and to are spec's policies with the tenant's hooks.
	from, to forward.Policy
}

// wants reports whether the plan wants the port spliced.
func (p plan) wants() bool { return p.q != nil || p.tp != nil }

// planLocked is what o's port should have now.
func (m *Manager) planLocked(o *owner) plan {
	var p plan
	q := m.q[o.port]
	tp := m.quotas.byPort[o.port]
	switch {
	case q != nil && q.state != stateReleasing:
		p.q, p.spec = q, q.spec
	case q == nil && tp != nil:
		p.tp, p.spec = tp, NewSpec()
	default:
		return p
	}
	p.from, p.to = m.quotaPoliciesLocked(o.port, p.spec.fromVMPolicy(), p.spec.ToVM.policy())
	return p
}

// reconcile makes o's plumbing match what its contributors want (see
// owner). Caller holds o.op, and not m.mu. A quarantine whose port is gone
// goes pending; one that is pending becomes active once spliced. The error
// is the splice's, the forwarder's or the policy's; on error what was in
// place stays, except a splice of the wrong kind, which is gone.
func (m *Manager) reconcile(o *owner) error {
	exists := m.portExists(o.port)
	m.mu.Lock()
	if m.closed {
		// The splices stay for the next daemon to adopt.
		m.mu.Unlock()
		return ErrClosed
	}
	p := m.planLocked(o)
	sp, fwd, forQ := o.sp, o.fwd, o.forQ
	m.mu.Unlock()

	if exists && p.wants() && sp != nil && fwd != nil && forQ == (p.q != nil) {
		return m.setPolicies(o, p)
	}
	if sp != nil || fwd != nil {
		if err := m.teardown(o); err != nil {
			return err
		}
		if exists && p.q != nil && !forQ {
			m.log.Info("tenant port handed over to its quarantine; the quarantine's forwarder applies the quota", "port", o.port)
		}
	}
	if !exists {
		if p.q != nil {
			m.mu.Lock()
			starting := p.q.starting
			if p.q.state == StateActive && m.q[o.port] == p.q {
				m.makePendingLocked(p.q, m.clock())
			}
			m.mu.Unlock()
			if starting {
				return usagef("%s: no such port (it disappeared)", o.port)
			}
		}
		return nil
	}
	if !p.wants() {
		return nil
	}
	sp, fwd, err := m.spliceFor(p, o.port)
	if err != nil {
		return err
	}
	now := m.clock()
	m.mu.Lock()
	o.sp, o.fwd, o.forQ = sp, fwd, p.q != nil
	if q := p.q; q != nil {
		q.state, q.expires, q.starting = StateActive, time.Time{}, false
		q.avgFrom = time.Time{}
		if q.lad != nil && q.lad.AvgFrame() == 0 {
			q.avgFrom = now
		}
	} else {
		p.tp.lastErr = ""
	}
	m.mu.Unlock()
	go m.watchForwarder(o, fwd)
	for _, w := range sp.Warnings() {
		m.log.Warn("splice warning", "port", o.port, "warning", w)
	}
	if p.q != nil {
		m.recordIntent(o.port, sp, p.spec.Intent())
		m.log.Info("quarantined", "port", o.port, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap(), "intent", p.spec.Intent())
	} else {
		// Says on the plumbing who made the splice; the limits are
		// the tenants file's.
		m.recordIntent(o.port, sp, "tenant="+p.tp.t.cfg.Tenant)
		m.log.Info("spliced for its quota tenant", "port", o.port, "tenant", p.tp.t.cfg.Tenant, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap())
	}
	return nil
}

// setPolicies puts p's policies into o's forwarder, both directions or
// neither, and records a quarantine's intent on the plumbing.
func (m *Manager) setPolicies(o *owner, p plan) error {
	m.mu.Lock()
	sp, fwd := o.sp, o.fwd
	m.mu.Unlock()
	prev := fwd.FromVM.Policy()
	// Validated by Apply; SetPolicy validates again before publishing,
	// so a failure leaves the old policy in force.
	if err := fwd.FromVM.SetPolicy(p.from); err != nil {
		return usagef("%v", err)
	}
	if err := fwd.ToVM.SetPolicy(p.to); err != nil {
		fwd.FromVM.SetPolicy(prev)
		return usagef("%v", err)
	}
	if p.q != nil {
		m.recordIntent(o.port, sp, p.spec.Intent())
	}
	return nil
}

// spliceFor splices port as p asks and starts its forwarder; on failure
// nothing of it is left.
func (m *Manager) spliceFor(p plan, port string) (splice.Splice, *forward.Forwarder, error) {
	b, err := m.backendFor(port)
	if err != nil {
		return nil, nil, err
	}
	spec := p.spec
	// A tenant's splice fails open where the backend can: a dead
	// forwarder should not cut a paying tenant off. A quarantine's
	// default is open where the backend can do it, too.
	opt := splice.Options{BypassPorts: spec.BypassPorts, BypassOutbound: spec.BypassOutbound, FailOpen: spec.Fail != "closed"}
	sp, err := b.Splice(port, opt)
	if err != nil && errors.Is(err, splice.ErrFailOpen) && spec.Fail == "" {
		opt.FailOpen = false
		sp, err = b.Splice(port, opt)
	}
	if err != nil {
		if errors.Is(err, splice.ErrFailOpen) || errors.Is(err, splice.ErrSpliced) {
			return nil, nil, usagef("%v", err)
		}
		return nil, nil, fmt.Errorf("splice %s: %w", port, err)
	}
	fwd, err := m.startForwarder(sp, spec, p.from, p.to)
	if err != nil {
		if rerr := sp.Release(); rerr != nil {
			m.log.Error("rollback of a failed splice failed", "port", port, "err", rerr)
			err = errors.Join(err, rerr)
		}
		return nil, nil, err
	}
	return sp, fwd, nil
}

// teardown stops o's forwarder, then reverts its splice. The forwarder goes
// first so nothing writes into taps that are being removed. A splice whose
// release failed stays o's, for the next reconcile to finish.
func (m *Manager) teardown(o *owner) error {
	m.mu.Lock()
	sp, fwd := o.sp, o.fwd
	o.fwd = nil
	m.mu.Unlock()
	if fwd != nil {
		if err := fwd.Close(); err != nil {
			m.log.Warn("closing forwarder", "port", o.port, "err", err)
		}
	}
	if sp == nil {
		return nil
	}
	if err := sp.Release(); err != nil {
		return fmt.Errorf("release %s: %w", o.port, err)
	}
	m.mu.Lock()
	o.sp = nil
	m.mu.Unlock()
	return nil
}

// recordIntent keeps an intent on the plumbing, for a daemon that loses
// its state file. Failing that is not fatal: the state file has it too.
func (m *Manager) recordIntent(port string, sp splice.Splice, intent string) {
	r, ok := sp.(splice.IntentRecorder)
	if !ok {
		return
	}
	if err := r.SetIntent(intent); err != nil {
		m.log.Warn("cannot record the intent on the plumbing; only the state file has it", "port", port, "err", err)
	}
}

// watchForwarder logs a forwarder that stops while its owner still runs
// it (Alive then reports false).
func (m *Manager) watchForwarder(o *owner, fwd *forward.Forwarder) {
	<-fwd.Done()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.owners[o.port] == o && o.fwd == fwd && !m.closed {
		m.log.Error("forwarder stopped while the port is spliced", "port", o.port)
	}
}
