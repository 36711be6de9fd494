package integration

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/internal/cpuquota"
)

// What a flood costs the host (issue 13): under a max-rate flood from the
// VM with --pps 5000, the daemon's own CPU, the limit at the receiver and
// the bypass probe; then the same with the daemon confined to 20% of one
// core by the cgroup cpu controller, with the kernel backstop and without.

// procCPU is a process's user and system CPU time so far (all threads).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// After the command name in parentheses, state is field 3; utime
	// and stime are fields 14 and 15, in clock ticks (USER_HZ, 100).
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var ticks int64
	for _, i := range []int{14, 15} {
		n, err := strconv.ParseInt(f[i-3], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/stat field %d: %v", pid, i, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// cpuQuota confines pid (every thread) to share of one CPU until the
// test's cleanup (see package cpuquota).
func cpuQuota(t *testing.T, pid int, share float64) {
	t.Helper()
	g, err := cpuquota.Confine(pid, share, "shaperd-test-"+randName(6))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
	})
}

// floodWindow is one measurement under the flood: the daemon's CPU as a
// share of one core, the forwarder's and the receiver's rates, and the
// bypass probe's round trips.
type floodWindow struct {
	cpu, fwd, rx float64
	probe        probeSummary
}

func (l *lab) measureFlood(d *daemon, port string, window time.Duration) floodWindow {
	l.t.Helper()
	ext := l.get("EXT_NS")
	n := int(window / (100 * time.Millisecond))
	probe := l.bg(ext, "probe", "client", "--connect", l.get("VM1_IP")+":22", "--count", strconv.Itoa(n), "--interval", "100ms", "--timeout", "5s", "--json")
	passed := func(q api.Quarantine) uint64 { return q.Directions.FromVM.Classes["udp"].PassedPackets }
	pid := d.cmd.Process.Pid
	c0 := procCPU(l.t, pid)
	q0, t0 := d.statusAt(port)
	rx := l.rxRate(ext, "eth0", window)
	q1, t1 := d.statusAt(port)
	c1 := procCPU(l.t, pid)
	var w floodWindow
	w.cpu = (c1 - c0).Seconds() / t1.Sub(t0).Seconds()
	w.fwd = float64(passed(q1)-passed(q0)) / t1.Sub(t0).Seconds()
	w.rx = rx
	if err := probe.wait(l.t, window+30*time.Second); err != nil {
		l.t.Errorf("bypass probe: %v %s %s", err, probe.out, probe.err)
		return w
	}
	w.probe = probe.summary(l.t)
	return w
}

// TestFloodAtTheLimit: a max-rate flood of 250-byte UDP frames from the
// VM, --pps 5000, with the kernel backstop at its default (issue 13). The
// forwarder passes the limit within 1%, and the receiver gets it within 1%
// on a Linux bridge and 2% on OVS (whose userspace datapath loses a little
// after the forwarder on a loaded host); the bypass probe loses nothing.
// Confined to 20% of one core by the cgroup cpu controller, the limit still
// holds within 2% and the probe loses nothing.
//
// Unconfined, the daemon's own CPU is at most 0.15 of a core (issue 13;
// 0.08-0.13 on the Linux bridge since the police ceiling came nearer the
// budget, 0.11-0.16 before; see docs/architecture.md). Logged, not held:
// the same confined without the backstop (--backstop none), which shows
// what the backstop prevents.
func TestFloodAtTheLimit(t *testing.T) {
	for _, mode := range []string{"bridge", "ovs"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, mode)
			vm1, ext, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
			d := l.startDaemon()
			l.bg(vm1, "probe", "server", "--listen", l.get("VM1_IP")+":22")
			l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "120s")
			d.must("quarantine", port, "--pps", "5000")
			l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "0", "--duration", "90s")
			time.Sleep(3 * time.Second)

			rxTol := 0.01
			if mode == "ovs" {
				rxTol = 0.02
			}
			logWindow := func(what string, w floodWindow) {
				t.Helper()
				t.Logf("%s: daemon CPU %.3f of a core; the forwarder passes %.0f pps, the receiver gets %.0f; probe %d/%d, p99 %.1f ms",
					what, w.cpu, w.fwd, w.rx, w.probe.Completed, w.probe.Sent, w.probe.P99MS)
			}
			check := func(what string, w floodWindow, fwdTol, rxTol float64) {
				t.Helper()
				logWindow(what, w)
				if !within(w.fwd, 5000, fwdTol) {
					t.Errorf("%s: the forwarder passed %.0f pps, want 5000 within %.0f%%", what, w.fwd, fwdTol*100)
				}
				if !within(w.rx, 5000, rxTol) {
					t.Errorf("%s: the receiver got %.0f pps, want 5000 within %.0f%%", what, w.rx, rxTol*100)
				}
				if w.probe.Sent == 0 || w.probe.Completed != w.probe.Sent || w.probe.Failed != 0 {
					t.Errorf("%s: the bypass probe completed %d of %d round trips, want all", what, w.probe.Completed, w.probe.Sent)
				}
			}
			w := l.measureFlood(d, port, 10*time.Second)
			check("unconfined", w, 0.01, rxTol)
			if w.cpu > 0.15 {
				t.Errorf("unconfined: the daemon used %.3f of a core, want at most 0.15", w.cpu)
			}

			cpuQuota(t, d.cmd.Process.Pid, 0.2)
			time.Sleep(2 * time.Second)
			check("confined to 20% of a core", l.measureFlood(d, port, 10*time.Second), 0.02, 0.02)

			// What the backstop prevents: the same, confined, without it.
			d.must("set", port, "--backstop", "none")
			time.Sleep(2 * time.Second)
			logWindow("confined, --backstop none", l.measureFlood(d, port, 10*time.Second))
		})
	}
}
