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
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// Port names a switch's tools could read as something else, and limits
// too large to mean anything, are refused as usage errors (exit 2), and
// nothing is spliced.
func TestRefusesHostileValues(t *testing.T) {
	fb := fakesplice.New("vm-1", ".", "..", "-h", "--help")
	m := newTestManager(t, t.TempDir(), fb)
	for _, port := range []string{".", "..", "-h", "--help"} {
		if _, err := quarantineFlags(m, port, api.LimitFlags{"pps": "100"}, false); !errors.Is(err, ErrUsage) {
			t.Errorf("quarantine %q: %v, want a usage error", port, err)
		}
	}
	for _, c := range []struct{ flag, value, want string }{
		{"pps", "1e30", "at most 10000000 packets per second"},
		{"pps", "10000001", "at most 10000000"},
		{"to-vm-pps", "1e9", "at most 10000000"},
		{"syn-pps", "2e7", "at most 10000000"},
		{"bps", "101gbit", "at most 100gbit"},
		{"bps", "99999999tbit", "out of range"},
		{"burst", "10000001", "at most 10000000"},
		{"burst-bytes", "99999999999mb", "at most 1gb"},
		{"queue-bytes", "2gb", "at most 1gb"},
	} {
		_, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100", c.flag: c.value}, false)
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--%s %s: %v, want a usage error saying %q", c.flag, c.value, err, c.want)
		}
	}
	if fb.Splices() != 0 {
		t.Errorf("%d splices made", fb.Splices())
	}
	// The largest values accepted are accepted.
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "10000000", "bps": "100gbit", "burst-bytes": "1gb"}, false); err != nil {
		t.Errorf("the largest limits: %v", err)
	}
}

// A state file that cannot be written does not fail the change, which is in
// force, but the command says so: a warning in Quarantine's and Set's
// answer, ErrNotSaved from Release.
func TestFailedSaveIsReported(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, dir, fb)
	// The state file's place is taken by a directory: every write fails.
	if err := os.Mkdir(filepath.Join(dir, store.StateFile), 0o700); err != nil {
		t.Fatal(err)
	}
	q, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100"}, false)
	if err != nil || !fb.Spliced("vm-1") || len(q.Warnings) != 1 || !strings.Contains(q.Warnings[0], "state file could not be written") {
		t.Fatalf("quarantine: %v, spliced %v, warnings %q", err, fb.Spliced("vm-1"), q.Warnings)
	}
	if q, err := setFlags(m, "vm-1", api.LimitFlags{"pps": "200"}); err != nil || len(q.Warnings) != 1 {
		t.Fatalf("set: %v, warnings %q", err, q.Warnings)
	}
	if err := m.Release("vm-1"); !errors.Is(err, ErrNotSaved) || fb.Spliced("vm-1") {
		t.Fatalf("release: %v, spliced %v; want released and ErrNotSaved", err, fb.Spliced("vm-1"))
	}
}

