package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

var (
	vmMAC    = net.HardwareAddr{0x02, 0xc6, 0x12, 0, 0, 0x11}
	bcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// labParams are the lab's VM 1 talking to its external host.
func labParams() params {
	return params{
		srcMAC: vmMAC, dstMAC: bcastMAC, spoofMAC: net.HardwareAddr{0x02, 0, 0x5e, 0, 0xde, 0xad},
		src4: netip.MustParseAddr("198.18.0.11"), dst4: netip.MustParseAddr("198.18.0.100"),
		src6: netip.MustParseAddr("2001:2::11"), dst6: netip.MustParseAddr("2001:2::100"),
		spoofIP: netip.MustParseAddr("198.18.0.50"),
		claim4:  netip.MustParseAddr("198.18.0.100"), claim6: netip.MustParseAddr("2001:2::100"),
		prefix: netip.MustParsePrefix("2001:2:0:99::/64"),
		sport:  40000, dport: 9,
	}
}

func buildOK(t *testing.T, k kind, p params) []byte {
	t.Helper()
	if err := p.check(k); err != nil {
		t.Fatalf("check(%s): %v", k, err)
	}
	f, err := build(k, &p)
	if err != nil {
		t.Fatalf("build(%s): %v", k, err)
	}
	return f
}

func decode(t *testing.T, frame []byte) gopacket.Packet {
	t.Helper()
	pk := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := pk.ErrorLayer(); el != nil {
		t.Fatalf("gopacket: %v\n%x", el.Error(), frame)
	}
	return pk
}

// verifyChecksums recomputes the IPv4 header checksum and the UDP or
// ICMPv6 checksum (over the pseudo-header, after any extension header).
func verifyChecksums(t *testing.T, pk gopacket.Packet) {
	t.Helper()
	var pseudo uint32
	if l, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		if c := labnet.Fold(labnet.Sum(l.Contents, 0)); c != 0xffff {
			t.Errorf("IPv4 header checksum wrong: folded sum %#x", c)
		}
		pseudo = labnet.Sum(l.SrcIP.To4(), labnet.Sum(l.DstIP.To4(), 0))
	} else if l, ok := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		pseudo = labnet.Sum(l.SrcIP, labnet.Sum(l.DstIP, 0))
	} else {
		return
	}
	var l4 []byte
	if u, ok := pk.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
		l4 = append(u.Contents, u.Payload...)
		pseudo += uint32(layers.IPProtocolUDP)
	} else if ic, ok := pk.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
		l4 = append(ic.Contents, ic.Payload...)
		pseudo += uint32(layers.IPProtocolICMPv6)
	} else {
		t.Fatal("neither UDP nor ICMPv6")
	}
	pseudo += uint32(len(l4)) // upper-layer length, in both pseudo-headers
	if c := labnet.Fold(labnet.Sum(l4, pseudo)); c != 0xffff {
		t.Errorf("L4 checksum wrong: folded sum %#x", c)
	}
}

