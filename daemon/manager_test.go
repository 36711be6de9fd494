package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/forward/fakedev"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

func newTestManager(t *testing.T, dir string, fb *fakesplice.Backend) *Manager {
	t.Helper()
	h := &hosttest.Host{Exists: fb.Exists, Tap: func(string) (forward.Device, error) { return fakedev.New(4), nil }}
	m := NewWithOptions(nil, Options{StateDir: dir, PendingTTL: time.Hour, Host: h}, fb)
	t.Cleanup(func() { m.Close() })
	return m
}

// testHost is m's fake host, for a test to set its clock, its link events
// or its guard learning before it drives m.
func testHost(m *Manager) *hosttest.Host { return m.host.(*hosttest.Host) }

func mustStatus(t *testing.T, m *Manager, port string) api.Quarantine {
	t.Helper()
	st, err := m.Status(port)
	if err != nil {
		t.Fatalf("status %s: %v", port, err)
	}
	return st.Quarantines[0]
}

func TestPendingQuarantineFollowsThePort(t *testing.T) {
	fb := fakesplice.New()
	m := newTestManager(t, t.TempDir(), fb)
	req := api.LimitFlags{"pps": "5000"}
	if _, err := quarantineFlags(m, "vm-7", req, false); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "--pending") {
		t.Fatalf("quarantine of a missing port without --pending: %v", err)
	}
	q, err := quarantineFlags(m, "vm-7", req, true)
	if err != nil || q.State != StatePending || q.Expires == nil {
		t.Fatalf("quarantine --pending: %+v, %v", q, err)
	}
	// The port appears, but on no bridge yet: still pending.
	fb.Ports["vm-7"] = false
	m.PortAppeared("vm-7")
	if s := mustStatus(t, m, "vm-7"); s.State != StatePending {
		t.Fatalf("port on no bridge: state %s, want pending", s.State)
	}
	fb.Ports["vm-7"] = true
	m.PortAppeared("vm-7")
	if s := mustStatus(t, m, "vm-7"); s.State != StateActive || s.Backend != "fake" {
		t.Fatalf("port back on a bridge: %+v", s)
	}
	if *mustStatus(t, m, "vm-7").Directions.FromVM.Limits.PPS != 5000 {
		t.Fatal("limits lost on the way")
	}
	// The VM stops: the splice goes, the quarantine waits.
	delete(fb.Ports, "vm-7")
	m.PortGone("vm-7")
	if s := mustStatus(t, m, "vm-7"); s.State != StatePending || fb.Spliced("vm-7") {
		t.Fatalf("after the port vanished: %+v, spliced %v", s, fb.Spliced("vm-7"))
	}
	// Tick re-applies it when the port is back (a missed event).
	fb.Ports["vm-7"] = true
	m.Tick(time.Now())
	if s := mustStatus(t, m, "vm-7"); s.State != StateActive {
		t.Fatalf("Tick did not re-apply: %+v", s)
	}
	// Pending ones expire.
	delete(fb.Ports, "vm-7")
	m.PortGone("vm-7")
	m.Tick(time.Now().Add(2 * time.Hour))
	if _, err := m.Status("vm-7"); err == nil {
		t.Fatal("pending quarantine did not expire")
	}
	// Release of a pending quarantine is accepted.
	if _, err := quarantineFlags(m, "vm-8", req, true); err != nil {
		t.Fatal(err)
	}
	if err := m.Release("vm-8"); err != nil {
		t.Fatalf("release of a pending quarantine: %v", err)
	}
}

// restart simulates kill -9: the first manager is abandoned (its splices
// stay), and a new one restores from dir and the plumbing.
func restart(t *testing.T, dir string, fb *fakesplice.Backend) *Manager {
	t.Helper()
	m := newTestManager(t, dir, fb)
	if err := m.Restore(); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return m
}

