package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// plumbing counts what a splice consists of in the hypervisor namespace:
// shaperd's taps and the tc filters on the port's ingress.
func (l *lab) plumbing(port string) (taps int, filters string) {
	l.t.Helper()
	hv := l.get("HV_NS")
	for _, line := range strings.Split(l.sh(hv, "ip -o link show"), "\n") {
		if strings.Contains(line, ": shq") {
			taps++
		}
	}
	return taps, l.sh(hv, "tc filter show dev "+port+" ingress")
}

// TestKill9Restart: kill -9 of the daemon during a flood with a port
// quarantined, then a new daemon: the quarantine is in force again within
// 2 s with the same limits, with exactly one set of taps and filters. Also
// with the state file deleted (limits come back from the plumbing) and
// corrupt (the daemon starts, rebuilds, and the next release restores the
// port exactly).
func TestKill9Restart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state func(dir string)
	}{
		{"state file", func(string) {}},
		{"state file deleted", func(dir string) { os.Remove(filepath.Join(dir, "state", "state.json")) }},
		{"state file corrupt", func(dir string) {
			os.WriteFile(filepath.Join(dir, "state", "state.json"), []byte(`{"sha256":"00","body":{"version":1}}`), 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, "bridge")
			ext, port := l.get("EXT_NS"), l.get("VM1_PORT")
			dir := t.TempDir()
			d := l.startDaemonIn(dir)
			before := l.snapshot()
			l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
			d.must("quarantine", port, "--pps", "5000", "--to-vm-bps", "16mbit")
			taps, filters := l.plumbing(port)
			l.bg(l.get("VM1_NS"), "flood", "--dst", l.get("EXT_IP"), "--size", "250", "--pps", "0", "--duration", "30s")
			time.Sleep(2 * time.Second)

			d.kill9()
			tc.state(dir)
			start := time.Now()
			d2 := l.startDaemonIn(dir)
			for {
				code, out, _ := d2.cli("status", port, "--json")
				if code == 0 && strings.Contains(out, `"state": "active"`) {
					break
				}
				if time.Since(start) > 2*time.Second {
					t.Fatalf("quarantine not in force 2 s after the restart: %s\n%s", out, d2.logBuf.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("in force again %v after the new daemon started", time.Since(start).Round(time.Millisecond))
			q := d2.status(port)
			if q.Directions.FromVM.Limits.PPS == nil || *q.Directions.FromVM.Limits.PPS != 5000 ||
				q.Directions.ToVM.Limits.BitsPerSecond == nil || *q.Directions.ToVM.Limits.BitsPerSecond != 16_000_000 {
				t.Errorf("limits after restart: from_vm %+v to_vm %+v", q.Directions.FromVM.Limits, q.Directions.ToVM.Limits)
			}
			got := l.rxRate(ext, "eth0", 3*time.Second)
			t.Logf("after restart: %.0f pps", got)
			if !within(got, 5000, 0.02) {
				t.Errorf("after restart the external host receives %.0f pps, want 5000 within 2%%", got)
			}
			if t2, f2 := l.plumbing(port); t2 != taps || f2 != filters {
				t.Errorf("restart changed the plumbing: %d taps (was %d), filters:\n%s\nwere:\n%s", t2, taps, f2, filters)
			}
			d2.must("release", port)
			if after := l.snapshot(); after != before {
				t.Errorf("release after restart left the host changed:\n%s", diffLines(before, after))
			}
		})
	}
}

// TestVMRestart: a quarantined port is deleted and re-created (a VM
// restart): the quarantine is pending, then active again within 1 s of the
// port's return.
func TestVMRestart(t *testing.T) {
	l := newLab(t, "bridge")
	hv, vm1, port := l.get("HV_NS"), l.get("VM1_NS"), l.get("VM1_PORT")
	d := l.startDaemon()
	d.must("quarantine", port, "--pps", "3000")
	l.sh(hv, "ip link del "+port)
	deadline := time.Now().Add(2 * time.Second)
	for d.status(port).State != "pending" {
		if time.Now().After(deadline) {
			t.Fatalf("not pending 2 s after the port vanished")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if taps, _ := l.plumbing("lo"); taps != 0 {
		t.Errorf("%d splice taps left while pending", taps)
	}
	// The VM comes back: a new veth with the same name joins the bridge.
	l.sh(hv, "ip link add "+port+" type veth peer name eth0 netns "+vm1)
	l.sh(vm1, "ip link set eth0 address "+l.get("VM1_MAC")+" && ip addr add "+l.get("VM1_IP")+"/24 dev eth0 && ip link set eth0 up")
	back := time.Now()
	l.sh(hv, "ip link set "+port+" master "+l.get("BRIDGE")+" up")
	for {
		q := d.status(port)
		if q.State == "active" {
			t.Logf("active again %v after the port joined the bridge", time.Since(back).Round(time.Millisecond))
			if *q.Directions.FromVM.Limits.PPS != 3000 {
				t.Errorf("limits after the VM restart: %+v", q.Directions.FromVM.Limits)
			}
			break
		}
		if time.Since(back) > time.Second {
			t.Fatalf("not active within 1 s of the port's return: %+v\n%s", q, d.logBuf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Traffic flows through the splice again.
	l.bg(l.get("EXT_NS"), "probe", "server", "--listen", l.get("EXT_IP")+":7")
	time.Sleep(200 * time.Millisecond)
	p := l.bg(vm1, "probe", "client", "--connect", l.get("EXT_IP")+":7", "--count", "5", "--interval", "50ms", "--json")
	if err := p.wait(t, 20*time.Second); err != nil {
		t.Errorf("traffic after the VM restart: %v %s", err, p.out)
	}
	if st := d.status(port); st.Directions.FromVM.Classes["tcp"].PassedPackets == 0 {
		t.Errorf("the re-applied splice forwarded nothing: %+v", st.Directions.FromVM.Classes["tcp"])
	}
}

// TestOfflineRelease: with the daemon dead (kill -9), `release --all
// --offline` reverts every splice from the plumbing alone and leaves the
// host as before; it refuses while a daemon answers.
func TestOfflineRelease(t *testing.T) {
	l := newLab(t, "bridge")
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	before := l.snapshot()
	d.must("quarantine", l.get("VM1_PORT"), "--pps", "1000")
	d.must("quarantine", l.get("VM2_PORT"), "--pps", "1000")
	d.must("quarantine", "vm-9-0000", "--pps", "1000", "--pending")
	offline := func() (int, string) {
		cmd := inNS(l.get("HV_NS"), filepath.Join(l.bin, "shaperd"), "--socket", d.sock, "release", "--all", "--offline", "--state-dir", filepath.Join(dir, "state"))
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		return 0, string(out)
	}
	if code, out := offline(); code != 2 || !strings.Contains(out, "daemon answers") {
		t.Errorf("offline release with a daemon running: exit %d %q, want 2", code, out)
	}
	d.kill9()
	code, out := offline()
	if code != 0 || strings.Count(out, "released") != 3 {
		t.Fatalf("offline release: exit %d\n%s", code, out)
	}
	if after := l.snapshot(); after != before {
		t.Errorf("offline release left the host changed:\n%s", diffLines(before, after))
	}
	// A new daemon finds nothing to adopt and nothing pending.
	d2 := l.startDaemonIn(dir)
	if code, out, _ := d2.cli("status", "--json"); code != 0 || !strings.Contains(out, `"quarantines": []`) {
		t.Errorf("after offline release a new daemon has: %s", out)
	}
}

// TestSIGHUPReload: SIGHUP with an invalid config keeps the daemon and its
// config running, with the error logged; a valid one is applied.
func TestSIGHUPReload(t *testing.T) {
	l := newLab(t, "bridge")
	cfg := filepath.Join(t.TempDir(), "shaperd.yaml")
	os.WriteFile(cfg, []byte("log_level: info\n"), 0o644)
	d := l.startDaemon("--config", cfg)
	d.must("quarantine", l.get("VM1_PORT"), "--pps", "1000")
	os.WriteFile(cfg, []byte("log_level: loud\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog := func(s string) {
		deadline := time.Now().Add(3 * time.Second)
		for !strings.Contains(d.logBuf.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %q:\n%s", s, d.logBuf.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog("config not reloaded")
	if q := d.status(l.get("VM1_PORT")); q.State != "active" {
		t.Errorf("after an invalid reload: %+v", q)
	}
	os.WriteFile(cfg, []byte("log_level: warn\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog("config reloaded")
}