// A state file entry that cannot be right (an unknown state, a port named
// twice) is left out and reported; the others are kept, and the splice of a
// refused entry is adopted from the plumbing, not removed as an orphan.
func TestBadStateEntriesAreLeftOut(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1", "vm-2", "vm-3")
	m := newTestManager(t, dir, fb)
	for _, p := range []string{"vm-1", "vm-2", "vm-3"} {
		if _, err := quarantineFlags(m, p, api.LimitFlags{"pps": "100"}, false); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	good, bad, err := store.LoadQuarantines(dir)
	if err != nil || len(good) != 3 || len(bad) != 0 {
		t.Fatalf("the daemon's own file: %d good, bad %v, %v", len(good), bad, err)
	}
	e2, e3 := good["vm-2"], good["vm-3"]
	e2.State = "frozen"
	if err := store.SaveQuarantines(dir, []store.Quarantine{good["vm-1"], e2, e3, e3}, time.Now()); err != nil {
		t.Fatal(err)
	}
	good, bad, err = store.LoadQuarantines(dir)
	if err != nil || len(good) != 1 || good["vm-1"].Port != "vm-1" || !strings.Contains(bad["vm-2"], "unknown state") || !strings.Contains(bad["vm-3"], "2 entries") {
		t.Fatalf("loadState: good %v, bad %v, %v", good, bad, err)
	}
	m2 := restart(t, dir, fb)
	if ports := m2.Ports(); strings.Join(ports, ",") != "vm-1,vm-2,vm-3" {
		t.Errorf("after the restart: %v quarantined; want vm-1 from the state file, vm-2 and vm-3 adopted from the plumbing", ports)
	}
	if fb.Released() != 0 {
		t.Errorf("%d splices removed", fb.Released())
	}
}

// An alert quarantines only what the watch loop could: not with dry_run,
// not an excluded port, not beyond max_auto, and, with no watch patterns,
// only a veth or tap that a splice backend handles.
func TestAlertObeysTheSafetySettings(t *testing.T) {
	for _, c := range []struct {
		name    string
		w       func(*WatchConfig)
		kind    string
		port    string
		outcome string
	}{
		{"dry run", func(w *WatchConfig) { w.DryRun = true }, "veth", "vm-1", "dry_run"},
		{"excluded", func(w *WatchConfig) { w.Exclude = []string{"vm-1"} }, "veth", "vm-1", "excluded"},
		{"outside watch", func(w *WatchConfig) { w.Watch = []string{"tap*"} }, "veth", "vm-1", "not_watched"},
		{"max_auto 0", func(w *WatchConfig) { w.MaxAuto = 0 }, "veth", "vm-1", "max_auto"},
		{"an uplink", func(*WatchConfig) {}, "device", "eth9", "not_vm_port"},
		{"a bond", func(*WatchConfig) {}, "bond", "vm-1", "not_vm_port"},
		{"a VM port", func(*WatchConfig) {}, "veth", "vm-1", "quarantined"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fb := fakesplice.New("vm-1", "eth9")
			h := &hosttest.Host{Exists: fb.Exists, Kind: func(string) (string, error) { return c.kind, nil }}
			m := NewWithOptions(nil, Options{Host: h}, fb)
			defer m.Close()
			w := DefaultWatchConfig()
			w.MaxAuto = 10
			c.w(&w)
			if err := m.Configure(profile.Set{profile.Quarantine: profile.Default()}, w); err != nil {
				t.Fatal(err)
			}
			outcome, err := m.Alert(c.port, true)
			if outcome != c.outcome {
				t.Fatalf("Alert: %q %v, want %q", outcome, err, c.outcome)
			}
			if want := c.outcome == "quarantined"; fb.Spliced(c.port) != want {
				t.Errorf("spliced %v, want %v", fb.Spliced(c.port), want)
			}
		})
	}
}

// --pps 0 is refused: blocking is spelled --block, which leaves only the
// bypass and control classes.
func TestBlockIsExplicit(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	for _, req := range []api.LimitFlags{{"pps": "0"}, {"to-vm-pps": "0.0"}, {"bps": "0kbit"}, {"pps": "100", "to-vm-bps": "0"}} {
		if _, err := quarantineFlags(m, "vm-1", req, false); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "block") {
			t.Errorf("quarantine %v: %v, want a usage error naming --block", req, err)
		}
	}
	if fb.Splices() != 0 {
		t.Fatalf("%d splices", fb.Splices())
	}
	q, err := quarantineFlags(m, "vm-1", api.LimitFlags{"block": "true"}, false)
	if err != nil || q.Directions.FromVM.Limits.PPS == nil || *q.Directions.FromVM.Limits.PPS != 0 {
		t.Fatalf("--block: %v, from_vm limits %+v", err, q.Directions.FromVM.Limits)
	}
	if _, err := setFlags(m, "vm-1", api.LimitFlags{"pps": "0"}); !errors.Is(err, ErrUsage) {
		t.Errorf("set --pps 0: %v", err)
	}
	if q, err := setFlags(m, "vm-1", api.LimitFlags{"pps": "500"}); err != nil || *q.Directions.FromVM.Limits.PPS != 500 {
		t.Errorf("set --pps 500 after --block: %v", err)
	}
}
