package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

// kind is one sort of crafted frame.
type kind string

// The kinds. Every forged kind breaks exactly one of the guard's rules and
// keeps the others, so that the guard's drop reason names the forgery.
const (
	kindUDP       kind = "udp"        // legitimate: the sender's own MAC and address (a control)
	kindSpoofMAC  kind = "spoof-mac"  // UDP from another Ethernet source MAC
	kindSpoofIP   kind = "spoof-ip"   // UDP from another IPv4 (or IPv6) source address
	kindARPReply  kind = "arp-reply"  // ARP reply claiming another host's IPv4 address
	kindNA        kind = "na"         // neighbour advertisement claiming another host's IPv6 address
	kindDHCPOffer kind = "dhcp-offer" // DHCP server's offer, UDP 67 to 68
	kindRAHBH     kind = "ra-hbh"     // router advertisement behind a hop-by-hop options header
)

// kindInfo describes a kind for --help and for tests.
type kindInfo struct {
	kind kind
	// guard is the reason shaperd's guard drops this kind for: "" when
	// it must pass (udp), else guard_mac, guard_ip, ...
	guard string
	help  string
}

var kinds = []kindInfo{
	{kindUDP, "", "legitimate UDP from the interface's MAC and address to --dst4:--dport (a control: the guard passes it)"},
	{kindSpoofMAC, "guard_mac", "UDP as udp, from Ethernet source --spoof-mac"},
	{kindSpoofIP, "guard_ip", "UDP as udp, from source address --spoof-ip (IPv6 UDP to --dst6 if --spoof-ip is IPv6)"},
	{kindARPReply, "guard_arp", "ARP reply: --claim4 is at the interface's MAC, to --dst4"},
	{kindNA, "guard_nd", "unsolicited neighbour advertisement (override) from --src6 to --dst6: --claim6 is at the interface's MAC"},
	{kindDHCPOffer, "guard_dhcp", "DHCP offer from --src4:67 to --dst4:68 offering --dst4 to the client --dst-mac"},
	{kindRAHBH, "guard_ra", "router advertisement from --src6 to --dst6 behind a hop-by-hop header (PadN), advertising --prefix"},
}

func kindNames() string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k.kind)
	}
	return strings.Join(names, ", ")
}

func lookupKind(s string) (kindInfo, bool) {
	for _, k := range kinds {
		if string(k.kind) == s {
			return k, true
		}
	}
	return kindInfo{}, false
}

// params is everything a frame is built from. Addresses a kind does not use
// may be left invalid.
type params struct {
	srcMAC   net.HardwareAddr // the sender's own MAC (the interface's)
	dstMAC   net.HardwareAddr // Ethernet destination; broadcast reaches every port of the bridge
	spoofMAC net.HardwareAddr // spoof-mac: the forged Ethernet source

	src4, dst4 netip.Addr // the sender's IPv4 address; the IPv4 destination
	src6, dst6 netip.Addr // the sender's IPv6 address; the IPv6 destination

	spoofIP netip.Addr   // spoof-ip: the forged source
	claim4  netip.Addr   // arp-reply: the IPv4 address claimed
	claim6  netip.Addr   // na: the IPv6 address claimed
	prefix  netip.Prefix // ra-hbh: the prefix advertised

	sport, dport uint16 // udp, spoof-mac, spoof-ip

	// vlans are 802.1Q tags (TPID 0x8100) to insert after the Ethernet
	// addresses, outermost first; none by default.
	vlans []uint16
}

// maxTags is the most VLAN tags --vlan takes.
const maxTags = 8

// marker starts the payload of the UDP kinds, so that captures can tell
// crafted frames from the lab's other traffic.
const marker = "shaperd-lab-craft "

// payload returns the UDP payload of kind k: the marker and the kind.
func payload(k kind) []byte { return []byte(marker + string(k)) }

