package ovspolicy

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/splice/ovssplice"
)

var vmMAC, _ = net.ParseMAC("52:54:00:00:00:11")

func testGuard(t *testing.T, ipv6 string) portpolicy.Guard {
	g, err := portpolicy.ParseGuard(vmMAC.String(), "198.18.0.11", ipv6)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func testIsolate(t *testing.T, cidr string) portpolicy.Isolate {
	i, err := portpolicy.ParseIsolate(cidr)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// fakeOVS is one bridge, br0, holding flows as "cookie=0x..,priority=..,
// match actions=..." lines, with n_packets per line; ports by name.
type fakeOVS struct {
	mu      sync.Mutex // held by run: a Manager's restart watcher calls it too
	t       *testing.T
	ports   map[string]int    // name -> ofport
	macs    map[string]string // name -> attached-mac
	flows   []string          // as bundles added them (without "flow add ")
	packets map[string]uint64 // flow -> n_packets
	bundles []string
	calls   []string
	noFlood map[string]bool              // name -> the port is no-flood
	ids     map[string]map[string]string // name -> external_ids
	static  map[string]bool              // MAC -> pinned (fdb/add)
}

func newFake(t *testing.T) *fakeOVS {
	return &fakeOVS{t: t, ports: map[string]int{"vm1": 3, "vm2": 4}, macs: map[string]string{"vm1": vmMAC.String()}, packets: map[string]uint64{},
		noFlood: map[string]bool{}, ids: map[string]map[string]string{}}
}

var cookieRe = regexp.MustCompile(`cookie=(0x[0-9a-f]+)`)

func cookieOf(line string) uint64 {
	m := cookieRe.FindStringSubmatch(line)
	if m == nil {
		return 0
	}
	c, _ := strconv.ParseUint(m[1], 0, 64)
	return c
}

func (f *fakeOVS) run(stdin []byte, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return strings.HasPrefix(a, "--timeout=") })
	switch {
	case name == "ovs-vsctl" && args[0] == "list-br":
		return []byte("br0\n"), nil
	case name == "ovs-vsctl" && args[0] == "port-to-br":
		n, ok := f.ports[args[1]]
		if !ok {
			return nil, fmt.Errorf("ovs-vsctl: no port named %s", args[1])
		}
		out := fmt.Sprintf("br0\n%d\n[]\n", n)
		if m := f.macs[args[1]]; m != "" {
			out += strconv.Quote(m) + "\n"
		} else {
			out += "\n"
		}
		return []byte(out), nil
	case name == "ovs-vsctl" && slices.Equal(args, []string{"--format=json", "--columns=name,external_ids", "list", "Interface"}):
		var rows []string
		for _, n := range slices.Sorted(maps.Keys(f.ports)) {
			var kvs []string
			for _, k := range slices.Sorted(maps.Keys(f.ids[n])) {
				kvs = append(kvs, fmt.Sprintf("[%q,%q]", k, f.ids[n][k]))
			}
			rows = append(rows, fmt.Sprintf(`[%q,["map",[%s]]]`, n, strings.Join(kvs, ",")))
		}
		return []byte(`{"data":[` + strings.Join(rows, ",") + `],"headings":["name","external_ids"]}`), nil
	case name == "ovs-vsctl" && args[0] == "--format=json" && slices.Contains(args, "find"):
		return []byte(`{"data":[],"headings":["name","external_ids"]}`), nil
	case name == "ovs-vsctl" && args[0] == "set" && args[1] == "Interface":
		k, v, _ := strings.Cut(strings.TrimPrefix(args[3], "external_ids:"), "=")
		if f.ids[args[2]] == nil {
			f.ids[args[2]] = map[string]string{}
		}
		f.ids[args[2]][k] = v
		return nil, nil
	case name == "ovs-vsctl" && args[0] == "--if-exists" && args[1] == "remove":
		delete(f.ids[args[3]], args[5])
		if len(f.ids[args[3]]) == 0 {
			delete(f.ids, args[3])
		}
		return nil, nil
	case name == "ovs-ofctl" && args[0] == "dump-ports-desc":
		var b strings.Builder
		for _, n := range slices.Sorted(maps.Keys(f.ports)) {
			cfg := "0"
			if f.noFlood[n] {
				cfg = "NO_FLOOD"
			}
			fmt.Fprintf(&b, " %d(%s): addr:aa:bb:cc:dd:ee:%02x\n     config:     %s\n     state:      LIVE\n", f.ports[n], n, f.ports[n], cfg)
		}
		return []byte(b.String()), nil
	case name == "ovs-ofctl" && args[0] == "mod-port":
		f.noFlood[args[2]] = args[3] == "no-flood"
		return nil, nil
	case name == "ovs-appctl" && (args[0] == "fdb/add" || args[0] == "fdb/del"):
		if f.static == nil {
			f.static = map[string]bool{}
		}
		f.static[args[len(args)-1]] = args[0] == "fdb/add"
		return nil, nil
	case name == "ovs-appctl" && args[0] == "dpctl/dump-dps":
		return []byte("netdev@ovs-netdev\n"), nil
	case name == "ovs-appctl" && args[0] == "dpctl/flush-conntrack":
		return nil, nil
	case name == "ovs-appctl":
		return []byte(" port  VLAN  MAC                Age\n"), nil
	case name == "ovs-ofctl" && args[0] == "dump-flows":
		var b strings.Builder
		b.WriteString("NXST_FLOW reply (xid=0x4):\n")
		for _, fl := range f.flows {
			if slices.Contains(args, "--no-stats") {
				fmt.Fprintf(&b, " %s\n", fl)
			} else if cookieOf(fl)&CookieMask == CookieTag {
				fmt.Fprintf(&b, " %s, duration=1s, table=0, n_packets=%d, n_bytes=0, %s\n", fl[:strings.Index(fl, ",")], f.packets[fl], fl[strings.Index(fl, ",")+1:])
			}
		}
		return []byte(b.String()), nil
	case name == "ovs-ofctl" && slices.Contains(args, "bundle"):
		f.bundles = append(f.bundles, string(stdin))
		flows := slices.Clone(f.flows)
		for _, line := range strings.Split(strings.TrimSpace(string(stdin)), "\n") {
			switch {
			case strings.HasPrefix(line, "flow delete "):
				var c, m uint64
				if _, err := fmt.Sscanf(strings.TrimPrefix(line, "flow delete "), "cookie=%v/%v", &c, &m); err != nil {
					return nil, fmt.Errorf("bad delete %q: %v", line, err)
				}
				flows = slices.DeleteFunc(flows, func(fl string) bool { return cookieOf(fl)&m == c })
			case strings.HasPrefix(line, "flow add "):
				fl := strings.TrimPrefix(strings.TrimPrefix(line, "flow add "), "table=0,")
				flows = append(flows, fl)
			default:
				return nil, fmt.Errorf("bad bundle line %q", line)
			}
		}
		f.flows = flows
		return nil, nil
	}
	return nil, fmt.Errorf("fake: unexpected %s %v", name, args)
}

