package daemon

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/splice"
)

// PortPolicer keeps the kernel's port guards and isolations equal to a
// desired set: *portpolicy.Manager, or a fake in tests. Apply and Stats do
// netlink work; the daemon never calls them under Manager.mu.
type PortPolicer interface {
	Apply(desired map[string]portpolicy.Policy) error
	Stats() (map[string]map[string]uint64, error)
}

// OVSPortPolicer is a PortPolicer for Open vSwitch ports
// (*ovspolicy.Manager, or a fake in tests): its desired set holds OVS ports
// only, under their own names. Check says, changing nothing, whether a
// policy can be installed on a port (an error wrapping
// portpolicy.ErrInvalid if not: no OpenFlow port, no MAC known).
type OVSPortPolicer interface {
	PortPolicer
	Check(port string, p portpolicy.Policy) error
}

// ErrNoPortPolicy means the daemon runs without a port policy engine.
var ErrNoPortPolicy = errors.New("guard and isolate: not available in this daemon")

// portPolicies are the guards and isolations set by the command line, by
// port. Guarded by Manager.mu.
type portPolicies struct {
	guards     map[string]guardEntry
	isolations map[string]portpolicy.Isolate
	// ovs are the ports above that are Open vSwitch ports: their policies
	// go to Options.OVSPortPolicy. ovsApplied: the last OVS set applied
	// was not empty (so an empty one must be applied to remove it).
	ovs        map[string]bool
	ovsApplied bool
}

type guardEntry struct {
	addr  store.GuardAddr
	guard portpolicy.Guard
}

// bridgeSides are the names a port's kernel rules are keyed on: its own,
// and those of its splice's bridge side (the net tap and, with fail open
// on a Linux bridge, the fallback veth), which take its place in the
// bridge while it is quarantined. The names are deterministic, so the
// rules are in force before, during and after a splice with nothing to do
// at either end.
func bridgeSides(port string) []string {
	_, nt := splice.TapNames(port)
	fb, _ := splice.FallbackNames(port)
	return []string{port, nt, fb}
}

// onOVS reports whether port is an Open vSwitch port (the OVS backend
// handles it; a spliced OVS port stays in its bridge).
func (m *Manager) onOVS(port string) bool {
	for _, b := range m.backends {
		if b.Name() == "ovs" {
			ok, _ := b.Handles(port)
			return ok
		}
	}
	return false
}

// checkPolicyPort refuses, as a usage error, a port that guard or isolate
// cannot protect: no such link, a splice's own link, not a veth or a tap,
// or on no bridge; and an Open vSwitch port when the daemon has no OpenFlow
// engine (see also checkOVS). A quarantined port is accepted: its
// splice stands in for it in the bridge. It reports whether the port is
// an Open vSwitch port (its policy is then OpenFlow flows, else nftables
// bridge rules).
func (m *Manager) checkPolicyPort(cmd, port string) (ovs bool, err error) {
	if err := api.CheckPort(port); err != nil {
		return false, err
	}
	if strings.HasPrefix(port, splice.TapPrefix) {
		return false, usagef("%s %s: a splice's own link, not a VM port", cmd, port)
	}
	kind, kerr := m.host.LinkKind(port)
	if kerr == nil && (kind == "veth" || kind == "tuntap") && m.onOVS(port) {
		if m.opt.OVSPortPolicy == nil {
			return true, usagef("%s %s: an Open vSwitch port: this daemon has no OpenFlow port policy engine", cmd, port)
		}
		return true, nil
	}
	m.mu.Lock()
	_, quarantined := m.q[port]
	m.mu.Unlock()
	if quarantined {
		return false, nil
	}
	if kerr != nil {
		return false, usagef("%s %s: no such port on this host", cmd, port)
	}
	if kind != "veth" && kind != "tuntap" {
		return false, usagef("%s %s: not a VM port: a %s, not a veth or a tap", cmd, port, kind)
	}
	for _, b := range m.backends {
		if ok, _ := b.Handles(port); ok {
			return false, nil
		}
	}
	return false, usagef("%s %s: not a VM port: on no bridge", cmd, port)
}

// checkOVS refuses, as a usage error, a policy that cannot be installed on
// an Open vSwitch port (OVSPortPolicer.Check: no OpenFlow port number, no
// VM MAC known for an isolation); nothing is changed.
func (m *Manager) checkOVS(cmd, port string, pol portpolicy.Policy) error {
	if err := m.opt.OVSPortPolicy.Check(port, pol); err != nil {
		return usagef("%s %s: %v", cmd, port, err)
	}
	return nil
}