func TestRestoreAdoptsWithTheSameLimits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state func(dir string) // what happens to the state file while no daemon runs
		from  string
	}{
		{"state file", func(string) {}, "state"},
		{"state file deleted", func(dir string) { os.Remove(filepath.Join(dir, store.StateFile)) }, "plumbing"},
		{"state file corrupt", func(dir string) {
			p := filepath.Join(dir, store.StateFile)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), "5000", "9999", 1)), 0o600)
		}, "plumbing"},
		{"state file garbage", func(dir string) { os.WriteFile(filepath.Join(dir, store.StateFile), []byte("{not json"), 0o600) }, "plumbing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fb := fakesplice.New("vm-1", "vm-2")
			m1 := newTestManager(t, dir, fb)
			if _, err := quarantineFlags(m1, "vm-1", api.LimitFlags{"pps": "5000", "to-vm-bps": "16mbit", "bypass": "22"}, false); err != nil {
				t.Fatal(err)
			}
			if _, err := quarantineFlags(m1, "vm-9", api.LimitFlags{"pps": "100"}, true); err != nil {
				t.Fatal(err)
			}
			tc.state(dir)
			m2 := restart(t, dir, fb)
			if fb.Splices() != 1 {
				t.Errorf("restart spliced again: %d splices, want the 1 adopted", fb.Splices())
			}
			q := mustStatus(t, m2, "vm-1")
			if q.State != StateActive || *q.Directions.FromVM.Limits.PPS != 5000 ||
				*q.Directions.ToVM.Limits.BitsPerSecond != 16_000_000 || len(q.Bypass.Ports) != 1 {
				t.Errorf("restored from the %s: %+v", tc.from, q)
			}
			_, err := m2.Status("vm-9")
			if tc.from == "state" && err != nil {
				t.Errorf("pending quarantine lost across restart: %v", err)
			}
			if tc.from != "state" && err == nil {
				t.Errorf("a pending quarantine appeared from nowhere")
			}
			if tc.name == "state file corrupt" || tc.name == "state file garbage" {
				if m, _ := filepath.Glob(filepath.Join(dir, store.StateFile+".corrupt-*")); len(m) != 1 {
					t.Errorf("corrupt state file not set aside: %v", m)
				}
			}
			// The next release still restores the port.
			if err := m2.Release("vm-1"); err != nil || fb.Spliced("vm-1") {
				t.Errorf("release after restore: %v, spliced %v", err, fb.Spliced("vm-1"))
			}
		})
	}
}

func TestRestoreWithoutIntentUsesConservativeDefault(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1")
	m1 := newTestManager(t, dir, fb)
	if _, err := quarantineFlags(m1, "vm-1", api.LimitFlags{"pps": "5000"}, false); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, store.StateFile))
	sp, _ := fb.Adopt("vm-1")
	sp.(interface{ SetIntent(string) error }).SetIntent("")
	m2 := restart(t, dir, fb)
	if q := mustStatus(t, m2, "vm-1"); *q.Directions.FromVM.Limits.PPS != 10000 {
		t.Errorf("no recoverable limits: got %+v, want the conservative 10000 pps", q.Directions.FromVM.Limits)
	}
}

func TestRestoreRemovesOrphansOnlyWithATrustedState(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1", "vm-2")
	m1 := newTestManager(t, dir, fb)
	for _, p := range []string{"vm-1", "vm-2"} {
		if _, err := quarantineFlags(m1, p, api.LimitFlags{"pps": "5000"}, false); err != nil {
			t.Fatal(err)
		}
	}
	// vm-2 was released in the state file but its splice survived (a
	// crash half way through a release).
	saved, _, err := store.LoadQuarantines(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := saved["vm-2"]
	e.State = stateReleasing
	store.SaveQuarantines(dir, []store.Quarantine{saved["vm-1"], e}, time.Now())
	m2 := restart(t, dir, fb)
	if fb.Spliced("vm-2") {
		t.Error("half-released splice not removed")
	}
	if _, err := m2.Status("vm-2"); err == nil {
		t.Error("half-released quarantine came back")
	}
	if !fb.Spliced("vm-1") || mustStatus(t, m2, "vm-1").State != StateActive {
		t.Error("vm-1 lost")
	}
}

func TestIntentRoundTrip(t *testing.T) {
	for _, req := range []api.LimitFlags{
		{"pps": "5000"},
		{"pps": "2500", "bps": "16mbit", "burst": "30", "burst-bytes": "4kb", "to-vm-pps": "100",
			"bypass-pps": "none", "to-vm-bypass-bps": "1mbit", "control-pps": "50", "bypass": "22,2222",
			"bypass-outbound": "true", "fail": "closed"},
		{"to-vm-bps": "1gbit", "bypass": "none"},
		{"pps": "2000", "mode": "shape", "delay": "200ms", "queue-bytes": "1mb", "to-vm-pps": "10", "to-vm-mode": "shape", "to-vm-queue-time": "1s"},
	} {
		spec, err := applyFlags(intent.New(), req, false)
		if err != nil {
			t.Fatal(err)
		}
		got, err := intent.Parse(spec.Intent())
		if err != nil {
			t.Fatalf("intent.Parse(%q): %v", spec.Intent(), err)
		}
		if got.Intent() != spec.Intent() {
			t.Errorf("round trip: %q became %q", spec.Intent(), got.Intent())
		}
		if len(spec.Intent()) > 200 {
			t.Errorf("intent %q longer than a backend must keep", spec.Intent())
		}
	}
}

// A state directory that others can write is not trusted: Restore refuses
// to start, and splices nothing, whatever the state file says.
func TestRestoreRefusesAnUntrustedStateDir(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, dir, fb)
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "1"}, false); err != nil {
		t.Fatal(err)
	}
	m.Close()
	fb2 := fakesplice.New("vm-1")
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	m2 := newTestManager(t, dir, fb2)
	err := m2.Restore()
	if err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Fatalf("Restore with a world-writable state dir: %v", err)
	}
	if fb2.Splices() != 0 || len(m2.Ports()) != 0 {
		t.Errorf("an untrusted state dir changed something: %d splices, ports %v", fb2.Splices(), m2.Ports())
	}
}