// addrsOf returns the IP addresses kind k puts in its frames.
func (p *params) addrsOf(k kind) []netip.Addr {
	switch k {
	case kindUDP, kindSpoofMAC:
		return []netip.Addr{p.src4, p.dst4}
	case kindSpoofIP:
		if p.spoofIP.Is6() {
			return []netip.Addr{p.spoofIP, p.dst6}
		}
		return []netip.Addr{p.spoofIP, p.dst4}
	case kindARPReply:
		return []netip.Addr{p.claim4, p.dst4}
	case kindNA:
		return []netip.Addr{p.src6, p.dst6, p.claim6}
	case kindDHCPOffer:
		return []netip.Addr{p.src4, p.dst4}
	case kindRAHBH:
		return []netip.Addr{p.src6, p.dst6, p.prefix.Addr()}
	}
	return nil
}

// errFamily is wrapped when an address is missing or of the wrong family.
var errFamily = errors.New("wrong address family")

// check validates p for kind k: every IP address the frame carries must
// be a lab address (198.18.0.0/15, 2001:2::/48) of the family its field
// needs, and the MACs must be Ethernet addresses (sources unicast).
func (p *params) check(k kind) error {
	if len(p.srcMAC) != 6 || p.srcMAC[0]&1 != 0 {
		return fmt.Errorf("--src-mac %v: want a unicast Ethernet address", p.srcMAC)
	}
	if len(p.dstMAC) != 6 {
		return fmt.Errorf("--dst-mac %v: want an Ethernet address", p.dstMAC)
	}
	if len(p.vlans) > maxTags {
		return fmt.Errorf("--vlan: %d tags; at most %d", len(p.vlans), maxTags)
	}
	for _, v := range p.vlans {
		if v == 0 || v > 4094 {
			return fmt.Errorf("--vlan: VLAN id %d, want 1-4094", v)
		}
	}
	if k == kindSpoofMAC && (len(p.spoofMAC) != 6 || p.spoofMAC[0]&1 != 0 || string(p.spoofMAC) == string(p.srcMAC)) {
		return fmt.Errorf("--spoof-mac %v: want a unicast Ethernet address other than the interface's %v", p.spoofMAC, p.srcMAC)
	}
	want4 := func(flag string, a netip.Addr) error {
		if !a.Is4() {
			return fmt.Errorf("--%s %v: %w, want IPv4 (kind %s)", flag, a, errFamily, k)
		}
		return nil
	}
	want6 := func(flag string, a netip.Addr) error {
		if !a.Is6() || a.Is4In6() {
			return fmt.Errorf("--%s %v: %w, want IPv6 (kind %s)", flag, a, errFamily, k)
		}
		return nil
	}
	var errs []error
	switch k {
	case kindUDP, kindSpoofMAC, kindDHCPOffer:
		errs = append(errs, want4("src4", p.src4), want4("dst4", p.dst4))
	case kindSpoofIP:
		if !p.spoofIP.IsValid() {
			errs = append(errs, fmt.Errorf("--spoof-ip: %w, want an IPv4 or IPv6 address", errFamily))
		} else if p.spoofIP.Is4() {
			errs = append(errs, want4("dst4", p.dst4))
			if p.spoofIP == p.src4 {
				errs = append(errs, fmt.Errorf("--spoof-ip %v: it is the interface's own address, which is no spoof", p.spoofIP))
			}
		} else {
			errs = append(errs, want6("spoof-ip", p.spoofIP), want6("dst6", p.dst6))
			if p.spoofIP == p.src6 {
				errs = append(errs, fmt.Errorf("--spoof-ip %v: it is the interface's own address, which is no spoof", p.spoofIP))
			}
		}
	case kindARPReply:
		errs = append(errs, want4("claim4", p.claim4), want4("dst4", p.dst4))
	case kindNA:
		errs = append(errs, want6("src6", p.src6), want6("dst6", p.dst6), want6("claim6", p.claim6))
	case kindRAHBH:
		errs = append(errs, want6("src6", p.src6), want6("dst6", p.dst6))
		if !p.prefix.IsValid() || !p.prefix.Addr().Is6() || p.prefix.Bits() != 64 || p.prefix.Masked() != p.prefix {
			errs = append(errs, fmt.Errorf("--prefix %v: want an IPv6 /64 such as 2001:2:0:99::/64", p.prefix))
		}
	default:
		return fmt.Errorf("--kind %q: want one of %s", k, kindNames())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, a := range p.addrsOf(k) {
		if err := labnet.CheckAddr(a); err != nil {
			return fmt.Errorf("kind %s: %w", k, err)
		}
	}
	return nil
}

// build returns the frame of kind k, in p.vlans's tags. p must have
// passed check(k).
func build(k kind, p *params) ([]byte, error) {
	f, err := buildUntagged(k, p)
	if err != nil || len(p.vlans) == 0 {
		return f, err
	}
	tagged := make([]byte, 0, len(f)+4*len(p.vlans))
	tagged = append(tagged, f[:12]...)
	for _, v := range p.vlans {
		tagged = append(tagged, 0x81, 0x00, byte(v>>8), byte(v))
	}
	return append(tagged, f[12:]...), nil
}

func buildUntagged(k kind, p *params) ([]byte, error) {
	switch k {
	case kindUDP:
		return udpFrame(p.srcMAC, p.dstMAC, p.src4, p.dst4, p.sport, p.dport, payload(k))
	case kindSpoofMAC:
		return udpFrame(p.spoofMAC, p.dstMAC, p.src4, p.dst4, p.sport, p.dport, payload(k))
	case kindSpoofIP:
		dst := p.dst4
		if p.spoofIP.Is6() {
			dst = p.dst6
		}
		return udpFrame(p.srcMAC, p.dstMAC, p.spoofIP, dst, p.sport, p.dport, payload(k))
	case kindARPReply:
		return arpReply(p)
	case kindNA:
		return neighbourAdvert(p)
	case kindDHCPOffer:
		return dhcpOffer(p)
	case kindRAHBH:
		return routerAdvertHBH(p)
	}
	return nil, fmt.Errorf("--kind %q: want one of %s", k, kindNames())
}

var serializeOpts = gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}

