// Package daemon owns shaperd's quarantines: it validates requests, splices
// ports with a backend, runs a forwarder on each splice, changes limits in
// place, reverts splices on release, keeps quarantines of missing ports
// pending until the port returns, and persists its intent so a restarted
// daemon adopts what it left.
package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/splice"
)

// Version is shaperd's version, reported in status.
var Version = "dev"

// Quarantine states.
const (
	StateActive    = "active"
	StatePending   = "pending"   // the port is missing; applied when it appears
	stateReleasing = "releasing" // only in the state file, while a release runs
)

// DefaultPendingTTL is how long a pending quarantine waits for its port.
const DefaultPendingTTL = 24 * time.Hour

// DefaultCoalesce is the default of run --coalesce (see
// forward.Config.Coalesce).
const DefaultCoalesce = 0

// DefaultTapQueues is the default of run --tap-queues.
const DefaultTapQueues = 1

// ConservativeSpec is what a port gets when its splice is found on the host
// but neither the state file nor the plumbing says with which limits: the
// first stage of the seeds' ladder, 10000 pps from the VM.
func ConservativeSpec() Spec {
	s := NewSpec()
	pps := 10000.0
	s.FromVM.PPS = &pps
	return s
}

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
}

// Manager holds the quarantines of this host. Its methods are safe for
// concurrent use; changes are serialised by mu.
type Manager struct {
	log      *slog.Logger
	backends []splice.Backend
	started  time.Time
	opt      Options

	// ForwarderNice is the scheduling priority of forwarding threads
	// (-20..19, 0 = the daemon's own). Set it before the first quarantine.
	ForwarderNice int

	// openQueues opens the queues of a splice's tap; a hook so unit
	// tests can use fakes.
	openQueues func(name string, n int, offload bool) ([]forward.Device, error)
	// portExists reports whether a link exists; a hook for unit tests.
	portExists func(name string) bool

	// hookRunner runs on-block hooks; a hook for tests.
	hookRunner func(port string, argv []string)
	// clock stamps new quarantines; a hook for tests.
	clock func() time.Time
	// portMeters reads the byte counters of tenant ports at a clean stop
	// and at the start after it; a hook for tests.
	portMeters func(ports []string) ([]quota.PortMeter, error)
	// linkSubscribe and listLinks are WatchLinks's netlink; hooks for
	// tests.
	linkSubscribe linkSubscriber
	listLinks     func() ([]string, error)
	// guardLearner finds a VM's addresses; a hook for tests.
	guardLearner func(port string, bridge bool) (guard.Config, []string)

	mu     sync.Mutex
	q      map[string]*quarantine // by port
	closed bool

	profiles       profile.Set
	watch          WatchConfig
	matcher        *detect.Matcher
	tracker        *detect.Tracker
	events         Events
	lastLadderSave time.Time

	// quotas are the percentile-quota tenants (quota.go).
	quotas quotaSet
}

type quarantine struct {
	port    string
	spec    Spec
	since   time.Time
	state   string    // StateActive or StatePending
	expires time.Time // pending only
	sp      splice.Splice
	fwd     *forward.Forwarder // nil while pending

	lad  *ladder.Ladder  // nil without a ladder
	prof profile.Profile // the ladder's profile
	// avgFrom is when the forwarder started measuring the average frame
	// size for a ladder that has none; zero when not measuring.
	avgFrom time.Time
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
		log:           log,
		backends:      backends,
		started:       time.Now(),
		opt:           opt,
		ForwarderNice: opt.ForwarderNice,
		openQueues:    forward.OpenTapQueues,
		portExists: func(name string) bool {
			_, err := netlink.LinkByName(name)
			return err == nil
		},
		clock:         time.Now,
		portMeters:    readPortMeters,
		linkSubscribe: netlinkSubscribe,
		listLinks:     linkNames,
		q:             make(map[string]*quarantine),
		events:        Events{Transitions: map[string]uint64{}, Hooks: map[string]uint64{}, Alerts: map[string]uint64{}},
	}
	if err := m.Configure(profile.Set{profile.Quarantine: profile.Default()}, DefaultWatchConfig()); err != nil {
		panic(err) // the defaults are valid
	}
	return m
}

