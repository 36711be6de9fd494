package classify

import (
	"encoding/binary"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// This file holds the DecodingLayers that Classifier registers with its
// gopacket.DecodingLayerParser. Each one:
//
//   - checks, before handing the bytes to gopacket, every condition under
//     which gopacket would fail (gopacket builds its errors with fmt.Errorf,
//     an allocation per bad frame) or would accept what we call malformed
//     (IPv4 total length 0, a length field beyond the frame), and returns a
//     constant reason instead;
//   - writes what it decoded into the Classifier's Frame;
//   - chooses the next layer itself from an explicit list, instead of
//     gopacket's global enum tables, so that nothing past the headers we
//     classify on is decoded (no tunnels, no DNS, no ICMP bodies).
//
// IPv6 and TCP are decoded by offset: gopacket's IPv6 decoder allocates one
// object per hop-by-hop option and its TCP decoder one per MPTCP option (the
// DSS option is on every MPTCP segment), and neither is needed to classify.

// reason is a constant Malformed reason; as an error it converts to an
// interface without allocating.
type reason string

func (r reason) Error() string { return string(r) }

const (
	reasonTruncEthernet  reason = "truncated-ethernet"
	reasonBad8023Length  reason = "bad-802.3-length"
	reasonTruncVLAN      reason = "truncated-vlan"
	reasonVLANDepth      reason = "too-many-vlan-tags"
	reasonTruncARP       reason = "truncated-arp"
	reasonBadARP         reason = "bad-arp"
	reasonTruncIPv4      reason = "truncated-ipv4"
	reasonTruncIPv6      reason = "truncated-ipv6"
	reasonBadIPVersion   reason = "bad-ip-version"
	reasonBadIHL         reason = "bad-ihl"
	reasonBadIPLength    reason = "bad-ip-length"
	reasonTruncIPPayload reason = "truncated-ip-payload"
	reasonBadIPOptions   reason = "bad-ip-options"
	reasonTruncIPv6Ext   reason = "truncated-ipv6-ext"
	reasonBadIPv6Ext     reason = "bad-ipv6-ext"
	reasonTruncTCP       reason = "truncated-tcp"
	reasonBadTCPOffset   reason = "bad-tcp-offset"
	reasonTruncUDP       reason = "truncated-udp"
	reasonBadUDPLength   reason = "bad-udp-length"
	reasonTruncICMP      reason = "truncated-icmp"
	reasonBadNDP         reason = "bad-ndp"
	reasonDecoder        reason = "decoder-error"
)

var allReasons = [...]reason{
	reasonTruncEthernet, reasonBad8023Length, reasonTruncVLAN, reasonVLANDepth,
	reasonTruncARP, reasonBadARP, reasonTruncIPv4, reasonTruncIPv6,
	reasonBadIPVersion, reasonBadIHL, reasonBadIPLength, reasonTruncIPPayload,
	reasonBadIPOptions, reasonTruncIPv6Ext, reasonBadIPv6Ext, reasonTruncTCP,
	reasonBadTCPOffset, reasonTruncUDP, reasonBadUDPLength, reasonTruncICMP,
	reasonBadNDP, reasonDecoder,
}

// MalformedReasons returns every value Frame.Malformed can take besides "",
// so that a caller can create one counter per reason up front. Reasons:
//
//	truncated-ethernet    frame shorter than 14 bytes
//	bad-802.3-length      802.3 length field beyond the frame
//	truncated-vlan        VLAN tag cut short
//	too-many-vlan-tags    more than 2 VLAN tags
//	truncated-arp, bad-arp  ARP cut short, or not Ethernet/IPv4 ARP (1/0x0800/6/4)
//	truncated-ipv4, truncated-ipv6  IP header cut short
//	bad-ip-version        version nibble disagrees with the ethertype
//	bad-ihl               IPv4 IHL < 5 or beyond the total length
//	bad-ip-length         IPv4 total length < 20
//	truncated-ip-payload  IP length beyond the frame
//	bad-ip-options        IPv4 option with a bad length
//	truncated-ipv6-ext    IPv6 extension header chain runs off the end
//	bad-ipv6-ext          hop-by-hop not first, two fragment headers, more than 8 headers
//	truncated-tcp, bad-tcp-offset  TCP header cut short, data offset < 5 or beyond
//	truncated-udp, bad-udp-length  UDP header cut short, length < 8 or beyond
//	truncated-icmp        ICMP header cut short
//	bad-ndp               ICMPv6 133-137 with code != 0, hop limit != 255, short body, fragmented,
//	                      or an option of length 0, past the end, or a link-layer address option not 8 bytes
//	decoder-error         gopacket refused what the checks accepted (a bug)
func MalformedReasons() []string {
	out := make([]string, len(allReasons))
	for i, r := range allReasons {
		out[i] = string(r)
	}
	return out
}

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88a8
	etherTypeIPv6 = 0x86dd
	// Values below this in the ethertype position are 802.3 lengths.
	etherTypeMin = 0x0600

	maxVLANs     = 2
	maxIPv6Exts  = 8
	ipv6HopLimit = 255 // RFC 4861: neighbour discovery is only valid with this hop limit
)

