package integration

// The Open vSwitch backend's acceptance tests, against a real ovs-vswitchd
// (userspace datapath) that lab.sh starts inside the lab's hypervisor
// namespace for each lab and stops at lab down.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestQuarantineOVS: the Linux-bridge acceptance scenario (accuracy under a
// max-rate flood, the bypass probe, set in place, release restores full
// rate), on an OVS port; the snapshot also compares the bridge's flows,
// groups, ports and database before and after.
func TestQuarantineOVS(t *testing.T) {
	l := newLab(t, "ovs")
	runQuarantineScenario(t, l, "ovs")
}

// foreign* are flows and a group of someone else's (a cloud agent's): the
// splice must apply them (the anti-spoofing flow keyed on the VM's port) and
// never touch them.
const (
	spoofMAC      = "02:66:66:66:66:66"
	foreignCookie = "0x1234"
)

func (l *lab) addForeignFlows() {
	l.t.Helper()
	hv, br, port := l.get("HV_NS"), l.get("OVS_BRIDGE"), l.get("VM1_PORT")
	l.sh(hv, fmt.Sprintf(`ovs-ofctl add-flow %s "cookie=%s,priority=100,in_port=%s,dl_src=%s,actions=drop"`, br, foreignCookie, port, spoofMAC))
	l.sh(hv, fmt.Sprintf(`ovs-ofctl add-flow %s "priority=50,udp,tp_dst=7,actions=NORMAL"`, br))
	l.sh(hv, fmt.Sprintf(`ovs-ofctl add-flow %s "cookie=0xffff,table=1,priority=10,actions=drop"`, br))
	l.sh(hv, fmt.Sprintf(`ovs-ofctl -O OpenFlow14 add-group %s "group_id=7,type=all,bucket=output:%s"`, br, l.get("EXT_PORT")))
}