// SetTapOpener replaces how the manager opens a splice's taps (forward.OpenTap
// by default). For tests that pair a fake backend with fake devices; call it
// before the first quarantine.
func (m *Manager) SetTapOpener(open func(name string) (forward.Device, error)) {
	m.openQueues = func(name string, _ int, _ bool) ([]forward.Device, error) {
		d, err := open(name)
		if err != nil {
			return nil, err
		}
		return []forward.Device{d}, nil
	}
}

// SetPortCheck replaces how the manager tells whether a port exists. For
// tests with a fake backend.
func (m *Manager) SetPortCheck(exists func(name string) bool) {
	m.portExists = exists
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
// req may name a profile ("profile"); with no aggregate limit and no
// profile, it means the quarantine profile.
func (m *Manager) Quarantine(port string, req api.LimitRequest, pending bool) (api.Quarantine, error) {
	if err := checkPortName(port); err != nil {
		return api.Quarantine{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return api.Quarantine{}, ErrClosed
	}
	return m.quarantineLocked(port, req, pending, OriginManual, m.clock())
}

func (m *Manager) quarantineLocked(port string, req api.LimitRequest, pending bool, origin string, now time.Time) (api.Quarantine, error) {
	if _, ok := m.q[port]; ok {
		return api.Quarantine{}, usagef("%s is already quarantined: use set to change its limits", port)
	}
	prof, req, err := m.profileLocked(req)
	if err != nil {
		return api.Quarantine{}, err
	}
	spec := NewSpec()
	if prof != nil {
		if spec, err = spec.Apply(prof.Limits, false); err != nil {
			return api.Quarantine{}, usagef("profile %s: %v", prof.Name, err)
		}
		spec.Profile = prof.Name
		spec.GuardLearn = prof.GuardLearn
		if origin == OriginManual {
			// A manual quarantine gets the guard only when asked.
			spec.Guard = false
		}
	}
	if spec, err = spec.Apply(req, false); err != nil {
		return api.Quarantine{}, err
	}
	if origin != OriginManual {
		spec.Origin = origin
	}
	q := &quarantine{port: port, spec: spec, since: now.UTC()}
	if prof != nil && prof.UseLadder {
		if err := m.startLadderLocked(q, *prof, now); err != nil {
			return api.Quarantine{}, err
		}
	}
	if !q.spec.hasLimit() {
		return api.Quarantine{}, usagef("quarantine %s: no limit given: name at least one limit (--pps, --bps, --syn-pps, --class, ... or a --to-vm- twin), or a profile", port)
	}
	if !m.portExists(port) {
		if !pending {
			return api.Quarantine{}, usagef("%s: no such port (check the name, or add --pending to quarantine it when it appears)", port)
		}
		m.makePendingLocked(q, now)
		m.q[port] = q
		m.saveLocked()
		m.log.Info("quarantine pending: the port does not exist yet", "port", port, "expires", q.expires)
		return m.statusLocked(q), nil
	}
	if err := m.prepareGuardLocked(q); err != nil {
		return api.Quarantine{}, err
	}
	if err := m.applyLocked(q); err != nil {
		return api.Quarantine{}, err
	}
	m.q[port] = q
	m.saveLocked()
	return m.statusLocked(q), nil
}

func (m *Manager) makePendingLocked(q *quarantine, now time.Time) {
	q.state, q.sp, q.fwd = StatePending, nil, nil
	q.expires = now.Add(m.opt.PendingTTL)
}

// applyLocked splices q's port and starts its forwarder.
func (m *Manager) applyLocked(q *quarantine) (err error) {
	// A tenant port: the tenant's own splice makes way, and comes back
	// if the quarantine cannot start.
	if err := m.yieldQuotaSpliceLocked(q.port); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			m.quotaPortFreeLocked(q.port)
		}
	}()
	b, err := m.backendFor(q.port)
	if err != nil {
		return err
	}
	spec := q.spec
	opt := splice.Options{BypassPorts: spec.BypassPorts, BypassOutbound: spec.BypassOutbound, FailOpen: spec.Fail != "closed", Queues: m.opt.TapQueues}
	sp, err := b.Splice(q.port, opt)
	if err != nil && errors.Is(err, splice.ErrFailOpen) && spec.Fail == "" {
		// The default is open where the backend can do it.
		opt.FailOpen = false
		sp, err = b.Splice(q.port, opt)
	}
	if err != nil {
		if errors.Is(err, splice.ErrFailOpen) || errors.Is(err, splice.ErrSpliced) {
			return usagef("%v", err)
		}
		return fmt.Errorf("splice %s: %w", q.port, err)
	}
	if err := m.startLocked(q, sp); err != nil {
		if rerr := sp.Release(); rerr != nil {
			m.log.Error("rollback of a failed quarantine failed", "port", q.port, "err", rerr)
			err = errors.Join(err, rerr)
		}
		return err
	}
	for _, w := range sp.Warnings() {
		m.log.Warn("quarantine warning", "port", q.port, "warning", w)
	}
	m.log.Info("quarantined", "port", q.port, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap(), "intent", spec.Intent())
	return nil
}

