package integration

// Faults (issue 17): the state directory full (a tmpfs of 64 KiB) or read
// only. Enforcement continues; `status` and the metrics say that state is
// not being saved, and stop saying so once a write succeeds again.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
)

// TestStateDirFault: a quarantine made while the state directory cannot be
// written is in force and polices; the command warns; status (JSON and
// text) says state is not saved; shaperd_health_events_total counts
// state_not_saved. Once the directory is writable again the next tick
// writes the state file, with the quarantine in it, and status says nothing.
func TestStateDirFault(t *testing.T) {
	for _, fault := range []string{"full", "read-only"} {
		t.Run(fault, func(t *testing.T) {
			l := newLab(t, "bridge")
			port1, port2 := l.get("VM1_PORT"), l.get("VM2_PORT")
			dir := t.TempDir()
			state := filepath.Join(dir, "state")
			if err := os.Mkdir(state, 0o700); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "shaperd-it-state", state).CombinedOutput(); err != nil {
				t.Fatalf("mount a tmpfs: %v %s", err, out)
			}
			t.Cleanup(func() {
				if out, err := exec.Command("umount", state).CombinedOutput(); err != nil {
					t.Errorf("umount %s: %v %s", state, err, out)
				}
			})
			const metricsAddr = "127.0.0.1:9751"
			d := l.startDaemonIn(dir, "--metrics-addr", metricsAddr)
			d.must("quarantine", port2, "--pps", "1000")

			fill := filepath.Join(state, "fill")
			switch fault {
			case "full":
				// Every block the tmpfs has left.
				exec.Command("dd", "if=/dev/zero", "of="+fill, "bs=4k").Run()
				if err := os.WriteFile(filepath.Join(state, "probe"), []byte("x"), 0o600); err == nil {
					t.Fatal("the tmpfs is not full")
				}
			case "read-only":
				if out, err := exec.Command("mount", "-o", "remount,ro", state).CombinedOutput(); err != nil {
					t.Fatalf("remount read-only: %v %s", err, out)
				}
			}
			code, out, errs := d.cli("quarantine", port1, "--pps", "5000")
			t.Logf("quarantine with the state dir %s: exit %d\n%s%s", fault, code, out, errs)
			if code != 0 || !strings.Contains(errs, "state file could not be written") {
				t.Errorf("quarantine: exit %d, want 0 with a warning that the state file could not be written", code)
			}
			var st api.Status
			if err := json.Unmarshal([]byte(d.must("status", "--json")), &st); err != nil {
				t.Fatal(err)
			}
			t.Logf("status: state_not_saved=%q", st.Daemon.StateNotSaved)
			if st.Daemon.StateNotSaved == "" {
				t.Errorf("status --json does not say state is not saved")
			}
			if text := d.must("status"); !strings.Contains(text, "state not saved") {
				t.Errorf("status does not say state is not saved:\n%s", text)
			}
			if n := healthEvent(l.scrape(metricsAddr), "state_not_saved"); n < 1 {
				t.Errorf("shaperd_health_events_total{event=state_not_saved} = %v, want at least 1", n)
			}
			// Enforcement continues.
			if q := d.status(port1); q.State != "active" {
				t.Fatalf("%s: %+v", port1, q)
			}
			ext := l.get("EXT_NS")
			l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "20s")
			l.waitListening(ext, 9)
			flood := l.bg(l.get("VM1_NS"), "flood", "--dst", l.get("EXT_IP"), "--size", "250", "--pps", "0", "--duration", "10s")
			time.Sleep(2 * time.Second) // the flood ramps up; the tap queue fills
			l.checkRates(d, port1, 5000, 3*time.Second)
			flood.cmd.Process.Signal(interrupt)
			flood.wait(t, 10*time.Second)

			// Writable again: the next tick writes the state file.
			switch fault {
			case "full":
				os.Remove(fill)
			case "read-only":
				if out, err := exec.Command("mount", "-o", "remount,rw", state).CombinedOutput(); err != nil {
					t.Fatalf("remount read-write: %v %s", err, out)
				}
			}
			deadline := time.Now().Add(3 * time.Second)
			for {
				var st api.Status
				json.Unmarshal([]byte(d.must("status", "--json")), &st)
				if st.Daemon.StateNotSaved == "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("status still says state is not saved 3 s after the directory was writable: %s", st.Daemon.StateNotSaved)
				}
				time.Sleep(100 * time.Millisecond)
			}
			b, err := os.ReadFile(filepath.Join(state, "state.json"))
			if err != nil || !strings.Contains(string(b), port1) || !strings.Contains(string(b), port2) {
				t.Errorf("the state file once writable again lacks a port: %v\n%s", err, b)
			}
			d.stop()
		})
	}
}

// healthEvent is shaperd_health_events_total of event in a scrape; -1 if absent.
func healthEvent(s scraped, event string) float64 {
	for _, x := range s["shaperd_health_events_total"] {
		if x.labels["event"] == event {
			return x.value
		}
	}
	return -1
}
