package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitCaps reads a capability setting (CapabilityBoundingSet=,
// AmbientCapabilities=) of a unit in deploy/systemd, as setpriv takes it:
// "-all,+net_admin,+bpf".
func unitCaps(t *testing.T, unit, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "deploy/systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"=")
		if !ok {
			continue
		}
		out := "-all"
		for _, c := range strings.Fields(v) {
			out += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		return out
	}
	return "-all"
}

// asUnit returns setpriv's arguments for unit's capability sets: its
// bounding set, and its ambient set (inheritable too, as ambient needs),
// with no new privileges.
func asUnit(t *testing.T, unit string) []string {
	bounding, ambient := unitCaps(t, unit, "CapabilityBoundingSet"), unitCaps(t, unit, "AmbientCapabilities")
	return []string{"setpriv", "--bounding-set", bounding, "--inh-caps", ambient, "--ambient-caps", ambient, "--no-new-privs"}
}

// TestUnitCapabilities runs the daemon with the capabilities of
// deploy/systemd/shaperd.service alone (setpriv with its bounding and
// ambient sets): it loads and attaches the kernel half and polices; after
// kill -9 a daemon with the same capabilities adopts the splice (replacing
// the kernel half, which it may not open by id without CAP_SYS_ADMIN) and
// polices again; and `release --all --offline` with the capabilities of
// shaperd-release.service reverts it exactly. Under the unit the forwarding
// threads run at the default --forwarder-nice (-10), and the daemon logs no
// permission warning. On both backends.
func TestUnitCapabilities(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv not found (util-linux)")
	}
	for _, mode := range []string{"bridge", "ovs"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, mode)
			vm1, ext, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
			dir := t.TempDir()
			unit := asUnit(t, "shaperd.service")
			t.Logf("as shaperd.service: %s", strings.Join(unit, " "))
			d := l.startDaemonAs(dir, unit)
			before := l.snapshot()
			l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
			d.must("quarantine", port, "--pps", "5000", "--fail", "open")
			policed := func(d *daemon, what string) {
				t.Helper()
				flood := l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "20000", "--duration", "5s")
				time.Sleep(1500 * time.Millisecond)
				q0, t0 := d.statusAt(port)
				time.Sleep(2 * time.Second)
				q1, t1 := d.statusAt(port)
				fwd := float64(q1.Directions.FromVM.Classes["udp"].PassedPackets-q0.Directions.FromVM.Classes["udp"].PassedPackets) / t1.Sub(t0).Seconds()
				kernel := kernelRate(q0, q1, t0, t1, fromMain)
				t.Logf("%s: the kernel half passes %.0f pps of a 20000 pps flood (backstop 6250), the forwarder %.0f pps", what, kernel, fwd)
				if !within(kernel, 6250, 0.05) || !within(fwd, 5000, 0.05) {
					t.Errorf("%s: kernel %.0f pps, forwarder %.0f pps; want 6250 and 5000 within 5%%", what, kernel, fwd)
				}
				flood.wait(t, 10*time.Second) // the flood ends
			}
			policed(d, "with the unit's capabilities")
			checkNoPermissionWarnings(t, d)
			checkForwarderNice(t, d, -10)

			d.kill9()
			d2 := l.startDaemonAs(dir, unit)
			l.waitActive(d2, port, time.Now(), 3*time.Second)
			policed(d2, "adopted with the unit's capabilities")
			checkNoPermissionWarnings(t, d2)
			d2.kill9()

			release := asUnit(t, "shaperd-release.service")
			cmd := inNS(l.get("HV_NS"), append(release, filepath.Join(l.bin, "shaperd"), "--socket", d2.sock, "release", "--all", "--offline", "--state-dir", filepath.Join(dir, "state"))...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("release --all --offline as shaperd-release.service: %v\n%s", err, out)
			}
			if after := l.snapshot(); after != before {
				t.Errorf("offline release left the host changed:\n%s", diffLines(before, after))
			}
		})
	}
}

// checkNoPermissionWarnings fails t for each line of d's log that says the
// daemon was not allowed to do something.
func checkNoPermissionWarnings(t *testing.T, d *daemon) {
	t.Helper()
	for _, line := range strings.Split(d.logBuf.String(), "\n") {
		l := strings.ToLower(line)
		if strings.Contains(l, "permission denied") || strings.Contains(l, "operation not permitted") || strings.Contains(l, "cannot raise") {
			t.Errorf("the daemon logged a permission problem: %s", line)
		}
	}
}

// checkForwarderNice fails t unless at least two of d's threads (the
// readers of the VM and net taps, locked to their threads) run at nice.
func checkForwarderNice(t *testing.T, d *daemon, nice int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", d.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	at := 0
	var seen []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		s := string(b)
		// After the command name in parentheses: state is field 3,
		// nice field 19.
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		seen = append(seen, f[19-3])
		if f[19-3] == strconv.Itoa(nice) {
			at++
		}
	}
	if at < 2 {
		t.Errorf("%d of the daemon's threads run at nice %d, want the forwarding threads (2 or more); the threads' nice values: %v", at, nice, seen)
	}
}