// startLocked runs a forwarder on sp for q and records q's intent on the
// plumbing.
func (m *Manager) startLocked(q *quarantine, sp splice.Splice) error {
	fwd, err := m.startForwarder(sp, q.spec)
	if err != nil {
		return err
	}
	q.sp, q.fwd, q.state, q.expires = sp, fwd, StateActive, time.Time{}
	q.avgFrom = time.Time{}
	if q.lad != nil && q.lad.AvgFrame() == 0 {
		q.avgFrom = m.clock()
	}
	m.recordIntent(q)
	go m.watchForwarder(q, fwd)
	return nil
}

// recordIntent keeps q's intent on the plumbing, for a daemon that loses its
// state file. Failing that is not fatal: the state file has it too.
func (m *Manager) recordIntent(q *quarantine) {
	r, ok := q.sp.(splice.IntentRecorder)
	if !ok {
		return
	}
	if err := r.SetIntent(q.spec.Intent()); err != nil {
		m.log.Warn("cannot record the intent on the plumbing; only the state file has it", "port", q.port, "err", err)
	}
}

func (m *Manager) backendFor(port string) (splice.Backend, error) {
	var errs []error
	for _, b := range m.backends {
		ok, err := b.Handles(port)
		if ok {
			return b, nil
		}
		if err != nil {
			if errors.Is(err, splice.ErrNoPort) || errors.Is(err, splice.ErrNotBridged) || errors.Is(err, splice.ErrSpliced) {
				return nil, usagef("%v", err)
			}
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, usagef("%s: no splice backend can handle this port (it must be a member of a Linux bridge or an Open vSwitch bridge)", port)
}

func (m *Manager) startForwarder(sp splice.Splice, spec Spec) (*forward.Forwarder, error) {
	var opened []forward.Device
	closeAll := func() {
		for _, d := range opened {
			d.Close()
		}
	}
	// Offloads (GSO segments through the forwarder) on all of the
	// splice's taps, where the backend takes them.
	o, ok := sp.(splice.Offloader)
	offload := ok && o.Offloads()
	queues := func(name string) ([]forward.Device, error) {
		ds, err := m.openQueues(name, m.opt.TapQueues, offload)
		opened = append(opened, ds...)
		return ds, err
	}
	vms, err := queues(sp.VMTap())
	if err != nil {
		return nil, err
	}
	nts, err := queues(sp.NetTap())
	if err != nil {
		closeAll()
		return nil, err
	}
	vm, nt := vms[0], nts[0]
	var prio forward.Device
	if name := sp.PriorityTap(); name != "" {
		ps, err := queues(name)
		if err != nil {
			closeAll()
			return nil, err
		}
		prio = ps[0]
		for _, d := range ps[1:] {
			d.Close() // one reader: the priority tap has one queue
		}
	}
	cfg := forward.Config{
		Classify: spec.classifyConfig(),
		FromVM:   spec.fromVMPolicy(),
		ToVM:     spec.ToVM.policy(),
		Nice:     m.ForwarderNice,
		Coalesce: m.opt.Coalesce,
		Log:      m.log.With("port", sp.Port()),
	}
	cfg.FromVM, cfg.ToVM = m.quotaPoliciesLocked(sp.Port(), cfg.FromVM, cfg.ToVM)
	fwd, err := forward.New(cfg, forward.Devices{VM: vm, Net: nt, Priority: prio, VMQueues: vms[1:], NetQueues: nts[1:]})
	if err != nil {
		closeAll()
		return nil, err
	}
	return fwd, nil
}

// watchForwarder logs a forwarder that stops while its quarantine still
// wants it.
func (m *Manager) watchForwarder(q *quarantine, fwd *forward.Forwarder) {
	<-fwd.Done()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.q[q.port] == q && q.fwd == fwd && !m.closed {
		m.log.Error("forwarder stopped while the port is quarantined", "port", q.port)
	}
}

// Alive reports whether every active quarantine's forwarder is running (for
// the service manager's watchdog).
func (m *Manager) Alive() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, q := range m.q {
		if q.fwd != nil && !q.fwd.Alive() {
			return false
		}
	}
	return m.quotasAliveLocked()
}

// Set changes the named limits of port's quarantine in place, without
// re-splicing.
func (m *Manager) Set(port string, req api.LimitRequest) (api.Quarantine, error) {
	if len(req) == 0 {
		return api.Quarantine{}, usagef("set %s: nothing to change: name at least one limit flag", port)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.q[port]
	if !ok {
		return api.Quarantine{}, usagef("%s is not quarantined: use quarantine first", port)
	}
	if _, ok := req["profile"]; ok {
		return api.Quarantine{}, usagef("--profile cannot change in place: release the port and quarantine it again")
	}
	spec, err := q.spec.Apply(req, true)
	if err != nil {
		return api.Quarantine{}, err
	}
	offLadder := false
	if q.lad != nil {
		for _, f := range aggregateFlags {
			for _, pre := range ladderPrefixes(q.prof.Threshold.Direction) {
				if _, ok := req[pre+f]; ok {
					offLadder = true
				}
			}
		}
	}
	if offLadder {
		spec.Stage = ""
	}
	if err := m.setSpecLocked(q, spec); err != nil {
		return api.Quarantine{}, err
	}
	if offLadder {
		m.log.Warn("event: limits set by hand; the port leaves its ladder", "event", "ladder_stopped", "port", port, "stage", q.lad.Stage())
		q.lad, q.avgFrom = nil, time.Time{}
	}
	m.saveLocked()
	m.log.Info("limits changed", "port", port, "intent", spec.Intent())
	return m.statusLocked(q), nil
}

// setSpecLocked makes spec q's intent: in the forwarder (both directions or
// neither), on the plumbing, not yet in the state file.
func (m *Manager) setSpecLocked(q *quarantine, spec Spec) error {
	if q.fwd != nil {
		from, to := spec.fromVMPolicy(), spec.ToVM.policy()
		from, to = m.quotaPoliciesLocked(q.port, from, to)
		prev := q.fwd.FromVM.Policy()
		// Validated by Apply; SetPolicy validates again before
		// publishing, so a failure leaves the old policy in force.
		if err := q.fwd.FromVM.SetPolicy(from); err != nil {
			return usagef("%v", err)
		}
		if err := q.fwd.ToVM.SetPolicy(to); err != nil {
			q.fwd.FromVM.SetPolicy(prev)
			return usagef("%v", err)
		}
	}
	q.spec = spec
	if q.sp != nil {
		m.recordIntent(q)
	}
	return nil
}

// Release ends port's quarantine and reverts its splice; a pending
// quarantine is simply dropped.
func (m *Manager) Release(port string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.q[port]
	if !ok {
		return usagef("%s is not quarantined", port)
	}
	return m.releaseLocked(q)
}

// ReleaseAll releases every quarantine, active and pending.
func (m *Manager) ReleaseAll() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var done []string
	var errs []error
	for _, p := range m.portsLocked() {
		if err := m.releaseLocked(m.q[p]); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, p)
	}
	return done, errors.Join(errs...)
}

