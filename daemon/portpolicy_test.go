package daemon

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// fakePolicer records what the daemon applies, and fails the test if Apply
// or Stats runs under Manager.mu.
type fakePolicer struct {
	t       *testing.T
	m       *Manager
	mu      sync.Mutex
	applied map[string]portpolicy.Policy
	applies int
	fail    error
	stats   map[string]map[string]uint64
}

func (f *fakePolicer) notUnderMu() { assertNotUnderMu(f.t, f.m, "portpolicy") }

func (f *fakePolicer) Apply(d map[string]portpolicy.Policy) error {
	f.notUnderMu()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.applied = maps.Clone(d)
	f.applies++
	return nil
}

func (f *fakePolicer) Stats() (map[string]map[string]uint64, error) {
	f.notUnderMu()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats, nil
}

func newPolicyManager(t *testing.T, dir string, learn guard.Config) (*Manager, *fakePolicer) {
	t.Helper()
	fp := &fakePolicer{t: t}
	h := &hosttest.Host{
		Kind: func(n string) (string, error) {
			switch n {
			case "vm-1", "vm-2", "vm-ovs":
				return "veth", nil
			case "br0":
				return "bridge", nil
			}
			return "", errors.New("no such link")
		},
		Learn: func(string, bool) (guard.Config, []string) { return learn, []string{"libvirt", "bridge"} },
	}
	m := NewWithOptions(nil, Options{StateDir: dir, Host: h, PortPolicy: fp}, fakesplice.New("vm-1", "vm-2"))
	fp.m = m
	t.Cleanup(func() { m.Close() })
	return m, fp
}

// TestPortPolicySetRemoveRestore: guard and isolate set what the engine
// applies (under the port's and its splice's bridge-side names), refuse
// bad input with ErrUsage before anything is applied, persist, and are
// restored by a new daemon in one Apply; a refused Apply changes nothing.
func TestPortPolicySetRemoveRestore(t *testing.T) {
	dir := t.TempDir()
	mac, _ := net.ParseMAC("02:c6:12:00:00:11")
	learned := guard.Config{MACs: []net.HardwareAddr{mac}, IPs: []netip.Prefix{netip.MustParsePrefix("198.18.0.11/32"), netip.MustParsePrefix("2001:2::11/128")}}
	m, fp := newPolicyManager(t, dir, learned)

	for _, c := range []struct {
		name string
		do   func() error
	}{
		{"bad mac", func() error {
			_, err := m.SetGuard(api.GuardRequest{Port: "vm-1", MAC: "zz", IP: "198.18.0.11"})
			return err
		}},
		{"unknown port", func() error {
			_, err := m.SetGuard(api.GuardRequest{Port: "nosuch", MAC: "02:c6:12:00:00:11", IP: "198.18.0.11"})
			return err
		}},
		{"bridge", func() error { _, err := m.SetIsolate("br0", "198.18.0.0/24"); return err }},
		{"not bridged", func() error { _, err := m.SetIsolate("vm-ovs", "198.18.0.0/24"); return err }},
		{"splice link", func() error { _, err := m.SetIsolate("shq12345678n", "198.18.0.0/24"); return err }},
		{"bad cidr", func() error { _, err := m.SetIsolate("vm-1", "198.18.0.0/40"); return err }},
	} {
		if err := c.do(); !errors.Is(err, ErrUsage) {
			t.Errorf("%s: %v, want ErrUsage", c.name, err)
		}
	}
	if err := m.RemoveGuard("vm-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemoveGuard of nothing: %v, want ErrNotFound", err)
	}
	if fp.applies != 0 {
		t.Fatalf("bad input applied %d times", fp.applies)
	}

	g, err := m.SetGuard(api.GuardRequest{Port: "vm-1"}) // learned
	if err != nil || g.MAC != "02:c6:12:00:00:11" || g.IP != "198.18.0.11" || len(g.LearnedFrom) != 2 {
		t.Fatalf("SetGuard learned: %+v %v", g, err)
	}
	if _, err := m.SetIsolate("vm-1", "198.18.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetIsolate("vm-2", "198.18.1.0/24"); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(bridgeSides("vm-1"), bridgeSides("vm-2")...) {
		if _, ok := fp.applied[n]; !ok {
			t.Errorf("%s not applied: %v", n, fp.applied)
		}
	}
	if p := fp.applied["vm-1"]; p.Guard == nil || p.Isolate == nil || fp.applied["vm-2"].Guard != nil {
		t.Fatalf("applied: %+v", fp.applied)
	}

	// A refused Apply changes nothing.
	fp.fail = errors.New("netlink says no")
	if err := m.RemoveIsolate("vm-2"); err == nil {
		t.Fatal("RemoveIsolate with a failing engine succeeded")
	}
	fp.fail = nil
	_, nt := bridgeSides("vm-2")[0], bridgeSides("vm-2")[1]
	fp.stats = map[string]map[string]uint64{"vm-2": {"isolate_udp": 3}, nt: {"isolate_udp": 4}}
	gs, isos, err := m.PolicyStatus("")
	if err != nil || len(gs) != 1 || len(isos) != 2 || isos[1].Port != "vm-2" || isos[1].Drops["isolate_udp"] != 7 || isos[1].Drops["isolate_new_from_vm"] != 0 {
		t.Fatalf("status: %+v %+v %v", gs, isos, err)
	}

	// A new daemon restores all three in one Apply.
	m.Close()
	m2, fp2 := newPolicyManager(t, dir, guard.Config{})
	if err := m2.RestorePortPolicies(); err != nil {
		t.Fatal(err)
	}
	if fp2.applies != 1 || !maps.EqualFunc(fp.applied, fp2.applied, func(a, b portpolicy.Policy) bool {
		return (a.Guard == nil) == (b.Guard == nil) && (a.Isolate == nil) == (b.Isolate == nil) &&
			(a.Guard == nil || a.Guard.String() == b.Guard.String()) && (a.Isolate == nil || *a.Isolate == *b.Isolate)
	}) {
		t.Fatalf("restored in %d applies: %+v, want %+v", fp2.applies, fp2.applied, fp.applied)
	}
	if err := m2.RemoveGuard("vm-1"); err != nil {
		t.Fatal(err)
	}
	if err := m2.RemoveIsolate("vm-1"); err != nil {
		t.Fatal(err)
	}
	if err := m2.RemoveIsolate("vm-2"); err != nil {
		t.Fatal(err)
	}
	if len(fp2.applied) != 0 {
		t.Fatalf("after removing everything: %v", fp2.applied)
	}
}

