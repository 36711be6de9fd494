// Package daemon owns shaperd's quarantines: it validates requests, splices
// ports with a backend, runs a forwarder on each splice, changes limits in
// place, and reverts splices on release or when a port vanishes.
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

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
)

// Version is shaperd's version, reported in status.
var Version = "dev"

// Manager holds the quarantines of this host. Its methods are safe for
// concurrent use; changes are serialised by mu.
type Manager struct {
	log      *slog.Logger
	backends []splice.Backend
	started  time.Time

	// ForwarderNice is the scheduling priority of forwarding threads
	// (-20..19, 0 = the daemon's own). Set it before the first quarantine.
	ForwarderNice int

	// openTap opens a splice's taps; a hook so unit tests can use fakes.
	openTap func(name string) (forward.Device, error)

	mu     sync.Mutex
	q      map[string]*quarantine // by port
	closed bool
}

type quarantine struct {
	port  string
	spec  Spec
	since time.Time
	sp    splice.Splice
	fwd   *forward.Forwarder
}

// New returns a Manager that splices with the first of backends that handles
// a port.
func New(log *slog.Logger, backends ...splice.Backend) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		log:      log,
		backends: backends,
		started:  time.Now(),
		openTap:  forward.OpenTap,
		q:        make(map[string]*quarantine),
	}
}

// SetTapOpener replaces how the manager opens a splice's taps (forward.OpenTap
// by default). For tests that pair a fake backend with fake devices; call it
// before the first quarantine.
func (m *Manager) SetTapOpener(open func(name string) (forward.Device, error)) {
	m.openTap = open
}

// ErrClosed is returned by every change after Close.
var ErrClosed = errors.New("daemon: shutting down")