// foreignFlows lists the bridge's flows that are not shaperd's, without counters.
func (l *lab) foreignFlows() string {
	l.t.Helper()
	var keep []string
	for _, line := range sortedLines(l.sh(l.get("HV_NS"), "ovs-ofctl dump-flows "+l.get("OVS_BRIDGE")+" --no-stats")) {
		if !strings.Contains(line, "cookie=0x5351") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// TestOVSAntiSpoofing: an anti-spoofing flow keyed on the VM's port keeps
// dropping spoofed frames while the port is spliced (they reach the
// forwarder, and die at the flow when they re-enter as if from the port),
// while the same frames with the VM's own MAC arrive.
func TestOVSAntiSpoofing(t *testing.T) {
	l := newLab(t, "ovs")
	hv, vm1, ext := l.get("HV_NS"), l.get("VM1_NS"), l.get("EXT_NS")
	port, br := l.get("VM1_PORT"), l.get("OVS_BRIDGE")
	l.addForeignFlows()
	d := l.startDaemon()
	before := l.snapshot()

	d.must("quarantine", port, "--pps", "5000")
	if q := d.status(port); q.Backend != "ovs" {
		t.Fatalf("backend %q, want ovs", q.Backend)
	}
	spoofSink := l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":9", "--duration", "5s", "--json")
	realSink := l.bg(ext, "sink", "--listen", l.get("EXT_IP")+":10", "--duration", "5s", "--json")
	l.waitListening(ext, 9, 10)
	dropsBefore := flowPackets(t, l.sh(hv, "ovs-ofctl dump-flows "+br+" cookie="+foreignCookie+"/-1"))

	const n = 200
	vmMAC := mustMAC(t, l.get("VM1_MAC"))
	extMAC := mustMAC(t, l.get("EXT_MAC"))
	src, dst := net.ParseIP(l.get("VM1_IP")), net.ParseIP(l.get("EXT_IP"))
	var frames [][]byte
	for i := range n {
		frames = append(frames,
			udpFrame(extMAC, mustMAC(t, spoofMAC), src, dst, uint16(20000+i), 9),
			udpFrame(extMAC, vmMAC, src, dst, uint16(20000+i), 10))
	}
	sendRaw(t, vm1, "eth0", frames, time.Millisecond)

	spoofSink.wait(t, 20*time.Second)
	realSink.wait(t, 20*time.Second)
	spoofed, genuine := sinkTotal(t, spoofSink), sinkTotal(t, realSink)
	drops := flowPackets(t, l.sh(hv, "ovs-ofctl dump-flows "+br+" cookie="+foreignCookie+"/-1")) - dropsBefore
	udp := d.status(port).Directions.FromVM.Classes["udp"]
	t.Logf("while spliced: %d of %d spoofed frames arrived, %d of %d genuine; the anti-spoofing flow dropped %d; the forwarder passed %d UDP frames",
		spoofed, n, genuine, n, drops, udp.PassedPackets)
	if spoofed != 0 {
		t.Errorf("%d spoofed frames reached the external host, want 0", spoofed)
	}
	if genuine < n*95/100 {
		t.Errorf("%d of %d genuine frames arrived, want them all (a lost frame or two at most)", genuine, n)
	}
	if drops < n {
		t.Errorf("the anti-spoofing flow counted %d drops, want at least %d", drops, n)
	}
	if udp.PassedPackets < 2*n*95/100 {
		t.Errorf("the forwarder passed %d UDP frames, want about %d: the frames did not go through the splice", udp.PassedPackets, 2*n)
	}

	d.must("release", port)
	if after := l.snapshot(); after != before {
		t.Errorf("release left the host changed:\n%s", diffLines(before, after))
	}
}

// TestOVSFailureLeavesOthersAlone injects failures into a quarantine half
// way (an ovs-ofctl wrapper in the daemon's PATH): before the bundle, in the
// bundle (a last line re-adding another party's group makes OVS reject the whole transaction), and
// after it (verification). Each time the quarantine fails and the host is
// exactly as before, other parties' flows and group included; then a
// quarantine succeeds, leaves those flows alone, and release restores all.
func TestOVSFailureLeavesOthersAlone(t *testing.T) {
	l := newLab(t, "ovs")
	port := l.get("VM1_PORT")
	l.addForeignFlows()

	real, err := exec.LookPath("ovs-ofctl")
	if err != nil {
		t.Fatal(err)
	}
	wrap := t.TempDir()
	mode := filepath.Join(wrap, "mode")
	script := fmt.Sprintf(`#!/bin/sh
# ovs-ofctl test double: fails the way %[1]s says, else runs the real one.
mode=$(cat %[1]s 2>/dev/null)
case " $* " in
*" mod-port "*" %[3]s no-flood "*)
	[ "$mode" = modport ] && { echo "injected failure" >&2; exit 1; } ;;
*" bundle "*)
	in=$(cat)
	if [ "$mode" = bundle ] && printf '%%s\n' "$in" | grep -q '^flow add'; then
		printf '%%s\ngroup add group_id=7,type=all,bucket=output:1\n' "$in" | %[2]s "$@"
		exit $?
	fi
	printf '%%s\n' "$in" | %[2]s "$@"
	exit $? ;;
*" dump-flows "*"cookie="*)
	[ "$mode" = verify ] && { echo "injected failure" >&2; exit 1; } ;;
esac
exec %[2]s "$@"
`, mode, real, port)
	if err := os.WriteFile(filepath.Join(wrap, "ovs-ofctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", wrap+":"+os.Getenv("PATH"))
	d := l.startDaemon()
	before, foreign := l.snapshot(), l.foreignFlows()

	for _, m := range []string{"modport", "bundle", "verify"} {
		if err := os.WriteFile(mode, []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, errs := d.cli("quarantine", port, "--pps", "5000")
		t.Logf("failure injected at %s: exit %d: %s%s", m, code, out, strings.TrimSpace(errs))
		if code == 0 {
			t.Fatalf("quarantine with a failure injected at %s succeeded", m)
		}
		if after := l.snapshot(); after != before {
			t.Errorf("failure at %s left the host changed:\n%s", m, diffLines(before, after))
		}
	}

	os.WriteFile(mode, nil, 0o644)
	d.must("quarantine", port, "--pps", "5000")
	if got := l.foreignFlows(); got != foreign {
		t.Errorf("while spliced, other parties' flows changed:\n%s", diffLines(foreign, got))
	}
	d.must("release", port)
	if after := l.snapshot(); after != before {
		t.Errorf("release left the host changed:\n%s", diffLines(before, after))
	}
}

// TestOVSKill9FailOpen: with --fail open, a 100/s ping from the VM loses at
// most 10 replies across kill -9 of the daemon and with no daemon running:
// the taps lose carrier and the fast-failover groups take the direct path.
func TestOVSKill9FailOpen(t *testing.T) {
	l := newLab(t, "ovs")
	vm1, port := l.get("VM1_NS"), l.get("VM1_PORT")
	d := l.startDaemon()
	d.must("quarantine", port, "--pps", "5000", "--fail", "open")
	if q := d.status(port); q.Backend != "ovs" || q.Fail != "open" {
		t.Fatalf("status: backend %q fail %q, want ovs open", q.Backend, q.Fail)
	}
	// 6 s at 100/s: 1 s through the forwarder, then kill -9, then 5 s
	// without a daemon.
	ping := l.bg(vm1, "probe", "ping", "--dst", l.get("EXT_IP"), "--count", "600", "--interval", "10ms", "--timeout", "200ms", "--json")
	time.Sleep(time.Second)
	sigkill(t, d)
	pr := pingResult(t, ping)
	t.Logf("--fail open, kill -9 after 1 s: %d of %d replies, %d lost", pr.Completed, pr.Sent, pr.Failed)
	if pr.Sent != 600 || pr.Failed > 10 {
		t.Errorf("lost %d of %d replies, want at most 10", pr.Failed, pr.Sent)
	}
}

// TestOVSKill9FailClosed: with --fail closed, the same ping gets no reply
// once the daemon is killed; it got them all before.
func TestOVSKill9FailClosed(t *testing.T) {
	l := newLab(t, "ovs")
	vm1, port := l.get("VM1_NS"), l.get("VM1_PORT")
	d := l.startDaemon()
	d.must("quarantine", port, "--pps", "5000", "--fail", "closed")
	if q := d.status(port); q.Backend != "ovs" || q.Fail != "closed" {
		t.Fatalf("status: backend %q fail %q, want ovs closed", q.Backend, q.Fail)
	}
	args := []string{"ping", "--dst", l.get("EXT_IP"), "--count", "100", "--interval", "10ms", "--timeout", "200ms", "--json"}
	pr := pingResult(t, l.bg(vm1, "probe", args...))
	t.Logf("--fail closed, daemon running: %d of %d replies", pr.Completed, pr.Sent)
	if pr.Completed < 95 {
		t.Fatalf("only %d of %d replies through the forwarder", pr.Completed, pr.Sent)
	}
	sigkill(t, d)
	time.Sleep(200 * time.Millisecond)
	pr = pingResult(t, l.bg(vm1, "probe", args...))
	t.Logf("--fail closed, after kill -9: %d of %d replies", pr.Completed, pr.Sent)
	if pr.Completed != 0 {
		t.Errorf("%d replies with the daemon killed and --fail closed, want 0", pr.Completed)
	}
}

// ---------------------------------------------------------------- helpers

// useOVS points the ovs-* commands of the test and its children (the
// daemon, l.sh) at the lab's private OVS.
func (l *lab) useOVS() {
	l.t.Helper()
	for _, k := range []string{"OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_BRIDGE"} {
		if l.get(k) == "" {
			l.t.Fatalf("ovs lab env lacks %s", k)
		}
	}
	for _, k := range []string{"OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR"} {
		l.t.Setenv(k, l.get(k))
	}
}

// checkOVSStopped stops the OVS in dir should lab down have left it, and
// fails the test if any process still names dir.
func checkOVSStopped(t *testing.T, dir string) {
	t.Helper()
	exec.Command(filepath.Join(repoRoot(), "scripts/netns/ovs.sh"), "stop", dir).Run()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			t.Errorf("a process still runs with the lab's OVS directory: %s: %s", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// ovsSnapshot lists the lab's OVS: flows without counters, groups, OpenFlow
// ports and the database, each normalised for order.
func (l *lab) ovsSnapshot() string {
	l.t.Helper()
	hv, br := l.get("HV_NS"), l.get("OVS_BRIDGE")
	var b strings.Builder
	b.WriteString("ovs flows:\n" + strings.Join(sortedLines(l.sh(hv, "ovs-ofctl dump-flows "+br+" --no-stats")), "\n"))
	b.WriteString("\novs groups:\n" + strings.Join(sortedLines(l.sh(hv, "ovs-ofctl -O OpenFlow14 dump-groups "+br)), "\n"))
	b.WriteString("\novs ports:\n" + l.sh(hv, "ovs-ofctl show "+br))
	b.WriteString("ovs db:\n" + sortedTree(l.sh(hv, "ovs-vsctl show")))
	return b.String()
}

var xid = regexp.MustCompile(`\(xid=0x[0-9a-f]+\)`)

// sortedLines returns the non-empty lines of s, trimmed and sorted, without
// OpenFlow reply headers.
func sortedLines(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "OFPST_") || strings.HasPrefix(line, "NXST_") {
			continue
		}
		out = append(out, xid.ReplaceAllString(line, ""))
	}
	sort.Strings(out)
	return out
}

// sortedTree sorts an indented listing (ovs-vsctl show) block by block, so
// that rows printed in hash order compare equal.
func sortedTree(s string) string {
	type node struct {
		line string
		kids []*node
	}
	indent := func(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }
	root := &node{}
	stack := []*node{root}
	depth := []int{-1}
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		n := &node{line: line}
		for indent(line) <= depth[len(depth)-1] {
			stack, depth = stack[:len(stack)-1], depth[:len(depth)-1]
		}
		p := stack[len(stack)-1]
		p.kids = append(p.kids, n)
		stack, depth = append(stack, n), append(depth, indent(line))
	}
	var render func(n *node) string
	render = func(n *node) string {
		var kids []string
		for _, k := range n.kids {
			kids = append(kids, render(k))
		}
		sort.Strings(kids)
		out := ""
		if n != root {
			out = n.line + "\n"
		}
		return out + strings.Join(kids, "")
	}
	return render(root)
}

// sigkill kills the daemon with SIGKILL, as a crash would, and waits.
func sigkill(t *testing.T, d *daemon) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not die of SIGKILL")
	}
}

