package integration

// Faults (issue 17): the switch a splice was made on, or the VM's port,
// deleted while no daemon runs; `release --all --offline` must still remove
// every splice tap, flow and program, and say what it removed.

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestOfflineReleaseRemnants: two ports quarantined, the daemon killed
// (kill -9), then the bridge (Linux or OVS) or the first VM's port deleted;
// `release --all --offline` exits 0, names both ports and what it removed,
// and leaves no splice link, no shaperd tc filter or XDP program, and no
// shaperd flow or group.
func TestOfflineReleaseRemnants(t *testing.T) {
	for _, tc := range []struct {
		name, mode, fault string
	}{
		{"bridge/bridge deleted", "bridge", "bridge"},
		{"bridge/port deleted", "bridge", "port"},
		{"ovs/bridge deleted", "ovs", "bridge"},
		{"ovs/port deleted", "ovs", "port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, tc.mode)
			hv, port1, port2 := l.get("HV_NS"), l.get("VM1_PORT"), l.get("VM2_PORT")
			if tc.mode == "ovs" {
				l.addForeignFlows()
			}
			dir := t.TempDir()
			d := l.startDaemonIn(dir)
			foreign := ""
			if tc.mode == "ovs" {
				foreign = l.foreignFlows()
			}
			d.must("quarantine", port1, "--pps", "1000")
			d.must("quarantine", port2, "--pps", "1000", "--fail", "closed")
			d.kill9()
			if n := len(l.spliceLinks()); n < 6 {
				t.Fatalf("%d splice links after the quarantines, want at least 6 (three taps a port):\n%s", n, l.sh(hv, "ip -o link show"))
			}
			switch {
			case tc.fault == "bridge" && tc.mode == "bridge":
				l.sh(hv, "ip link del "+l.get("BRIDGE"))
			case tc.fault == "bridge":
				l.sh(hv, "ovs-vsctl del-br "+l.get("OVS_BRIDGE"))
			case tc.mode == "bridge":
				l.sh(hv, "ip link del "+port1)
			default: // the VM destroyed: libvirt removes its port, then the tap goes
				l.sh(hv, "ovs-vsctl del-port "+l.get("OVS_BRIDGE")+" "+port1+" && ip link del "+port1)
			}

			out, err := inNS(hv, filepath.Join(l.bin, "shaperd"), "--socket", d.sock, "release", "--all", "--offline",
				"--state-dir", filepath.Join(dir, "state")).CombinedOutput()
			t.Logf("release --all --offline: %v\n%s", err, out)
			if err != nil {
				t.Errorf("offline release failed: %v", err)
			}
			for _, p := range []string{port1, port2} {
				if !strings.Contains(string(out), "released "+p) {
					t.Errorf("the output does not say %s was released", p)
				}
			}
			if tc.fault == "bridge" && !regexp.MustCompile(`removed=.*shq[0-9a-f]{8}v`).Match(out) {
				t.Errorf("the output does not say what it removed")
			}
			if left := l.spliceLinks(); len(left) > 0 {
				t.Errorf("splice links left: %v", left)
			}
			if left := l.shaperdPrograms(); left != "" {
				t.Errorf("shaperd programs left attached:\n%s", left)
			}
			if tc.mode == "ovs" && tc.fault == "port" {
				if got := l.foreignFlows(); got != foreign {
					t.Errorf("flows after the offline release:\n%s\nwant only the foreign ones:\n%s", got, foreign)
				}
				if groups := l.sh(hv, "ovs-ofctl -O OpenFlow14 dump-groups "+l.get("OVS_BRIDGE")); strings.Count(groups, "group_id=") != 1 {
					t.Errorf("groups after the offline release (want only the foreign group 7):\n%s", groups)
				}
			}
			// The port that is left keeps nothing of the splice: no ingress
			// qdisc the splice added.
			if q := l.sh(hv, "tc qdisc show dev "+port2); strings.Contains(q, "ingress") || strings.Contains(q, "clsact") {
				t.Errorf("%s keeps a qdisc of the splice: %s", port2, q)
			}
		})
	}
}

// spliceLinks lists the hypervisor's links named as a splice's (taps and
// the fail-open fallback pair).
func (l *lab) spliceLinks() []string {
	l.t.Helper()
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^\d+: (shq[0-9a-f]{8}[a-z])[:@]`).FindAllStringSubmatch(l.sh(l.get("HV_NS"), "ip -o link show"), -1) {
		out = append(out, m[1])
	}
	return out
}

// shaperdPrograms lists the shaperd programs attached in the hypervisor
// namespace: XDP programs on any link, and tc filters whose program is
// shaperd's (named shq_*) on any link's ingress or egress.
func (l *lab) shaperdPrograms() string {
	l.t.Helper()
	hv := l.get("HV_NS")
	var b strings.Builder
	for _, line := range strings.Split(l.sh(hv, "ip -o link show"), "\n") {
		if strings.Contains(line, "xdp") {
			b.WriteString(line + "\n")
		}
	}
	for _, dev := range strings.Fields(l.sh(hv, "ls /sys/class/net")) {
		for _, dir := range []string{"ingress", "egress"} {
			out, _ := inNS(hv, "tc", "filter", "show", "dev", dev, dir).CombinedOutput()
			if strings.Contains(string(out), "shq_") {
				b.WriteString(dev + " " + dir + ":\n" + string(out))
			}
		}
	}
	return b.String()
}