// Quarantine splices port and polices it with the limits req names. It
// validates everything before touching the host, and undoes what it did if a
// later step fails.
func (m *Manager) Quarantine(port string, req api.LimitRequest) (api.Quarantine, error) {
	if err := checkPortName(port); err != nil {
		return api.Quarantine{}, err
	}
	if !HasAggregateLimit(req) {
		return api.Quarantine{}, usagef("quarantine %s: no limit given: name at least one of --pps, --bps (or their --to-vm- twins); profiles come later", port)
	}
	spec, err := NewSpec().Apply(req, false)
	if err != nil {
		return api.Quarantine{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return api.Quarantine{}, ErrClosed
	}
	if _, ok := m.q[port]; ok {
		return api.Quarantine{}, usagef("%s is already quarantined: use set to change its limits", port)
	}
	b, err := m.backendFor(port)
	if err != nil {
		return api.Quarantine{}, err
	}
	opt := splice.Options{BypassPorts: spec.BypassPorts, BypassOutbound: spec.BypassOutbound, FailOpen: spec.Fail != "closed"}
	sp, err := b.Splice(port, opt)
	if err != nil && errors.Is(err, splice.ErrFailOpen) && spec.Fail == "" {
		// The default is open where the backend can do it.
		sp, err = nil, nil
	}
	if sp == nil && err == nil {
		opt.FailOpen = false
		sp, err = b.Splice(port, opt)
	}
	if err != nil {
		if errors.Is(err, splice.ErrFailOpen) {
			return api.Quarantine{}, usagef("%v", err)
		}
		if errors.Is(err, splice.ErrSpliced) {
			return api.Quarantine{}, usagef("%v (left by an earlier run? release it with the daemon's help once state recovery exists, or remove the taps %s)", err, tapList(port))
		}
		return api.Quarantine{}, fmt.Errorf("splice %s: %w", port, err)
	}
	fwd, err := m.startForwarder(sp, spec)
	if err != nil {
		if rerr := sp.Release(); rerr != nil {
			m.log.Error("rollback of a failed quarantine failed", "port", port, "err", rerr)
			err = errors.Join(err, rerr)
		}
		return api.Quarantine{}, err
	}
	q := &quarantine{port: port, spec: spec, since: time.Now().UTC(), sp: sp, fwd: fwd}
	m.q[port] = q
	for _, w := range sp.Warnings() {
		m.log.Warn("quarantine warning", "port", port, "warning", w)
	}
	m.log.Info("quarantined", "port", port, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap())
	go m.watchForwarder(q)
	return m.statusLocked(q), nil
}

func tapList(port string) string {
	v, n := splice.TapNames(port)
	return v + " and " + n
}

func (m *Manager) backendFor(port string) (splice.Backend, error) {
	var errs []error
	for _, b := range m.backends {
		ok, err := b.Handles(port)
		if ok {
			return b, nil
		}
		if err != nil {
			if errors.Is(err, splice.ErrNoPort) || errors.Is(err, splice.ErrNotBridged) {
				return nil, usagef("%v", err)
			}
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, usagef("%s: no splice backend can handle this port (it must be a member of a Linux bridge)", port)
}

func (m *Manager) startForwarder(sp splice.Splice, spec Spec) (*forward.Forwarder, error) {
	vm, err := m.openTap(sp.VMTap())
	if err != nil {
		return nil, err
	}
	nt, err := m.openTap(sp.NetTap())
	if err != nil {
		vm.Close()
		return nil, err
	}
	var prio forward.Device
	if name := sp.PriorityTap(); name != "" {
		if prio, err = m.openTap(name); err != nil {
			vm.Close()
			nt.Close()
			return nil, err
		}
	}
	fwd, err := forward.New(forward.Config{
		Classify: spec.classifyConfig(),
		FromVM:   spec.FromVM.policy(),
		ToVM:     spec.ToVM.policy(),
		Nice:     m.ForwarderNice,
		Log:      m.log.With("port", sp.Port()),
	}, forward.Devices{VM: vm, Net: nt, Priority: prio})
	if err != nil {
		vm.Close()
		nt.Close()
		if prio != nil {
			prio.Close()
		}
		return nil, err
	}
	return fwd, nil
}

// watchForwarder logs a forwarder that stops on its own (its devices went away).
func (m *Manager) watchForwarder(q *quarantine) {
	<-q.fwd.Done()
	m.mu.Lock()
	cur := m.q[q.port]
	m.mu.Unlock()
	if cur == q {
		m.log.Error("forwarder stopped while the port is quarantined", "port", q.port)
	}
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
	spec, err := q.spec.Apply(req, true)
	if err != nil {
		return api.Quarantine{}, err
	}
	from, to := spec.FromVM.policy(), spec.ToVM.policy()
	// Validated by Apply; SetPolicy validates again before publishing,
	// so a failure here leaves the old policy in force.
	if err := q.fwd.FromVM.SetPolicy(from); err != nil {
		return api.Quarantine{}, usagef("%v", err)
	}
	if err := q.fwd.ToVM.SetPolicy(to); err != nil {
		q.fwd.FromVM.SetPolicy(q.spec.FromVM.policy())
		return api.Quarantine{}, usagef("%v", err)
	}
	q.spec = spec
	m.log.Info("limits changed", "port", port)
	return m.statusLocked(q), nil
}

// Release ends port's quarantine and reverts its splice.
func (m *Manager) Release(port string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.q[port]
	if !ok {
		return usagef("%s is not quarantined", port)
	}
	if err := m.teardownLocked(q); err != nil {
		return err
	}
	m.log.Info("released", "port", port)
	return nil
}

// teardownLocked stops q's forwarder, then reverts its splice. The forwarder
// goes first so nothing writes into taps that are being removed.
func (m *Manager) teardownLocked(q *quarantine) error {
	ferr := q.fwd.Close()
	if ferr != nil {
		m.log.Warn("closing forwarder", "port", q.port, "err", ferr)
	}
	if err := q.sp.Release(); err != nil {
		return fmt.Errorf("release %s: %w", q.port, err)
	}
	delete(m.q, q.port)
	return nil
}

// PortGone tears down the quarantine of a port that disappeared (VM stopped
// or destroyed). It is called by the link watcher.
func (m *Manager) PortGone(port string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	q, ok := m.q[port]
	if !ok {
		return
	}
	m.log.Warn("quarantined port disappeared: removing its splice", "port", port)
	if err := m.teardownLocked(q); err != nil {
		m.log.Error("cleaning up after a vanished port", "port", port, "err", err)
	}
}

// Ports returns the quarantined ports.
func (m *Manager) Ports() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.q))
	for p := range m.q {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Status reports every quarantine, or only port's when port is not empty (an
// unknown port is a usage error).
func (m *Manager) Status(port string) (api.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := api.Status{
		Daemon:      api.Daemon{PID: os.Getpid(), Version: Version, Started: m.started.UTC()},
		Quarantines: []api.Quarantine{},
	}
	if port != "" {
		q, ok := m.q[port]
		if !ok {
			return st, usagef("%s is not quarantined", port)
		}
		st.Quarantines = append(st.Quarantines, m.statusLocked(q))
		return st, nil
	}
	ports := make([]string, 0, len(m.q))
	for p := range m.q {
		ports = append(ports, p)
	}
	sort.Strings(ports)
	for _, p := range ports {
		st.Quarantines = append(st.Quarantines, m.statusLocked(m.q[p]))
	}
	return st, nil
}

func (m *Manager) statusLocked(q *quarantine) api.Quarantine {
	out := api.Quarantine{
		Port:     q.port,
		State:    "active",
		Backend:  q.sp.Backend(),
		Fail:     failString(q.sp.FailOpen()),
		Since:    q.since,
		Taps:     api.Taps{VM: q.sp.VMTap(), Net: q.sp.NetTap()},
		Bypass:   api.Bypass{Ports: slices.Clone(q.spec.BypassPorts), Outbound: q.spec.BypassOutbound},
		Warnings: append([]string{}, q.sp.Warnings()...),
	}
	out.Directions.FromVM = dirStatus(q.spec.FromVM, q.fwd.FromVM.Stats())
	out.Directions.ToVM = dirStatus(q.spec.ToVM, q.fwd.ToVM.Stats())
	return out
}

func dirStatus(d DirSpec, s forward.DirStats) api.Direction {
	var controlBurst *int
	if b := d.policy().Classes[classify.Control].BurstPackets; b > 0 {
		controlBurst = &b
	}
	out := api.Direction{
		Limits:        apiLimits(d.PPS, d.BPS, d.Burst, d.BurstBytes),
		BypassLimits:  apiLimits(d.BypassPPS, d.BypassBPS, nil, nil),
		ControlLimits: apiLimits(d.ControlPPS, nil, controlBurst, nil),
		Classes:       make(map[string]api.ClassStats, classify.NumClasses),
		ReadErrors:    s.ReadErrors,
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		cs := s.Classes[c]
		drops := make(map[string]uint64)
		for r := forward.Reason(0); r < forward.NumReasons; r++ {
			drops[r.String()] = cs.Drops[r]
		}
		out.Classes[c.String()] = api.ClassStats{
			PassedPackets:  cs.PassedPackets,
			PassedBytes:    cs.PassedBytes,
			DroppedPackets: cs.DroppedPackets,
			DroppedBytes:   cs.DroppedBytes,
			Drops:          drops,
		}
	}
	return out
}

// Close stops accepting changes and releases every quarantine, reverting
// every splice. Safe to call more than once.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for _, q := range m.q {
		if err := m.teardownLocked(q); err != nil {
			errs = append(errs, err)
		}
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