type pingSummary struct {
	Sent, Completed, Failed int
}

func pingResult(t *testing.T, p *proc) pingSummary {
	t.Helper()
	p.wait(t, 60*time.Second)
	var pr pingSummary
	if err := json.Unmarshal(lastJSONLine(p.out.String()), &pr); err != nil {
		t.Fatalf("ping output %q: %v (stderr %s)", p.out, err, p.err)
	}
	return pr
}

// waitListening waits until UDP ports are bound in ns.
func (l *lab) waitListening(ns string, ports ...int) {
	l.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range ports {
		for !strings.Contains(l.sh(ns, "ss -Hlun"), fmt.Sprintf(":%d ", p)) {
			if time.Now().After(deadline) {
				l.t.Fatalf("nothing listens on UDP port %d in %s after 5 s", p, ns)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func sinkTotal(t *testing.T, p *proc) int {
	t.Helper()
	var r struct {
		Total int `json:"total_packets"`
	}
	if err := json.Unmarshal(lastJSONLine(p.out.String()), &r); err != nil {
		t.Fatalf("sink output %q: %v", p.out, err)
	}
	return r.Total
}

var nPackets = regexp.MustCompile(`n_packets=(\d+)`)

// flowPackets sums n_packets in dump-flows output.
func flowPackets(t *testing.T, out string) int {
	t.Helper()
	total := 0
	for _, m := range nPackets.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		total += n
	}
	return total
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// udpFrame builds an Ethernet/IPv4/UDP frame with a 32-byte payload.
func udpFrame(dst, src net.HardwareAddr, sip, dip net.IP, sport, dport uint16) []byte {
	payload := make([]byte, 32)
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:16], sip.To4())
	copy(ip[16:20], dip.To4())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload))) // checksum 0: none
	copy(f[42:], payload)
	return f
}

// sendRaw writes frames out of dev in namespace ns with an AF_PACKET
// socket, gap apart, from a thread that enters ns and is never reused (the
// runtime discards a thread whose goroutine ends locked).
func sendRaw(t *testing.T, ns, dev string, frames [][]byte, gap time.Duration) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			errc <- err
			return
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // protocol 0: send only
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				errc <- err
				return
			}
			time.Sleep(gap)
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("send raw frames in %s: %v", ns, err)
	}
}