func (m *Manager) releaseLocked(q *quarantine) error {
	if q.sp != nil {
		// Say "releasing" first: if the daemon dies half way, the next
		// one finishes the release instead of adopting a half splice.
		q.state = stateReleasing
		m.saveLocked()
		if err := m.teardownLocked(q); err != nil {
			q.state = StateActive
			m.saveLocked()
			return err
		}
	}
	delete(m.q, q.port)
	m.saveLocked()
	m.log.Info("released", "port", q.port)
	m.quotaPortFreeLocked(q.port)
	return nil
}

// teardownLocked stops q's forwarder, then reverts its splice. The forwarder
// goes first so nothing writes into taps that are being removed.
func (m *Manager) teardownLocked(q *quarantine) error {
	if q.fwd != nil {
		if err := q.fwd.Close(); err != nil {
			m.log.Warn("closing forwarder", "port", q.port, "err", err)
		}
		q.fwd = nil
	}
	if q.sp != nil {
		if err := q.sp.Release(); err != nil {
			return fmt.Errorf("release %s: %w", q.port, err)
		}
		q.sp = nil
	}
	return nil
}

// PortGone is called when a link disappears. A quarantined port's splice is
// torn down, and the quarantine waits, pending, for the port to return (a VM
// restart) until it is released or expires.
func (m *Manager) PortGone(port string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.quotaPortGoneLocked(port)
	q, ok := m.q[port]
	if !ok || q.state != StateActive || m.closed {
		return
	}
	m.log.Warn("quarantined port disappeared: removing its splice; the quarantine is pending until the port returns", "port", port)
	if err := m.teardownLocked(q); err != nil {
		m.log.Error("cleaning up after a vanished port", "port", port, "err", err)
	}
	m.makePendingLocked(q, time.Now())
	m.saveLocked()
}

