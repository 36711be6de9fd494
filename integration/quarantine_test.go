package integration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
)

// TestQuarantineLinuxBridge is the core pipeline's acceptance test: a VM
// floods 250-byte UDP frames at the generator's maximum; shaperd quarantines
// its port at 5000 pps; the external host receives 5000 pps within 2% over
// 10 s while an interactive TCP exchange with the VM's port 22 completes every
// round trip; set --pps 2000 takes effect within 1 s without re-splicing; and
// release restores full rate and leaves nothing behind.
func TestQuarantineLinuxBridge(t *testing.T) {
	l := newLab(t, "bridge")
	runQuarantineScenario(t, l, "tc")
}

func runQuarantineScenario(t *testing.T, l *lab, backend string) {
	hv, vm1, ext := l.get("HV_NS"), l.get("VM1_NS"), l.get("EXT_NS")
	port := l.get("VM1_PORT")
	d := l.startDaemon()
	before := l.snapshot()

	// An interactive service on the VM's port 22, and a sink on the
	// external host for the flood.
	l.bg(vm1, "probe", "server", "--listen", l.get("VM1_IP")+":22")
	l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "60s")

	d.must("quarantine", port, "--pps", "5000")
	q := d.status(port)
	if q.Backend != backend || q.State != "active" {
		t.Fatalf("status: backend %q state %q, want %q active", q.Backend, q.State, backend)
	}
	vmTap, netTap := q.Taps.VM, q.Taps.Net
	idxBefore := l.ifindex(hv, vmTap) + "/" + l.ifindex(hv, netTap)

	flood := l.bg(vm1, "flood", "--dst", l.get("EXT_IP"), "--dport", "9", "--proto", "udp", "--size", "250", "--pps", "0", "--duration", "40s", "--json")
	time.Sleep(2 * time.Second) // the flood ramps up; the tap queue fills

	probe := l.bg(ext, "probe", "client", "--connect", l.get("VM1_IP")+":22", "--count", "100", "--interval", "100ms", "--timeout", "5s", "--json")

	l.checkRates(d, port, 5000, 10*time.Second)

	if err := probe.wait(t, 30*time.Second); err != nil {
		t.Errorf("bypass probe failed: %v\n%s%s", err, probe.out, probe.err)
	}
	var pr struct {
		Sent, Completed, Failed int
		P50                     float64 `json:"p50_ms"`
		P99                     float64 `json:"p99_ms"`
	}
	if err := json.Unmarshal(lastJSONLine(probe.out.String()), &pr); err != nil {
		t.Errorf("probe output %q: %v", probe.out, err)
	}
	t.Logf("bypass probe under flood: %d/%d round trips, p50 %.2f ms, p99 %.2f ms", pr.Completed, pr.Sent, pr.P50, pr.P99)
	if pr.Sent != 100 || pr.Completed != 100 {
		t.Errorf("bypass probe completed %d of %d round trips, want 100 of 100", pr.Completed, pr.Sent)
	}

	// Change in place.
	d.must("set", port, "--pps", "2000")
	time.Sleep(time.Second)
	got := l.rxRate(ext, "eth0", 3*time.Second)
	t.Logf("1 s after set --pps 2000: %.0f pps", got)
	if !within(got, 2000, 0.02) {
		t.Errorf("1 s after set --pps 2000: %.0f pps, want 2000 within 2%%", got)
	}
	if idx := l.ifindex(hv, vmTap) + "/" + l.ifindex(hv, netTap); idx != idxBefore {
		t.Errorf("set re-spliced the port: tap ifindexes %s, were %s", idx, idxBefore)
	}

	// The frames the forwarder never read, dropped at the VM tap's queue:
	// status reports the taps' own counter, read between two readings of
	// it (the flood is still running).
	tapDropped := func() uint64 {
		n := l.counter(hv, vmTap, "tx_dropped")
		if q.Taps.Priority != "" {
			n += l.counter(hv, q.Taps.Priority, "tx_dropped")
		}
		return n
	}
	lo := tapDropped()
	st := d.status(port)
	hi := tapDropped()
	if td := st.Directions.FromVM.TapDrops; td < lo || td > hi {
		t.Errorf("status tap_drops from the VM %d, want the taps' tx_dropped, between %d and %d", td, lo, hi)
	}
	udp := st.Directions.FromVM.Classes["udp"]
	t.Logf("the forwarder dropped %d UDP frames from the VM; the VM tap's queue dropped %d it never read", udp.DroppedPackets, st.Directions.FromVM.TapDrops)
	if udp.PassedPackets == 0 || udp.Drops["aggregate_budget"] == 0 {
		t.Errorf("status counters do not show the policing: %+v", udp)
	}
	if bp := st.Directions.ToVM.Classes["bypass"]; bp.PassedPackets == 0 {
		t.Errorf("status shows no bypass frames to the VM: %+v", bp)
	}

	// Release: full rate again.
	d.must("release", port)
	time.Sleep(time.Second)
	got = l.rxRate(ext, "eth0", 2*time.Second)
	t.Logf("after release: %.0f pps", got)
	if got < 20000 {
		t.Errorf("after release: %.0f pps, want the unpoliced rate (> 20000)", got)
	}
	flood.cmd.Process.Signal(interrupt)
	flood.wait(t, 10*time.Second)
	t.Logf("flood: %s", strings.TrimSpace(flood.out.String()))

	if after := l.snapshot(); after != before {
		t.Errorf("release left the host changed:\n%s", diffLines(before, after))
	}
}

