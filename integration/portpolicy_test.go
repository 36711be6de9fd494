package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/guard"
)

// Addresses the port policy tests send to: nobody has them, so no host
// answers (and no answer or neighbour resolution adds to the counts).
const (
	ppDst4  = "198.18.0.77"
	ppDst6  = "2001:2::77"
	ppOther = "02:00:5e:00:de:ad" // a MAC that is not the VM's
)

// ppFrame is one kind of frame the guard test sends from VM 1: how to
// build it, the nft match that counts it on the external host's ingress,
// and what the guard must do ("" to let it through, else the drop reason).
type ppFrame struct {
	name, match, reason string
	build               func(v ppVM) []byte
}

// ppVM is VM 1's addresses.
type ppVM struct {
	mac      net.HardwareAddr
	ip4, ip6 netip.Addr
	ll       netip.Addr
}

func ppSerialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

func ipOf(a string) net.IP { return net.IP(netip.MustParseAddr(a).AsSlice()) }

var bcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// udp4 is a UDP/IPv4 frame from srcMAC, src:sport to dst:dport.
func udp4(t *testing.T, srcMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: ipOf(src), DstIP: ipOf(dst)}
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(ip)
	return ppSerialize(t, &layers.Ethernet{SrcMAC: srcMAC, DstMAC: bcast, EthernetType: layers.EthernetTypeIPv4}, ip, u, gopacket.Payload("shaperd-lab-guard"))
}

func udp6(t *testing.T, srcMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: ipOf(src), DstIP: ipOf(dst)}
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(ip)
	return ppSerialize(t, &layers.Ethernet{SrcMAC: srcMAC, DstMAC: bcast, EthernetType: layers.EthernetTypeIPv6}, ip, u, gopacket.Payload("shaperd-lab-guard"))
}

func arpFrame(t *testing.T, ethSrc, sha net.HardwareAddr, op uint16, spa, tpa string) []byte {
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: op, SourceHwAddress: sha, SourceProtAddress: ipOf(spa), DstHwAddress: make([]byte, 6), DstProtAddress: ipOf(tpa)}
	return ppSerialize(t, &layers.Ethernet{SrcMAC: ethSrc, DstMAC: bcast, EthernetType: layers.EthernetTypeARP}, a)
}

// icmp6Frame is an ICMPv6 message of type typ with body (after the 4-byte
// header), from src to dst, behind a hop-by-hop header with hbh.
func icmp6Frame(t *testing.T, mac net.HardwareAddr, src, dst string, typ uint8, body []byte, hbh bool) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: ipOf(src), DstIP: ipOf(dst)}
	if hbh {
		ip.NextHeader = layers.IPProtocolIPv6HopByHop
		ip.HopByHop = &layers.IPv6HopByHop{Options: []*layers.IPv6HopByHopOption{{OptionType: 1, OptionData: make([]byte, 4)}}}
		ip.HopByHop.NextHeader = layers.IPProtocolICMPv6
	}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	return ppSerialize(t, &layers.Ethernet{SrcMAC: mac, DstMAC: bcast, EthernetType: layers.EthernetTypeIPv6}, ip, ic, gopacket.Payload(body))
}

// ndBody is a neighbour solicitation's or advertisement's body: flags
// (reserved), target, and a link-layer address option of type opt (none
// if opt is 0).
func ndBody(flags byte, target string, opt byte, lla net.HardwareAddr) []byte {
	b := append([]byte{flags, 0, 0, 0}, ipOf(target)...)
	if opt != 0 {
		b = append(append(b, opt, 1), lla...)
	}
	return b
}

// countersRe is what a rule's counter and a dynamic element's lifetime
// print: they change by themselves from one listing to the next.
var countersRe = regexp.MustCompile(`counter packets \d+ bytes \d+| expires [0-9hms.]+`)

func noCounters(s string) string { return countersRe.ReplaceAllString(s, "") }

// ndTarget matches a neighbour discovery message's target address (this
// nft has no icmpv6 taddr).
func ndTarget(a string) string {
	return fmt.Sprintf("@th,64,128 0x%x", netip.MustParseAddr(a).AsSlice())
}

