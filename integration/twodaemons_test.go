package integration

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSecondDaemonRefuses: a second daemon on the socket of a running one
// (same state directory too) refuses to start, and changes nothing: no
// splice adopted twice, no tap, filter or forwarder added; the first keeps
// working.
func TestSecondDaemonRefuses(t *testing.T) {
	l := newLab(t, "bridge")
	port := l.get("VM1_PORT")
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	d.must("quarantine", port, "--pps", "5000")
	before := l.snapshot()
	taps, filters := l.plumbing(port)

	cmd := inNS(l.get("HV_NS"), filepath.Join(l.bin, "shaperd"), "run", "--socket", d.sock, "--state-dir", filepath.Join(dir, "state"), "--metrics-addr", "")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the second daemon still runs after 10 s")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), "already listening") {
		t.Fatalf("second daemon: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "adopted splice") {
		t.Errorf("the second daemon adopted splices before it refused:\n%s", out)
	}
	if t2, f2 := l.plumbing(port); t2 != taps || f2 != filters {
		t.Errorf("the second daemon changed the plumbing: %d taps (was %d), filters:\n%s\nwere:\n%s", t2, taps, f2, filters)
	}
	if after := l.snapshot(); after != before {
		t.Errorf("the second daemon changed the host:\n%s", diffLines(before, after))
	}
	if q := d.status(port); q.State != "active" {
		t.Errorf("the first daemon's quarantine: %+v", q)
	}
}