// policyDesiredLocked is the set to apply: every Linux bridge port's guard
// and isolation under each of its bridgeSides (nft), and every Open vSwitch
// port's under its own name (ovs: a splice sends the VM's frames back into
// the bridge as if from the port).
func (m *Manager) policyDesiredLocked() (nft, ovs map[string]portpolicy.Policy) {
	out, ovs := map[string]portpolicy.Policy{}, map[string]portpolicy.Policy{}
	set := func(port string, f func(*portpolicy.Policy)) {
		if m.pp.ovs[port] {
			p := ovs[port]
			f(&p)
			ovs[port] = p
			return
		}
		for _, n := range bridgeSides(port) {
			p := out[n]
			f(&p)
			out[n] = p
		}
	}
	for port, e := range m.pp.guards {
		g := e.guard
		set(port, func(p *portpolicy.Policy) { p.Guard = &g })
	}
	for port, iso := range m.pp.isolations {
		i := iso
		set(port, func(p *portpolicy.Policy) { p.Isolate = &i })
	}
	return out, ovs
}

// applyPolicies makes the kernel's port policies equal to the desired set
// as it is when it runs; calls are serialised by ppMu, and Apply runs
// without Manager.mu.
func (m *Manager) applyPolicies() error {
	if m.opt.PortPolicy == nil {
		return nil
	}
	m.ppMu.Lock()
	defer m.ppMu.Unlock()
	m.mu.Lock()
	desired, ovs := m.policyDesiredLocked()
	ovsHad := m.pp.ovsApplied
	m.mu.Unlock()
	if err := m.opt.PortPolicy.Apply(desired); err != nil {
		m.log.Error("portpolicy: cannot apply", "err", err)
		return err
	}
	if m.opt.OVSPortPolicy == nil || (len(ovs) == 0 && !ovsHad) {
		return nil
	}
	if err := m.opt.OVSPortPolicy.Apply(ovs); err != nil {
		m.log.Error("portpolicy: cannot apply the OpenFlow port policies", "err", err)
		return err
	}
	m.mu.Lock()
	m.pp.ovsApplied = len(ovs) > 0
	m.mu.Unlock()
	return nil
}

// policyStats reads the drop counters of both engines, without
// Manager.mu.
func (m *Manager) policyStats() (map[string]map[string]uint64, error) {
	stats, err := m.opt.PortPolicy.Stats()
	m.mu.Lock()
	ovsHad := m.pp.ovsApplied
	m.mu.Unlock()
	if m.opt.OVSPortPolicy == nil || !ovsHad {
		return stats, err
	}
	os, oerr := m.opt.OVSPortPolicy.Stats()
	if stats == nil {
		stats = map[string]map[string]uint64{}
	}
	for port, rs := range os {
		stats[port] = rs
	}
	return stats, errors.Join(err, oerr)
}