func guardFrames(t *testing.T) []ppFrame {
	other, _ := net.ParseMAC(ppOther)
	d4, d6 := ppDst4, ppDst6
	fs := []ppFrame{
		// Allowed.
		{"dhcp-client", "udp sport 68 udp dport 67 ip saddr 0.0.0.0", "", func(v ppVM) []byte { return udp4(t, v.mac, "0.0.0.0", "255.255.255.255", 68, 67) }},
		{"arp-probe", "arp saddr ip 0.0.0.0 arp daddr ip " + d4, "", func(v ppVM) []byte { return arpFrame(t, v.mac, v.mac, 1, "0.0.0.0", d4) }},
		{"arp-request", "arp operation request arp saddr ip 198.18.0.11 arp daddr ip " + d4, "", func(v ppVM) []byte { return arpFrame(t, v.mac, v.mac, 1, v.ip4.String(), d4) }},
		{"arp-reply", "arp operation reply arp saddr ip 198.18.0.11 arp daddr ip " + d4, "", func(v ppVM) []byte { return arpFrame(t, v.mac, v.mac, 2, v.ip4.String(), d4) }},
		{"ipv4", "ip saddr 198.18.0.11 ip daddr " + d4 + " udp dport 4001", "", func(v ppVM) []byte { return udp4(t, v.mac, v.ip4.String(), d4, 40000, 4001) }},
		{"ipv6", "ip6 saddr 2001:2::11 ip6 daddr " + d6 + " udp dport 4001", "", func(v ppVM) []byte { return udp6(t, v.mac, v.ip6.String(), d6, 40000, 4001) }},
		{"ipv6-link-local", "ip6 daddr " + d6 + " udp dport 4002", "", func(v ppVM) []byte { return udp6(t, v.mac, v.ll.String(), d6, 40000, 4002) }},
		{"ns", "icmpv6 type nd-neighbor-solicit ip6 saddr 2001:2::11 ip6 daddr " + d6 + " " + ndTarget(d6), "", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, v.ip6.String(), d6, 135, ndBody(0, d6, 1, v.mac), false)
		}},
		{"ns-dad", "icmpv6 type nd-neighbor-solicit ip6 saddr :: ip6 daddr " + d6, "", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, "::", d6, 135, ndBody(0, v.ip6.String(), 0, nil), false)
		}},
		{"na", "icmpv6 type nd-neighbor-advert ip6 daddr " + d6 + " " + ndTarget("2001:2::11"), "", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, v.ip6.String(), d6, 136, ndBody(0x20, v.ip6.String(), 2, v.mac), false)
		}},
		// Dropped.
		{"spoof-mac", "ip daddr " + d4 + " udp dport 4003", "guard_mac", func(v ppVM) []byte { return udp4(t, other, v.ip4.String(), d4, 40000, 4003) }},
		{"spoof-ip", "ip saddr 198.18.0.50 ip daddr " + d4, "guard_ip", func(v ppVM) []byte { return udp4(t, v.mac, "198.18.0.50", d4, 40000, 4004) }},
		{"dhcp-offer", "udp sport 67 udp dport 68", "guard_dhcp", func(v ppVM) []byte { return udp4(t, v.mac, v.ip4.String(), d4, 67, 68) }},
		{"dhcpv6-reply", "udp sport 547 udp dport 546", "guard_dhcp", func(v ppVM) []byte { return udp6(t, v.mac, v.ip6.String(), d6, 547, 546) }},
		{"arp-claim", "arp saddr ip 198.18.0.100 arp daddr ip " + d4, "guard_arp", func(v ppVM) []byte { return arpFrame(t, v.mac, v.mac, 2, "198.18.0.100", d4) }},
		{"arp-other-sha", "arp saddr ether " + ppOther + " arp daddr ip 198.18.0.79", "guard_arp", func(v ppVM) []byte { return arpFrame(t, v.mac, other, 1, v.ip4.String(), "198.18.0.79") }},
		{"arp-probe-other-sha", "arp saddr ip 0.0.0.0 arp daddr ip 198.18.0.80", "guard_arp", func(v ppVM) []byte { return arpFrame(t, v.mac, other, 1, "0.0.0.0", "198.18.0.80") }},
		{"na-claim", "icmpv6 type nd-neighbor-advert " + ndTarget("2001:2::100") + " ip6 daddr " + d6, "guard_nd", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, v.ip6.String(), d6, 136, ndBody(0x20, "2001:2::100", 2, v.mac), false)
		}},
		{"ns-other-source", "icmpv6 type nd-neighbor-solicit ip6 saddr 2001:2::50", "guard_nd", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, "2001:2::50", d6, 135, ndBody(0, d6, 1, v.mac), false)
		}},
		{"ns-other-sll", "icmpv6 type nd-neighbor-solicit " + ndTarget("2001:2::78"), "guard_nd", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, v.ip6.String(), d6, 135, ndBody(0, "2001:2::78", 1, other), false)
		}},
		{"ra-hbh", "ip6 nexthdr 0 ip6 daddr " + d6, "guard_ra", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, v.ll.String(), d6, 134, make([]byte, 12), true)
		}},
		{"vlan-tagged", "vlan id 100", "guard_ip", func(v ppVM) []byte {
			f := udp4(t, v.mac, v.ip4.String(), d4, 40000, 4006)
			return append(append(append([]byte{}, f[:12]...), 0x81, 0, 0, 100), f[12:]...)
		}},
		{"other-ethertype", "ether type 0x88b5", "guard_ip", func(v ppVM) []byte {
			return append(append(append([]byte{}, bcast...), v.mac...), append([]byte{0x88, 0xb5}, make([]byte, 46)...)...)
		}},
		{"ipv6-other-source", "ip6 saddr 2001:2::50 udp dport 4005", "guard_ip", func(v ppVM) []byte { return udp6(t, v.mac, "2001:2::50", d6, 40000, 4005) }},
	}
	// ICMPv6 router messages, each from the VM's own link-local address.
	for _, typ := range []uint8{134, 137, 146, 147, 151, 152, 153} {
		typ := typ
		fs = append(fs, ppFrame{fmt.Sprintf("icmpv6-%d", typ), fmt.Sprintf("icmpv6 type %d ip6 daddr %s ip6 nexthdr ipv6-icmp", typ, d6), "guard_ra", func(v ppVM) []byte {
			return icmp6Frame(t, v.mac, v.ll.String(), d6, typ, make([]byte, 36), false)
		}})
	}
	return fs
}