// PortAppeared is called when a link appears or changes: a pending
// quarantine of that port is applied if the port can be spliced now.
func (m *Manager) PortAppeared(port string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.quotaPortFreeLocked(port) // after the quarantine's turn
	if q, ok := m.q[port]; ok && q.state == StatePending && !m.closed {
		m.tryPendingLocked(q)
	}
}

// tryPendingLocked applies a pending quarantine if its port is there and on a
// bridge; otherwise it stays pending.
func (m *Manager) tryPendingLocked(q *quarantine) {
	if !m.portExists(q.port) {
		return
	}
	if err := m.applyLocked(q); err != nil {
		// Not on a bridge yet (libvirt adds it a moment later): retried
		// on the next event or tick.
		m.log.Debug("pending quarantine not applied yet", "port", q.port, "err", err)
		return
	}
	m.log.Info("pending quarantine applied: the port is back", "port", q.port)
	m.saveLocked()
}

// Tick retries pending quarantines and drops expired ones. The daemon calls
// it periodically, as a safety net for missed link events.
func (m *Manager) Tick(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.tickQuotasLocked(now)
	for _, p := range m.portsLocked() {
		q := m.q[p]
		if q.state != StatePending {
			continue
		}
		if now.After(q.expires) {
			m.log.Warn("pending quarantine expired: its port did not return", "port", p, "expired", q.expires)
			delete(m.q, p)
			m.saveLocked()
			continue
		}
		m.tryPendingLocked(q)
	}
}