var be = binary.BigEndian

// nextForEtherType is the layer after an Ethernet header or VLAN tag.
func nextForEtherType(t uint16) gopacket.LayerType {
	switch t {
	case etherTypeIPv4:
		return layers.LayerTypeIPv4
	case etherTypeIPv6:
		return layers.LayerTypeIPv6
	case etherTypeARP:
		return layers.LayerTypeARP
	case etherTypeVLAN, etherTypeQinQ:
		return layers.LayerTypeDot1Q
	}
	return gopacket.LayerTypeZero
}

// check8023 rejects an 802.3 length field (t < 0x0600) beyond the n bytes
// that follow it.
func check8023(t uint16, n int) error {
	if t < etherTypeMin && int(t) > n {
		return reasonBad8023Length
	}
	return nil
}

// ethLayer is the Ethernet header, decoded by gopacket.
type ethLayer struct {
	layers.Ethernet
	c *Classifier
}

func (l *ethLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	if len(data) < 14 {
		return reasonTruncEthernet
	}
	t := be.Uint16(data[12:14])
	if err := check8023(t, len(data)-14); err != nil {
		return err
	}
	if l.Ethernet.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	f := &l.c.frame
	f.DstMAC = [6]byte(l.DstMAC)
	f.SrcMAC = [6]byte(l.SrcMAC)
	f.EtherType = t
	l.c.want = nextForEtherType(t)
	return nil
}

func (l *ethLayer) NextLayerType() gopacket.LayerType { return l.c.want }

// vlanLayer is an 802.1Q or 802.1ad tag, decoded by gopacket. The same
// instance decodes both tags of a QinQ frame; Frame.VLANID keeps the outer id.
type vlanLayer struct {
	layers.Dot1Q
	c *Classifier
}

func (l *vlanLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	f := &l.c.frame
	if f.VLANs == maxVLANs {
		return reasonVLANDepth
	}
	if len(data) < 4 {
		return reasonTruncVLAN
	}
	t := be.Uint16(data[2:4])
	if err := check8023(t, len(data)-4); err != nil {
		return err
	}
	if l.Dot1Q.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	if f.VLANs == 0 {
		f.VLANID = l.VLANIdentifier
	}
	f.VLANs++
	f.EtherType = t
	l.c.want = nextForEtherType(t)
	return nil
}

func (l *vlanLayer) NextLayerType() gopacket.LayerType { return l.c.want }

// arpLayer is an ARP packet, decoded by gopacket. Only Ethernet/IPv4 ARP is
// accepted: it is a Control class, and nothing else legitimate exists.
type arpLayer struct {
	layers.ARP
	c *Classifier
}

func (l *arpLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	if len(data) < 8 {
		return reasonTruncARP
	}
	if be.Uint16(data[0:2]) != 1 || be.Uint16(data[2:4]) != etherTypeIPv4 || data[4] != 6 || data[5] != 4 {
		return reasonBadARP
	}
	if len(data) < 8+2*6+2*4 {
		return reasonTruncARP
	}
	if l.ARP.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	f := &l.c.frame
	f.ARPOp = be.Uint16(data[6:8])
	f.ARPSenderMAC = [6]byte(data[8:14])
	f.ARPSenderIP = netip.AddrFrom4([4]byte(data[14:18]))
	f.ARPTargetIP = netip.AddrFrom4([4]byte(data[24:28]))
	return nil
}

func (l *arpLayer) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }

// ip4Layer is an IPv4 header, decoded by gopacket after stricter checks.
type ip4Layer struct {
	layers.IPv4
	c *Classifier
}

