package integration

// Faults (issue 17): a splice tap deleted by hand, and a VM destroyed (its
// port deleted) during a max-rate flood. Nothing may leak: taps, filters,
// goroutines (go_goroutines of the daemon's metrics) or file descriptors
// (/proc/PID/fd of the daemon).

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSpliceTapDeleted: each of a quarantined port's three taps deleted by
// hand in turn, under a max-rate flood: the daemon makes the splice again
// within 2 s (new taps, one set), counts a splice_tap_gone event, polices at
// the limit again, and holds as many goroutines and file descriptors as
// before; release then restores the host.
func TestSpliceTapDeleted(t *testing.T) {
	l := newLab(t, "bridge")
	hv, ext, port := l.get("HV_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
	const metricsAddr = "127.0.0.1:9752"
	d := l.startDaemon("--metrics-addr", metricsAddr)
	before := l.snapshot()
	d.must("quarantine", port, "--pps", "5000")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")
	l.waitListening(ext, 9)
	l.bg(l.get("VM1_NS"), "flood", "--dst", l.get("EXT_IP"), "--size", "250", "--pps", "0", "--duration", "50s")
	time.Sleep(time.Second)
	fds, gor := d.fds(), l.goroutines(metricsAddr)
	t.Logf("quarantined under a flood: %d fds, %d goroutines", fds, gor)

	for i, suffix := range []string{"v", "n", "p"} {
		taps := l.spliceTaps()
		tap := ""
		for _, line := range strings.Split(taps, "\n") {
			if strings.HasSuffix(line, suffix) {
				tap = line[strings.Index(line, "shq"):]
			}
		}
		if tap == "" {
			t.Fatalf("no splice tap ending in %s:\n%s", suffix, taps)
		}
		start := time.Now()
		l.sh(hv, "ip link del "+tap)
		for {
			got := l.spliceTaps()
			if q := d.status(port); q.State == "active" && got != taps && strings.Count(got, "\n") == 2 && strings.Contains(got, tap) {
				t.Logf("%s deleted: the splice is back after %v (taps %s)", tap, time.Since(start).Round(time.Millisecond), strings.ReplaceAll(got, "\n", ", "))
				break
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("%s deleted: the splice is not back within 2 s: taps\n%s\nstatus %+v\n%s", tap, got, d.status(port), d.logBuf.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if n := healthEvent(l.scrape(metricsAddr), "splice_tap_gone"); n != float64(i+1) {
			t.Errorf("splice_tap_gone events: %v, want %d", n, i+1)
		}
		time.Sleep(2 * time.Second) // the tap queue fills again
		l.checkRates(d, port, 5000, 3*time.Second)
		l.waitNoLeak(d, metricsAddr, fds, gor)
	}
	d.must("release", port)
	if after := l.snapshot(); after != before {
		t.Errorf("release after the repairs left the host changed:\n%s", diffLines(before, after))
	}
}

// TestVMDestroyedUnderFlood: the quarantined port is deleted during a
// max-rate flood from its VM: the quarantine goes pending within 2 s, its
// taps go, and the daemon is back to the goroutines and file descriptors
// it held before the quarantine (after one quarantine and release of
// another port, so that what it opens once is not counted).
func TestVMDestroyedUnderFlood(t *testing.T) {
	l := newLab(t, "bridge")
	hv, ext, port := l.get("HV_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
	const metricsAddr = "127.0.0.1:9753"
	d := l.startDaemon("--metrics-addr", metricsAddr)
	// Warm up: what the daemon opens once, on its first splice and its
	// first scrape, is not a leak.
	d.must("quarantine", l.get("VM2_PORT"), "--pps", "1000")
	d.must("release", l.get("VM2_PORT"))
	l.goroutines(metricsAddr)
	time.Sleep(500 * time.Millisecond)
	fds, gor := d.fds(), l.goroutines(metricsAddr)
	t.Logf("before the quarantine (after a quarantine and release of another port): %d fds, %d goroutines", fds, gor)
	d.must("quarantine", port, "--pps", "5000")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "30s")
	l.waitListening(ext, 9)
	l.bg(l.get("VM1_NS"), "flood", "--dst", l.get("EXT_IP"), "--size", "250", "--pps", "0", "--duration", "20s")
	time.Sleep(2 * time.Second)
	if q := d.status(port); q.Directions.FromVM.Classes["udp"].PassedPackets == 0 {
		t.Fatalf("the flood does not go through the splice: %+v", q.Directions.FromVM)
	}
	t.Logf("quarantined under a flood: %d fds, %d goroutines", d.fds(), l.goroutines(metricsAddr))

	start := time.Now()
	l.sh(hv, "ip link del "+port)
	for d.status(port).State != "pending" {
		if time.Since(start) > 2*time.Second {
			t.Fatalf("not pending 2 s after the port was deleted: %+v\n%s", d.status(port), d.logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("pending %v after the port was deleted", time.Since(start).Round(time.Millisecond))
	if links := l.spliceLinks(); len(links) > 0 {
		t.Errorf("splice links left while pending: %v", links)
	}
	if progs := l.shaperdPrograms(); progs != "" {
		t.Errorf("shaperd programs left while pending:\n%s", progs)
	}
	l.waitNoLeak(d, metricsAddr, fds, gor)
}

// fds counts the daemon's open file descriptors.
func (d *daemon) fds() int {
	d.l.t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/fd")
	if err != nil {
		d.l.t.Fatal(err)
	}
	return len(ents)
}

// goroutines is the daemon's go_goroutines.
func (l *lab) goroutines(addr string) int {
	l.t.Helper()
	s := l.scrape(addr)["go_goroutines"]
	if len(s) != 1 {
		l.t.Fatalf("no go_goroutines at %s", addr)
	}
	return int(s[0].value)
}

// waitNoLeak waits up to 3 s for the daemon to hold at most fds file
// descriptors and gor goroutines (a scrape's own connection comes and goes).
func (l *lab) waitNoLeak(d *daemon, addr string, fds, gor int) {
	l.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		f, g := d.fds(), l.goroutines(addr)
		if f <= fds && g <= gor {
			return
		}
		if time.Now().After(deadline) {
			l.t.Errorf("leak: the daemon holds %d fds (was %d) and %d goroutines (was %d)\n%s", f, fds, g, gor,
				l.sh(l.get("HV_NS"), "ls -l /proc/"+strconv.Itoa(d.cmd.Process.Pid)+"/fd"))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
