package daemon

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/baseline"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// fakeBaseline records what the daemon applies, and checks that no Apply
// or Stats runs under Manager.mu.
type fakeBaseline struct {
	t       *testing.T
	m       *Manager
	mu      sync.Mutex
	applied map[string]baseline.Limits
	applies int
	fail    error
	stats   map[string]map[baseline.Reason]baseline.Counter
}

func (f *fakeBaseline) underLock() { assertNotUnderMu(f.t, f.m, "baseline") }

// assertNotUnderMu fails t if m.mu is held when an engine (what) is
// called: its netlink work must never hold up a status read.
func assertNotUnderMu(t *testing.T, m *Manager, what string) {
	if m == nil {
		return
	}
	if !m.mu.TryLock() {
		t.Errorf("%s called with Manager.mu held", what)
		return
	}
	m.mu.Unlock()
}

func (f *fakeBaseline) Apply(d map[string]baseline.Limits) error {
	f.underLock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.applied = maps.Clone(d)
	f.applies++
	return nil
}

func (f *fakeBaseline) Stats() (map[string]map[baseline.Reason]baseline.Counter, error) {
	f.underLock()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats, nil
}

func (f *fakeBaseline) ports() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.applied))
}

func newBaselineManager(t *testing.T, dir string, links *[]string) (*Manager, *fakeBaseline) {
	t.Helper()
	fb := &fakeBaseline{t: t}
	h := &hosttest.Host{LinkNames: func() ([]string, error) { return slices.Clone(*links), nil },
		Exists: func(n string) bool { return slices.Contains(*links, n) }}
	m := NewWithOptions(nil, Options{StateDir: dir, Host: h, Baseline: fb})
	fb.m = m
	t.Cleanup(func() { m.Close() })
	return m, fb
}

// withSplice is port plus its splice's bridge-side names, sorted.
func withSplice(ports ...string) []string {
	var out []string
	for _, p := range ports {
		_, nt := splice.TapNames(p)
		fb, _ := splice.FallbackNames(p)
		out = append(out, p, nt, fb)
	}
	slices.Sort(out)
	return out
}

func TestBaselineConfigFollowsPorts(t *testing.T) {
	_, nt := splice.TapNames("vm-0")
	links := []string{"vm-1", "vm-2", "eth0", nt}
	m, fb := newBaselineManager(t, t.TempDir(), &links)
	rules := []BaselineRule{
		{Pattern: "vm-1", Limits: api.BaselineLimits{PPS: "1000"}},
		{Pattern: "vm-*", Limits: api.BaselineLimits{ToVMNewConnPerSource: "10/min"}},
		{Pattern: "*", Limits: api.BaselineLimits{PPS: "7"}}, // not a splice's taps
	}
	if err := m.RestoreBaselines(rules); err != nil {
		t.Fatal(err)
	}
	if got, want := fb.ports(), withSplice("eth0", "vm-1", "vm-2"); !slices.Equal(got, want) {
		t.Fatalf("applied %v, want %v", got, want)
	}
	// The first matching rule applies.
	if l := fb.applied["vm-1"]; l.PPSFromVM.Count != 1000 || !l.NewPerSourceToVM.IsZero() {
		t.Fatalf("vm-1: %v, want the first rule's", l)
	}
	if l := fb.applied["vm-2"]; l.NewPerSourceToVM != baseline.PerMinute(10, 10) {
		t.Fatalf("vm-2: %v, want 10/min burst 10 per source", l)
	}
	// A port appears, then goes.
	links = append(links, "vm-3")
	m.PortAppeared("vm-3")
	if got, want := fb.ports(), withSplice("eth0", "vm-1", "vm-2", "vm-3"); !slices.Equal(got, want) {
		t.Fatalf("after vm-3 appeared: %v, want %v", got, want)
	}
	// A change of a named port applies the same set again (the kernel's
	// index maps follow its ifindex); a link nothing names applies nothing.
	n := fb.applies
	m.PortAppeared("vm-3")
	m.PortAppeared("eth0")
	if fb.applies != n+2 {
		t.Fatalf("%d applies for two events of named ports, want 2", fb.applies-n)
	}
	if got, want := fb.ports(), withSplice("eth0", "vm-1", "vm-2", "vm-3"); !slices.Equal(got, want) {
		t.Fatalf("after link changes: %v, want %v", got, want)
	}
	_, other := splice.TapNames("vm-9")
	m.PortAppeared(other)
	if fb.applies != n+2 {
		t.Fatalf("an event of a link nothing names applied")
	}
	links = links[:len(links)-1]
	m.PortGone("vm-3")
	if got, want := fb.ports(), withSplice("eth0", "vm-1", "vm-2"); !slices.Equal(got, want) {
		t.Fatalf("after vm-3 went: %v, want %v", got, want)
	}
	st, err := m.Status("")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Baselines) != 3 || st.Baselines[1].Port != "vm-1" || st.Baselines[1].Origin != api.BaselineFromConfig || st.Baselines[1].Pattern != "vm-1" {
		t.Fatalf("status baselines: %+v", st.Baselines)
	}
	// Removing the rules removes everything.
	if err := m.ConfigureBaselines(nil); err != nil || len(fb.ports()) != 0 {
		t.Fatalf("no rules: %v, applied %v", err, fb.ports())
	}
}

