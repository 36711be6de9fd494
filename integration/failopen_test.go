package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// Fail open on both backends (issue 13): the kernel half takes the direct
// path on its own when the daemon dies (at once) or stalls (its heartbeat
// goes stale after about 1 s); a restarted daemon takes the splice over.

// TestKill9FailOpen: with --fail open, under a flood from the VM, 300 pings
// at 10 ms from the VM lose at most 10 across kill -9 of the daemon; a new
// daemon adopts the splice (the same kernel half: the programs on the
// port are the ones attached before) and polices again; release leaves the
// host as it was. On both backends.
func TestKill9FailOpen(t *testing.T) {
	for _, mode := range []string{"bridge", "ovs"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, mode)
			vm1, ext, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
			dir := t.TempDir()
			d := l.startDaemonIn(dir)
			before := l.snapshot()
			l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
			d.must("quarantine", port, "--pps", "5000", "--fail", "open")
			if q := d.status(port); q.Fail != "open" {
				t.Fatalf("status: fail %q, want open", q.Fail)
			}
			prog := l.steerProgs(port)
			// Steady traffic under the limit, so the ping measures the
			// splice's outage rather than the CPU an unpoliced flood
			// would take from the lab's two cores once the daemon is
			// gone (measured with a 20000 pps flood: 35-74 of 300 lost,
			// the replies there but read late by the probe).
			l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "2000", "--duration", "5s")
			time.Sleep(time.Second)
			// 3 s at 100/s: 1 s through the forwarder, then kill -9, then
			// 2 s without a daemon.
			// --paced: one request every 10 ms whatever the replies, as
			// ping -i 0.01 does, so the loss is the outage's length.
			ping := l.bg(vm1, "probe", "ping", "--paced", "--dst", l.get("EXT_IP"), "--count", "300", "--interval", "10ms", "--timeout", "200ms", "--json")
			time.Sleep(time.Second)
			sigkill(t, d)
			pr := pingResult(t, ping)
			t.Logf("--fail open, kill -9 after 1 s with 2000 pps of UDP from the VM: %d of %d replies, %d lost", pr.Completed, pr.Sent, pr.Failed)
			if pr.Sent != 300 || pr.Failed > 10 {
				t.Errorf("lost %d of %d replies, want at most 10", pr.Failed, pr.Sent)
			}
			if got := l.steerProgs(port); got != prog {
				t.Errorf("kernel half after kill -9: %q, was %q", got, prog)
			}
			start := time.Now()
			d2 := l.startDaemonIn(dir)
			l.waitActive(d2, port, start, 2*time.Second)
			if got := l.steerProgs(port); got != prog {
				t.Errorf("kernel half after adoption: %q, was %q: not taken over", got, prog)
			}
			l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "20000", "--duration", "8s")
			time.Sleep(2 * time.Second)
			q0, t0 := d2.statusAt(port)
			got := l.rxRate(ext, "eth0", 3*time.Second)
			q1, t1 := d2.statusAt(port)
			fwd := float64(q1.Directions.FromVM.Classes["udp"].PassedPackets-q0.Directions.FromVM.Classes["udp"].PassedPackets) / t1.Sub(t0).Seconds()
			t.Logf("after adoption: the forwarder passes %.0f pps and the external host receives %.0f pps of the 20000 pps flood; kernel %v %v",
				fwd, got, q1.Directions.FromVM.KernelPassed, q1.Directions.FromVM.KernelDrops)
			if fwd > 5000*1.05 || fwd < 5000*0.8 || got > 5000*1.05 || got < 500 {
				t.Errorf("after adoption the forwarder passes %.0f pps and the external host receives %.0f pps, want 5000 (at most 5%% more; at least 80%% and 500)", fwd, got)
			}
			d2.must("release", port)
			if after := l.snapshot(); after != before {
				t.Errorf("release after adoption left the host changed:\n%s", diffLines(before, after))
			}
		})
	}
}

// TestStalledDaemonFailsOpen: a daemon that stops (SIGSTOP) but keeps its
// file descriptors stops beating; within about 1 s the kernel half sends
// the port's traffic the direct way, and when the daemon continues it
// takes the port back. The Linux bridge: the fallback pair carries it.
func TestStalledDaemonFailsOpen(t *testing.T) {
	l := newLab(t, "bridge")
	vm1, port := l.get("VM1_NS"), l.get("VM1_PORT")
	d := l.startDaemon()
	d.must("quarantine", port, "--pps", "5000", "--fail", "open")
	ping := l.bg(vm1, "probe", "ping", "--paced", "--dst", l.get("EXT_IP"), "--count", "400", "--interval", "10ms", "--timeout", "200ms", "--json")
	time.Sleep(500 * time.Millisecond)
	if q := d.status(port); q.Directions.FromVM.KernelPassed["fail_open"] != 0 || q.Directions.FromVM.KernelPassed["main"] == 0 {
		t.Fatalf("before the stop: kernel passed %v, want all on the main path", q.Directions.FromVM.KernelPassed)
	}
	stopped := time.Now()
	d.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(3 * time.Second)
	d.cmd.Process.Signal(syscall.SIGCONT)
	t.Logf("stopped for %v", time.Since(stopped).Round(time.Millisecond))
	pr := pingResult(t, ping)
	q := d.status(port)
	t.Logf("--fail open, daemon stopped for 3 s: %d of %d replies, %d lost; kernel from the VM: %v passed, stale %v",
		pr.Completed, pr.Sent, pr.Failed, q.Directions.FromVM.KernelPassed, q.Directions.FromVM.KernelDrops)
	// Lost: about HeartbeatStale's worth (100 at 10 ms), then the direct
	// path carries the rest.
	if pr.Failed > 150 || q.Directions.FromVM.KernelPassed["fail_open"] < 100 {
		t.Errorf("lost %d of %d replies while the daemon was stopped, want the direct path after about 1 s", pr.Failed, pr.Sent)
	}
	if q.Directions.FromVM.KernelPassed["fail_open"] == 0 {
		t.Error("no frame went the direct way")
	}
	// Back under the forwarder.
	n0 := d.status(port).Directions.FromVM.KernelPassed["fail_open"]
	pr = pingResult(t, l.bg(vm1, "probe", "ping", "--dst", l.get("EXT_IP"), "--count", "50", "--interval", "10ms", "--timeout", "200ms", "--json"))
	if n := d.status(port).Directions.FromVM.KernelPassed["fail_open"]; n != n0 || pr.Completed < 48 {
		t.Errorf("after SIGCONT: %d of 50 replies, %d frames went the direct way", pr.Completed, n-n0)
	}
}

// steerProgs lists the kernel half's programs on port as the kernel shows
// them (XDP on OVS, the tc filter on a Linux bridge), with their ids.
func (l *lab) steerProgs(port string) string {
	l.t.Helper()
	hv := l.get("HV_NS")
	if x := l.portXDP(port); x != "" {
		return x
	}
	out := l.sh(hv, "tc filter show dev "+port+" ingress")
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, " shq_tc_port "); i >= 0 {
			if j := strings.Index(line, " id "); j >= 0 {
				f := strings.Fields(line[j:])
				return "tc " + f[1]
			}
		}
	}
	return ""
}
