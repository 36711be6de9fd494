// Package tenants holds the daemon's percentile-quota tenants (issue 8):
// the registry by name and by port, and beside each tenant's quota.Account
// what the daemon keeps of it (its ports, since when, what its last saved
// snapshot holds, why its ports are not spliced yet). It does no I/O and
// has no lock: the manager guards a Set with its mutex, splices the ports
// through their owners and writes the files (package daemon/store and
// quota.Store).
package tenants

import (
	"slices"
	"sort"
	"time"

	"github.com/shaperd/shaperd/quota"
)

// Set is the tenants, by name and by port. The zero value is empty and
// ready.
type Set struct {
	byName map[string]*Tenant
	byPort map[string]*Port
	seeds  uint64 // hooks handed out, for their seeds
}

// Tenant is one quota tenant.
type Tenant struct {
	Cfg   quota.Config
	Acct  *quota.Account
	Since time.Time
	Ports []*Port // in Cfg.Ports order

	// SaveErr is the last save's error; the next tick tries again.
	SaveErr error
	// StartMeters are the ports' counters when the samples were restored
	// at a start, until the forwarders run.
	StartMeters []quota.PortMeter

	// saved is what the last snapshot written holds, so that a snapshot
	// taken for another reason (metrics) is saved if it holds more.
	saved []laneKey
}

// Port is one port of a tenant; its owner splices it for the tenant while
// no quarantine has it.
type Port struct {
	Tenant *Tenant
	Name   string
	// RetryAt is when a port that could not be spliced is tried again;
	// LastErr is why, logged once per distinct error.
	RetryAt time.Time
	LastErr string
}

// Add registers t and its ports; the caller has checked that neither its
// name nor its ports are taken.
func (s *Set) Add(t *Tenant) {
	if s.byName == nil {
		s.byName, s.byPort = map[string]*Tenant{}, map[string]*Port{}
	}
	s.byName[t.Cfg.Tenant] = t
	for _, p := range t.Ports {
		s.byPort[p.Name] = p
	}
}

// Remove unregisters t and those of its ports that are still its own.
func (s *Set) Remove(t *Tenant) {
	delete(s.byName, t.Cfg.Tenant)
	for _, p := range t.Ports {
		if s.byPort[p.Name] == p {
			delete(s.byPort, p.Name)
		}
	}
}

// Tenant returns the tenant called name.
func (s *Set) Tenant(name string) (*Tenant, bool) {
	t, ok := s.byName[name]
	return t, ok
}

// Port returns the tenant port called name.
func (s *Set) Port(name string) (*Port, bool) {
	p, ok := s.byPort[name]
	return p, ok
}

// Names are the tenants' names, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// PortNames are the tenant ports' names, sorted.
func (s *Set) PortNames() []string {
	names := make([]string, 0, len(s.byPort))
	for n := range s.byPort {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Len is the number of tenants.
func (s *Set) Len() int { return len(s.byName) }

// NextSeed seeds a quota hook's random source: distinct per pipe, and per
// daemon start (started).
func (s *Set) NextSeed(started time.Time) uint64 {
	s.seeds++
	return uint64(started.UnixNano()) ^ s.seeds*0x9E3779B97F4A7C15
}

// laneKey is what a lane snapshot holds that a restart must not lose: its
// period, how many intervals it closed, and whether the open one bursts.
type laneKey struct {
	period int64
	closed int
	burst  bool
}

func keyOf(s quota.Snapshot) []laneKey {
	out := make([]laneKey, len(s.Lanes))
	for i, l := range s.Lanes {
		out[i] = laneKey{l.PeriodStart.UnixNano(), len(l.Samples), l.Burst}
	}
	return out
}

// Saved notes that s, a snapshot of t, is written.
func (t *Tenant) Saved(s quota.Snapshot) { t.saved = keyOf(s) }

// Unsaved reports whether s, a snapshot of t, holds something the last one
// written does not.
func (t *Tenant) Unsaved(s quota.Snapshot) bool { return !slices.Equal(keyOf(s), t.saved) }

// All are the tenants, sorted by name.
func (s *Set) All() []*Tenant {
	out := make([]*Tenant, 0, len(s.byName))
	for _, n := range s.Names() {
		out = append(out, s.byName[n])
	}
	return out
}