// changePolicy makes one change to the desired set: change runs under
// Manager.mu and returns how to undo it, or an error (then nothing
// changed). The result is applied; if the kernel refuses it, the change is
// undone (and the old set applied again) and the error returned. Then the
// set is saved (ErrNotSaved if it cannot be).
func (m *Manager) changePolicy(change func() (undo func(), err error)) error {
	m.mu.Lock()
	undo, err := change()
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if err := m.applyPolicies(); err != nil {
		m.mu.Lock()
		undo()
		m.mu.Unlock()
		m.applyPolicies()
		return err
	}
	if err := m.savePolicies(); err != nil {
		return fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	return nil
}

// setEntry sets mp[port] to v and returns how to undo it.
func setEntry[V any](mp map[string]V, port string, v V) (undo func()) {
	old, had := mp[port]
	mp[port] = v
	return func() {
		if had {
			mp[port] = old
		} else {
			delete(mp, port)
		}
	}
}

// SetGuard sets the port guard of port (replacing one it has). Addresses
// not given are learned as a quarantine's guard learns them (libvirt, the
// bridge's and the neighbour tables); what cannot be learned must be given.
func (m *Manager) SetGuard(req api.GuardRequest) (api.Guard, error) {
	if m.opt.PortPolicy == nil {
		return api.Guard{}, ErrNoPortPolicy
	}
	ovs, err := m.checkPolicyPort("guard", req.Port)
	if err != nil {
		return api.Guard{}, err
	}
	addr := store.GuardAddr{MAC: req.MAC, IP: req.IP, IPv6: req.IPv6}
	if addr.MAC == "" || addr.IP == "" {
		found, from := m.host.LearnGuard(req.Port, true)
		if addr.MAC == "" && len(found.MACs) == 1 {
			addr.MAC = found.MACs[0].String()
		}
		if addr.IP == "" {
			var v4 []string
			for _, p := range found.IPs {
				if p.Addr().Is4() && p.IsSingleIP() {
					v4 = append(v4, p.Addr().String())
				}
			}
			addr.IP = strings.Join(v4, ",")
		}
		addr.LearnedFrom = from
		if addr.MAC == "" || addr.IP == "" {
			return api.Guard{}, usagef("guard %s: the VM's addresses are unknown (MACs %d, IPv4 addresses learned: %q; looked in %s): give --mac and --ip",
				req.Port, len(found.MACs), addr.IP, strings.Join(from, ", "))
		}
	}
	g, err := portpolicy.ParseGuard(addr.MAC, addr.IP, addr.IPv6)
	if err != nil {
		return api.Guard{}, usagef("guard %s: %v", req.Port, err)
	}
	if ovs {
		if err := m.checkOVS("guard", req.Port, portpolicy.Policy{Guard: &g}); err != nil {
			return api.Guard{}, err
		}
	}
	err = m.changePolicy(func() (func(), error) {
		undoOVS := setEntry(m.pp.ovs, req.Port, ovs)
		undo := setEntry(m.pp.guards, req.Port, guardEntry{addr: addr, guard: g})
		return func() { undo(); undoOVS() }, nil
	})
	out := guardStatus(req.Port, guardEntry{addr: addr, guard: g}, nil)
	if err == nil || errors.Is(err, ErrNotSaved) {
		m.log.Info("guard set", "port", req.Port, "guard", g.String(), "learned_from", addr.LearnedFrom)
	}
	return out, err
}

// SetIsolate sets the one-way isolation of port (replacing one it has).
func (m *Manager) SetIsolate(port, allowFrom string) (api.Isolation, error) {
	if m.opt.PortPolicy == nil {
		return api.Isolation{}, ErrNoPortPolicy
	}
	ovs, err := m.checkPolicyPort("isolate", port)
	if err != nil {
		return api.Isolation{}, err
	}
	iso, err := portpolicy.ParseIsolate(allowFrom)
	if err != nil {
		return api.Isolation{}, usagef("isolate %s: %v", port, err)
	}
	if ovs {
		if err := m.checkOVS("isolate", port, portpolicy.Policy{Isolate: &iso}); err != nil {
			return api.Isolation{}, err
		}
	}
	err = m.changePolicy(func() (func(), error) {
		undoOVS := setEntry(m.pp.ovs, port, ovs)
		undo := setEntry(m.pp.isolations, port, iso)
		return func() { undo(); undoOVS() }, nil
	})
	if err == nil || errors.Is(err, ErrNotSaved) {
		m.log.Info("isolation set", "port", port, "allow_from", iso.AllowFrom.String())
	}
	return isolationStatus(port, iso, nil), err
}

// RemoveGuard removes port's guard; a port without one is ErrNotFound.
func (m *Manager) RemoveGuard(port string) error {
	return m.removePolicy("guard", port, func() (func(), bool) {
		old, ok := m.pp.guards[port]
		delete(m.pp.guards, port)
		return func() { m.pp.guards[port] = old }, ok
	})
}

// RemoveIsolate removes port's isolation; a port without one is
// ErrNotFound.
func (m *Manager) RemoveIsolate(port string) error {
	return m.removePolicy("isolation", port, func() (func(), bool) {
		old, ok := m.pp.isolations[port]
		delete(m.pp.isolations, port)
		return func() { m.pp.isolations[port] = old }, ok
	})
}

func (m *Manager) removePolicy(what, port string, remove func() (undo func(), had bool)) error {
	if m.opt.PortPolicy == nil {
		return ErrNoPortPolicy
	}
	if err := api.CheckPort(port); err != nil {
		return err
	}
	err := m.changePolicy(func() (func(), error) {
		undo, had := remove()
		if !had {
			return nil, notFoundf("%s has no %s", port, what)
		}
		return undo, nil
	})
	if err == nil || errors.Is(err, ErrNotSaved) {
		m.log.Info(what+" removed", "port", port)
	}
	return err
}

// savePolicies writes the guards and isolations to the state dir.
func (m *Manager) savePolicies() error {
	if m.opt.StateDir == "" {
		return nil
	}
	m.ppSaveMu.Lock()
	defer m.ppSaveMu.Unlock()
	m.mu.Lock()
	by := map[string]*store.PortPolicy{}
	get := func(p string) *store.PortPolicy {
		if by[p] == nil {
			by[p] = &store.PortPolicy{Port: p}
		}
		return by[p]
	}
	for p, e := range m.pp.guards {
		a := e.addr
		get(p).Guard = &a
	}
	for p, iso := range m.pp.isolations {
		get(p).AllowFrom = iso.AllowFrom.String()
	}
	m.mu.Unlock()
	entries := make([]store.PortPolicy, 0, len(by))
	for _, e := range by {
		entries = append(entries, *e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Port < entries[j].Port })
	if err := store.SavePortPolicies(m.opt.StateDir, entries, m.host.Now()); err != nil {
		m.health.add(EventStateNotSaved)
		m.log.Error("event: cannot write the port policies file; the guards and isolations are in force, but a restart may not keep them", "event", EventStateNotSaved, "err", err)
		return err
	}
	return nil
}

// RestorePortPolicies reads the guards and isolations from the state dir
// and applies them in one Apply: the table the last daemon left is adopted
// (Apply changes only the difference). An unreadable file or entry is
// logged and skipped, never fatal.
func (m *Manager) RestorePortPolicies() error {
	if m.opt.PortPolicy == nil || m.opt.StateDir == "" {
		return nil
	}
	entries, err := store.LoadPortPolicies(m.opt.StateDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		entries = nil
	case err != nil:
		m.log.Error("port policies file unreadable: guards and isolations are not restored", "err", err)
		return nil
	}
	ovs := map[string]bool{}
	for _, e := range entries {
		ovs[e.Port] = m.onOVS(e.Port)
	}
	m.mu.Lock()
	for _, e := range entries {
		m.pp.ovs[e.Port] = ovs[e.Port]
		if e.Guard != nil {
			g, err := portpolicy.ParseGuard(e.Guard.MAC, e.Guard.IP, e.Guard.IPv6)
			if err != nil {
				m.log.Error("port policies file: guard skipped", "port", e.Port, "err", err)
			} else {
				m.pp.guards[e.Port] = guardEntry{addr: *e.Guard, guard: g}
			}
		}
		if e.AllowFrom != "" {
			iso, err := portpolicy.ParseIsolate(e.AllowFrom)
			if err != nil {
				m.log.Error("port policies file: isolation skipped", "port", e.Port, "err", err)
			} else {
				m.pp.isolations[e.Port] = iso
			}
		}
	}
	m.mu.Unlock()
	return m.applyPolicies()
}

func zeroReasons(reasons []string) map[string]uint64 {
	d := make(map[string]uint64, len(reasons))
	for _, r := range reasons {
		d[r] = 0
	}
	return d
}

// sumDrops adds the drops counted under every bridge side of port to d,
// for the reasons d has.
func sumDrops(d map[string]uint64, stats map[string]map[string]uint64, port string) {
	for _, n := range bridgeSides(port) {
		for r, c := range stats[n] {
			if _, ok := d[r]; ok {
				d[r] += c
			}
		}
	}
}

func guardStatus(port string, e guardEntry, stats map[string]map[string]uint64) api.Guard {
	g := api.Guard{Port: port, MAC: e.guard.MAC.String(), LearnedFrom: e.addr.LearnedFrom,
		Drops: zeroReasons(portpolicy.GuardReasons)}
	ips := make([]string, len(e.guard.IPs))
	for i, a := range e.guard.IPs {
		ips[i] = a.String()
	}
	g.IP = strings.Join(ips, ",")
	if e.guard.IPv6.IsValid() {
		g.IPv6 = e.guard.IPv6.String()
	}
	sumDrops(g.Drops, stats, port)
	return g
}

func isolationStatus(port string, iso portpolicy.Isolate, stats map[string]map[string]uint64) api.Isolation {
	i := api.Isolation{Port: port, AllowFrom: iso.AllowFrom.String(), Drops: zeroReasons(portpolicy.IsolateReasons)}
	sumDrops(i.Drops, stats, port)
	return i
}

// PolicyStatus lists the guards and isolations, sorted by port, with their
// drops; port "" means all. The counters are read without Manager.mu.
func (m *Manager) PolicyStatus(port string) ([]api.Guard, []api.Isolation, error) {
	guards, isos := []api.Guard{}, []api.Isolation{}
	if m.opt.PortPolicy == nil {
		return guards, isos, nil
	}
	m.mu.Lock()
	gs := map[string]guardEntry{}
	is := map[string]portpolicy.Isolate{}
	for p, e := range m.pp.guards {
		if port == "" || p == port {
			gs[p] = e
		}
	}
	for p, i := range m.pp.isolations {
		if port == "" || p == port {
			is[p] = i
		}
	}
	m.mu.Unlock()
	if len(gs)+len(is) == 0 {
		return guards, isos, nil
	}
	stats, err := m.policyStats()
	for p, e := range gs {
		guards = append(guards, guardStatus(p, e, stats))
	}
	for p, i := range is {
		isos = append(isos, isolationStatus(p, i, stats))
	}
	sort.Slice(guards, func(i, j int) bool { return guards[i].Port < guards[j].Port })
	sort.Slice(isos, func(i, j int) bool { return isos[i].Port < isos[j].Port })
	return guards, isos, err
}