// sendFrames writes each frame n times on dev in ns.
func (l *lab) sendFrames(ns, dev string, n int, frames ...[]byte) {
	l.t.Helper()
	fd, err := packetSocketIn(ns, dev)
	if err != nil {
		l.t.Fatalf("packet socket in %s: %v", ns, err)
	}
	defer unix.Close(fd)
	for i := 0; i < n; i++ {
		for _, f := range frames {
			if _, err := unix.Write(fd, f); err != nil {
				l.t.Fatalf("send on %s/%s: %v", ns, dev, err)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (d *daemon) policies() ([]api.Guard, []api.Isolation) {
	d.l.t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(d.must("status", "--json")), &st); err != nil {
		d.l.t.Fatal(err)
	}
	return st.Guards, st.Isolations
}

// ppMetrics is where the port policy tests' daemons serve /metrics (in
// the lab's hypervisor namespace).
const ppMetrics = "127.0.0.1:9750"

// metricsMatch checks that /metrics has family's drops of port, every
// reason, equal to drops (status's), retrying for a second while they
// move (a VM's own neighbour discovery may add a drop in between).
func (l *lab) metricsMatch(phase, family, port string, drops func() map[string]uint64) {
	l.t.Helper()
	var bad []string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(100 * time.Millisecond) {
		want := drops()
		m := l.scrape(ppMetrics)
		bad = bad[:0]
		for r, w := range want {
			if got := m.value(l.t, family, "port", port, "reason", r); got != float64(w) {
				bad = append(bad, fmt.Sprintf("%s: /metrics %s{port=%q,reason=%q} %.0f, status %d", phase, family, port, r, got, w))
			}
		}
		if len(bad) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, b := range bad {
		l.t.Error(b)
	}
}

// policyState is what a port policy changes on the lab's hypervisor: the
// nftables ruleset and, on an OVS lab, the bridge's flows (without
// counters, sorted), its ports' OpenFlow descriptions (the no-flood
// flags) and the Interface rows' numbers and external_ids.
func (l *lab) policyState() string {
	l.t.Helper()
	s := l.ruleset(l.get("HV_NS"))
	if br := l.get("OVS_BRIDGE"); br != "" {
		hv := l.get("HV_NS")
		s += "\n--- flows of " + br + "\n" + strings.Join(sortedLines(l.sh(hv, "ovs-ofctl dump-flows "+br+" --no-stats")), "\n")
		s += "\n--- ports of " + br + "\n" + l.sh(hv, "ovs-ofctl dump-ports-desc "+br)
		s += "\n--- interfaces\n" + strings.Join(sortedLines(l.sh(hv, "ovs-vsctl --format=csv --columns=name,ofport,external_ids,other_config list Interface")), "\n")
	}
	return s
}

// badInput runs each command, wants exit code want, and checks that
// policyState did not change.
func (l *lab) badInput(d *daemon, want int, cmds ...[]string) {
	l.t.Helper()
	before := l.policyState()
	for _, c := range cmds {
		code, out, e := d.cli(c...)
		if code != want || strings.TrimSpace(e) == "" {
			l.t.Errorf("shaperd %s: exit %d (stdout %q, stderr %q), want exit %d with a message", strings.Join(c, " "), code, out, e, want)
		} else {
			l.t.Logf("shaperd %s: exit %d: %s", strings.Join(c, " "), code, strings.TrimSpace(e))
		}
	}
	if got := l.policyState(); got != before {
		l.t.Fatalf("bad input changed the ruleset or the flows:\n%s", got)
	}
}

// TestGuardPortNftables: shaperd guard on a Linux bridge port, end to end
// through the daemon. VM 1 sends (raw frames, n of each) every kind of
// the seed's publicrouter.of list, allowed and dropped, and the spoofed
// frames of the quarantine guard's tests; an nftables counter per kind on
// the external host's ingress counts what crosses the bridge. Without the
// guard every kind arrives n times (the test can see them); with it the
// allowed kinds arrive n times more and the dropped ones not at all, each
// counted under its reason in status. Bad input is refused with exit 2
// (3 for removing nothing) and changes nothing; kill -9 and a restart
// adopt the table (the ruleset is the same) and the guard still holds,
// and so it does while the port is quarantined (behind the splice); removing it leaves `nft list ruleset` as it was.
func TestGuardPortNftables(t *testing.T) { runGuardScenario(t, "bridge") }

// TestGuardPortOVS: TestGuardPortNftables on an Open vSwitch port (the
// guard is OpenFlow flows there): the same frames, verdicts and drop
// counts; bad input, kill -9 and a restart (the flow dump unchanged: the
// flows adopted, not duplicated), a quarantine (the splice sends the VM's
// frames back into the bridge as if from the port, where the guard's flows
// take them), and a removal that leaves the flow dump as it was.
func TestGuardPortOVS(t *testing.T) { runGuardScenario(t, "ovs") }

func runGuardScenario(t *testing.T, mode string) {
	l := newLab(t, mode)
	vm1, ext, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("VM1_PORT")
	mac, err := net.ParseMAC(l.get("VM1_MAC"))
	if err != nil {
		t.Fatal(err)
	}
	v := ppVM{mac: mac, ip4: netip.MustParseAddr(l.get("VM1_IP")), ip6: netip.MustParseAddr(l.get("VM1_IP6")), ll: guard.LinkLocal([6]byte(mac))}
	if v.ip4.String() != "198.18.0.11" || v.ip6.String() != "2001:2::11" {
		t.Fatalf("the lab's VM 1 is %s %s; the matches below expect 198.18.0.11 and 2001:2::11", v.ip4, v.ip6)
	}
	frames := guardFrames(t)
	matches := map[string]string{}
	built := make([][]byte, len(frames))
	for i, f := range frames {
		matches[strings.ReplaceAll(f.name, "-", "_")] = f.match
		built[i] = f.build(v)
	}
	l.nftCount(ext, "eth0", matches)
	counts := func() map[string]uint64 {
		m := map[string]uint64{}
		for _, f := range frames {
			m[f.name] = l.count(ext, strings.ReplaceAll(f.name, "-", "_"))
		}
		return m
	}
	const n = 10
	before := l.policyState()
	dir := t.TempDir()
	d := l.startDaemonIn(dir, "--metrics-addr", ppMetrics)

	// The control: without a guard, every kind crosses the bridge n times.
	l.sendFrames(vm1, "eth0", n, built...)
	time.Sleep(300 * time.Millisecond)
	c0 := counts()
	for _, f := range frames {
		if c0[f.name] != n {
			t.Errorf("without the guard, %s arrived %d times, want %d: the test cannot see it", f.name, c0[f.name], n)
		}
	}
	if t.Failed() {
		return
	}

	// Bad input changes nothing.
	l.badInput(d, 2,
		[]string{"guard", port, "--mac", "52:54:zz:00:00:01", "--ip", "198.18.0.11"},
		[]string{"guard", port, "--mac", "01:00:5e:00:00:01", "--ip", "198.18.0.11"},
		[]string{"guard", port, "--mac", l.get("VM1_MAC"), "--ip", "198.18.0.300"},
		[]string{"guard", port, "--mac", l.get("VM1_MAC"), "--ip", "198.18.0.11", "--ipv6", "2001:2::/200"},
		[]string{"guard", "nosuch0", "--mac", l.get("VM1_MAC"), "--ip", "198.18.0.11"},
		[]string{"guard", "br0", "--mac", l.get("VM1_MAC"), "--ip", "198.18.0.11"},
		[]string{"guard", "lo", "--mac", l.get("VM1_MAC"), "--ip", "198.18.0.11"},
		[]string{"isolate", port, "--allow-from", "198.18.0.0/33"},
		[]string{"isolate", port, "--allow-from", "0.0.0.0/0"},
		[]string{"isolate", port},
		[]string{"isolate", "nosuch0", "--allow-from", "198.18.0.0/24"},
		[]string{"isolate", "br0", "--allow-from", "198.18.0.0/24"},
	)
	l.badInput(d, 3, []string{"guard", "--remove", port}, []string{"isolate", "--remove", port})
	if mode == "ovs" {
		// The baseline's nftables bridge rules do not see an OVS port.
		l.badInput(d, 2, []string{"baseline", port, "--pps", "1000"})
	}

	d.must("guard", port, "--mac", l.get("VM1_MAC"), "--ip", "198.18.0.11", "--ipv6", "2001:2::11/128")
	gs, _ := d.policies()
	if len(gs) != 1 || gs[0].Port != port || gs[0].MAC != l.get("VM1_MAC") || gs[0].IP != "198.18.0.11" || gs[0].IPv6 != "2001:2::11/128" {
		t.Fatalf("status guards: %+v", gs)
	}
	installed := noCounters(l.policyState())
	if mode == "ovs" {
		if strings.Contains(installed, "shaperd_portpolicy") || strings.Count(installed, "cookie=0x5350") < 30 {
			t.Fatalf("after guard, want the guard's flows and no nftables table:\n%s", installed)
		}
	} else if strings.Count(installed, "table bridge shaperd_portpolicy") != 1 {
		t.Fatalf("ruleset after guard:\n%s", installed)
	}

	// budgeted reports whether a kind is one a quarantine's forwarder
	// polices on its own class budget (ARP, neighbour discovery, ICMPv6:
	// the control class, 200 pps burst 20, far below the rate sent), so
	// that behind a splice it arrives, or is counted as a guard drop, at
	// most n times rather than exactly. Every drop count is then bounded
	// the same way, since one reason covers several classes.
	quarantined := false
	budgeted := func(f ppFrame) bool {
		return quarantined && (f.reason != "" || strings.HasPrefix(f.name, "arp") || f.name == "ns" || f.name == "ns-dad" || f.name == "na")
	}
	check := func(phase string, base map[string]uint64, baseDrops map[string]uint64) (map[string]uint64, map[string]uint64) {
		t.Helper()
		l.sendFrames(vm1, "eth0", n, built...)
		time.Sleep(300 * time.Millisecond)
		c := counts()
		wantDrops := map[string]uint64{}
		for _, f := range frames {
			got := c[f.name] - base[f.name]
			want := uint64(n)
			if f.reason != "" {
				want = 0
				wantDrops[f.reason] += n
			}
			if got != want && !(budgeted(f) && got <= want && (want == 0 || got > 0)) {
				t.Errorf("%s: %s arrived %d times, want %d (reason %q)", phase, f.name, got, want, f.reason)
			}
		}
		// OVS moves its datapath's counters to the flows every half
		// second or so: wait for them to settle.
		var gs []api.Guard
		var bad []string
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			gs, _ = d.policies()
			if len(gs) != 1 {
				t.Fatalf("%s: status guards %+v", phase, gs)
			}
			bad = bad[:0]
			for r, w := range wantDrops {
				got := gs[0].Drops[r] - baseDrops[r]
				if budgeted(ppFrame{reason: r}) && got > 0 && got <= w {
					continue
				}
				if got != w {
					bad = append(bad, fmt.Sprintf("%s: status counts %d %s drops, want %d", phase, got, r, w))
				}
			}
			if len(bad) == 0 || time.Now().After(deadline) {
				break
			}
		}
		for _, b := range bad {
			t.Error(b)
		}
		t.Logf("%s: drops %v", phase, gs[0].Drops)
		l.metricsMatch(phase, "shaperd_guard_drops_total", port, func() map[string]uint64 { gs, _ := d.policies(); return gs[0].Drops })
		return c, gs[0].Drops
	}
	c1, d1 := check("guarded", c0, map[string]uint64{})

	// kill -9 and a restart: adopted, not duplicated, still in force.
	d.kill9()
	d = l.startDaemonIn(dir, "--metrics-addr", ppMetrics)
	if got := noCounters(l.policyState()); got != installed {
		t.Fatalf("after kill -9 and a restart the ruleset or the flows differ:\n--- before\n%s\n--- after\n%s", installed, got)
	}
	c2, d2 := check("after a restart", c1, d1)

	// Quarantined: the splice's net tap takes the port's place in the
	// bridge, and carries its guard.
	d.must("quarantine", port, "--pps", "100000")
	quarantined = true
	check("quarantined", c2, d2)
	d.must("release", port)

	d.must("guard", "--remove", port)
	if gs, _ := d.policies(); len(gs) != 0 {
		t.Fatalf("after remove: %+v", gs)
	}
	if after := l.policyState(); after != before {
		t.Fatalf("after remove the ruleset or the flows differ:\n--- before\n%s\n--- after\n%s", before, after)
	}
}

// try runs a lab tool in ns and returns its error (nil: exit 0).
func (l *lab) try(ns, tool string, args ...string) error {
	out, err := inNS(ns, append([]string{l.bin + "/" + tool}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// icmpEcho4 is an ICMP echo request frame from srcMAC, src to dst (at
// dstMAC).
func icmpEcho4(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst string) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: ipOf(src), DstIP: ipOf(dst)}
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 0x5a5a, Seq: 1}
	return ppSerialize(t, &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip, ic, gopacket.Payload("shaperd-lab-isolate"))
}

// withDst returns frame with its destination MAC set to dst.
func withDst(frame []byte, dst net.HardwareAddr) []byte {
	copy(frame[:6], dst)
	return frame
}

// tcpSyn4 is a TCP SYN frame from srcMAC, src:sport to dst:dport
// (broadcast destination MAC).
func tcpSyn4(t *testing.T, srcMAC net.HardwareAddr, src, dst string, sport, dport uint16) []byte {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: ipOf(src), DstIP: ipOf(dst)}
	tc := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Seq: 1, Window: 1024}
	tc.SetNetworkLayerForChecksum(ip)
	return ppSerialize(t, &layers.Ethernet{SrcMAC: srcMAC, DstMAC: bcast, EthernetType: layers.EthernetTypeIPv4}, ip, tc)
}

// TestIsolatePortNftables: shaperd isolate on a Linux bridge port, the
// seed's gw_mgmt policy, end to end. VM 1 is isolated with the external
// host's address as the management network. Before: VM 1 reaches the
// external host (TCP, ping) and UDP crosses both ways (frames with a
// multicast source MAC never do: the Linux bridge drops them itself). Isolated: the external host connects into VM 1 (TCP
// echo: new in, established both ways) and pings it (ARP afresh both
// ways); VM 1 cannot connect or ping out; the second external host, outside
// the allowed network, cannot connect in; UDP, IPv6 and multicast-source
// frames are dropped both ways; status counts the drops. kill -9 and a
// restart adopt the table (same ruleset) and the policy holds; removing
// it leaves `nft list ruleset` as before and VM 1 connects out again.
func TestIsolatePortNftables(t *testing.T) { runIsolateScenario(t, "bridge") }

// TestIsolatePortOVS: TestIsolatePortNftables on an Open vSwitch port, where
// the isolation is the seed's ct() flows (the userspace datapath's
// conntrack): the same checks, and the same while the port is quarantined.
// Frames to the VM are those to its MAC: the UDP sent to it is unicast
// here (a broadcast is flooded past the flows, see docs/guard.md).
func TestIsolatePortOVS(t *testing.T) { runIsolateScenario(t, "ovs") }

func runIsolateScenario(t *testing.T, mode string) {
	l := newLab(t, mode)
	vm1, ext, ext2, port := l.get("VM1_NS"), l.get("EXT_NS"), l.get("EXT2_NS"), l.get("VM1_PORT")
	vmIP, extIP, vmIP6, extIP6 := l.get("VM1_IP"), l.get("EXT_IP"), l.get("VM1_IP6"), l.get("EXT_IP6")
	vmMAC, _ := net.ParseMAC(l.get("VM1_MAC"))
	extMAC, _ := net.ParseMAC(l.get("EXT_MAC"))
	mcast, _ := net.ParseMAC("03:00:5e:00:00:01")
	l.bg(vm1, "probe", "server", "--listen", vmIP+":22")
	l.bg(ext, "probe", "server", "--listen", extIP+":22")
	for _, ns := range []string{vm1, ext} {
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(l.sh(ns, "ss -Hltn"), ":22 ") {
			if time.Now().After(deadline) {
				t.Fatalf("nothing listens on TCP port 22 in %s after 5 s", ns)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	l.nftCount(ext, "eth0", map[string]string{"udp9": "ip saddr " + vmIP + " udp dport 9", "mcast": "ether saddr 03:00:5e:00:00:01"})
	// Toward VM 1, besides UDP to its MAC: what a bridge floods (a
	// broadcast and a multicast UDP datagram, an IPv6 multicast one) and a
	// TCP SYN to its address from outside the allowed network with a
	// broadcast destination MAC. Each has a counter of its own.
	ext2IP := l.get("EXT2_IP")
	ext2MAC := mustMAC(t, l.get("EXT2_MAC"))
	flooded := map[string]string{
		"bc4": "ip saddr " + extIP + " udp dport 10",
		"mc4": "ip saddr " + extIP + " udp dport 11",
		"mc6": "ip6 saddr " + extIP6 + " udp dport 12",
		"syn": "ip saddr " + ext2IP + " tcp dport 23",
	}
	vmCounters := map[string]string{"udp9": "ip saddr " + extIP + " udp dport 9", "mcast": "ether saddr 03:00:5e:00:00:01"}
	for k, v := range flooded {
		vmCounters[k] = v
	}
	l.nftCount(vm1, "eth0", vmCounters)

	connect := func(from, to string) error {
		return l.try(from, "probe", "client", "--connect", to+":22", "--count", "3", "--interval", "20ms", "--timeout", "1s", "--connect-timeout", "2s")
	}
	ping := func(from, to string) error {
		return l.try(from, "probe", "ping", "--dst", to, "--count", "2", "--interval", "50ms", "--timeout", "500ms")
	}
	// traffic sends UDP and multicast-source frames both ways and returns
	// how many of each arrived at the external host and at VM 1.
	udpToVM := udp4(t, extMAC, extIP, vmIP, 40000, 9)
	if mode == "ovs" {
		copy(udpToVM[:6], vmMAC)
	}
	floodFrames := [][]byte{
		withDst(udp4(t, extMAC, extIP, "255.255.255.255", 40000, 10), bcast),
		withDst(udp4(t, extMAC, extIP, "224.0.0.251", 40000, 11), mustMAC(t, "01:00:5e:00:00:fb")),
		withDst(udp6(t, extMAC, extIP6, "ff02::1", 40000, 12), mustMAC(t, "33:33:00:00:00:01")),
	}
	syn := withDst(tcpSyn4(t, ext2MAC, ext2IP, vmIP, 40000, 23), bcast)
	// flood sends those (10 of each) and returns how many of each
	// arrived at VM 1.
	flood := func() map[string]uint64 {
		was := map[string]uint64{}
		for k := range flooded {
			was[k] = l.count(vm1, k)
		}
		l.sendFrames(ext, "eth0", 10, floodFrames...)
		l.sendFrames(ext2, "eth0", 10, syn)
		time.Sleep(300 * time.Millisecond)
		got := map[string]uint64{}
		for k := range flooded {
			got[k] = l.count(vm1, k) - was[k]
		}
		return got
	}
	traffic := func() (udpOut, udpIn, mcOut, mcIn uint64) {
		u0, u1, m0, m1 := l.count(ext, "udp9"), l.count(vm1, "udp9"), l.count(ext, "mcast"), l.count(vm1, "mcast")
		l.sendFrames(vm1, "eth0", 10, udp4(t, vmMAC, vmIP, extIP, 40000, 9), icmpEcho4(t, mcast, extMAC, vmIP, extIP))
		l.sendFrames(ext, "eth0", 10, udpToVM, icmpEcho4(t, mcast, vmMAC, extIP, vmIP))
		time.Sleep(300 * time.Millisecond)
		return l.count(ext, "udp9") - u0, l.count(vm1, "udp9") - u1, l.count(ext, "mcast") - m0, l.count(vm1, "mcast") - m1
	}

	before := l.policyState()
	dir := t.TempDir()
	d := l.startDaemonIn(dir, "--metrics-addr", ppMetrics)

	// The control.
	if err := connect(vm1, extIP); err != nil {
		t.Fatalf("before isolation VM 1 cannot connect out: %v", err)
	}
	if err := ping(vm1, extIP6); err != nil {
		t.Fatalf("before isolation VM 1 cannot ping6 out: %v", err)
	}
	// A Linux bridge drops a frame with a multicast source MAC itself,
	// before any hook (br_handle_frame): none cross even without the
	// isolation; the rule is there for the seed's parity, and the check
	// below that none cross holds either way.
	// OVS's NORMAL forwards them: there the test sees them all.
	wantMC := uint64(0)
	if mode == "ovs" {
		wantMC = 10
	}
	if uo, ui, mo, mi := traffic(); uo != 10 || ui != 10 || mo != wantMC || mi != wantMC {
		t.Fatalf("before isolation: UDP %d out %d in, multicast-source %d out %d in; want 10, 10, %d, %d", uo, ui, mo, mi, wantMC, wantMC)
	}
	if got := flood(); got["bc4"] != 10 || got["mc4"] != 10 || got["mc6"] != 10 || got["syn"] != 10 {
		t.Fatalf("before isolation: of 10 each, flooded toward VM 1 arrived %v; want all", got)
	}

	d.must("isolate", port, "--allow-from", extIP+"/32")
	_, isos := d.policies()
	if len(isos) != 1 || isos[0].Port != port || isos[0].AllowFrom != extIP+"/32" {
		t.Fatalf("status isolations: %+v", isos)
	}

	checkIsolated := func(phase string) {
		t.Helper()
		l.sh(vm1, "ip neigh flush dev eth0")
		l.sh(ext, "ip neigh flush dev eth0")
		if err := connect(ext, vmIP); err != nil {
			t.Errorf("%s: the allowed network cannot connect into VM 1 (new in, established both ways): %v", phase, err)
		}
		if err := ping(ext, vmIP); err != nil {
			t.Errorf("%s: the allowed network cannot ping VM 1: %v", phase, err)
		}
		if err := connect(vm1, extIP); err == nil {
			t.Errorf("%s: VM 1 connected out to the allowed network: new connections from the VM must be dropped", phase)
		}
		if err := ping(vm1, extIP); err == nil {
			t.Errorf("%s: VM 1 pinged out", phase)
		}
		if err := connect(ext2, vmIP); err == nil {
			t.Errorf("%s: a host outside the allowed network connected into VM 1", phase)
		}
		if err := ping(ext, vmIP6); err == nil {
			t.Errorf("%s: IPv6 reached VM 1", phase)
		}
		if err := ping(vm1, extIP6); err == nil {
			t.Errorf("%s: IPv6 left VM 1", phase)
		}
		if uo, ui, mo, mi := traffic(); uo+ui+mo+mi != 0 {
			t.Errorf("%s: UDP %d out %d in, multicast-source %d out %d in crossed; want none", phase, uo, ui, mo, mi)
		}
		if got := flood(); got["bc4"]+got["mc4"]+got["mc6"]+got["syn"] != 0 {
			t.Errorf("%s: of 10 each, flooded toward VM 1 arrived %v; want none", phase, got)
		}
		// OVS moves its datapath's counters to the flows every half
		// second or so: wait for them.
		reasons := []string{"isolate_new_from_vm", "isolate_not_allowed", "isolate_udp", "isolate_not_ipv4"}
		if mode == "ovs" {
			reasons = append(reasons, "isolate_multicast") // OVS passes them to the flows
		}
		var dr map[string]uint64
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			_, isos := d.policies()
			if len(isos) != 1 {
				t.Fatalf("%s: status isolations %+v", phase, isos)
			}
			dr = isos[0].Drops
			if !slices.ContainsFunc(reasons, func(r string) bool { return dr[r] == 0 }) || time.Now().After(deadline) {
				break
			}
		}
		t.Logf("%s: drops %v", phase, dr)
		for _, r := range reasons {
			if dr[r] == 0 {
				t.Errorf("%s: status counts no %s drop", phase, r)
			}
		}
		l.metricsMatch(phase, "shaperd_isolate_drops_total", port, func() map[string]uint64 { _, is := d.policies(); return is[0].Drops })
	}
	checkIsolated("isolated")
	if mode == "ovs" {
		// No-flood, the port gets no frame to its MAC that the bridge has
		// forgotten: the isolation pins the VM's MAC to the port. The
		// bridge forgets what it learned (fdb/flush, as when it ages
		// out); the external host, its neighbour entry still fresh,
		// connects at once, before VM 1 has sent anything.
		hv := l.get("HV_NS")
		t.Logf("isolated: MAC table:\n%s", l.sh(hv, "ovs-appctl fdb/show br0"))
		l.sh(hv, "ovs-appctl fdb/flush br0")
		t.Logf("isolated: MAC table after fdb/flush:\n%s", l.sh(hv, "ovs-appctl fdb/show br0"))
		if err := connect(ext, vmIP); err != nil {
			t.Errorf("isolated, the bridge's MAC table flushed: the allowed network cannot connect into VM 1: %v", err)
		}
	}
	installed := noCounters(l.policyState())
	if mode == "ovs" && (strings.Contains(installed, "shaperd_portpolicy") || !strings.Contains(installed, "ct(commit,zone=")) {
		t.Fatalf("after isolate, want the isolation's ct() flows and no nftables table:\n%s", installed)
	}

	d.kill9()
	d = l.startDaemonIn(dir, "--metrics-addr", ppMetrics)
	if got := noCounters(l.policyState()); got != installed {
		t.Fatalf("after kill -9 and a restart the ruleset or the flows differ:\n--- before\n%s\n--- after\n%s", installed, got)
	}
	checkIsolated("after a restart")
	if mode == "ovs" {
		// Quarantined: the splice steers the frames to the VM's MAC into
		// the forwarder after the isolation's flows, and sends the VM's
		// back as if from the port, into them.
		// The isolation adds a flow that keeps the splice's copies of
		// multicast frames from the VM (the isolation delivers what it
		// lets in), and takes it away after the release: each within
		// a moment of the splice's change.
		d.must("quarantine", port, "--pps", "100000")
		start := time.Now()
		for !strings.Contains(l.sh(l.get("HV_NS"), "ovs-ofctl dump-flows br0 --no-stats"), "priority=64965,") {
			if time.Since(start) > 2*time.Second {
				t.Fatalf("quarantined: no flow of the isolation's for the splice after 2 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("quarantined: the isolation's flow for the splice in %v", time.Since(start).Round(time.Millisecond))
		checkIsolated("quarantined")
		d.must("release", port)
		start = time.Now()
		got := noCounters(l.policyState())
		for got != installed && time.Since(start) < 2*time.Second {
			time.Sleep(10 * time.Millisecond)
			got = noCounters(l.policyState())
		}
		if got != installed {
			t.Fatalf("2 s after the release the ruleset, flows, ports or rows differ:\n--- before\n%s\n--- after\n%s", installed, got)
		}
		t.Logf("released: the state as before the quarantine in %v", time.Since(start).Round(time.Millisecond))
	}

	// The isolation's connections (conntrack zone 21328 of the
	// userspace datapath) go with the last isolation.
	conns := func() int {
		if mode != "ovs" {
			return 0
		}
		return len(sortedLines(l.sh(l.get("HV_NS"), "ovs-appctl dpctl/dump-conntrack zone=21328")))
	}
	if mode == "ovs" {
		if err := connect(ext, vmIP); err != nil {
			t.Errorf("before remove: the allowed network cannot connect into VM 1: %v", err)
		}
		if n := conns(); n == 0 {
			t.Errorf("before remove: no connection in conntrack zone 21328")
		}
	}
	d.must("isolate", "--remove", port)
	if _, isos := d.policies(); len(isos) != 0 {
		t.Fatalf("after remove: %+v", isos)
	}
	if n := conns(); n != 0 {
		t.Errorf("after remove: %d connections left in conntrack zone 21328:\n%s", n, l.sh(l.get("HV_NS"), "ovs-appctl dpctl/dump-conntrack zone=21328"))
	}
	if after := l.policyState(); after != before {
		t.Fatalf("after remove the ruleset or the flows differ:\n--- before\n%s\n--- after\n%s", before, after)
	}
	if err := connect(vm1, extIP); err != nil {
		t.Fatalf("after remove VM 1 cannot connect out: %v", err)
	}
}
