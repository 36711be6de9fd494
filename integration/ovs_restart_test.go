package integration

// Restart reconciliation on Open vSwitch (issue 5, the OVS half): a new
// daemon adopts the splices an earlier one left, repairs what a restart of
// ovs-vswitchd lost, and rebuilds the limits from the intent recorded in
// external_ids when the state file is gone. Against the lab's own
// ovs-vswitchd (userspace datapath).

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOVSKill9Adopt: kill -9 of the daemon with an OVS port quarantined,
// then a new daemon: the quarantine is in force again within 2 s with the
// same limits, on the same taps, with the same flows and groups (no
// duplicate, nothing reinstalled), traffic is policed, and release then
// restores the host as it was before the quarantine.
func TestOVSKill9Adopt(t *testing.T) {
	l := newLab(t, "ovs")
	port := l.get("VM1_PORT")
	l.addForeignFlows()
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	before := l.snapshot()
	d.must("quarantine", port, "--pps", "5000", "--to-vm-bps", "16mbit")
	spliced, taps := l.ovsSnapshot(), l.spliceTaps()
	if !l.portHasXDP(port) {
		t.Fatalf("no XDP program on %s while quarantined", port)
	}

	prog := l.portXDP(port)
	d.kill9()
	// The kernel half outlives the daemon (issue 13): the same program
	// stays attached, and the new daemon takes it over, never loading a
	// second copy.
	if got := l.portXDP(port); got != prog {
		t.Errorf("after kill -9 the port's XDP program is %q, was %q", got, prog)
	}
	start := time.Now()
	d2 := l.startDaemonIn(dir)
	l.waitActive(d2, port, start, 2*time.Second)
	l.checkLimits(d2, port)
	if got := l.spliceTaps(); got != taps {
		t.Errorf("taps after the restart:\n%s\nwere:\n%s", got, taps)
	}
	l.waitOVS(spliced, 3*time.Second, "after adoption")
	if got := l.portXDP(port); got != prog {
		t.Errorf("after adoption the port's XDP program is %q, was %q: not taken over", got, prog)
	}
	if log := d2.logBuf.String(); !strings.Contains(log, "adopted") || strings.Contains(log, "recreated the missing pieces") {
		t.Errorf("want an adoption with nothing recreated; daemon log:\n%s", log)
	}
	l.checkPoliced(d2, port)

	d2.must("release", port)
	if after := l.snapshot(); after != before {
		t.Errorf("release after adoption left the host changed:\n%s", diffLines(before, after))
	}
}

// TestOVSVswitchdRestartRepair: kill -9 of the daemon, then a restart of
// the lab's ovs-vswitchd, which loses every flow, group and no-flood flag;
// a new daemon adopts the splice and reinstalls exactly what it had, and the
// quarantine works again; release restores the bridge.
func TestOVSVswitchdRestartRepair(t *testing.T) {
	l := newLab(t, "ovs")
	hv, port, br := l.get("HV_NS"), l.get("VM1_PORT"), l.get("OVS_BRIDGE")
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	before := l.stableSnapshot(port)
	d.must("quarantine", port, "--pps", "5000", "--to-vm-bps", "16mbit")
	spliced, taps := l.ovsSnapshot(), l.spliceTaps()

	d.kill9()
	l.restartVswitchd()
	if flows := l.sh(hv, "ovs-ofctl dump-flows "+br+" --no-stats"); strings.Contains(flows, "cookie=0x5351") {
		t.Fatalf("the restart of ovs-vswitchd kept the splice's flows; nothing to repair:\n%s", flows)
	}
	start := time.Now()
	d2 := l.startDaemonIn(dir)
	l.waitActive(d2, port, start, 2*time.Second)
	l.checkLimits(d2, port)
	if got := l.spliceTaps(); got != taps {
		t.Errorf("taps after the restart:\n%s\nwere:\n%s", got, taps)
	}
	l.waitOVS(spliced, 3*time.Second, "after the repair")
	if m := regexp.MustCompile(`.*recreated the missing pieces.*`).FindString(d2.logBuf.String()); !strings.Contains(m, "flows and groups") {
		t.Errorf("the repair is not in the daemon's log:\n%s", d2.logBuf.String())
	} else {
		t.Logf("daemon: %s", strings.TrimSpace(m))
	}
	l.checkPoliced(d2, port)

	d2.must("release", port)
	if after := l.stableSnapshot(port); after != before {
		t.Errorf("release after the repair left the host changed:\n%s", diffLines(before, after))
	}
}

