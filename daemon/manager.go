// Package daemon owns shaperd's quarantines: it validates requests, splices
// ports with a backend, runs a forwarder on each splice, changes limits in
// place, reverts splices on release, keeps quarantines of missing ports
// pending until the port returns, and persists its intent so a restarted
// daemon adopts what it left.
package daemon

import (
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/auto"
	"github.com/shaperd/shaperd/daemon/host"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/daemon/tenants"
	"github.com/shaperd/shaperd/owner"
	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/splice"
)

// Quarantine states.
const (
	StateActive    = api.StateActive
	StatePending   = api.StatePending // the port is missing; applied when it appears
	stateReleasing = store.Releasing  // only in the state file, while a release runs
)

// DefaultPendingTTL is how long a pending quarantine waits for its port.
const DefaultPendingTTL = 24 * time.Hour

// DefaultCoalesce is the default of run --coalesce (see
// forward.Config.Coalesce).
const DefaultCoalesce = 0

// DefaultTapQueues is the default of run --tap-queues.
const DefaultTapQueues = 1

// Options configure a Manager.
type Options struct {
	// StateDir holds the state file; "" keeps no state (tests).
	StateDir string
	// PendingTTL bounds how long a quarantine waits for its port
	// (DefaultPendingTTL when zero).
	PendingTTL time.Duration
	// ForwarderNice is the scheduling priority of forwarding threads
	// (-20..19, 0 = the daemon's own).
	ForwarderNice int
	// Coalesce is the forwarders' latency budget for sharing a wake-up
	// among frames (forward.Config.Coalesce); 0 turns it off.
	Coalesce time.Duration
	// TapQueues is how many queues the VM and net taps of a splice have
	// and the forwarder reads, one goroutine each (1 when zero; above 1
	// the taps are multi-queue, see splice.Options).
	TapQueues int
	// Host is the machine; host.System when nil.
	Host host.Host
	// Baseline is the kernel baseline engine (*baseline.Manager); nil
	// refuses baselines.
	Baseline Baseliner
	// PortPolicy is the kernel guard and isolation engine
	// (*portpolicy.Manager); nil refuses guard and isolate.
	PortPolicy PortPolicer
	// OVSPortPolicy is the same for Open vSwitch ports
	// (*ovspolicy.Manager: OpenFlow flows); nil refuses them.
	OVSPortPolicy OVSPortPolicer
}

// Manager holds the quarantines of this host. Its methods are safe for
// concurrent use; changes are serialised by mu.
type Manager struct {
	log      *slog.Logger
	backends []splice.Backend
	started  time.Time
	opt      Options

	// host is the machine: the clock, links, taps, libvirt, hooks.
	host host.Host

	// mu guards the maps and the contributors' intent below, and the
	// owners' plumbing fields. It is held only briefly: no exec, netlink
	// call, sysfs read or disk write runs under it (see owner).
	mu     sync.Mutex
	health healthEvents           // counted without mu
	q      map[string]*quarantine // by port
	owners map[string]*owner.Port // by port: what splices each port
	env    owner.Env              // what the owners need of the host
	closed bool
	// saveMu orders the writes of the state file; each writes the intent
	// as it is when the write starts.
	saveMu sync.Mutex
	// notSaved is why the last write of the state file failed and since
	// when, for status; nil once a write succeeds (see save).
	notSaved atomic.Pointer[string]
	// snapMu orders the writes of the tenants' sample snapshots; snapDue
	// holds those to write (guarded by mu).
	snapMu  sync.Mutex
	snapDue map[*tenants.Tenant]quota.Snapshot

	// auto is the automatic side (daemon/auto): the watch loop, the
	// ladders, the alerts, and the profiles.
	auto *auto.Engine

	// quotas are the percentile-quota tenants (quota.go).
	quotas tenants.Set

	// bl is the desired kernel baseline (baseline.go), guarded by mu;
	// blMu serialises its applications (netlink, never under mu) and
	// blSaveMu the writes of its file.
	bl       baselines
	blMu     sync.Mutex
	blSaveMu sync.Mutex

	// pp are the port guards and isolations (portpolicy.go), guarded by
	// mu; ppMu serialises their applications and ppSaveMu the writes of
	// their file.
	pp       portPolicies
	ppMu     sync.Mutex
	ppSaveMu sync.Mutex
}

