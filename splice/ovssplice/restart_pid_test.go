package ovssplice

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestVswitchdPIDZombie: a pidfile naming a live process gives its pid; one
// naming a process that has exited but is not reaped yet (a zombie, which
// still answers kill 0) gives "", as does one naming no process.
func TestVswitchdPIDZombie(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("OVS_RUNDIR", dir)
	write := func(pid int) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "ovs-vswitchd.pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(os.Getpid())
	if got := VswitchdPID(); got != strconv.Itoa(os.Getpid()) {
		t.Errorf("live process: %q, want %d", got, os.Getpid())
	}

	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	write(pid)
	// Not waited for: it stays a zombie until cmd.Wait.
	deadline := time.Now().Add(5 * time.Second)
	for !zombie(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d never became a zombie", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := VswitchdPID(); got != "" {
		t.Errorf("zombie: %q, want \"\"", got)
	}
	cmd.Wait()
	if got := VswitchdPID(); got != "" {
		t.Errorf("reaped: %q, want \"\"", got)
	}
}
