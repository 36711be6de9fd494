package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shaperd/shaperd/internal/netnstest"
)

// debLock serialises this test among the checkouts on one machine: it
// installs a package named shaperd on the host.
const debLock = "/tmp/shaperd-deb.lock"

// TestDebPackage builds the package as make deb does, installs it with
// dpkg -i, and checks the installed thing: shaperd version prints the
// version make build stamps (git describe, not dev); systemd-analyze verify
// accepts the installed units; the config is a conffile, mode 0640. Then
// dpkg --purge leaves nothing behind: every path the package holds, every
// shaperd entry in the directories it installs into and the daemon's
// state and runtime directories are as they were before. It refuses to
// run (fails) if a shaperd package is installed or any of its files
// exists: it removes only what it installed.
func TestDebPackage(t *testing.T) {
	netnstest.Require(t, "dpkg", "dpkg-deb", "dpkg-query", "systemd-analyze", "make", "git")
	lock, err := os.OpenFile(debLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if st := debStatus(t); st != "" && st != "not-installed" {
		t.Fatalf("a shaperd package is installed on this host (dpkg status %q): this test installs and purges its own and will not touch that one; dpkg --purge shaperd first if it is yours to remove", st)
	}

	root := repoRoot()
	out := t.TempDir()
	start := time.Now()
	cmd := exec.Command("make", "-C", root, "deb", "BIN="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "shaperd_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb BIN=%s made %v, want one shaperd_*.deb", out, debs)
	}
	deb := debs[0]
	t.Logf("make deb: %s in %v", filepath.Base(deb), time.Since(start).Round(time.Second))
	b, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatal(err)
	}
	stamped := strings.TrimSpace(string(b))

	paths := debPaths(t, deb)
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() { // /lib is a link to usr/lib
			t.Fatalf("%s exists and the package would replace it (make install's, or another's): this test will not overwrite it", p)
		}
	}
	for _, p := range []string{"/var/lib/shaperd", "/run/shaperd"} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists (a daemon's, not this test's): purging the package would remove it", p)
		}
	}
	before := debSnapshot(paths)

	installed := false
	t.Cleanup(func() {
		if installed {
			if b, err := dpkg("--purge", "shaperd"); err != nil {
				t.Errorf("cleanup: dpkg --purge shaperd: %v\n%s", err, b)
			}
		}
	})
	installed = true
	if b, err := dpkg("-i", deb); err != nil {
		t.Fatalf("dpkg -i %s: %v\n%s", deb, err, b)
	}

	b, err = exec.Command("/usr/bin/shaperd", "version").CombinedOutput()
	if err != nil {
		t.Fatalf("installed shaperd version: %v\n%s", err, b)
	}
	t.Logf("installed: %s", strings.TrimSpace(string(b)))
	if !strings.HasPrefix(string(b), "shaperd "+stamped+" ") || strings.Contains(string(b), "dev") {
		t.Errorf("installed shaperd version prints %q, want the stamped %q", strings.TrimSpace(string(b)), stamped)
	}

	units := []string{"/lib/systemd/system/shaperd.service", "/lib/systemd/system/shaperd-release.service"}
	b, err = exec.Command("systemd-analyze", append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(b))) != 0 {
		t.Errorf("systemd-analyze verify on the installed units: %v\n%s", err, b)
	}

	const conf = "/etc/shaperd/shaperd.yaml"
	fi, err := os.Stat(conf)
	switch {
	case err != nil:
		t.Errorf("%s: %v", conf, err)
	case fi.Mode().Perm() != 0o640:
		t.Errorf("%s: mode %04o, want 0640 (it may hold alerts_token)", conf, fi.Mode().Perm())
	}
	b, err = exec.Command("dpkg-query", "-W", "-f=${Conffiles}", "shaperd").Output()
	if err != nil || !strings.Contains(string(b), conf+" ") {
		t.Errorf("%s is not a conffile of the installed package: %v %q", conf, err, b)
	}

	if b, err := dpkg("--purge", "shaperd"); err != nil {
		t.Fatalf("dpkg --purge shaperd: %v\n%s", err, b)
	}
	installed = false
	if st := debStatus(t); st != "" && st != "not-installed" {
		t.Errorf("after dpkg --purge, dpkg status %q", st)
	}
	if after := debSnapshot(paths); after != before {
		t.Errorf("dpkg --purge left the host changed:\n%s", diffLines(before, after))
	}
}

// debStatus is dpkg's status of the package shaperd ("installed",
// "config-files", ...), or "" if dpkg knows no such package.
func debStatus(t *testing.T) string {
	t.Helper()
	b, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", "shaperd").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// dpkg runs dpkg with args, non-interactively, waiting up to two minutes
// while another dpkg or apt (another checkout's make deps) holds its lock.
func dpkg(args ...string) ([]byte, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cmd := exec.Command("dpkg", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		b, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(b), "lock") || time.Now().After(deadline) {
			return b, err
		}
		time.Sleep(2 * time.Second)
	}
}

// debPaths lists the package's paths, files and directories, as absolute
// paths.
func debPaths(t *testing.T, deb string) []string {
	t.Helper()
	b, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatalf("dpkg-deb -c %s: %v", deb, err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		p := filepath.Clean("/" + strings.TrimPrefix(f[len(f)-1], "./"))
		if p != "/" {
			out = append(out, p)
		}
	}
	if !slices.Contains(out, "/usr/bin/shaperd") {
		t.Fatalf("%s holds no /usr/bin/shaperd:\n%s", deb, b)
	}
	return out
}

// debSnapshot describes what of the package can be seen on the host: which
// of its paths exist, and the entries naming shaperd in its directories
// and in the places its scripts and dpkg touch. Other packages installed
// meanwhile (another checkout's make deps) do not show.
func debSnapshot(paths []string) string {
	dirs := []string{"/var/lib", "/run", "/var/lib/dpkg/info", "/etc/systemd/system", "/etc/systemd/system/multi-user.target.wants"}
	var lines []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		lines = append(lines, "exists "+p)
		if fi.IsDir() {
			dirs = append(dirs, p)
		}
	}
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.Contains(e.Name(), "shaperd") {
				lines = append(lines, "entry "+filepath.Join(d, e.Name()))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(slices.Compact(lines), "\n")
}