func TestBaselineCLIWinsAndPersists(t *testing.T) {
	dir := t.TempDir()
	links := []string{"vm-1"}
	m, fb := newBaselineManager(t, dir, &links)
	rules := []BaselineRule{{Pattern: "vm-*", Limits: api.BaselineLimits{PPS: "1000"}}}
	if err := m.RestoreBaselines(rules); err != nil {
		t.Fatal(err)
	}
	b, err := m.SetBaseline("vm-1", api.BaselineLimits{NewConnRate: "50:100"})
	if err != nil || b.Origin != api.BaselineFromCLI {
		t.Fatalf("set: %+v, %v", b, err)
	}
	if l := fb.applied["vm-1"]; l.NewTCPFromVM != baseline.PerSecond(50, 100) || l.NewUDPFromVM != l.NewTCPFromVM || !l.PPSFromVM.IsZero() {
		t.Fatalf("vm-1 after set: %v, want the command line's only", l)
	}
	// A port that does not exist yet is named at once (rules match by name).
	if _, err := m.SetBaseline("vm-9", api.BaselineLimits{ToVMPPS: "500"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(fb.ports(), "vm-9") {
		t.Fatalf("vm-9 not applied: %v", fb.ports())
	}
	// Bad input: a usage error, nothing changed.
	n := fb.applies
	for _, bad := range []api.BaselineLimits{{}, {PPS: "0"}, {PPS: "10/week"}, {NewConnRate: "x"}, {PPS: "10:0"}} {
		if _, err := m.SetBaseline("vm-1", bad); !errors.Is(err, ErrUsage) {
			t.Errorf("set %+v: %v, want a usage error", bad, err)
		}
	}
	if _, err := m.SetBaseline("a/b", api.BaselineLimits{PPS: "10"}); !errors.Is(err, ErrUsage) {
		t.Errorf("bad port name: %v", err)
	}
	if fb.applies != n {
		t.Fatalf("bad input applied %d times", fb.applies-n)
	}
	// The file holds the command line's baselines, not the config's.
	saved, err := store.LoadBaselines(dir)
	if err != nil || len(saved) != 2 || saved[0].Port != "vm-1" || saved[0].Limits.NewConnRate != "50:100" {
		t.Fatalf("saved: %+v, %v", saved, err)
	}
	// A restart restores them with the config's rules, in one Apply.
	m.Close()
	m2, fb2 := newBaselineManager(t, dir, &links)
	if err := m2.RestoreBaselines(rules); err != nil {
		t.Fatal(err)
	}
	if fb2.applies != 1 {
		t.Fatalf("restore applied %d times, want 1 (counters of a port left out in between would go)", fb2.applies)
	}
	if l := fb2.applied["vm-1"]; l.NewTCPFromVM != baseline.PerSecond(50, 100) {
		t.Fatalf("vm-1 after restart: %v", l)
	}
	st, _ := m2.Status("")
	if len(st.Baselines) != 2 || st.Baselines[0].Origin != api.BaselineFromCLI || st.Baselines[1].Port != "vm-9" {
		t.Fatalf("status after restart: %+v", st.Baselines)
	}
	// Removing the command line's baseline: the pattern applies again.
	if err := m2.RemoveBaseline("vm-1"); err != nil {
		t.Fatal(err)
	}
	if l := fb2.applied["vm-1"]; l.PPSFromVM.Count != 1000 || !l.NewTCPFromVM.IsZero() {
		t.Fatalf("vm-1 after remove: %v, want the pattern's", l)
	}
	// Removing one that does not exist: not found, with the reason.
	if err := m2.RemoveBaseline("vm-1"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `pattern "vm-*"`) {
		t.Fatalf("remove again: %v, want not found naming the pattern", err)
	}
	if err := m2.RemoveBaseline("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove unknown: %v", err)
	}
	if saved, _ := store.LoadBaselines(dir); len(saved) != 1 || saved[0].Port != "vm-9" {
		t.Fatalf("saved after remove: %+v", saved)
	}
}

func TestBaselineApplyFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	links := []string{}
	m, fb := newBaselineManager(t, dir, &links)
	fb.fail = errors.New("netlink: refused")
	if _, err := m.SetBaseline("vm-1", api.BaselineLimits{PPS: "10"}); err == nil {
		t.Fatal("set succeeded though Apply failed")
	}
	st, _ := m.Status("")
	if len(st.Baselines) != 0 {
		t.Fatalf("status lists a baseline that failed: %+v", st.Baselines)
	}
	if _, err := os.Stat(filepath.Join(dir, store.BaselinesFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("baselines file written for a failed set: %v", err)
	}
}

// A quarantine splices the port: the net tap (and the fail-open fallback)
// takes its place in the bridge, so they carry its limits, and their drops
// are counted under the port.
func TestBaselineFollowsTheSplice(t *testing.T) {
	links := []string{"vm-1"}
	m, fb := newBaselineManager(t, t.TempDir(), &links)
	if _, err := m.SetBaseline("vm-1", api.BaselineLimits{ToVMNewConnPerSource: "10/min"}); err != nil {
		t.Fatal(err)
	}
	_, nt := splice.TapNames("vm-1")
	fbk, _ := splice.FallbackNames("vm-1")
	if fb.applied[nt] != fb.applied["vm-1"] || fb.applied[fbk] != fb.applied["vm-1"] {
		t.Fatalf("net tap %s / fallback %s do not carry vm-1's limits: %v", nt, fbk, fb.applied)
	}
	fb.stats = map[string]map[baseline.Reason]baseline.Counter{
		"vm-1": {baseline.ReasonPerSourceToVM: {Packets: 5}},
		nt:     {baseline.ReasonPerSourceToVM: {Packets: 7}, baseline.ReasonPPSToVM: {Packets: 1}},
	}
	st, err := m.Status("")
	if err != nil {
		t.Fatal(err)
	}
	d := st.Baselines[0].Drops
	if d["per_source_to_vm"] != 12 || d["pps_to_vm"] != 1 || d["new_tcp_from_vm"] != 0 || len(d) != len(baseline.Reasons) {
		t.Fatalf("drops %v: want the port's and its net tap's summed, every reason present", d)
	}
}

func TestCheckBaselineRules(t *testing.T) {
	for _, c := range []struct {
		r    BaselineRule
		want string
	}{
		{BaselineRule{Pattern: "", Limits: api.BaselineLimits{PPS: "1"}}, "baselines.0.port: empty"},
		{BaselineRule{Pattern: "vm[", Limits: api.BaselineLimits{PPS: "1"}}, "malformed pattern"},
		{BaselineRule{Pattern: "vm-*"}, "no limit given"},
		{BaselineRule{Pattern: "vm-*", Limits: api.BaselineLimits{ToVMPPS: "5/fortnight"}}, "--to-vm-pps"},
	} {
		err := CheckBaselineRules([]BaselineRule{c.r})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.r, err, c.want)
		}
	}
	m := NewWithOptions(nil, Options{Host: &hosttest.Host{}})
	defer m.Close()
	if err := m.ConfigureBaselines([]BaselineRule{{Pattern: "vm-*", Limits: api.BaselineLimits{PPS: "1"}}}); !errors.Is(err, ErrNoBaseline) {
		t.Fatalf("rules without an engine: %v", err)
	}
}

// TestBaselineRefusesOVSPort: the baseline's nftables bridge rules do not
// see Open vSwitch ports: a baseline on one is a usage error that applies
// nothing; a Linux bridge port (or one that does not exist yet) is
// accepted.
func TestBaselineRefusesOVSPort(t *testing.T) {
	fb := &fakeBaseline{t: t}
	m := NewWithOptions(nil, Options{StateDir: t.TempDir(), Host: &hosttest.Host{}, Baseline: fb},
		fakesplice.New("vm-1"), ovsFake{fakesplice.New("vm-ovs")})
	fb.m = m
	t.Cleanup(func() { m.Close() })
	if _, err := m.SetBaseline("vm-ovs", api.BaselineLimits{PPS: "1000"}); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "Open vSwitch") {
		t.Fatalf("baseline on an OVS port: %v, want ErrUsage naming Open vSwitch", err)
	}
	if fb.applies != 0 {
		t.Fatalf("a refused baseline applied %d times", fb.applies)
	}
	for _, port := range []string{"vm-1", "vm-later"} {
		if _, err := m.SetBaseline(port, api.BaselineLimits{PPS: "1000"}); err != nil {
			t.Fatalf("baseline on %s: %v", port, err)
		}
	}
}
