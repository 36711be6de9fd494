package auto

import (
	"context"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
)

// Manager is what the automatic side needs of the daemon's manager
// (daemon.Manager): a consistent view of its quarantines under its lock,
// in which the Engine decides, and the changes it then carries out, once
// that lock is released, through the ports' owners as any change is.
type Manager interface {
	// Update runs f under the manager's lock, with its quarantines. f
	// must not block, and must call nothing of the Manager but tx. After
	// Close, Update runs nothing and returns the manager's ErrClosed.
	Update(f func(tx Txn)) error
	// View runs f under the manager's lock, after Close too; f only
	// reads.
	View(f func(tx Txn))
	// Now reads the clock.
	Now() time.Time
	// Links lists the network interfaces of the host.
	Links() ([]string, error)
	// PortExists reports whether a link named port exists.
	PortExists(port string) bool
	// VMPort returns nil if port is a VM's port that a splice backend
	// handles (a veth or a tap on a bridge), else why not, wrapping
	// ErrNotVMPort.
	VMPort(port string) error
	// Quarantine starts a quarantine of port with req on behalf of
	// origin, at now (the manager's own path, validation and all).
	Quarantine(port string, req api.LimitRequest, origin api.Origin, now time.Time) error
	// Apply has the owner of q's port apply q's spec, changed from prev
	// in an Update; if that fails the spec goes back to prev. A
	// quarantine that is no longer the port's, or not active, is left
	// alone.
	Apply(q Quarantine, prev intent.Spec) error
	// Release ends q, if it is still its port's quarantine.
	Release(q Quarantine) error
	// RunHook runs an on-block hook.
	RunHook(ctx context.Context, argv []string) ([]byte, error)
	// Save writes the state file (its errors are the manager's to
	// report).
	Save()
}

// Txn is the manager's quarantines, valid only inside Manager.Update.
type Txn interface {
	// Ports lists the quarantined ports, sorted, leaving out those whose
	// first splice is still being made.
	Ports() []string
	// Get returns port's quarantine, one still starting included.
	Get(port string) (Quarantine, bool)
	// Each calls f for every quarantine, those still starting included.
	Each(f func(Quarantine))
	// Offered sums the frames and bytes that q's forwarder saw in one
	// direction (from the VM, or to it), passed or dropped; ok is false
	// when no forwarder runs for q.
	Offered(q Quarantine, fromVM bool) (pkts, bytes uint64, ok bool)
}

// Quarantine is one quarantine as the automatic side sees it inside
// Manager.Update. Two values are the same quarantine when they are equal.
type Quarantine interface {
	Port() string
	// Active reports whether the quarantine is in force (not pending,
	// not being released).
	Active() bool
	Origin() api.Origin
	Spec() intent.Spec
	// SetSpec changes the intent; Manager.Apply then puts it in force.
	SetSpec(intent.Spec)
	// Escalation is the quarantine's ladder, nil without one.
	Escalation() *Escalation
}

// actions are the changes that an observation or an alert decided under
// the manager's lock, for do to carry out once it is released.
type actions struct {
	starts []start
	specs  []specChange
	// releases are quarantines their ladder released.
	releases []Quarantine
	hooks    []hookRun
	save     bool
}

// start is a quarantine to start; failed or started runs under Engine.mu
// with its outcome.
type start struct {
	port    string
	req     api.LimitRequest
	origin  api.Origin
	failed  func(error)
	started func()
}

// specChange is a quarantine whose spec changed from prev to what it is
// now: its owner applies it, or it goes back to prev.
type specChange struct {
	q    Quarantine
	prev intent.Spec
	what string // for the log: "ladder" or "avg_frame"
}

type hookRun struct {
	port string
	argv []string
}

// do carries out act through m; the caller holds no lock.
func (e *Engine) do(m Manager, act actions, now time.Time) {
	for _, s := range act.starts {
		err := m.Quarantine(s.port, s.req, s.origin, now)
		e.mu.Lock()
		if err != nil {
			s.failed(err)
		} else {
			s.started()
		}
		e.mu.Unlock()
	}
	for _, c := range act.specs {
		if err := m.Apply(c.q, c.prev); err != nil {
			e.log.Error("ladder: cannot apply the new limits; the old ones stay", "port", c.q.Port(), "change", c.what, "err", err)
		}
	}
	for _, q := range act.releases {
		if err := m.Release(q); err != nil {
			e.log.Error("ladder: release failed; the quarantine stays in probation", "port", q.Port(), "err", err)
		}
	}
	for _, h := range act.hooks {
		go e.runHook(m, h.port, h.argv)
	}
	if act.save {
		m.Save()
	}
}
