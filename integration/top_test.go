package integration

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTopShowsFloodingPort runs `shaperd top` in a real terminal (a
// detached tmux session on a private tmux server) while VM 1 floods and
// VM 2 idles, both quarantined: the view shows VM 1's port first with its
// drop rate and the reason, VM 2's at zero; q quits with status 0.
func TestTopShowsFloodingPort(t *testing.T) {
	l := newLab(t, "bridge")
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is not installed (scripts/deps.sh installs it)")
	}
	vm1, ext := l.get("VM1_NS"), l.get("EXT_NS")
	port1, port2 := l.get("VM1_PORT"), l.get("VM2_PORT")
	d := l.startDaemon()
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
	d.must("quarantine", port1, "--pps", "5000")
	d.must("quarantine", port2, "--pps", "5000")
	l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "20000", "--duration", "30s")

	tm := newTmux(t)
	shaperd := filepath.Join(l.bin, "shaperd")
	// The shell line reports top's exit status after it quits, and keeps
	// the pane open for the capture.
	tm.run(shaperd+" --socket "+d.sock+" top; echo top exited $?; sleep 60", 140, 40)

	var screen []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		screen = tm.capture()
		r1, r2 := findRow(screen, port1), findRow(screen, port2)
		if r1 >= 0 && r2 >= 0 {
			f1, f2 := strings.Fields(screen[r1]), strings.Fields(screen[r2])
			// PORT STATE STAGE DIR PASS-pps DROP-pps PASS-bit/s DROP-bit/s ...
			if len(f1) >= 8 && len(f2) >= 8 && f1[4] != "-" && f1[5] != "-" && f1[5] != "0" && f1[4] != "0" {
				if r1 > r2 {
					t.Errorf("the flooding port %s is not first:\n%s", port1, strings.Join(screen, "\n"))
				}
				if f1[1] != "active" || f1[2] != "manual" || f1[3] != "from_vm" {
					t.Errorf("flooding port row %q: want state active, stage manual, direction from_vm", screen[r1])
				}
				if f2[4] != "0" || f2[5] != "0" {
					t.Errorf("idle port row %q: want zero rates", screen[r2])
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("top never showed %s with pass and drop rates:\n%s", port1, strings.Join(screen, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
	all := strings.Join(screen, "\n")
	t.Logf("shaperd top in tmux:\n%s", all)
	for _, s := range []string{"shaperd top  2 quarantined ports", "udp", "aggregate_budget", "limit 5000 pps", "q quit"} {
		if !strings.Contains(all, s) {
			t.Errorf("top's screen lacks %q", s)
		}
	}

	tm.keys("q")
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(strings.Join(tm.capture(), "\n"), "top exited 0") {
		if time.Now().After(deadline) {
			t.Fatalf("top did not quit with status 0 on q:\n%s", strings.Join(tm.capture(), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// findRow returns the index of the row that starts with port, or -1.
func findRow(rows []string, port string) int {
	for i, r := range rows {
		if strings.HasPrefix(r, port+" ") {
			return i
		}
	}
	return -1
}

// tmuxServer is a private tmux server (its own socket, in a temporary
// directory) with one session, killed at cleanup.
type tmuxServer struct {
	t    *testing.T
	sock string
}

func newTmux(t *testing.T) *tmuxServer {
	tm := &tmuxServer{t: t, sock: filepath.Join(t.TempDir(), "tmux.sock")}
	t.Cleanup(func() {
		exec.Command("tmux", "-S", tm.sock, "kill-server").Run()
	})
	return tm
}

func (tm *tmuxServer) tmux(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.sock}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// run starts shellCmd in a detached session of the given size.
func (tm *tmuxServer) run(shellCmd string, cols, rows int) {
	tm.t.Helper()
	tm.tmux("-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", strconv.Itoa(cols), "-y", strconv.Itoa(rows), shellCmd)
}

// capture returns the pane's visible rows.
func (tm *tmuxServer) capture() []string {
	tm.t.Helper()
	return strings.Split(tm.tmux("capture-pane", "-p", "-t", "top"), "\n")
}

func (tm *tmuxServer) keys(k string) { tm.t.Helper(); tm.tmux("send-keys", "-t", "top", k) }
