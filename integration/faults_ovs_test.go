package integration

// Faults (issue 17): ovs-vswitchd restarted under quarantines, with the
// daemon running. The restart loses every flow, group and no-flood flag;
// the daemon puts each splice back, in one bundle, with nothing doubled.

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestOVSVswitchdRestartLive: two ports quarantined, the second also
// guarded and isolated, ovs-vswitchd restarted: within 2 s of its start the bridge
// holds exactly the flows, groups and port flags it held while spliced
// (the guard's and the isolation's flows included, and the isolated port
// no-flood; no flow or group doubled or missing), each
// splice was repaired by one bundle, both quarantines stay active, the
// forwarder polices at the limit again, and releasing both and removing
// the guard restores the bridge.
func TestOVSVswitchdRestartLive(t *testing.T) {
	l := newLab(t, "ovs")
	port1, port2 := l.get("VM1_PORT"), l.get("VM2_PORT")
	d := l.startDaemon()
	before := l.stableSnapshot(port1)
	d.must("quarantine", port1, "--pps", "5000", "--to-vm-bps", "16mbit")
	d.must("quarantine", port2, "--pps", "1000")
	d.must("guard", port2, "--mac", l.get("VM2_MAC"), "--ip", l.get("VM2_IP"))
	d.must("isolate", port2, "--allow-from", l.get("EXT_IP")+"/32")
	spliced := l.ovsSnapshot()
	if !strings.Contains(spliced, "table=83") || !strings.Contains(spliced, "priority=64965,") {
		t.Fatalf("no flows of the isolation's (table 83, and the one for its splice at 64965) on the bridge:\n%s", spliced)
	}
	if !strings.Contains(spliced, "cookie=0x5350") {
		t.Fatalf("no flow of the guard's (cookie 0x5350...) on the bridge:\n%s", spliced)
	}
	flows := strings.Count(spliced, "cookie=0x5351")

	l.restartVswitchd()
	start := time.Now()
	for {
		got := l.ovsSnapshot()
		if got == spliced {
			t.Logf("every splice back %v after ovs-vswitchd started again (%d flows of shaperd's)", time.Since(start).Round(time.Millisecond), flows)
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("2 s after ovs-vswitchd started again the bridge differs from while spliced:\n%s\n%s", diffLines(spliced, got), d.logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // nothing more may come: no second repair
	if got := l.ovsSnapshot(); got != spliced {
		t.Errorf("the bridge changed after the repair:\n%s", diffLines(spliced, got))
	}
	log := d.logBuf.String()
	for _, p := range []string{port1, port2} {
		n := len(regexp.MustCompile(`"splice repaired after the restart of ovs-vswitchd" backend=ovs port=`+p+` .*flows and groups`).FindAllString(log, -1))
		if n != 1 {
			t.Errorf("%s repaired by %d bundles of flows and groups, want 1:\n%s", p, n, log)
		}
		if q := d.status(p); q.State != "active" {
			t.Errorf("%s after the restart: %+v", p, q)
		}
	}
	if m := regexp.MustCompile(`.*splice repaired after the restart.*`).FindAllString(log, -1); len(m) > 0 {
		t.Logf("daemon: %s", strings.Join(m, "\n"))
	}
	l.checkPoliced(d, port1)

	if !regexp.MustCompile(`port policies' flows put back after the restart of ovs-vswitchd`).MatchString(log) {
		t.Errorf("the guard's flows were not put back by the daemon:\n%s", log)
	}
	d.must("release", port1)
	d.must("release", port2)
	d.must("guard", "--remove", port2)
	d.must("isolate", "--remove", port2)
	if after := l.stableSnapshot(port1); after != before {
		t.Errorf("release after the restart left the host changed:\n%s", diffLines(before, after))
	}
}
