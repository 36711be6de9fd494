package integration

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestLabSelftest runs scripts/netns/selftest.sh, the smoke test of the lab
// and its tools (flood, sink, probe) that scripts/netns/README.md
// advertises: lab.sh's refusals, a lab built and torn down, and what each
// tool promises on it.
func TestLabSelftest(t *testing.T) {
	bin := binDir(t) // the netns gate
	cmd := exec.Command(filepath.Join(repoRoot(), "scripts/netns/selftest.sh"))
	// The tools make tools built, not built again.
	cmd.Env = append(cmd.Environ(), "LAB=it"+randName(4), "SHAPERD_BIN="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("selftest.sh:\n%s", out)
	if err != nil {
		t.Fatalf("selftest.sh: %v", err)
	}
}