func serialize(ls ...gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serializeOpts, ls...); err != nil {
		return nil, fmt.Errorf("serialize: %w", err)
	}
	return buf.Bytes(), nil
}

func ip(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

func ethernet(src, dst net.HardwareAddr, t layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: t}
}

// network returns the Ethernet and IP layers of a packet from src to dst
// carrying proto, hop limit / TTL ttl.
func network(ethSrc, ethDst net.HardwareAddr, src, dst netip.Addr, proto layers.IPProtocol, ttl uint8) (*layers.Ethernet, gopacket.NetworkLayer, gopacket.SerializableLayer) {
	if src.Is4() {
		l := &layers.IPv4{Version: 4, IHL: 5, TTL: ttl, Flags: layers.IPv4DontFragment, Protocol: proto, SrcIP: ip(src), DstIP: ip(dst)}
		return ethernet(ethSrc, ethDst, layers.EthernetTypeIPv4), l, l
	}
	l := &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: proto, SrcIP: ip(src), DstIP: ip(dst)}
	return ethernet(ethSrc, ethDst, layers.EthernetTypeIPv6), l, l
}

func udpFrame(ethSrc, ethDst net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, data []byte) ([]byte, error) {
	eth, nl, ipl := network(ethSrc, ethDst, src, dst, layers.IPProtocolUDP, 64)
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(nl)
	return serialize(eth, ipl, u, gopacket.Payload(data))
}

// arpReply: "claim4 is at srcMAC", sent to dst4 at dstMAC (a gratuitous
// reply when dstMAC is the broadcast address).
func arpReply(p *params) ([]byte, error) {
	a := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPReply,
		SourceHwAddress: p.srcMAC, SourceProtAddress: ip(p.claim4),
		DstHwAddress: p.dstMAC, DstProtAddress: ip(p.dst4),
	}
	return serialize(ethernet(p.srcMAC, p.dstMAC, layers.EthernetTypeARP), a)
}

