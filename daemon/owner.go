package daemon

import (
	"errors"
	"time"

	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/daemon/tenants"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/owner"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

// Every port that something wants spliced has one owner (package owner),
// whatever wants it: its quarantine, its quota tenant, or both. The
// quarantine and the tenant are the owner's contributors: they say what
// they want under Manager.mu, and reconcile hands the owner the Want that
// follows from them:
//
//   - a quarantine that is not being released wants the port spliced with
//     its options and limits, plus the tenant's hooks if the port is a
//     tenant's;
//   - otherwise a tenant wants it spliced with the default bypass and
//     control budgets and only the quota;
//   - otherwise nothing wants it, and the splice is reverted.
//
// A port that does not exist is not spliced: its quarantine waits,
// pending.
//
// Locking: an owner's lock serialises the changes to one port, and the
// slow work (the splice, the taps, tc and OVS, virsh, the link check) runs
// under it and never under Manager.mu, so status, metrics, the webhook and
// the changes to other ports never wait for it. An owner's lock is taken
// before Manager.mu, never while holding it.

// lockOwner returns port's owner with its lock held, creating it if needed.
// Release it with unlockOwner.
func (m *Manager) lockOwner(port string) *owner.Port {
	for {
		m.mu.Lock()
		o := m.ownerLocked(port)
		m.mu.Unlock()
		o.Lock()
		m.mu.Lock()
		same := m.owners[port] == o
		m.mu.Unlock()
		if same {
			return o
		}
		o.Unlock() // forgotten meanwhile: take the new one
	}
}

// ownerLocked returns port's owner, creating it if needed, without its
// lock: for lockOwner, and for Restore, which runs before anything else
// can change a port.
func (m *Manager) ownerLocked(port string) *owner.Port {
	o := m.owners[port]
	if o == nil {
		o = owner.New(port, &m.env)
		m.owners[port] = o
	}
	return o
}

// unlockOwner releases o's lock; an owner that holds nothing and that
// nothing wants is forgotten.
func (m *Manager) unlockOwner(o *owner.Port) {
	m.mu.Lock()
	_, q := m.q[o.Name()]
	_, t := m.quotas.Port(o.Name())
	if !q && !t && m.owners[o.Name()] == o && o.Idle() {
		delete(m.owners, o.Name())
	}
	m.mu.Unlock()
	o.Unlock()
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
	if o := m.owners[q.port]; o != nil {
		if sp, fwd, k := o.State(); k == owner.Quarantine {
			return sp, fwd
		}
	}
	return nil, nil
}

// tSpliceLocked returns the splice and forwarder a tenant port has of its
// own (not its quarantine's). Caller holds m.mu.
func (m *Manager) tSpliceLocked(tp *tenants.Port) (splice.Splice, *forward.Forwarder) {
	if o := m.owners[tp.Name]; o != nil {
		if sp, fwd, k := o.State(); k == owner.Tenant {
			return sp, fwd
		}
	}
	return nil, nil
}

// wantLocked is what o's port should have now, and the contributors that
// want it: at most one of q and tp.
func (m *Manager) wantLocked(port string) (owner.Want, *quarantine, *tenants.Port) {
	q := m.q[port]
	tp, _ := m.quotas.Port(port)
	var spec intent.Spec
	w := owner.Want{}
	switch {
	case q != nil && q.state != stateReleasing:
		tp = nil
		spec, w.Kind, w.Intent = q.spec, owner.Quarantine, q.spec.Intent()
	case q == nil && tp != nil:
		// A tenant's splice fails open where the backend can: a dead
		// forwarder should not cut a paying tenant off.
		spec, w.Kind, w.Intent = intent.New(), owner.Tenant, "tenant="+tp.Tenant.Cfg.Tenant
	default:
		return w, nil, nil
	}
	// A quarantine's default is open where the backend can do it, too.
	w.Options = spliceOptions(spec)
	w.Options.Queues = m.opt.TapQueues
	w.FailFallback = spec.Fail == ""
	w.Classify = spec.ClassifyConfig()
	w.FromVM, w.ToVM = m.quotaPoliciesLocked(port, spec.FromVMPolicy(), intent.DirPolicy(spec.ToVM))
	w.Backstop[steer.FromVM] = intent.BackstopFor(spec.FromVM, w.FromVM)
	w.Backstop[steer.ToVM] = intent.BackstopFor(spec.ToVM, w.ToVM)
	return w, q, tp
}

// spliceOptions are the splice options spec asks for.
func spliceOptions(spec intent.Spec) splice.Options {
	return splice.Options{BypassPorts: spec.BypassPorts, BypassOutbound: spec.BypassOutbound, FailOpen: spec.Fail != "closed"}
}

// reconcile hands o the Want of its contributors (see above) and keeps
// the quarantine's state with what o did: a quarantine whose port is gone
// goes pending; one that is pending becomes active once spliced. Caller
// holds o's lock, and not m.mu. On error what was in place stays, except a
// splice of the wrong kind, which is gone.
func (m *Manager) reconcile(o *owner.Port) error {
	port := o.Name()
	m.mu.Lock()
	if m.closed {
		// The splices stay for the next daemon to adopt.
		m.mu.Unlock()
		return ErrClosed
	}
	w, q, tp := m.wantLocked(port)
	_, _, had := o.State()
	m.mu.Unlock()

	out, exists, err := o.Apply(w)
	if err != nil {
		return err
	}
	if out == owner.Reverted && had == owner.Tenant && w.Kind == owner.Quarantine && exists {
		m.log.Info("tenant port handed over to its quarantine; the quarantine's forwarder applies the quota", "port", port)
	}
	now := m.host.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if q != nil && !exists {
		if q.state == StateActive && m.q[port] == q {
			m.makePendingLocked(q, now)
		}
		if q.starting {
			return usagef("%s: no such port (it disappeared)", port)
		}
		return nil
	}
	if out != owner.Spliced {
		return nil
	}
	sp, _, _ := o.State()
	if q != nil {
		q.state, q.expires, q.starting = StateActive, time.Time{}, false
		if q.esc != nil {
			q.esc.Spliced(now)
		}
		m.log.Info("quarantined", "port", port, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap(), "intent", w.Intent)
	} else if tp != nil {
		tp.LastErr = ""
		m.log.Info("spliced for its quota tenant", "port", port, "tenant", tp.Tenant.Cfg.Tenant, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap())
	}
	return nil
}

// forwarderStopped logs a forwarder that stops while its owner still runs
// it (Alive then reports false).
func (m *Manager) forwarderStopped(port string, fwd *forward.Forwarder) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return
	}
	if fl := fwd.Failure(); fl != nil {
		m.health.add(EventForwarderPanic)
		m.log.Error("event: the port's forwarder panicked and stopped; the port takes its fail path", "event", EventForwarderPanic, "port", port, "direction", fl.Direction.String())
		return
	}
	m.log.Error("forwarder stopped while the port is spliced", "port", port)
}

// usageErr marks an owner's error as the operator's to fix.
func usageErr(err error) error {
	if errors.Is(err, ErrUsage) {
		return err
	}
	return usagef("%v", err)
}