// ovsFake is a fake splice backend that calls itself "ovs".
type ovsFake struct{ *fakesplice.Backend }

func (ovsFake) Name() string { return "ovs" }

// fakeOVSPolicer is a fakePolicer with Check.
type fakeOVSPolicer struct {
	fakePolicer
	checkErr error
	checks   int
}

func (f *fakeOVSPolicer) Check(port string, p portpolicy.Policy) error {
	f.notUnderMu()
	f.checks++
	return f.checkErr
}

// TestPortPolicyOVSRouted: an Open vSwitch port's guard and isolation go
// to the OpenFlow engine under the port's own name (not to nftables, not
// under its splice's names); one the engine cannot install (Check) is a
// usage error before any Apply; without an OpenFlow engine an OVS port is
// refused; a restart routes it again; its drops show in status; removing
// it applies an empty OpenFlow set.
func TestPortPolicyOVSRouted(t *testing.T) {
	dir := t.TempDir()
	fp := &fakePolicer{t: t}
	fo := &fakeOVSPolicer{fakePolicer: fakePolicer{t: t}}
	h := &hosttest.Host{Kind: func(n string) (string, error) { return "veth", nil }}
	newM := func(ovs OVSPortPolicer) *Manager {
		m := NewWithOptions(nil, Options{StateDir: dir, Host: h, PortPolicy: fp, OVSPortPolicy: ovs},
			fakesplice.New("vm-1"), ovsFake{fakesplice.New("vm-ovs")})
		fp.m, fo.m = m, m
		t.Cleanup(func() { m.Close() })
		return m
	}
	m := newM(fo)
	fo.checkErr = errors.New("no MAC")
	if _, err := m.SetIsolate("vm-ovs", "198.18.0.0/24"); !errors.Is(err, ErrUsage) || fo.applies+fp.applies != 0 {
		t.Fatalf("SetIsolate refused by Check: %v, %d applies", err, fo.applies+fp.applies)
	}
	fo.checkErr = nil
	if _, err := m.SetGuard(api.GuardRequest{Port: "vm-ovs", MAC: "02:c6:12:00:00:11", IP: "198.18.0.11"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetIsolate("vm-ovs", "198.18.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetIsolate("vm-1", "198.18.1.0/24"); err != nil {
		t.Fatal(err)
	}
	if p, ok := fo.applied["vm-ovs"]; !ok || len(fo.applied) != 1 || p.Guard == nil || p.Isolate == nil {
		t.Fatalf("OpenFlow engine applied %+v", fo.applied)
	}
	if _, ok := fp.applied["vm-ovs"]; ok || fp.applied["vm-1"].Isolate == nil {
		t.Fatalf("nftables engine applied %+v", fp.applied)
	}
	fo.stats = map[string]map[string]uint64{"vm-ovs": {"guard_ip": 4, "isolate_udp": 2}}
	gs, isos, err := m.PolicyStatus("vm-ovs")
	if err != nil || len(gs) != 1 || gs[0].Drops["guard_ip"] != 4 || len(isos) != 1 || isos[0].Drops["isolate_udp"] != 2 {
		t.Fatalf("status: %+v %+v %v", gs, isos, err)
	}

	// A restart routes it again, in one Apply each.
	m.Close()
	fo2 := &fakeOVSPolicer{fakePolicer: fakePolicer{t: t}}
	m2 := newM(fo2)
	if err := m2.RestorePortPolicies(); err != nil {
		t.Fatal(err)
	}
	if fo2.applies != 1 || len(fo2.applied) != 1 || fo2.applied["vm-ovs"].Guard == nil {
		t.Fatalf("restored: %d applies, %+v", fo2.applies, fo2.applied)
	}
	if err := m2.RemoveGuard("vm-ovs"); err != nil {
		t.Fatal(err)
	}
	if err := m2.RemoveIsolate("vm-ovs"); err != nil {
		t.Fatal(err)
	}
	if len(fo2.applied) != 0 {
		t.Fatalf("after removal the OpenFlow engine has %+v", fo2.applied)
	}

	// Without an OpenFlow engine, an OVS port is refused.
	m2.Close()
	m3 := newM(nil)
	if _, err := m3.SetGuard(api.GuardRequest{Port: "vm-ovs", MAC: "02:c6:12:00:00:11", IP: "198.18.0.11"}); !errors.Is(err, ErrUsage) {
		t.Fatalf("no OpenFlow engine: %v", err)
	}
}