func (m *Manager) portsLocked() []string {
	out := make([]string, 0, len(m.q))
	for p := range m.q {
		out = append(out, p)
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

// Status reports every quarantine, or only port's when port is not empty (an
// unknown port is a usage error).
func (m *Manager) Status(port string) (api.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := api.Status{
		Daemon:      api.Daemon{PID: os.Getpid(), Version: Version, Started: m.started.UTC(), Now: time.Now().UTC()},
		Quarantines: []api.Quarantine{},
		Flagged:     m.flaggedLocked(),
		Quotas:      m.quotaStatusLocked(m.clock()),
	}
	if port != "" {
		q, ok := m.q[port]
		if !ok {
			return st, usagef("%s is not quarantined", port)
		}
		st.Quarantines = append(st.Quarantines, m.statusLocked(q))
		return st, nil
	}
	for _, p := range m.portsLocked() {
		st.Quarantines = append(st.Quarantines, m.statusLocked(m.q[p]))
	}
	return st, nil
}

func (m *Manager) statusLocked(q *quarantine) api.Quarantine {
	out := api.Quarantine{
		Port:     q.port,
		State:    q.state,
		Fail:     q.spec.Fail,
		Since:    q.since,
		Bypass:   api.Bypass{Ports: slices.Clone(q.spec.BypassPorts), Outbound: q.spec.BypassOutbound},
		Warnings: []string{},
		Profile:  q.spec.Profile,
		Origin:   q.spec.Origin,
		Stage:    q.spec.Stage,

		TopDestinations: []api.Destination{},
	}
	if out.Origin == "" {
		out.Origin = OriginManual
	}
	if out.Stage == "" {
		out.Stage = StageManual
	}
	if q.lad != nil {
		if t := q.lad.NextTransition(); !t.IsZero() {
			t = t.UTC()
			out.NextTransition = &t
		}
	}
	var from, to forward.DirStats
	var fq, tq *forward.QueueStats
	if q.sp != nil {
		out.Backend = q.sp.Backend()
		out.Fail = failString(q.sp.FailOpen())
		out.Taps = api.Taps{VM: q.sp.VMTap(), Net: q.sp.NetTap(), Priority: q.sp.PriorityTap()}
		out.Warnings = append(out.Warnings, q.sp.Warnings()...)
	}
	if q.fwd != nil {
		from, to = q.fwd.FromVM.Stats(), q.fwd.ToVM.Stats()
		for _, d := range q.fwd.FromVM.TopDestinations(nil, TopDestinations) {
			out.TopDestinations = append(out.TopDestinations, api.Destination{
				Address: d.Addr.String(), Port: d.Port, Protocol: d.ProtoName(), Packets: d.Packets})
		}
		now := time.Now()
		a, b := q.fwd.FromVM.Queue(now), q.fwd.ToVM.Queue(now)
		fq, tq = &a, &b
	}
	if q.state == StatePending {
		e := q.expires.UTC()
		out.Expires = &e
	}
	out.Directions.FromVM = dirStatus(q.spec.FromVM, from, fq)
	out.Directions.ToVM = dirStatus(q.spec.ToVM, to, tq)
	if q.sp != nil {
		// Frames from the VM queue at the VM tap (and the priority tap);
		// frames to the VM at the net tap.
		out.Directions.FromVM.TapDrops = tapDrops(q.sp.VMTap()) + tapDrops(q.sp.PriorityTap())
		out.Directions.ToVM.TapDrops = tapDrops(q.sp.NetTap())
	}
	return out
}

// tapDrops reads a tap's tx_dropped: the frames the kernel could not queue
// for the reader of the tap. 0 for no tap, or one that cannot be read.
func tapDrops(tap string) uint64 {
	if tap == "" {
		return 0
	}
	n, _ := detect.ReadAttr(tap, "statistics/tx_dropped")
	return n
}

// saveLocked writes the state file; a failure is logged, not returned: the
// plumbing keeps the intent too, and refusing the change would not undo it.
func (m *Manager) saveLocked() {
	if m.opt.StateDir == "" {
		return
	}
	entries := make([]savedEntry, 0, len(m.q))
	for _, q := range m.q {
		e := savedEntry{Port: q.port, State: q.state, Spec: q.spec, Since: q.since, Expires: q.expires}
		if q.lad != nil {
			st := q.lad.State()
			e.Ladder = &st
		}
		if q.sp != nil {
			e.Backend = q.sp.Backend()
		}
		entries = append(entries, e)
	}
	if err := saveState(m.opt.StateDir, entries, time.Now()); err != nil {
		m.log.Error("cannot write the state file", "dir", m.opt.StateDir, "err", err)
	}
}

// Close stops accepting changes and stops every forwarder, leaving the
// splices and the state file in place for the next daemon to adopt. (On the
// tc backend a port stays cut off until then; `shaperd release --all` before
// stopping clears everything.) Safe to call more than once.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	// Before any forwarder stops: what passes between the two readings
	// is counted twice, never missed.
	meters := m.quotaMetersLocked()
	var errs []error
	for _, q := range m.q {
		if q.fwd != nil {
			if err := q.fwd.Close(); err != nil {
				errs = append(errs, err)
			}
			q.fwd = nil
		}
	}
	if err := m.closeQuotasLocked(m.clock(), meters); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func failString(open bool) string {
	if open {
		return "open"
	}
	return "closed"
}

func checkPortName(port string) error {
	if port == "" {
		return usagef("no port given")
	}
	if len(port) > 15 {
		return usagef("port %q: interface names have at most 15 characters", port)
	}
	for _, r := range port {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return usagef("port %q: not a valid interface name", port)
		}
	}
	return nil
}
