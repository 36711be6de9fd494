package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/control"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// startFake serves a Manager over a real control socket, with a fake backend
// that knows vm-1-00c9 and vm-2-00c9 (bridged) and routed-0 (on no bridge).
func startFake(t *testing.T) (string, *fakesplice.Backend) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	fb := fakesplice.New("vm-1-00c9", "vm-2-00c9")
	fb.Ports["routed-0"] = false
	m := daemon.NewWithOptions(nil, daemon.Options{Host: &hosttest.Host{Exists: fb.Exists}}, fb)
	srv, err := control.Listen(sock, m, discard())
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(t.Context()); m.Close() })
	return sock, fb
}

// cli runs the command line and returns its exit code and output.
func cli(t *testing.T, sock string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRoot()
	root.SetArgs(append([]string{"--socket", sock}, args...))
	root.SetOut(&out)
	root.SetErr(&errb)
	err := root.Execute()
	code := 0
	if err != nil {
		errb.WriteString(err.Error())
		code = 2
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
	}
	return code, out.String(), errb.String()
}

func TestCLIContract(t *testing.T) {
	sock, fb := startFake(t)
	steps := []struct {
		args    []string
		code    int
		errHas  string
		spliced bool // vm-1-00c9 spliced afterwards
	}{
		{[]string{"status", "--json"}, 0, "", false},
		{[]string{"quarantine", "vm-1-00c9", "--profile", "nosuch"}, 2, `no profile "nosuch"`, false},
		{[]string{"quarantine", "vm-1-00c9", "--profile", "quarantine", "--pps", "5"}, 2, "conflicts with profile quarantine", false},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "lots"}, 2, "--pps", false},
		{[]string{"quarantine", "vm-1-00c9", "--bps", "10furlongs"}, 2, "--bps", false},
		{[]string{"quarantine", "vm-1-00c9", "--bps", "1mbit", "--burst-bytes", "100b"}, 2, "at least 1522b", false},
		{[]string{"quarantine", "vm-1-00c9", "--burst", "10"}, 2, "--burst needs --pps", false},
		{[]string{"quarantine", "vm-9-0000", "--pps", "10"}, 2, "--pending", false},
		{[]string{"quarantine", "routed-0", "--pps", "10"}, 2, "no bridge", false},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "10", "--fail", "sideways"}, 2, "--fail", false},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "10", "--fail", "open"}, 2, "cannot fail open", false},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "10", "--delay", "200ms"}, 2, "--delay, --queue-bytes and --queue-time need --mode shape", false},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "10", "--mode", "wobble"}, 2, "--mode", false},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "10", "--to-vm-mode", "shape", "--to-vm-delay", "soon"}, 2, "--to-vm-delay", false},
		{[]string{"set", "vm-1-00c9", "--pps", "10"}, 3, "not quarantined", false},
		{[]string{"release", "vm-1-00c9"}, 3, "not quarantined", false},
		{[]string{"status", "vm-1-00c9"}, 3, "not quarantined", false},
		{[]string{"quarantine", "--pps", "10000", "vm-1-00c9", "--bps", "16mbit"}, 0, "", true},
		{[]string{"quarantine", "vm-1-00c9", "--pps", "10"}, 2, "use set", true},
		{[]string{"set", "vm-1-00c9", "--pps", "-3"}, 2, "--pps", true},
		{[]string{"set", "vm-1-00c9", "--bypass", "80"}, 2, "unknown flag", true},
		{[]string{"set", "vm-1-00c9"}, 2, "nothing to change", true},
		{[]string{"set", "vm-1-00c9", "--pps", "2500"}, 0, "", true},
		{[]string{"release", "vm-1-00c9"}, 0, "", false},
		// No limits: the quarantine profile and its ladder.
		{[]string{"quarantine", "vm-1-00c9"}, 0, "", true},
		{[]string{"set", "vm-1-00c9", "--profile", "x"}, 2, "unknown flag", true},
		{[]string{"release", "vm-1-00c9"}, 0, "", false},
		{[]string{"quarantine"}, 2, "exactly one PORT", false},
	}
	for _, s := range steps {
		code, _, stderr := cli(t, sock, s.args...)
		if code != s.code || !strings.Contains(stderr, s.errHas) {
			t.Errorf("shaperd %s: exit %d (%q), want exit %d with %q", strings.Join(s.args, " "), code, stderr, s.code, s.errHas)
		}
		if got := fb.Spliced("vm-1-00c9"); got != s.spliced {
			t.Errorf("after shaperd %s: spliced = %v, want %v", strings.Join(s.args, " "), got, s.spliced)
		}
	}
}

