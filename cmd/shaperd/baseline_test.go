package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/baseline"
	"github.com/shaperd/shaperd/control"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/daemon/hosttest"
)

type fakeEngine struct {
	mu      sync.Mutex
	applied map[string]baseline.Limits
}

func (f *fakeEngine) Apply(d map[string]baseline.Limits) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = d
	return nil
}

func (f *fakeEngine) Stats() (map[string]map[baseline.Reason]baseline.Counter, error) {
	return map[string]map[baseline.Reason]baseline.Counter{"vm-1": {baseline.ReasonPerSourceToVM: {Packets: 3}}}, nil
}

// The baseline command's contract: flags onto limits, checked before the
// daemon is asked (exit 2), a removal of nothing exits 3, status lists it.
func TestBaselineCLI(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	fe := &fakeEngine{}
	m := daemon.NewWithOptions(nil, daemon.Options{Host: &hosttest.Host{}, Baseline: fe})
	srv, err := control.Listen(sock, m, discard())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(t.Context()); m.Close() })

	for _, c := range []struct {
		args   []string
		code   int
		errHas string
	}{
		{[]string{"baseline", "vm-1"}, 2, "no limit given"},
		{[]string{"baseline", "vm-1", "--pps", "0"}, 2, "--pps"},
		{[]string{"baseline", "vm-1", "--to-vm-new-conn-per-source", "10/week"}, 2, "--to-vm-new-conn-per-source"},
		{[]string{"baseline", "this-name-is-too-long", "--pps", "5"}, 2, "1 to 15 characters"},
		{[]string{"baseline", "--remove", "vm-1", "--pps", "5"}, 2, "no limit with --remove"},
		{[]string{"baseline", "--remove", "vm-1"}, 3, "no baseline set by the command line"},
	} {
		code, _, stderr := cli(t, sock, c.args...)
		if code != c.code || !strings.Contains(stderr, c.errHas) {
			t.Errorf("shaperd %s: exit %d (%q), want %d with %q", strings.Join(c.args, " "), code, stderr, c.code, c.errHas)
		}
	}
	if fe.applied != nil {
		t.Fatalf("bad input reached the engine: %v", fe.applied)
	}
	code, out, e := cli(t, sock, "baseline", "vm-1", "--to-vm-new-conn-per-source", "10/min", "--new-conn-rate", "2000:1000", "--to-vm-pps", "50000")
	if code != 0 || !strings.Contains(out, "per-source") {
		t.Fatalf("baseline: %d %q %s", code, out, e)
	}
	want := baseline.Limits{NewPerSourceToVM: baseline.PerMinute(10, 10), NewTCPFromVM: baseline.PerSecond(2000, 1000),
		NewUDPFromVM: baseline.PerSecond(2000, 1000), PPSToVM: baseline.PerSecond(50000, 50000)}
	if fe.applied["vm-1"] != want {
		t.Fatalf("applied %v, want %v", fe.applied["vm-1"], want)
	}
	code, out, _ = cli(t, sock, "status", "--json")
	var st api.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Baselines) != 1 {
		t.Fatalf("status --json: %d %s", code, out)
	}
	b := st.Baselines[0]
	if b.Port != "vm-1" || b.Origin != "cli" || b.Limits.NewConnRate != "2000:1000" || b.Drops["per_source_to_vm"] != 3 {
		t.Fatalf("status baseline: %+v", b)
	}
	if !strings.Contains(out, `"baselines": [`) && !strings.Contains(out, `"baselines":[`) {
		t.Fatalf("status --json has no baselines key: %s", out)
	}
	if code, _, e := cli(t, sock, "baseline", "--remove", "vm-1"); code != 0 {
		t.Fatalf("remove: %d %s", code, e)
	}
	if len(fe.applied) != 0 {
		t.Fatalf("after remove: %v", fe.applied)
	}
}