// quarantine is one port's quarantine: the intent that its owner applies.
// Guarded by Manager.mu.
type quarantine struct {
	port    string
	spec    intent.Spec
	since   time.Time
	state   api.State // StateActive, StatePending or stateReleasing
	expires time.Time // pending only
	// starting is set while the first splice is being made: status and
	// the state file leave the quarantine out until it succeeds.
	starting bool

	esc *auto.Escalation // the ladder; nil without one
}

// New returns a Manager that splices with the first of backends that handles
// a port. It keeps no state; see NewWithOptions.
func New(log *slog.Logger, backends ...splice.Backend) *Manager {
	return NewWithOptions(log, Options{}, backends...)
}

// NewWithOptions returns a Manager configured by opt.
func NewWithOptions(log *slog.Logger, opt Options, backends ...splice.Backend) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opt.PendingTTL <= 0 {
		opt.PendingTTL = DefaultPendingTTL
	}
	opt.TapQueues = max(opt.TapQueues, 1)
	m := &Manager{
		log:      log,
		backends: backends,
		started:  time.Now(),
		opt:      opt,
		host:     opt.Host,
		q:        make(map[string]*quarantine),
		owners:   make(map[string]*owner.Port),
		auto:     auto.New(log),
		bl:       baselines{cli: map[string]baselineEntry{}, present: map[string]bool{}},
		pp:       portPolicies{guards: map[string]guardEntry{}, isolations: map[string]portpolicy.Isolate{}, ovs: map[string]bool{}},
	}
	if m.host == nil {
		m.host = host.System{}
	}
	m.env = owner.Env{
		Backends:   backends,
		OpenTap:    m.host.OpenTap,
		OpenQueues: m.host.OpenTapQueues,
		TapQueues:  opt.TapQueues,
		Coalesce:   opt.Coalesce,
		PortExists: m.host.PortExists,
		Nice:       opt.ForwarderNice,
		Log:        log,
		Stopped:    m.forwarderStopped,
		Usage:      usageErr,
	}
	return m
}

// TopDestinations is how many destinations status lists per quarantine.
const TopDestinations = 10

// ErrClosed is returned by every change after Close.
var ErrClosed = errors.New("daemon: shutting down")

// Quarantine splices port and polices it with the limits req names. It
// validates everything before touching the host, and undoes what it did if a
// later step fails. With pending, a port that does not exist yet is accepted
// and spliced when it appears.
//
// req may name a profile; with no limit and no profile, it means the
// quarantine profile. Parse a request in the command line's words with
// api.ParseRequest.
func (m *Manager) Quarantine(port string, req api.LimitRequest, pending bool) (api.Quarantine, error) {
	if err := api.CheckPort(port); err != nil {
		return api.Quarantine{}, err
	}
	return m.quarantine(port, req, pending, OriginManual, m.host.Now())
}

// quarantine is every quarantine's path (manual, watch, alert,
// correlation). The caller holds no lock.
func (m *Manager) quarantine(port string, req api.LimitRequest, pending bool, origin api.Origin, now time.Time) (api.Quarantine, error) {
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	exists := m.host.PortExists(port)
	m.mu.Lock()
	q, err := m.newQuarantineLocked(port, req, origin, now)
	if err != nil {
		m.mu.Unlock()
		return api.Quarantine{}, err
	}
	if !exists {
		if !pending {
			m.mu.Unlock()
			return api.Quarantine{}, usagef("%s: no such port (check the name, or add --pending to quarantine it when it appears)", port)
		}
		m.makePendingLocked(q, now)
		m.q[port] = q
		m.mu.Unlock()
		serr := m.save()
		m.log.Info("quarantine pending: the port does not exist yet", "port", port, "expires", q.expires)
		st, err := m.statusOf(port)
		return withSaveWarning(st, err, serr)
	}
	q.starting = true
	m.q[port] = q
	m.mu.Unlock()

	err = m.prepareGuard(q)
	if err == nil {
		err = m.reconcile(o)
	}
	if err != nil {
		m.mu.Lock()
		if m.q[port] == q {
			delete(m.q, port)
		}
		m.mu.Unlock()
		// A tenant port: the tenant's own splice comes back.
		m.reconcileTenant(o, now)
		return api.Quarantine{}, err
	}
	serr := m.save()
	st, err := m.statusOf(port)
	return withSaveWarning(st, err, serr)
}

