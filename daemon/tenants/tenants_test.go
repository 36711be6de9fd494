package tenants

import (
	"slices"
	"testing"
	"time"

	"github.com/shaperd/shaperd/quota"
)

func newTenant(name string, ports ...string) *Tenant {
	t := &Tenant{Cfg: quota.Config{Tenant: name, Ports: ports}}
	for _, p := range ports {
		t.Ports = append(t.Ports, &Port{Tenant: t, Name: p})
	}
	return t
}

// Remove takes out a tenant and only the ports that are still its own.
func TestSet(t *testing.T) {
	var s Set
	if _, ok := s.Tenant("a"); ok || s.Len() != 0 {
		t.Fatal("the zero Set is not empty")
	}
	a, b := newTenant("b-tenant", "vm-2", "vm-1"), newTenant("a-tenant", "vm-3")
	s.Add(a)
	s.Add(b)
	if !slices.Equal(s.Names(), []string{"a-tenant", "b-tenant"}) || !slices.Equal(s.PortNames(), []string{"vm-1", "vm-2", "vm-3"}) ||
		s.All()[0] != b {
		t.Fatalf("names %v ports %v", s.Names(), s.PortNames())
	}
	if p, ok := s.Port("vm-1"); !ok || p.Tenant != a {
		t.Fatalf("vm-1: %v %v", p, ok)
	}
	// vm-1 moves to another tenant before a is removed.
	c := newTenant("c-tenant", "vm-1")
	s.Add(c)
	s.Remove(a)
	if _, ok := s.Tenant("b-tenant"); ok {
		t.Error("b-tenant still there")
	}
	if p, ok := s.Port("vm-1"); !ok || p.Tenant != c {
		t.Errorf("vm-1 taken from its new tenant: %v %v", p, ok)
	}
	if _, ok := s.Port("vm-2"); ok {
		t.Error("vm-2 still there")
	}
	if s.NextSeed(time.Unix(1, 0)) == s.NextSeed(time.Unix(1, 0)) {
		t.Error("two hooks with one seed")
	}
}

// A snapshot is unsaved until one holding as much is saved.
func TestSaved(t *testing.T) {
	tn := newTenant("a", "vm-1")
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := quota.Snapshot{Lanes: []quota.LaneSnapshot{{PeriodStart: t0}}}
	if !tn.Unsaved(s) {
		t.Fatal("nothing saved yet")
	}
	tn.Saved(s)
	if tn.Unsaved(s) {
		t.Fatal("saved, still unsaved")
	}
	s.Lanes[0].Burst = true
	if !tn.Unsaved(s) {
		t.Fatal("a burst raised is not news")
	}
}
