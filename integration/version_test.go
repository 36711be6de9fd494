package integration

import (
	"os/exec"
	"strings"
	"testing"
)

// TestVersionStamped: the binary make build made says which commit it is:
// shaperd version and --version print git describe --always --dirty and the
// commit of the checkout, never dev; status --json says the same.
func TestVersionStamped(t *testing.T) {
	bin := binDir(t)
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", repoRoot()}, args...)...).Output()
		if err != nil {
			t.Fatalf("git %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	want := "shaperd " + git("describe", "--tags", "--always", "--dirty") + " (commit " + git("rev-parse", "HEAD") + ", go"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := exec.Command(bin+"/shaperd", args...).Output()
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("shaperd %v: %q %v, want %q...", args, out, err, want)
		}
	}
	l := newLab(t, "bridge")
	st := l.startDaemon().fullStatus()
	if v := st.Daemon.Version; v == "dev" || v == "" || !strings.Contains(want, " "+v+" ") || st.Daemon.Commit != git("rev-parse", "HEAD") || !strings.HasPrefix(st.Daemon.GoVersion, "go") {
		t.Errorf("status --json: version %q commit %q go %q", v, st.Daemon.Commit, st.Daemon.GoVersion)
	}
}