// newQuarantineLocked builds the quarantine that req asks for on port,
// checking everything that needs no I/O.
func (m *Manager) newQuarantineLocked(port string, req api.LimitRequest, origin api.Origin, now time.Time) (*quarantine, error) {
	if m.closed {
		return nil, ErrClosed
	}
	if _, ok := m.q[port]; ok {
		return nil, usagef("%s is already quarantined: use set to change its limits", port)
	}
	prof, req, err := m.profileLocked(req)
	if err != nil {
		return nil, err
	}
	spec := intent.New()
	if prof != nil {
		if spec, err = spec.Apply(prof.Limits, false); err != nil {
			return nil, usagef("profile %s: %v", prof.Name, err)
		}
		spec.Profile = prof.Name
		spec.GuardLearn = prof.GuardLearn
		if origin == OriginManual {
			// A manual quarantine gets the guard only when asked.
			spec.Guard = false
		}
	}
	if spec, err = spec.Apply(req, false); err != nil {
		return nil, err
	}
	if origin != OriginManual {
		spec.Origin = origin
	}
	q := &quarantine{port: port, spec: spec, since: now.UTC()}
	if prof != nil && prof.UseLadder {
		if q.spec, q.esc, err = m.auto.StartLadder(port, q.spec, *prof, now); err != nil {
			return nil, err
		}
	}
	if !q.spec.HasLimit() {
		return nil, usagef("quarantine %s: no limit given: name at least one limit (--pps, --bps, --syn-pps, --class, ... or a --to-vm- twin), or a profile", port)
	}
	return q, nil
}

func (m *Manager) makePendingLocked(q *quarantine, now time.Time) {
	q.state = StatePending
	q.expires = now.Add(m.opt.PendingTTL)
}

// reconcileTenant reconciles o after its quarantine ended or failed to
// start, so that a tenant port is spliced for its tenant again; a failure
// is retried by Tick. Caller holds o.op.
func (m *Manager) reconcileTenant(o *owner.Port, now time.Time) {
	err := m.reconcile(o)
	if err == nil || errors.Is(err, ErrClosed) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if tp, ok := m.quotas.Port(o.Name()); ok {
		m.quotaRetryLaterLocked(tp, now, err)
		return
	}
	m.log.Error("cannot revert a splice", "port", o.Name(), "err", err)
}

// Alive reports whether every forwarder that should run runs (for the
// service manager's watchdog). A forwarder that stopped after a contained
// panic does not count: restarting the daemon would not mend it, and would
// interrupt every other port.
func (m *Manager) Alive() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.owners {
		if _, fwd, _ := o.State(); fwd != nil && !fwd.Alive() && fwd.Failure() == nil {
			return false
		}
	}
	return true
}

// Set changes the named limits of port's quarantine in place, without
// re-splicing.
func (m *Manager) Set(port string, req api.LimitRequest) (api.Quarantine, error) {
	if req.IsZero() {
		return api.Quarantine{}, usagef("set %s: nothing to change: name at least one limit flag", port)
	}
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	q, ok := m.q[port]
	if !ok {
		m.mu.Unlock()
		return api.Quarantine{}, notFoundf("%s is not quarantined: use quarantine first", port)
	}
	if req.Profile != nil {
		m.mu.Unlock()
		return api.Quarantine{}, usagef("--profile cannot change in place: release the port and quarantine it again")
	}
	spec, err := q.spec.Apply(req, true)
	if err != nil {
		m.mu.Unlock()
		return api.Quarantine{}, err
	}
	offLadder := auto.LeavesLadder(&req, q.esc)
	if offLadder {
		spec.Stage = ""
	}
	prev, pending := q.spec, q.state == StatePending
	q.spec = spec
	m.mu.Unlock()
	if !pending {
		if err := m.reconcile(o); err != nil {
			m.mu.Lock()
			q.spec = prev
			m.mu.Unlock()
			return api.Quarantine{}, err
		}
	}
	if offLadder {
		m.mu.Lock()
		m.log.Warn("event: limits set by hand; the port leaves its ladder", "event", "ladder_stopped", "port", port, "stage", q.esc.Ladder.Stage())
		q.esc = nil
		m.mu.Unlock()
	}
	serr := m.save()
	m.log.Info("limits changed", "port", port, "intent", spec.Intent())
	st, err := m.statusOf(port)
	return withSaveWarning(st, err, serr)
}

