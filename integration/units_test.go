package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestServiceUnitsVerify: systemd-analyze verify accepts the shipped units
// (deploy/systemd), with ExecStart= pointing at the binary under test
// instead of /usr/local/bin/shaperd, which make install would put there.
// systemd need not run: verify reads the files.
func TestServiceUnitsVerify(t *testing.T) {
	bin := binDir(t)
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not found (apt-get install systemd; make deps does)")
	}
	units, err := filepath.Glob(filepath.Join(repoRoot(), "deploy", "systemd", "*.service"))
	if err != nil || len(units) < 2 {
		t.Fatalf("deploy/systemd: %v %v", units, err)
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "/usr/local/bin/shaperd ") {
			t.Fatalf("%s: no ExecStart= of /usr/local/bin/shaperd", u)
		}
		body := strings.ReplaceAll(string(b), "/usr/local/bin/shaperd ", filepath.Join(bin, "shaperd")+" ")
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify"}, paths...)...)
	// OnFailure= names the release unit: found beside the service.
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