// classifyFrame decodes frame with shaperd's classifier, from the VM.
func classifyFrame(t *testing.T, frame []byte) (classify.Class, classify.Frame) {
	t.Helper()
	c, err := classify.New(classify.FromVM, classify.Config{BypassPorts: []uint16{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Classify(frame, 0)
	return cl, *c.Frame()
}

// vmGuard is the guard of the lab's VM 1, as the integration test sets it:
// --guard-mac 02:c6:12:00:00:11 --guard-ip 198.18.0.11,2001:2::11.
func vmGuard(t *testing.T) *guard.Guard {
	t.Helper()
	ips, err := guard.ParseIPs("198.18.0.11,2001:2::11")
	if err != nil {
		t.Fatal(err)
	}
	g, err := guard.New(guard.Config{MACs: []net.HardwareAddr{vmMAC}, IPs: ips})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestFrames(t *testing.T) {
	g := vmGuard(t)
	a := netip.MustParseAddr
	for _, tc := range []struct {
		kind  kind
		class classify.Class
		check func(t *testing.T, pk gopacket.Packet, f *classify.Frame)
	}{
		{kindUDP, classify.UDP, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			eth := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			u := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if eth.SrcMAC.String() != vmMAC.String() || u.SrcPort != 40000 || u.DstPort != 9 || string(u.Payload) != marker+"udp" {
				t.Errorf("udp: %v %v->%v %q", eth.SrcMAC, u.SrcPort, u.DstPort, u.Payload)
			}
			if f.SrcIP != a("198.18.0.11") || f.DstIP != a("198.18.0.100") {
				t.Errorf("classify: %v -> %v", f.SrcIP, f.DstIP)
			}
		}},
		{kindSpoofMAC, classify.UDP, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			if f.SrcMAC != [6]byte{0x02, 0, 0x5e, 0, 0xde, 0xad} || f.SrcIP != a("198.18.0.11") {
				t.Errorf("spoof-mac: source %x %v", f.SrcMAC, f.SrcIP)
			}
		}},
		{kindSpoofIP, classify.UDP, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			if f.SrcMAC != [6]byte(vmMAC) || f.SrcIP != a("198.18.0.50") || f.DstIP != a("198.18.0.100") {
				t.Errorf("spoof-ip: source %x %v -> %v", f.SrcMAC, f.SrcIP, f.DstIP)
			}
		}},
		{kindARPReply, classify.Control, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			arp := pk.Layer(layers.LayerTypeARP).(*layers.ARP)
			if arp.Operation != layers.ARPReply || net.IP(arp.SourceProtAddress).String() != "198.18.0.100" ||
				net.HardwareAddr(arp.SourceHwAddress).String() != vmMAC.String() || net.IP(arp.DstProtAddress).String() != "198.18.0.100" {
				t.Errorf("gopacket ARP: %+v", arp)
			}
			if f.ARPOp != 2 || f.ARPSenderMAC != [6]byte(vmMAC) || f.ARPSenderIP != a("198.18.0.100") || f.ARPTargetIP != a("198.18.0.100") {
				t.Errorf("classify ARP: op %d sender %x %v target %v", f.ARPOp, f.ARPSenderMAC, f.ARPSenderIP, f.ARPTargetIP)
			}
		}},
		{kindNA, classify.Control, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			na, ok := pk.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
			if !ok || !na.Override() || na.Solicited() || na.Router() || na.TargetAddress.String() != "2001:2::100" {
				t.Fatalf("gopacket NA: %+v", na)
			}
			if ip6 := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ip6.HopLimit != 255 {
				t.Errorf("hop limit %d, want 255 (RFC 4861 7.1.2)", ip6.HopLimit)
			}
			if f.ICMPType != 136 || f.SrcIP != a("2001:2::11") || f.NDTarget != a("2001:2::100") ||
				f.NDLinkAddrs != 1 || f.NDLinkAddr != [6]byte(vmMAC) {
				t.Errorf("classify NA: type %d src %v target %v link %d %x", f.ICMPType, f.SrcIP, f.NDTarget, f.NDLinkAddrs, f.NDLinkAddr)
			}
		}},
		{kindDHCPOffer, classify.UDP, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			d, ok := pk.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
			if !ok || d.Operation != layers.DHCPOpReply || d.YourClientIP.String() != "198.18.0.100" {
				t.Fatalf("gopacket DHCP: %+v", d)
			}
			var msgType layers.DHCPMsgType
			for _, o := range d.Options {
				if o.Type == layers.DHCPOptMessageType && len(o.Data) == 1 {
					msgType = layers.DHCPMsgType(o.Data[0])
				}
			}
			if msgType != layers.DHCPMsgTypeOffer {
				t.Errorf("DHCP message type %v, want offer", msgType)
			}
			if f.SrcPort != 67 || f.DstPort != 68 || f.SrcIP != a("198.18.0.11") {
				t.Errorf("classify DHCP: %v:%d -> :%d", f.SrcIP, f.SrcPort, f.DstPort)
			}
		}},
		{kindRAHBH, classify.Control, func(t *testing.T, pk gopacket.Packet, f *classify.Frame) {
			ip6 := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			if ip6.NextHeader != layers.IPProtocolIPv6HopByHop || ip6.HopByHop == nil || ip6.HopByHop.NextHeader != layers.IPProtocolICMPv6 {
				t.Errorf("not behind a hop-by-hop header: next header %v, %+v", ip6.NextHeader, ip6.HopByHop)
			}
			ra, ok := pk.Layer(layers.LayerTypeICMPv6RouterAdvertisement).(*layers.ICMPv6RouterAdvertisement)
			if !ok || ra.RouterLifetime != 1800 || len(ra.Options) != 2 {
				t.Fatalf("gopacket RA: %+v", ra)
			}
			for _, o := range ra.Options {
				if o.Type == layers.ICMPv6OptPrefixInfo && net.IP(o.Data[14:]).String() != "2001:2:0:99::" {
					t.Errorf("prefix %v", net.IP(o.Data[14:]))
				}
			}
			if f.Proto != classify.ProtoICMPv6 || f.ICMPType != 134 || f.Fragment || f.Malformed != "" {
				t.Errorf("classify RA: proto %d type %d fragment %v malformed %q", f.Proto, f.ICMPType, f.Fragment, f.Malformed)
			}
		}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			frame := buildOK(t, tc.kind, labParams())
			pk := decode(t, frame)
			verifyChecksums(t, pk)
			cl, f := classifyFrame(t, frame)
			if cl != tc.class || f.Malformed != "" {
				t.Errorf("classify: %v (malformed %q), want %v", cl, f.Malformed, tc.class)
			}
			tc.check(t, pk, &f)
			info, _ := lookupKind(string(tc.kind))
			want := info.guard
			if want == "" {
				want = "pass"
			}
			if v := g.Check(&f).String(); v != want {
				t.Errorf("guard: %s, want %s", v, want)
			}
		})
	}
}