func TestStatusJSONShape(t *testing.T) {
	sock, _ := startFake(t)
	if code, _, e := cli(t, sock, "quarantine", "vm-1-00c9", "--pps", "10000", "--bps", "16mbit", "--to-vm-pps", "500"); code != 0 {
		t.Fatalf("quarantine: %d %s", code, e)
	}
	if code, _, e := cli(t, sock, "quarantine", "vm-2-00c9", "--pps", "1"); code != 0 {
		t.Fatalf("quarantine: %d %s", code, e)
	}
	if code, _, e := cli(t, sock, "set", "vm-1-00c9", "--pps", "2500", "--bps", "none"); code != 0 {
		t.Fatalf("set: %d %s", code, e)
	}
	code, out, e := cli(t, sock, "status", "vm-1-00c9", "--json")
	if code != 0 {
		t.Fatalf("status: %d %s", code, e)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	qs := raw["quarantines"].([]any)
	if len(qs) != 1 {
		t.Fatalf("status vm-1-00c9 lists %d quarantines", len(qs))
	}
	q := qs[0].(map[string]any)
	if q["fail"] != "closed" {
		t.Errorf("fail = %v, want closed on a backend that cannot fail open", q["fail"])
	}
	for _, k := range []string{"port", "state", "backend", "since", "fail", "directions", "profile", "origin", "stage", "next_transition", "top_destinations"} {
		if _, ok := q[k]; !ok {
			t.Errorf("quarantine lacks %q", k)
		}
	}
	if q["stage"] != "manual" || q["origin"] != "manual" || q["profile"] != "" || q["next_transition"] != nil {
		t.Errorf("a quarantine by hand: stage/origin/profile/next_transition = %v/%v/%v/%v", q["stage"], q["origin"], q["profile"], q["next_transition"])
	}
	if f, ok := raw["flagged"].([]any); !ok || len(f) != 0 {
		t.Errorf("flagged = %v, want []", raw["flagged"])
	}
	if q["state"] != "active" || q["port"] != "vm-1-00c9" {
		t.Errorf("state/port = %v/%v", q["state"], q["port"])
	}
	dirs := q["directions"].(map[string]any)
	from := dirs["from_vm"].(map[string]any)
	lim := from["limits"].(map[string]any)
	if lim["pps"] != 2500.0 || lim["bits_per_second"] != nil || lim["burst_packets"] != 25.0 || lim["burst_bytes"] != nil {
		t.Errorf("from_vm limits after set --pps 2500 --bps none: %v", lim)
	}
	to := dirs["to_vm"].(map[string]any)["limits"].(map[string]any)
	if to["pps"] != 500.0 {
		t.Errorf("to_vm limits: %v", to)
	}
	classes := from["classes"].(map[string]any)
	for _, c := range []string{"control", "bypass", "tcp-syn", "tcp", "udp", "icmp", "other", "malformed"} {
		cs, ok := classes[c].(map[string]any)
		if !ok {
			t.Errorf("class %q missing", c)
			continue
		}
		for _, k := range []string{"passed_packets", "passed_bytes", "dropped_packets", "dropped_bytes", "drops"} {
			if _, ok := cs[k]; !ok {
				t.Errorf("class %q lacks %q", c, k)
			}
		}
		for _, r := range []string{"class_budget", "aggregate_budget", "bypass_budget", "control_budget", "malformed"} {
			if _, ok := cs["drops"].(map[string]any)[r]; !ok {
				t.Errorf("class %q drops lack %q", c, r)
			}
		}
	}
	var st api.Status
	code, out, _ = cli(t, sock, "status", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Quarantines) != 2 {
		t.Fatalf("status --json: %d, %s", code, out)
	}
	// Printed as the daemon wrote it, it is byte for byte what decoding it
	// and encoding it again printed before.
	var again bytes.Buffer
	if err := writeJSON(&again, st); err != nil {
		t.Fatal(err)
	}
	if out != again.String() {
		t.Errorf("status --json differs from its decoded and re-encoded form:\n%q\n---\n%q", out, again.String())
	}
}

func TestDaemonNotRunning(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	code, _, e := cli(t, sock, "status")
	if code != 1 || !strings.Contains(e, "shaperd run") {
		t.Fatalf("status with no daemon: exit %d %q, want 1 saying how to start it", code, e)
	}
	t.Setenv("SHAPERD_SOCKET", sock)
	if got := control.SocketPath(""); got != sock {
		t.Fatalf("SocketPath ignores $SHAPERD_SOCKET: %s", got)
	}
}

func TestFailedSpliceChangesNothing(t *testing.T) {
	sock, fb := startFake(t)
	fb.FailSplice = errors.New("injected")
	code, _, e := cli(t, sock, "quarantine", "vm-1-00c9", "--pps", "10")
	if code != 1 || !strings.Contains(e, "injected") {
		t.Fatalf("exit %d %q, want 1 with the failure", code, e)
	}
	code, out, _ := cli(t, sock, "status", "--json")
	if code != 0 || !strings.Contains(out, `"quarantines": []`) {
		t.Fatalf("a failed quarantine left state behind: %s", out)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// quarantine PORT with no limit flags means --profile quarantine: stage 1 of
// the ladder, 10000 pps shaped behind a 200 ms delay.
func TestQuarantineDefaultProfile(t *testing.T) {
	sock, _ := startFake(t)
	code, out, e := cli(t, sock, "quarantine", "vm-1-00c9", "--json")
	if code != 0 {
		t.Fatalf("quarantine: %d %s", code, e)
	}
	var q api.Quarantine
	if err := json.Unmarshal([]byte(out), &q); err != nil {
		t.Fatal(err)
	}
	from := q.Directions.FromVM
	if q.Profile != "quarantine" || q.Stage != "stage1" || q.NextTransition == nil {
		t.Fatalf("profile/stage/next = %q/%q/%v; want quarantine/stage1/set", q.Profile, q.Stage, q.NextTransition)
	}
	if d := q.NextTransition.Sub(q.Since); d < 299*time.Second || d > 301*time.Second {
		t.Errorf("next_transition %v after since; want 5m", d)
	}
	if from.Limits.PPS == nil || *from.Limits.PPS != 10000 || from.Mode != "shape" || from.Queue.DelayMS != 200 {
		t.Errorf("from_vm: pps %v mode %s delay %vms; want 10000 shape 200", from.Limits.PPS, from.Mode, from.Queue.DelayMS)
	}
	if q.Directions.ToVM.Limits.PPS != nil {
		t.Errorf("to_vm limited: %v", *q.Directions.ToVM.Limits.PPS)
	}
}

// The human status says how many frames the tap queue dropped unread, and
// says nothing of it when there were none.
func TestPrintHumanTapDrops(t *testing.T) {
	q := api.Quarantine{Port: "vm-1", State: "active", Backend: "tc"}
	q.Directions.FromVM.TapDrops = 3051612
	var b strings.Builder
	printHuman(&b, q)
	if !strings.Contains(b.String(), "and 3051612 frames dropped at the tap queue, never read (in no class)") {
		t.Errorf("from_vm tap drops not shown:\n%s", b.String())
	}
	if n := strings.Count(b.String(), "tap queue"); n != 1 {
		t.Errorf("%d tap-queue lines, want 1 (to_vm had none):\n%s", n, b.String())
	}
}

// With no daemon running, a bad value is still a usage error (exit 2) with
// the daemon's own message, not "daemon not running".
func TestValuesCheckedWithoutADaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"quarantine", "vm-1", "--bps", "10mbits"}, "--bps"},
		{[]string{"quarantine", "vm-1", "--pps", "0"}, "--block"},
		{[]string{"quarantine", "vm-1", "--pps", "1e30"}, "at most 10000000"},
		{[]string{"quarantine", "-x", "--pps", "10"}, ""},
		{[]string{"quarantine", "..", "--pps", "10"}, "not a valid interface name"},
		{[]string{"set", "vm-1", "--burst-bytes", "99999999999mb"}, "at most 1gb"},
		{[]string{"set", "vm-1", "--mode", "fast"}, "want police or shape"},
	} {
		code, _, errOut := cli(t, sock, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) || strings.Contains(errOut, "not running") {
			t.Errorf("%v: exit %d %q; want 2 saying %q", c.args, code, errOut, c.want)
		}
	}
	// A good request still needs the daemon.
	if code, _, errOut := cli(t, sock, "quarantine", "vm-1", "--pps", "100"); code != 1 || !strings.Contains(errOut, "not running") {
		t.Errorf("a good request with no daemon: exit %d %q", code, errOut)
	}
}

// check-config: exit 0 for a good file, 2 with every problem as
// FILE:LINE:COLUMN: message for a bad one; no daemon needed.
func TestCheckConfig(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	code, out, e := cli(t, sock, "check-config", "../../deploy/shaperd.yaml")
	if code != 0 || !strings.Contains(out, "shaperd.yaml: ok") {
		t.Errorf("the shipped config: exit %d, %q %q; want 0 and ok", code, out, e)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("log_level: loud\nforwarder_nice: -30\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, e = cli(t, sock, "check-config", bad)
	want := []string{bad + `:1:1: log_level "loud"`, bad + ":2:1: forwarder_nice -30", "2 problems in " + bad}
	for _, w := range want {
		if !strings.Contains(e, w) {
			t.Errorf("a bad config: stderr %q lacks %q", e, w)
		}
	}
	if code != 2 {
		t.Errorf("a bad config: exit %d, want 2", code)
	}
}