func (l *ip4Layer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	if len(data) < 20 {
		return reasonTruncIPv4
	}
	if data[0]>>4 != 4 {
		return reasonBadIPVersion
	}
	hl := int(data[0]&0x0f) * 4
	tl := int(be.Uint16(data[2:4]))
	switch {
	case hl < 20:
		return reasonBadIHL
	case tl < 20: // includes 0, which gopacket would take as "TSO, use the frame length"
		return reasonBadIPLength
	case tl < hl:
		return reasonBadIHL
	case hl > len(data):
		return reasonTruncIPv4
	case tl > len(data):
		return reasonTruncIPPayload
	}
	if !validIPv4Options(data[20:hl]) {
		return reasonBadIPOptions
	}
	if l.IPv4.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	f := &l.c.frame
	f.IPVersion = 4
	f.SrcIP = netip.AddrFrom4([4]byte(data[12:16]))
	f.DstIP = netip.AddrFrom4([4]byte(data[16:20]))
	f.Proto = data[9]
	ff := be.Uint16(data[6:8])
	offset, more := ff&0x1fff, ff&0x2000 != 0
	if more || offset != 0 {
		f.Fragment = true
		f.FirstFragment = offset == 0
	}
	if offset == 0 {
		switch f.Proto {
		case ProtoTCP:
			l.c.want = layers.LayerTypeTCP
		case ProtoUDP:
			l.c.want = layers.LayerTypeUDP
		case ProtoICMP:
			l.c.want = layers.LayerTypeICMPv4
		}
	}
	return nil
}

func (l *ip4Layer) NextLayerType() gopacket.LayerType { return l.c.want }

// validIPv4Options walks the IPv4 options area as gopacket does and reports
// whether every option fits (RFC 791 3.1).
func validIPv4Options(b []byte) bool {
	for len(b) > 0 {
		switch b[0] {
		case 0: // end of option list
			return true
		case 1: // no-operation
			b = b[1:]
		default:
			if len(b) < 2 || b[1] < 2 || int(b[1]) > len(b) {
				return false
			}
			b = b[b[1]:]
		}
	}
	return true
}

// ip6Layer is an IPv6 header and its extension header chain (hop-by-hop,
// routing, fragment, destination options, authentication header), decoded
// by offset. The whole chain is walked, as RA-Guard must (RFC 7113), so that
// an ICMPv6 message behind extension headers is still seen as one.
type ip6Layer struct {
	c        *Classifier
	hopLimit uint8
	payload  []byte
}

func (l *ip6Layer) CanDecode() gopacket.LayerClass    { return layers.LayerTypeIPv6 }
func (l *ip6Layer) NextLayerType() gopacket.LayerType { return l.c.want }
func (l *ip6Layer) LayerPayload() []byte              { return l.payload }
func (l *ip6Layer) DecodeFromBytes(data []byte, _ gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	l.payload = nil
	if len(data) < 40 {
		return reasonTruncIPv6
	}
	if data[0]>>4 != 6 {
		return reasonBadIPVersion
	}
	// Payload length 0 is an empty payload; a jumbogram would also need a
	// hop-by-hop header, which then runs off the (empty) payload.
	plen := int(be.Uint16(data[4:6]))
	if 40+plen > len(data) {
		return reasonTruncIPPayload
	}
	f := &l.c.frame
	f.IPVersion = 6
	f.SrcIP = netip.AddrFrom16([16]byte(data[8:24]))
	f.DstIP = netip.AddrFrom16([16]byte(data[24:40]))
	l.hopLimit = data[7]
	p := data[40 : 40+plen]
	nh := data[6]
	for n := 0; ; n++ {
		switch nh {
		case 0, 43, 60, 44, 51: // hop-by-hop, routing, destination options, fragment, AH
			if n == maxIPv6Exts || (nh == 0 && n != 0) {
				return reasonBadIPv6Ext
			}
		default: // upper layer, or 59 (no next header), or one we do not walk (ESP, mobility)
			f.Proto = nh
			l.payload = p
			switch nh {
			case ProtoTCP:
				l.c.want = layers.LayerTypeTCP
			case ProtoUDP:
				l.c.want = layers.LayerTypeUDP
			case ProtoICMPv6:
				l.c.want = layers.LayerTypeICMPv6
			}
			return nil
		}
		if nh == 44 {
			if f.Fragment {
				return reasonBadIPv6Ext
			}
			if len(p) < 8 {
				return reasonTruncIPv6Ext
			}
			offset := be.Uint16(p[2:4]) >> 3
			f.Fragment = true
			f.FirstFragment = offset == 0
			nh, p = p[0], p[8:]
			if offset != 0 {
				f.Proto = nh
				l.payload = p
				return nil
			}
			continue
		}
		if len(p) < 2 {
			return reasonTruncIPv6Ext
		}
		hlen := (int(p[1]) + 1) * 8
		if nh == 51 { // AH counts its length in 4-octet units, minus 2 (RFC 4302)
			hlen = (int(p[1]) + 2) * 4
		}
		if hlen > len(p) {
			return reasonTruncIPv6Ext
		}
		nh, p = p[0], p[hlen:]
	}
}