// applySpec makes spec q's intent and puts it into q's forwarder (both
// directions or neither) and on the plumbing; if that fails the old spec
// stays. For the ladder's changes. The caller holds no lock.
func (m *Manager) applySpec(q *quarantine, spec intent.Spec) error {
	o := m.lockOwner(q.port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	if m.q[q.port] != q {
		m.mu.Unlock()
		return notFoundf("%s is not quarantined", q.port)
	}
	prev, pending := q.spec, q.state != StateActive
	q.spec = spec
	m.mu.Unlock()
	if pending {
		return nil
	}
	if err := m.reconcile(o); err != nil {
		m.mu.Lock()
		q.spec = prev
		m.mu.Unlock()
		return err
	}
	return nil
}

// Release ends port's quarantine and reverts its splice; a pending
// quarantine is simply dropped.
func (m *Manager) Release(port string) error {
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	return m.release(o)
}

// ReleaseAll releases every quarantine, active and pending.
// A failed save of the state file is returned (ErrNotSaved) only when
// every release succeeded.
func (m *Manager) ReleaseAll() ([]string, error) {
	var done []string
	var errs []error
	var saveErr error
	for _, p := range m.Ports() {
		err := m.Release(p)
		switch {
		case err == nil:
		case errors.Is(err, ErrNotSaved):
			saveErr = err
		default:
			errs = append(errs, err)
			continue
		}
		done = append(done, p)
	}
	if len(errs) > 0 {
		return done, errors.Join(errs...)
	}
	return done, saveErr
}

// release ends o's quarantine; caller holds o's lock.
func (m *Manager) release(o *owner.Port) error {
	port := o.Name()
	m.mu.Lock()
	q, ok := m.q[port]
	if !ok {
		m.mu.Unlock()
		return notFoundf("%s is not quarantined", port)
	}
	sp, fwd := m.qSpliceLocked(q)
	spliced := sp != nil || fwd != nil
	if spliced {
		// Say "releasing" first: if the daemon dies half way, the next
		// one finishes the release instead of adopting a half splice.
		q.state = stateReleasing
	}
	m.mu.Unlock()
	if spliced {
		m.save()
		if err := m.reconcile(o); err != nil {
			m.mu.Lock()
			q.state = StateActive
			m.mu.Unlock()
			m.save()
			return err
		}
	}
	m.mu.Lock()
	if m.q[port] == q {
		delete(m.q, port)
	}
	m.mu.Unlock()
	serr := m.save()
	m.log.Info("released", "port", port)
	m.reconcileTenant(o, m.host.Now())
	return serr
}

func (m *Manager) portsLocked() []string {
	out := make([]string, 0, len(m.q))
	for p, q := range m.q {
		if !q.starting {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// Ports returns the quarantined ports, active and pending.
func (m *Manager) Ports() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.portsLocked()
}

// Close stops accepting changes and stops every forwarder, leaving the
// splices and the state file in place for the next daemon to adopt. (A
// port with --fail closed stays cut off until then, one with --fail open
// takes the direct path in the kernel; `shaperd release --all` before
// stopping clears everything.) Safe to call more than once.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	ports := make([]string, 0, len(m.owners))
	for p := range m.owners {
		ports = append(ports, p)
	}
	m.mu.Unlock()
	// Before any forwarder stops: what passes between the two readings
	// is counted twice, never missed.
	meters := m.quotaMeters()
	var errs []error
	for _, p := range ports {
		o := m.lockOwner(p)
		if err := o.Stop(); err != nil {
			errs = append(errs, err)
		}
		m.unlockOwner(o)
	}
	m.closeQuotas(m.host.Now(), meters)
	return errors.Join(errs...)
}