// TestOVSStateFileDeleted: the daemon is stopped and its state file deleted;
// a new daemon rebuilds the quarantine with the same limits from the intent
// recorded in the net tap's external_ids, on the same splice.
func TestOVSStateFileDeleted(t *testing.T) {
	l := newLab(t, "ovs")
	port := l.get("VM1_PORT")
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	before := l.snapshot()
	d.must("quarantine", port, "--pps", "5000", "--to-vm-bps", "16mbit", "--fail", "closed")
	spliced, taps := l.ovsSnapshot(), l.spliceTaps()
	intent := strings.TrimSpace(l.sh(l.get("HV_NS"), "ovs-vsctl get Interface "+d.status(port).Taps.Net+" external_ids:shaperd-intent"))
	t.Logf("intent recorded in external_ids: %s", intent)

	d.stop()
	if err := os.Remove(filepath.Join(dir, "state", "state.json")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d2 := l.startDaemonIn(dir)
	l.waitActive(d2, port, start, 2*time.Second)
	l.checkLimits(d2, port)
	if q := d2.status(port); q.Fail != "closed" || q.Backend != "ovs" {
		t.Errorf("after the restart: backend %q fail %q, want ovs closed", q.Backend, q.Fail)
	}
	if log := d2.logBuf.String(); !regexp.MustCompile(`"adopted splice".*limits_from=plumbing`).MatchString(log) {
		t.Errorf("the limits did not come from the plumbing; daemon log:\n%s", log)
	}
	if got := l.spliceTaps(); got != taps {
		t.Errorf("taps after the restart:\n%s\nwere:\n%s", got, taps)
	}
	l.waitOVS(spliced, 3*time.Second, "after the rebuild")
	l.checkPoliced(d2, port)

	d2.must("release", port)
	if after := l.snapshot(); after != before {
		t.Errorf("release after the rebuild left the host changed:\n%s", diffLines(before, after))
	}
}

// TestOVSOfflineRelease: with the daemon dead (kill -9), `release --all
// --offline` adopts the OVS splice from its record and reverts it: the host
// is as before the quarantine.
func TestOVSOfflineRelease(t *testing.T) {
	l := newLab(t, "ovs")
	l.addForeignFlows()
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	before := l.snapshot()
	d.must("quarantine", l.get("VM1_PORT"), "--pps", "1000")
	d.kill9()
	out, err := inNS(l.get("HV_NS"), filepath.Join(l.bin, "shaperd"), "--socket", d.sock, "release", "--all", "--offline",
		"--state-dir", filepath.Join(dir, "state")).CombinedOutput()
	t.Logf("release --all --offline: %v\n%s", err, out)
	if err != nil || !strings.Contains(string(out), "released") {
		t.Fatalf("offline release failed: %v", err)
	}
	if after := l.snapshot(); after != before {
		t.Errorf("offline release left the host changed:\n%s", diffLines(before, after))
	}
}

// ---------------------------------------------------------------- helpers

var tapLine = regexp.MustCompile(`^(\d+): (shq[0-9a-f]{8}[vnp])[:@]`)

// spliceTaps lists the splice taps of the hypervisor as "ifindex: name", so
// a tap deleted and created again under the same name shows.
func (l *lab) spliceTaps() string {
	l.t.Helper()
	var out []string
	for _, line := range strings.Split(l.sh(l.get("HV_NS"), "ip -o link show"), "\n") {
		if m := tapLine.FindStringSubmatch(line); m != nil {
			out = append(out, m[1]+": "+m[2])
		}
	}
	return strings.Join(out, "\n")
}

func (l *lab) portHasXDP(port string) bool {
	l.t.Helper()
	return strings.Contains(l.sh(l.get("HV_NS"), "ip link show dev "+port), "xdpgeneric")
}

// portXDP returns the generic XDP program attached to port as ip link
// shows it ("xdpgeneric/id:N"), "" if none.
func (l *lab) portXDP(port string) string {
	l.t.Helper()
	return regexp.MustCompile(`xdpgeneric/id:\d+`).FindString(l.sh(l.get("HV_NS"), "ip link show dev "+port))
}

// waitActive waits until the daemon started at start reports port's
// quarantine active, at most within after start.
func (l *lab) waitActive(d *daemon, port string, start time.Time, within time.Duration) {
	l.t.Helper()
	for {
		code, out, _ := d.cli("status", port, "--json")
		if code == 0 && strings.Contains(out, `"state": "active"`) {
			took := time.Since(start)
			l.t.Logf("in force again %v after the new daemon started", took.Round(time.Millisecond))
			if took > within {
				l.t.Errorf("in force again only after %v, want within %v", took.Round(time.Millisecond), within)
			}
			return
		}
		if time.Since(start) > within {
			l.t.Fatalf("quarantine not in force %v after the restart: %s\n%s", within, out, d.logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkLimits checks the limits every test here quarantines with.
func (l *lab) checkLimits(d *daemon, port string) {
	l.t.Helper()
	q := d.status(port)
	if q.Directions.FromVM.Limits.PPS == nil || *q.Directions.FromVM.Limits.PPS != 5000 ||
		q.Directions.ToVM.Limits.BitsPerSecond == nil || *q.Directions.ToVM.Limits.BitsPerSecond != 16_000_000 {
		l.t.Errorf("limits after the restart: from_vm %+v to_vm %+v; want 5000 pps and 16 Mbit/s", q.Directions.FromVM.Limits, q.Directions.ToVM.Limits)
	}
}

// waitOVS waits for the lab's OVS to show want (flows without counters,
// groups, ports, database); the taps' carrier, which the port list shows,
// follows the new forwarder's opening them.
func (l *lab) waitOVS(want string, within time.Duration, when string) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := l.ovsSnapshot()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			l.t.Errorf("OVS %s differs from while spliced:\n%s", when, diffLines(want, got))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkPoliced is TestQuarantineOVS's check of a --pps 5000 quarantine: a
// max-rate flood from the VM; the forwarder passes 5000 pps and the external
// host receives 5000 pps, each within 2%.
func (l *lab) checkPoliced(d *daemon, port string) {
	l.t.Helper()
	ext := l.get("EXT_NS")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "30s")
	l.waitListening(ext, 9)
	flood := l.bg(l.get("VM1_NS"), "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "0", "--duration", "20s")
	time.Sleep(2 * time.Second) // the flood ramps up; the tap queue fills
	l.checkRates(d, port, 5000, 10*time.Second)
	flood.cmd.Process.Signal(interrupt)
	flood.wait(l.t, 10*time.Second)
}

// restartVswitchd stops the lab's own ovs-vswitchd (the pid in its pidfile,
// if that process names the lab's OVS directory) and starts it again with
// ovs.sh, in the hypervisor namespace. ovsdb-server keeps running.
func (l *lab) restartVswitchd() {
	l.t.Helper()
	dir := l.get("OVS_RUNDIR")
	b, err := os.ReadFile(filepath.Join(dir, "ovs-vswitchd.pid"))
	if err != nil {
		l.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		l.t.Fatalf("pidfile: %v", err)
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), dir) {
		l.t.Fatalf("pid %d is not the lab's ovs-vswitchd (%q, %v)", pid, cmdline, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		l.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !exited(pid) {
		if time.Now().After(deadline) {
			l.t.Fatalf("ovs-vswitchd %d did not exit within 10 s of SIGTERM", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := inNS(l.get("HV_NS"), filepath.Join(repoRoot(), "scripts/netns/ovs.sh"), "start", dir, l.get("HV_NS")).CombinedOutput()
	if err != nil {
		l.t.Fatalf("start ovs-vswitchd again: %v\n%s", err, out)
	}
	l.t.Logf("restarted ovs-vswitchd (was pid %d)", pid)
}

// exited reports whether process pid has exited: it is gone, or a zombie.
// ovs-vswitchd runs detached, a child of init, which reaps it up to seconds
// later on some machines; a zombie has closed all its descriptors.
func exited(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// stableSnapshot is what a restart of ovs-vswitchd leaves comparable: the
// OVS snapshot, the splice taps, the port's link (its XDP program) and the
// qdiscs. The links ovs-vswitchd itself creates (the bridge's tap, the
// datapath's) get new indexes when it restarts.
func (l *lab) stableSnapshot(port string) string {
	l.t.Helper()
	hv := l.get("HV_NS")
	link := volatile.ReplaceAllString(l.sh(hv, "ip -d link show dev "+port), "$1 X")
	return l.ovsSnapshot() + "taps:\n" + l.spliceTaps() + "\nport:\n" + link + l.sh(hv, "tc qdisc show")
}