// tcpLayer is a TCP header, decoded by offset; options are not looked at.
type tcpLayer struct {
	c       *Classifier
	payload []byte
}

func (l *tcpLayer) CanDecode() gopacket.LayerClass    { return layers.LayerTypeTCP }
func (l *tcpLayer) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }
func (l *tcpLayer) LayerPayload() []byte              { return l.payload }
func (l *tcpLayer) DecodeFromBytes(data []byte, _ gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	l.payload = nil
	if len(data) < 20 {
		return reasonTruncTCP
	}
	off := int(data[12]>>4) * 4
	if off < 20 || off > len(data) {
		return reasonBadTCPOffset
	}
	f := &l.c.frame
	f.SrcPort = be.Uint16(data[0:2])
	f.DstPort = be.Uint16(data[2:4])
	f.TCPFlags = data[13]
	l.payload = data[off:]
	return nil
}

// udpLayer is a UDP header, decoded by gopacket.
type udpLayer struct {
	layers.UDP
	c *Classifier
}

func (l *udpLayer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	if len(data) < 8 {
		return reasonTruncUDP
	}
	if n := int(be.Uint16(data[4:6])); n < 8 || n > len(data) {
		return reasonBadUDPLength
	}
	if l.UDP.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	f := &l.c.frame
	f.SrcPort = uint16(l.SrcPort)
	f.DstPort = uint16(l.DstPort)
	return nil
}

func (l *udpLayer) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }

// icmp4Layer is an ICMPv4 header, decoded by gopacket.
type icmp4Layer struct {
	layers.ICMPv4
	c *Classifier
}

func (l *icmp4Layer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	if len(data) < 8 {
		return reasonTruncICMP
	}
	if l.ICMPv4.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	f := &l.c.frame
	f.ICMPType = l.TypeCode.Type()
	f.ICMPCode = l.TypeCode.Code()
	return nil
}

func (l *icmp4Layer) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }

// icmp6Layer is an ICMPv6 header, decoded by gopacket.
type icmp6Layer struct {
	layers.ICMPv6
	c   *Classifier
	msg []byte // the ICMPv6 message, header included; a view of the frame
}

func (l *icmp6Layer) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	l.c.want = gopacket.LayerTypeZero
	if len(data) < 4 {
		return reasonTruncICMP
	}
	if l.ICMPv6.DecodeFromBytes(data, df) != nil {
		return reasonDecoder
	}
	f := &l.c.frame
	f.ICMPType = l.TypeCode.Type()
	f.ICMPCode = l.TypeCode.Code()
	l.msg = data
	return nil
}

func (l *icmp6Layer) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }

// ndMinLen is the smallest ICMPv6 message (header included) of each
// neighbour discovery type, 133 to 137 (RFC 4861 section 4); the options
// start there.
var ndMinLen = [5]int{8, 16, 24, 24, 40}

// isND reports whether an ICMPv6 type is router or neighbour discovery.
func isND(t uint8) bool { return t >= 133 && t <= 137 }

// ND option types that carry a link-layer address (RFC 4861 4.6.1).
const (
	ndOptSourceLL = 1
	ndOptTargetLL = 2
)

// decodeND fills the neighbour discovery fields of f from msg, an ND
// message of type t (133-137) at least ndMinLen long, and reports whether
// its options are well formed: every option has a non-zero length within
// the message, and a link-layer address option is one unit (8 bytes), as
// on Ethernet. Hosts discard ND messages that break these rules (RFC 4861
// 4.6, Linux ndisc_parse_options).
func decodeND(f *Frame, t uint8, msg []byte) bool {
	if t == 135 || t == 136 || t == 137 {
		f.NDTarget = netip.AddrFrom16([16]byte(msg[8:24]))
	}
	opts := msg[ndMinLen[t-133]:]
	for len(opts) > 0 {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return false
		}
		n := int(opts[1]) * 8
		if opts[0] == ndOptSourceLL || opts[0] == ndOptTargetLL {
			if n != 8 {
				return false
			}
			a := [6]byte(opts[2:8])
			if f.NDLinkAddrs == 0 {
				f.NDLinkAddr = a
			} else if a != f.NDLinkAddr {
				f.NDLinkAddrsDiffer = true
			}
			if f.NDLinkAddrs < 255 {
				f.NDLinkAddrs++
			}
		}
		opts = opts[n:]
	}
	return true
}