func TestSpoofIPv6(t *testing.T) {
	p := labParams()
	p.spoofIP = netip.MustParseAddr("2001:2::50")
	frame := buildOK(t, kindSpoofIP, p)
	verifyChecksums(t, decode(t, frame))
	_, f := classifyFrame(t, frame)
	if f.SrcIP != p.spoofIP || f.DstIP != p.dst6 || binary.BigEndian.Uint16(frame[12:]) != 0x86dd {
		t.Errorf("IPv6 spoof: %v -> %v", f.SrcIP, f.DstIP)
	}
	if v := vmGuard(t).Check(&f); v != guard.DropIP {
		t.Errorf("guard: %v, want guard_ip", v)
	}
}

// TestVLANTags: --vlan wraps a frame in 802.1Q tags. Up to two, the
// classifier sees through them and the guard judges the inner frame; with
// three, it cannot, and the guard drops the frame as guard_ip whatever it
// carries.
func TestVLANTags(t *testing.T) {
	g := vmGuard(t)
	for _, tc := range []struct {
		kind  kind
		vlans []uint16
		guard string
	}{
		{kindUDP, []uint16{100}, "pass"},
		{kindUDP, []uint16{100, 200}, "pass"},
		{kindSpoofIP, []uint16{100}, "guard_ip"},
		{kindRAHBH, []uint16{100, 200}, "guard_ra"},
		{kindUDP, []uint16{100, 200, 300}, "guard_ip"},
		{kindSpoofIP, []uint16{100, 200, 300}, "guard_ip"},
		{kindRAHBH, []uint16{100, 200, 300}, "guard_ip"},
	} {
		p := labParams()
		p.vlans = tc.vlans
		frame := buildOK(t, tc.kind, p)
		pk := decode(t, frame)
		var ids []uint16
		for _, l := range pk.Layers() {
			if q, ok := l.(*layers.Dot1Q); ok {
				ids = append(ids, q.VLANIdentifier)
			}
		}
		if fmt.Sprint(ids) != fmt.Sprint(tc.vlans) {
			t.Errorf("%s in %v: gopacket sees tags %v", tc.kind, tc.vlans, ids)
		}
		verifyChecksums(t, pk)
		_, f := classifyFrame(t, frame)
		if len(tc.vlans) <= 2 && (f.VLANs != len(tc.vlans) || f.VLANID != tc.vlans[0]) {
			t.Errorf("%s in %v: classify sees %d tags, outer %d", tc.kind, tc.vlans, f.VLANs, f.VLANID)
		}
		if v := g.Check(&f).String(); v != tc.guard {
			t.Errorf("%s in %v: guard %s, want %s", tc.kind, tc.vlans, v, tc.guard)
		}
	}
}