// newTestManager returns a Manager on f with no ovs-vswitchd to watch.
func newTestManager(f *fakeOVS) *Manager {
	return New(Options{Run: f.run, Logger: slog.New(slog.DiscardHandler), Watcher: ovssplice.NewWatcher(func() string { return "" }, ovssplice.VswitchdPoll, nil)})
}

// After a restart of ovs-vswitchd (a new pid; every flow gone) the
// Manager puts its policies' flows back by itself, and their drop
// counters go on from where they were instead of starting again at 0;
// with no policy left, it stops watching.
func TestVswitchdRestartPutsFlowsBack(t *testing.T) {
	f := newFake(t)
	bridgeOwn := "priority=0 actions=NORMAL"
	f.flows = []string{bridgeOwn}
	var pid atomic.Value
	pid.Store("100")
	w := ovssplice.NewWatcher(func() string { return pid.Load().(string) }, ovssplice.VswitchdPoll, nil)
	m := New(Options{Run: f.run, Logger: slog.New(slog.DiscardHandler), Watcher: w})
	g := testGuard(t, "")
	if err := m.Apply(map[string]portpolicy.Policy{"vm1": {Guard: &g}}); err != nil {
		t.Fatal(err)
	}
	// dropMAC sets the n_packets of the guard's guard_mac flow; it
	// reports whether that flow is there.
	dropMAC := func(n uint64) bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, fl := range f.flows {
			if strings.HasSuffix(fl, "reg11=0/0x1,actions=drop") {
				f.packets[fl] = n
				return true
			}
		}
		return false
	}
	stat := func() uint64 {
		st, err := m.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st["vm1"][portpolicy.ReasonGuardMAC]
	}
	if !dropMAC(7) || stat() != 7 {
		t.Fatalf("guard_mac %d before the restart, want 7", stat())
	}
	installed := func() []string { f.mu.Lock(); defer f.mu.Unlock(); return slices.Clone(f.flows) }()

	f.mu.Lock()
	f.flows, f.packets = []string{bridgeOwn}, map[string]uint64{}
	f.mu.Unlock()
	pid.Store("200")
	if n := stat(); n != 7 {
		t.Errorf("guard_mac %d with the flows gone, want 7 (the last count)", n)
	}
	start := time.Now()
	for !dropMAC(3) {
		if time.Since(start) > 2*time.Second {
			t.Fatalf("the guard's flows are not back 2 s after the restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("flows back %v after the restart", time.Since(start).Round(time.Millisecond))
	if got := func() []string { f.mu.Lock(); defer f.mu.Unlock(); return slices.Clone(f.flows) }(); !slices.Equal(got, installed) {
		t.Errorf("flows after the restart:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(installed, "\n"))
	}
	if n := stat(); n != 10 {
		t.Errorf("guard_mac %d after the restart and 3 more drops, want 10", n)
	}

	if err := m.Apply(map[string]portpolicy.Policy{}); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if !w.Running() {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatal("still watching ovs-vswitchd a second after the last policy went")
		}
	}
}

// TestGuardRulesOrder: the guard's flows, in priority order, say what
// docs/guard.md's table says; every flow is the port's, unmarked.
func TestGuardRulesOrder(t *testing.T) {
	g := testGuard(t, "2001:2::11/128")
	p := Port{Name: "vm1", OFPort: 3}
	c, lines := policyFlows(p, kindGuard, portpolicy.Policy{Guard: &g})
	if c&CookieMask != CookieTag || c&0xff != 0 {
		t.Fatalf("cookie %#x", c)
	}
	prio := 65536
	var got []string
	for _, l := range lines {
		if !strings.Contains(l, ",in_port=3,reg11=0/0x1") {
			t.Errorf("not keyed on the port and its mark: %s", l)
		}
		pr := regexp.MustCompile(`priority=(\d+)`).FindStringSubmatch(l)
		n, _ := strconv.Atoi(pr[1])
		if n >= prio || n <= 65000 {
			t.Errorf("priority %d after %d (or below the splice's): %s", n, prio, l)
		}
		prio = n
		if cookieOf(l)&policyMask != c {
			t.Errorf("cookie of %s is not the policy's %#x", l, c)
		}
		r := kindGuard.reasonOf(cookieOf(l) & 0xff)
		act := l[strings.Index(l, "actions=")+len("actions="):]
		if (r == "") != (act == "load:1->NXM_NX_REG11[0],resubmit(,0)") || (r != "" && act != "drop") {
			t.Errorf("reason %q with actions %s", r, act)
		}
		got = append(got, fmt.Sprintf("%s %s", r, l[strings.Index(l, "reg11=0/0x1")+len("reg11=0/0x1"):strings.Index(l, ",actions=")]))
	}
	want := []string{
		"guard_dhcp ,udp,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,tp_src=67",
		" ,udp,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,nw_src=0.0.0.0,tp_src=68,tp_dst=67",
		" ,arp,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,arp_sha=52:54:00:00:00:11,arp_spa=0.0.0.0",
		" ,arp,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,arp_sha=52:54:00:00:00:11,arp_spa=198.18.0.11",
		"guard_arp ,arp,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11",
		" ,ip,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,nw_src=198.18.0.11",
	}
	for _, typ := range []int{134, 137, 146, 147, 151, 152, 153} {
		want = append(want, fmt.Sprintf("guard_ra ,icmp6,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,icmp_type=%d", typ))
	}
	if !slices.Equal(got[:len(want)], want) {
		t.Errorf("first flows:\n%s\nwant\n%s", strings.Join(got[:len(want)], "\n"), strings.Join(want, "\n"))
	}
	tail := []string{"guard_ip ,dl_src=52:54:00:00:00:11", "guard_mac "}
	if !slices.Equal(got[len(got)-2:], tail) {
		t.Errorf("last flows %q, want %q", got[len(got)-2:], tail)
	}
	// Neighbour discovery: from the prefix and the link-local address,
	// with no option or the VM's own; then every other NS and NA dropped.
	for _, w := range []string{
		"icmp_type=135,icmp_code=0,ipv6_src=2001:2::11/128,nd_sll=00:00:00:00:00:00",
		"icmp_type=135,icmp_code=0,ipv6_src=fe80::5054:ff:fe00:11/128,nd_sll=52:54:00:00:00:11",
		"icmp_type=135,icmp_code=0,ipv6_src=::,nd_target=2001:2::11/128,nd_sll=00:00:00:00:00:00",
		"icmp_type=136,icmp_code=0,ipv6_src=2001:2::11/128,nd_target=fe80::5054:ff:fe00:11/128,nd_tll=52:54:00:00:00:11",
	} {
		i := slices.IndexFunc(got, func(s string) bool { return strings.HasSuffix(s, w) })
		j := slices.Index(got, "guard_nd ,icmp6,vlan_tci=0x0000/0x1000,dl_src=52:54:00:00:00:11,icmp_type=135")
		if i < 0 || j < 0 || i > j || !strings.HasPrefix(got[i], " ") {
			t.Errorf("no allowing flow %s before the ND drop (%d, %d)", w, i, j)
		}
	}
	// Without --ipv6, no IPv6 flow at all: IPv6 is guard_ip.
	g4 := testGuard(t, "")
	_, lines4 := policyFlows(p, kindGuard, portpolicy.Policy{Guard: &g4})
	if len(lines4) != 8 || slices.ContainsFunc(lines4, func(s string) bool { return strings.Contains(s, "ipv6") || strings.Contains(s, "icmp6") }) {
		t.Errorf("IPv4-only guard: %d flows:\n%s", len(lines4), strings.Join(lines4, "\n"))
	}
}

// TestIsolateRules: the seed's gw_mgmt flows, from the VM keyed on its
// port, to it on its MACs, through conntrack in Zone.
func TestIsolateRules(t *testing.T) {
	iso := testIsolate(t, "198.18.0.0/24")
	mac2, _ := net.ParseMAC("52:54:00:00:00:12")
	p := Port{Name: "vm1", OFPort: 3, MACs: []net.HardwareAddr{vmMAC, mac2}}
	_, lines := policyFlows(p, kindIsolate, portpolicy.Policy{Isolate: &iso})
	if len(lines) != 7+2*8+6 {
		t.Fatalf("%d flows, want 7 from the VM, 8 to each of its 2 MACs and 6 for the multicast copies:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, w := range []string{
		"priority=100,reg11=0x30000/0xffff0000,in_port=3,actions=drop",
		"priority=98,reg11=0x30000/0xffff0000,arp,vlan_tci=0x0000/0x1000,actions=output:3",
		"priority=96,reg11=0x30000/0xffff0000,ip,vlan_tci=0x0000/0x1000,actions=drop",
		"priority=95,reg11=0x30000/0xffff0000,actions=drop",
		"priority=65397,in_port=3,reg11=0/0x2,ip,vlan_tci=0x0000/0x1000,ct_state=-trk,actions=ct(zone=21328,table=0)",
		"priority=65396,in_port=3,reg11=0/0x2,ip,vlan_tci=0x0000/0x1000,ct_state=+trk+est,actions=load:1->NXM_NX_REG11[1],resubmit(,0)",
		"priority=65395,in_port=3,reg11=0/0x2,ip,vlan_tci=0x0000/0x1000,actions=drop",
		"priority=65296,dl_dst=52:54:00:00:00:12,reg11=0/0x4,ip,vlan_tci=0x0000/0x1000,nw_src=198.18.0.0/24,ct_state=+trk+new,actions=ct(commit,zone=21328),load:1->NXM_NX_REG11[2],resubmit(,0)",
		"priority=65294,dl_dst=52:54:00:00:00:11,reg11=0/0x4,ip,vlan_tci=0x0000/0x1000,actions=drop",
		"priority=65293,dl_dst=52:54:00:00:00:11,reg11=0/0x4,actions=drop",
	} {
		if !slices.ContainsFunc(lines, func(s string) bool { return strings.HasSuffix(s, w) }) {
			t.Errorf("no flow ending %s in:\n%s", w, strings.Join(lines, "\n"))
		}
	}
	for _, l := range lines {
		r := kindIsolate.reasonOf(cookieOf(l) & 0xff)
		switch {
		case strings.HasSuffix(l, "priority=65395,in_port=3,reg11=0/0x2,ip,vlan_tci=0x0000/0x1000,actions=drop"):
			if r != portpolicy.ReasonIsoNewFromVM {
				t.Errorf("%s: reason %q", l, r)
			}
		case strings.HasSuffix(l, "reg11=0/0x4,ip,vlan_tci=0x0000/0x1000,actions=drop"),
			strings.HasSuffix(l, "reg11=0x30000/0xffff0000,ip,vlan_tci=0x0000/0x1000,actions=drop"):
			if r != portpolicy.ReasonIsoNotAllowed {
				t.Errorf("%s: reason %q", l, r)
			}
		case strings.HasSuffix(l, "reg11=0x30000/0xffff0000,udp,vlan_tci=0x0000/0x1000,actions=drop"):
			if r != portpolicy.ReasonIsoUDP {
				t.Errorf("%s: reason %q", l, r)
			}
		case strings.Contains(l, "output:3"), strings.Contains(l, "in_port=3,actions=drop"):
			if r != "" {
				t.Errorf("%s: reason %q, want none", l, r)
			}
		}
	}
	// Spliced, one more flow, of its own cookie, keeps the splice's
	// multicast copies; the isolation's flows stay as they are.
	p.Splice = &ovssplice.Spliced{Mark: "reg12=0/0x4", SetMark: "load:1->NXM_NX_REG12[2]"}
	c1, _ := policyFlows(Port{Name: "vm1", OFPort: 3, MACs: p.MACs}, kindIsolate, portpolicy.Policy{Isolate: &iso})
	c2, spliced := policyFlows(p, kindIsolate, portpolicy.Policy{Isolate: &iso})
	if c1 != c2 || !slices.Equal(spliced, lines) {
		t.Errorf("a splice changed the isolation's flows")
	}
	if c3, f := splicedFlow(p); c3 == c1 || c3&CookieMask != CookieTag || !strings.HasSuffix(f, "priority=64965,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,reg12=0/0x4,actions=load:1->NXM_NX_REG12[2],resubmit(,0)") {
		t.Errorf("spliced: %#x %s", c3, f)
	}
	c, fan := fanOut([]int{3, 4})
	if c&CookieMask != CookieTag || !strings.HasSuffix(fan, "priority=65200,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,reg11=0/0x8,actions=clone(load:3->NXM_NX_REG11[16..31],resubmit(,83)),clone(load:4->NXM_NX_REG11[16..31],resubmit(,83)),load:1->NXM_NX_REG11[3],resubmit(,0)") {
		t.Errorf("fan-out %#x %s", c, fan)
	}
}

// TestFlowsParse: every flow a guard and an isolation make is accepted by
// ovs-ofctl (parse-flows, no switch needed), when it is installed.
func TestFlowsParse(t *testing.T) {
	if _, err := exec.LookPath("ovs-ofctl"); err != nil {
		t.Fatal("ovs-ofctl not found: install openvswitch-switch (scripts/deps.sh does)")
	}
	g, iso := testGuard(t, "2001:2::/64"), testIsolate(t, "198.18.0.0/24")
	p := Port{Name: "vm1", OFPort: 3, MACs: []net.HardwareAddr{vmMAC}}
	_, a := policyFlows(p, kindGuard, portpolicy.Policy{Guard: &g})
	p.Splice = &ovssplice.Spliced{Mark: "reg12=0/0x4", SetMark: "load:1->NXM_NX_REG12[2]"}
	_, b := policyFlows(p, kindIsolate, portpolicy.Policy{Isolate: &iso})
	_, fan := fanOut([]int{3, 4})
	_, sp := splicedFlow(p)
	var in []string
	for _, l := range append(append(a, b...), fan, sp) {
		in = append(in, strings.TrimPrefix(l, "flow add "))
	}
	cmd := exec.Command("ovs-ofctl", "-O", "OpenFlow14", "parse-flows", "/dev/stdin")
	cmd.Stdin = strings.NewReader(strings.Join(in, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ovs-ofctl parse-flows: %v\n%s", err, out)
	}
}

// TestApplyAdoptChangeRemove: Apply installs in one bundle; a new Manager
// given the same set changes nothing (adoption after a restart); a changed
// policy swaps its flows in one bundle; Stats maps the drop flows'
// n_packets to the port and reason; removing everything leaves the flows
// as they were before; bad input and a port that cannot have flows change
// nothing.
func TestApplyAdoptChangeRemove(t *testing.T) {
	f := newFake(t)
	foreign := "cookie=0x1234,priority=100,in_port=3,dl_src=02:66:66:66:66:66 actions=drop"
	f.flows = []string{foreign, "priority=0 actions=NORMAL"}
	before := slices.Clone(f.flows)
	m := newTestManager(f)
	g, iso := testGuard(t, ""), testIsolate(t, "198.18.0.0/24")
	want := map[string]portpolicy.Policy{"vm1": {Guard: &g, Isolate: &iso}}
	if err := m.Apply(want); err != nil {
		t.Fatal(err)
	}
	if len(f.bundles) != 1 || len(f.flows) != 2+8+7+8+6+1 {
		t.Fatalf("%d bundles, %d flows:\n%s", len(f.bundles), len(f.flows), strings.Join(f.flows, "\n"))
	}
	// The isolated port is no-flood, its own flag recorded.
	if !f.noFlood["vm1"] || f.ids["vm1"][ovssplice.IsolateNoFloodID] != "false" || f.noFlood["vm2"] || !f.static[vmMAC.String()] {
		t.Fatalf("after isolate: no-flood %v, external_ids %v, MACs pinned %v", f.noFlood, f.ids, f.static)
	}
	installed := slices.Clone(f.flows)

	m2 := newTestManager(f)
	if err := m2.Apply(want); err != nil {
		t.Fatal(err)
	}
	if len(f.bundles) != 1 || !slices.Equal(f.flows, installed) {
		t.Fatalf("a new Manager changed the flows (%d bundles)", len(f.bundles))
	}

	// Drops: the guard's guard_mac flow and the isolation's UDP flow.
	for _, fl := range f.flows {
		switch {
		case strings.HasSuffix(fl, "reg11=0/0x1,actions=drop"):
			f.packets[fl] = 7
		case strings.Contains(fl, "in_port=3,reg11=0/0x2,udp,"):
			f.packets[fl] = 5
		case strings.Contains(fl, "reg11=0/0x4,udp,"):
			f.packets[fl] = 2
		}
	}
	st, err := m2.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st["vm1"][portpolicy.ReasonGuardMAC] != 7 || st["vm1"][portpolicy.ReasonIsoUDP] != 7 || len(st) != 1 {
		t.Errorf("stats %v, want guard_mac 7 and isolate_udp 5+2", st)
	}

	// Bad input, an unknown port, a port without a MAC for an isolation:
	// nothing changes.
	iso0 := portpolicy.Isolate{AllowFrom: netip.MustParsePrefix("0.0.0.0/0")}
	if err := m2.Apply(map[string]portpolicy.Policy{"vm1": {Isolate: &iso0}}); err == nil {
		t.Error("a /0 isolation was applied")
	}
	if err := m2.Check("nosuch0", portpolicy.Policy{Guard: &g}); err == nil {
		t.Error("Check accepted a port OVS does not know")
	}
	if err := m2.Check("vm2", portpolicy.Policy{Isolate: &iso}); err == nil || !strings.Contains(err.Error(), "attached-mac") {
		t.Errorf("Check of an isolation on a port with no known MAC: %v", err)
	}
	if err := m2.Check("vm2", portpolicy.Policy{Guard: &g}); err != nil {
		t.Errorf("Check of a guard on vm2: %v", err)
	}
	if len(f.bundles) != 1 {
		t.Fatalf("bad input sent a bundle")
	}

	// A changed guard: its old flows go and the new ones come in one
	// bundle; the isolation's stay.
	g2 := testGuard(t, "2001:2::/64")
	if err := m2.Apply(map[string]portpolicy.Policy{"vm1": {Guard: &g2, Isolate: &iso}}); err != nil {
		t.Fatal(err)
	}
	if len(f.bundles) != 2 || strings.Count(f.bundles[1], "flow delete") != 1 || strings.Contains(f.bundles[1], "reg11=0/0x2") {
		t.Fatalf("change bundle:\n%s", f.bundles[1])
	}

	// A foreign flow using reg11: a new policy is refused, nothing changes.
	f.flows = append(f.flows, "cookie=0x99,priority=5,reg11=0x1 actions=NORMAL")
	g3 := testGuard(t, "")
	if err := m2.Apply(map[string]portpolicy.Policy{"vm1": {Guard: &g2, Isolate: &iso}, "vm2": {Guard: &g3}}); err == nil || !strings.Contains(err.Error(), "reg11") {
		t.Errorf("a bridge whose flows use reg11: %v", err)
	}
	if len(f.bundles) != 2 {
		t.Fatalf("a refused Apply sent a bundle")
	}
	f.flows = f.flows[:len(f.flows)-1]
	// A foreign flow in the isolations' table: a new isolation is refused.
	f.flows = append(f.flows, "table=83,cookie=0x98,priority=5,ip actions=NORMAL")
	f.macs["vm2"] = "52:54:00:00:00:22"
	if err := m2.Apply(map[string]portpolicy.Policy{"vm1": {Guard: &g2, Isolate: &iso}, "vm2": {Isolate: &iso}}); err == nil || !strings.Contains(err.Error(), "table 83") {
		t.Errorf("a bridge with a flow in table 83: %v", err)
	}
	if len(f.bundles) != 2 {
		t.Fatalf("a refused Apply sent a bundle")
	}
	f.flows = f.flows[:len(f.flows)-1]

	if err := m2.Apply(map[string]portpolicy.Policy{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.flows, before) {
		t.Fatalf("after removing everything:\n%s\nwant\n%s", strings.Join(f.flows, "\n"), strings.Join(before, "\n"))
	}
	if f.noFlood["vm1"] || len(f.ids) != 0 || f.static[vmMAC.String()] {
		t.Errorf("after removing everything: no-flood %v, external_ids %v, MACs pinned %v", f.noFlood, f.ids, f.static)
	}
	// The last isolation gone, its conntrack zone is flushed, once.
	flush := "ovs-appctl dpctl/flush-conntrack zone=21328"
	if n := slices.Index(f.calls, "ovs-appctl --timeout=10 "+flush[len("ovs-appctl "):]); n < 0 {
		t.Errorf("no %q after the last isolation went; calls:\n%s", flush, strings.Join(f.calls, "\n"))
	}
	// A port no-flood before its isolation stays so after it.
	f.noFlood["vm1"] = true
	if err := m2.Apply(want); err != nil {
		t.Fatal(err)
	}
	if f.ids["vm1"][ovssplice.IsolateNoFloodID] != "true" {
		t.Errorf("external_ids %v, want the port's no-flood recorded", f.ids)
	}
	if err := m2.Apply(map[string]portpolicy.Policy{}); err != nil {
		t.Fatal(err)
	}
	if !f.noFlood["vm1"] || len(f.ids) != 0 {
		t.Errorf("a port no-flood before: no-flood %v, external_ids %v after the isolation", f.noFlood, f.ids)
	}
	if strings.Contains(f.bundles[len(f.bundles)-1], "flow add") {
		t.Errorf("removal bundle adds flows:\n%s", f.bundles[len(f.bundles)-1])
	}
}