func lastJSONLine(s string) []byte {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(strings.TrimSpace(lines[i]), "{") {
			return []byte(lines[i])
		}
	}
	return nil
}

// diffLines shows the lines only in a (-) and only in b (+).
func diffLines(a, b string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := count(a), count(b)
	var out strings.Builder
	for _, l := range strings.Split(a, "\n") {
		if ma[l] > mb[l] {
			out.WriteString("- " + l + "\n")
			ma[l]--
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if mb[l] > count(a)[l] {
			out.WriteString("+ " + l + "\n")
			mb[l]--
		}
	}
	return out.String()
}

// TestPortVanishes: the VM is destroyed while quarantined. The splice is torn
// down with a log line, no tap, qdisc or filter is left, and the quarantine
// waits, pending, for the port to return; releasing it then is accepted.
func TestPortVanishes(t *testing.T) {
	l := newLab(t, "bridge")
	hv, port := l.get("HV_NS"), l.get("VM1_PORT")
	d := l.startDaemon()
	d.must("quarantine", port, "--pps", "1000")
	if !strings.Contains(l.sh(hv, "ip -o link show"), "shq") {
		t.Fatal("no splice taps after quarantine")
	}
	l.sh(hv, "ip link del "+port)
	deadline := time.Now().Add(2 * time.Second)
	for {
		q := d.status(port)
		links := l.sh(hv, "ip -o link show")
		if q.State == "pending" && !strings.Contains(links, "shq") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after the port vanished: state %s\nlinks:\n%s", q.State, links)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if q := l.sh(hv, "tc qdisc show | grep -c ingress || true"); strings.TrimSpace(q) != "0" {
		t.Errorf("ingress qdiscs left behind: %s", l.sh(hv, "tc qdisc show"))
	}
	if !strings.Contains(d.logBuf.String(), "disappeared") {
		t.Errorf("no log line about the vanished port:\n%s", d.logBuf.String())
	}
	d.must("release", port)
	if code, out, _ := d.cli("status", "--json"); code != 0 || !strings.Contains(out, `"quarantines": []`) {
		t.Errorf("after releasing the pending quarantine: %s", out)
	}
}

// checkRates measures a quarantine of port at limit pps from the VM under a
// flood, over window: what the forwarder passed (its UDP class, from status)
// and what the external host received must each be the limit within 2%.
// Each reading is stamped with when it was taken (the daemon's clock for
// status, see statusAt and counterAt): under load a status call takes long
// enough to skew a rate stamped before or after it.
func (l *lab) checkRates(d *daemon, port string, limit float64, window time.Duration) {
	l.t.Helper()
	ext := l.get("EXT_NS")
	passed := func(q api.Quarantine) uint64 { return q.Directions.FromVM.Classes["udp"].PassedPackets }
	q0, t0 := d.statusAt(port)
	got := l.rxRate(ext, "eth0", window)
	q1, t1 := d.statusAt(port)
	fwdRate := float64(passed(q1)-passed(q0)) / t1.Sub(t0).Seconds()
	// The forwarder's own rate tells a starved forwarder (both low) from
	// frames lost after it (only the host's low).
	l.t.Logf("quarantine --pps %.0f under a flood: external host receives %.0f pps; the forwarder passed %.0f pps; host rx_dropped %s",
		limit, got, fwdRate, strings.TrimSpace(l.sh(ext, "cat /sys/class/net/eth0/statistics/rx_dropped")))
	if !within(fwdRate, limit, 0.02) {
		l.t.Errorf("the forwarder passed %.0f pps, want %.0f within 2%%", fwdRate, limit)
	}
	// Both backends: the host gets the limit within 2%. (On OVS it once
	// seemed to get 2-3% less than the forwarder passed; that was the
	// measurement, a counter read by a new process whose spawn took up to
	// seconds on the loaded host.)
	if !within(got, limit, 0.02) {
		l.t.Errorf("delivered %.0f pps, want %.0f within 2%%", got, limit)
	}
}
