package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
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

// maxExposure is the highest exposure systemd-analyze security may give
// deploy/systemd/shaperd.service (0 best, 10 worst).
const maxExposure = 4.0

var overallRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9]+\.[0-9])`)

// TestUnitSecurityExposure: systemd-analyze security --offline=true rates
// the shipped unit at most maxExposure, and the sandbox keeps what the
// daemon needs (docs/service.md): positive capability lists, the tap
// clone device inside the private /dev, the IPv6 switches writable under
// ProtectKernelTunables=, and the address families it and its tools use.
// It needs no binary and no netns: it runs in the unit pass too.
func TestUnitSecurityExposure(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not found (apt-get install systemd; make deps does)")
	}
	unit := filepath.Join(repoRoot(), "deploy", "systemd", "shaperd.service")
	// systemd 252 takes --offline only with a value.
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security --offline=true %s: %v\n%s", unit, err, out)
	}
	m := overallRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	level, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security rates shaperd.service %.1f (at most %.1f allowed)", level, maxExposure)
	if level > maxExposure {
		t.Errorf("exposure %.1f > %.1f:\n%s", level, maxExposure, out)
	}

	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
			settings[k] = append(settings[k], v)
		}
	}
	for _, k := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		if v := strings.Join(settings[k], " "); v == "" || strings.HasPrefix(v, "~") {
			t.Errorf("%s=%s: want a positive list", k, v)
		}
	}
	need := []struct{ key, value, why string }{
		{"ProtectKernelTunables", "yes", ""},
		{"ReadWritePaths", "-/proc/sys/net/ipv6/conf", "both backends write conf/<tap>/disable_ipv6"},
		{"PrivateDevices", "yes", ""},
		{"BindPaths", "/dev/net/tun", "the forwarder opens its taps through it"},
		{"DeviceAllow", "/dev/net/tun rw", "the device cgroup must let it open the clone device"},
		{"NoNewPrivileges", "yes", ""},
	}
	for _, n := range need {
		if !slices.Contains(settings[n.key], n.value) {
			t.Errorf("no %s=%s (%s)", n.key, n.value, n.why)
		}
	}
	fams := strings.Fields(strings.Join(settings["RestrictAddressFamilies"], " "))
	for _, f := range []string{"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"} {
		if len(fams) > 0 && !slices.Contains(fams, f) {
			t.Errorf("RestrictAddressFamilies=%s lacks %s, which the daemon uses", strings.Join(fams, " "), f)
		}
	}
}