// neighbourAdvert: an unsolicited advertisement with the override flag,
// "claim6 is at srcMAC", with a target link-layer address option, as an
// attacker poisoning dst6's neighbour cache sends it (RFC 4861 7.2.6).
func neighbourAdvert(p *params) ([]byte, error) {
	eth, nl, ipl := network(p.srcMAC, p.dstMAC, p.src6, p.dst6, layers.IPProtocolICMPv6, 255)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0)}
	ic.SetNetworkLayerForChecksum(nl)
	na := &layers.ICMPv6NeighborAdvertisement{
		Flags:         0x20, // override
		TargetAddress: ip(p.claim6),
		Options:       layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: p.srcMAC}},
	}
	return serialize(eth, ipl, ic, na)
}

// dhcpOffer: a server's DHCPOFFER (RFC 2131) of dst4 to the client at
// dstMAC, from src4:67 to dst4:68.
func dhcpOffer(p *params) ([]byte, error) {
	eth, nl, ipl := network(p.srcMAC, p.dstMAC, p.src4, p.dst4, layers.IPProtocolUDP, 64)
	u := &layers.UDP{SrcPort: 67, DstPort: 68}
	u.SetNetworkLayerForChecksum(nl)
	d := &layers.DHCPv4{
		Operation: layers.DHCPOpReply, HardwareType: layers.LinkTypeEthernet,
		Xid: 0x5ba9e4d0, YourClientIP: ip(p.dst4), NextServerIP: ip(p.src4),
		ClientHWAddr: p.dstMAC,
		Options: layers.DHCPOptions{
			layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(layers.DHCPMsgTypeOffer)}),
			layers.NewDHCPOption(layers.DHCPOptServerID, ip(p.src4)),
			layers.NewDHCPOption(layers.DHCPOptLeaseTime, []byte{0, 0, 0x0e, 0x10}), // 3600 s
			layers.NewDHCPOption(layers.DHCPOptSubnetMask, []byte{255, 255, 255, 0}),
			layers.NewDHCPOption(layers.DHCPOptRouter, ip(p.src4)),
		},
	}
	return serialize(eth, ipl, u, d)
}

// routerAdvertHBH: a router advertisement (default router, --prefix on-link
// and autonomous, source link-layer option) behind a hop-by-hop options
// header holding one PadN option: the simplest RA-Guard evasion (RFC 7113
// section 2).
func routerAdvertHBH(p *params) ([]byte, error) {
	eth, nl, ipl := network(p.srcMAC, p.dstMAC, p.src6, p.dst6, layers.IPProtocolICMPv6, 255)
	ip6 := ipl.(*layers.IPv6)
	ip6.HopByHop = &layers.IPv6HopByHop{
		Options: []*layers.IPv6HopByHopOption{{OptionType: 1, OptionData: make([]byte, 4)}}, // PadN: 2+2+4 = 8 bytes
	}
	ip6.HopByHop.NextHeader = layers.IPProtocolICMPv6
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeRouterAdvertisement, 0)}
	ic.SetNetworkLayerForChecksum(nl)
	pfx := make([]byte, 30)
	pfx[0] = 64
	pfx[1] = 0xc0                                // on-link, autonomous
	copy(pfx[2:6], []byte{0, 0x27, 0x8d, 0})     // valid lifetime 2592000 s
	copy(pfx[6:10], []byte{0, 0x09, 0x3a, 0x80}) // preferred lifetime 604800 s
	pa := p.prefix.Addr().As16()
	copy(pfx[14:], pa[:])
	ra := &layers.ICMPv6RouterAdvertisement{
		HopLimit: 64, RouterLifetime: 1800,
		// gopacket writes options in reverse order: the prefix comes first.
		Options: layers.ICMPv6Options{
			{Type: layers.ICMPv6OptSourceAddress, Data: p.srcMAC},
			{Type: layers.ICMPv6OptPrefixInfo, Data: pfx},
		},
	}
	return serialize(eth, ipl, ic, ra)
}