func TestEveryKindIsTested(t *testing.T) {
	for _, k := range kinds {
		p := labParams()
		if _, err := build(k.kind, &p); err != nil {
			t.Errorf("%s: %v", k.kind, err)
		}
	}
}

func TestCheckRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind kind
		edit func(p *params)
		want string
	}{
		{"dst outside the lab", kindUDP, func(p *params) { p.dst4 = netip.MustParseAddr("10.0.0.1") }, "outside the lab"},
		{"claim outside the lab", kindARPReply, func(p *params) { p.claim4 = netip.MustParseAddr("192.0.2.1") }, "outside the lab"},
		{"na target outside the lab", kindNA, func(p *params) { p.claim6 = netip.MustParseAddr("2001:db8::1") }, "outside the lab"},
		{"ra destination all-nodes", kindRAHBH, func(p *params) { p.dst6 = netip.MustParseAddr("ff02::1") }, "outside the lab"},
		{"ra prefix outside the lab", kindRAHBH, func(p *params) { p.prefix = netip.MustParsePrefix("2001:db8::/64") }, "outside the lab"},
		{"ra prefix not /64", kindRAHBH, func(p *params) { p.prefix = netip.MustParsePrefix("2001:2::/56") }, "--prefix"},
		{"spoof outside the lab", kindSpoofIP, func(p *params) { p.spoofIP = netip.MustParseAddr("8.8.8.8") }, "outside the lab"},
		{"spoof is no spoof", kindSpoofIP, func(p *params) { p.spoofIP = p.src4 }, "no spoof"},
		{"spoof-mac is own", kindSpoofMAC, func(p *params) { p.spoofMAC = p.srcMAC }, "--spoof-mac"},
		{"spoof-mac multicast", kindSpoofMAC, func(p *params) { p.spoofMAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} }, "--spoof-mac"},
		{"no IPv4 source", kindDHCPOffer, func(p *params) { p.src4 = netip.Addr{} }, "--src4"},
		{"IPv6 destination for ARP", kindARPReply, func(p *params) { p.dst4 = netip.MustParseAddr("2001:2::100") }, "--dst4"},
		{"multicast own MAC", kindUDP, func(p *params) { p.srcMAC = bcastMAC }, "--src-mac"},
		{"unknown kind", kind("ping"), func(p *params) {}, "--kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := labParams()
			tc.edit(&p)
			err := p.check(tc.kind)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("check: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	o, err := parse([]string{"--iface", "eth0", "--kind", "na", "--count", "50", "--claim6", "2001:2::101", "--src-mac", "02:c6:12:00:00:11", "--vlan", "100, 200"})
	if err != nil {
		t.Fatal(err)
	}
	if o.kind.kind != kindNA || o.count != 50 || o.p.claim6 != netip.MustParseAddr("2001:2::101") || !o.srcMACSet || o.src4Set || fmt.Sprint(o.p.vlans) != "[100 200]" {
		t.Errorf("parsed %+v", o)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kind", "na"}, "--iface"},
		{[]string{"--iface", "eth0"}, "--kind"},
		{[]string{"--iface", "eth0", "--kind", "nope"}, "--kind"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--count", "0"}, "--count"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--dst4", "10.1.2.3"}, "outside the lab"},
		{[]string{"--iface", "eth0", "--kind", "na", "--claim6", "fe80::1"}, "outside the lab"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--dst-mac", "xx"}, "--dst-mac"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--dport", "0"}, "--dport"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--vlan", "0"}, "--vlan"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--vlan", "100,4095"}, "--vlan"},
		{[]string{"--iface", "eth0", "--kind", "udp", "--vlan", "1,2,3,4,5,6,7,8,9"}, "at most 8"},
	} {
		if _, err := parse(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse(%q): %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestRefusesOutsideNamedNetns(t *testing.T) {
	name, err := labnet.NetnsName()
	if err != nil || name != "" {
		t.Skipf("running inside namespace %q (%v)", name, err)
	}
	err = run([]string{"--iface", "lo", "--kind", "udp", "--src-mac", "02:00:00:00:00:01", "--src4", "198.18.0.11"})
	if !errors.Is(err, labnet.ErrRootNetns) {
		t.Errorf("run outside a lab namespace: %v, want ErrRootNetns", err)
	}
}
