package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
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
		state func(dir string) error
		// The recovery the new daemon must report: its log lines, in
		// order, each a regular expression.
		log []string
	}{
		{"state file", func(string) error { return nil },
			[]string{`"adopted splice".*limits_from="state file"`}},
		{"state file deleted", func(dir string) error { return os.Remove(filepath.Join(dir, "state", "state.json")) },
			[]string{`"no state file: adopting whatever splices are found"`, `"adopted splice".*limits_from=plumbing`}},
		{"state file corrupt", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "state", "state.json"), []byte(`{"sha256":"00","body":{"version":1}}`), 0o600)
		}, []string{`"state file unusable: rebuilding from the plumbing".*state file is corrupt`,
			`"corrupt state file set aside" path=\S+/state\.json\.corrupt-`, `"adopted splice".*limits_from=plumbing`}},
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
			if err := tc.state(dir); err != nil {
				t.Fatal(err)
			}
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
			rest := d2.logBuf.String()
			for _, re := range tc.log {
				loc := regexp.MustCompile(re).FindStringIndex(rest)
				if loc == nil {
					t.Errorf("the new daemon's log lacks %s (in order):\n%s", re, d2.logBuf.String())
					break
				}
				rest = rest[loc[1]:]
			}
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
// config running, with the error logged. A valid one is applied: a watch
// pattern that now matches a flooding port gets it quarantined, while a key
// that needs a restart (socket_group) is named in the log and not applied.
func TestSIGHUPReload(t *testing.T) {
	l := newLab(t, "bridge")
	vm1, ext := l.get("VM1_NS"), l.get("EXT_NS")
	port1, port2 := l.get("VM1_PORT"), l.get("VM2_PORT")
	lab, err := os.ReadFile(labConfig())
	if err != nil {
		t.Fatal(err)
	}
	const watchAll = `watch: ["vm-*"]`
	if strings.Count(string(lab), watchAll) != 1 {
		t.Fatalf("%s lacks %s", labConfig(), watchAll)
	}
	cfg := filepath.Join(t.TempDir(), "shaperd.yaml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// At start the watch matches no port of the lab.
	write(strings.Replace(string(lab), watchAll, `watch: ["nomatch-*"]`, 1))
	d := l.startDaemon("--config", cfg)
	d.must("quarantine", port2, "--pps", "1000")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
	l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--size", "250", "--pps", "0", "--duration", "30s")
	time.Sleep(3 * time.Second) // watch_interval 500ms, flag_after 1s
	if st := d.fullStatus(); quarantineOf(st, port1) != nil || len(st.Flagged) != 0 {
		t.Fatalf("a port outside the watch pattern was flagged: %+v %+v", st.Quarantines, st.Flagged)
	}

	waitLog := func(s string, n int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for strings.Count(d.logBuf.String(), s) < n {
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %q:\n%s", s, d.logBuf.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Invalid: nothing changes.
	write(strings.Replace(string(lab), watchAll, `watch: ["vm-*"]`+"\nlog_level: loud", 1))
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog("config not reloaded", 1)
	time.Sleep(2 * time.Second)
	if st := d.fullStatus(); quarantineOf(st, port1) != nil || len(st.Flagged) != 0 {
		t.Errorf("an invalid reload applied its watch pattern: %+v %+v", st.Quarantines, st.Flagged)
	}
	if q := d.status(port2); q.State != "active" {
		t.Errorf("after an invalid reload: %+v", q)
	}

	// Valid: the watch pattern applies at once; socket_group needs a
	// restart, so the socket keeps its group.
	fi, err := os.Stat(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	gid := fi.Sys().(*syscall.Stat_t).Gid
	write(string(lab) + "socket_group: nogroup\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog("config reloaded", 1)
	if !strings.Contains(d.logBuf.String(), "need_restart=[socket_group]") {
		t.Errorf("the reload does not name socket_group as needing a restart:\n%s", d.logBuf.String())
	}
	st, took, ok := d.waitFor(5*time.Second, func(st api.Status) bool {
		q := quarantineOf(st, port1)
		return q != nil && q.State == "active" && q.Origin == "watch"
	})
	if !ok {
		t.Fatalf("the reloaded watch pattern did not quarantine the flooding %s: %+v %+v", port1, st.Quarantines, st.Flagged)
	}
	t.Logf("reloaded watch pattern: %s quarantined %v after SIGHUP", port1, took.Round(time.Millisecond))
	if fi, err := os.Stat(d.sock); err != nil {
		t.Error(err)
	} else if g := fi.Sys().(*syscall.Stat_t).Gid; g != gid {
		t.Errorf("socket_group was applied without a restart: the socket's gid is %d, was %d", g, gid)
	}
}
