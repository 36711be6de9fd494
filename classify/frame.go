package classify

import "net/netip"

// TCP flag bits as found in Frame.TCPFlags (byte 13 of the TCP header).
const (
	TCPFlagFIN uint8 = 0x01
	TCPFlagSYN uint8 = 0x02
	TCPFlagRST uint8 = 0x04
	TCPFlagPSH uint8 = 0x08
	TCPFlagACK uint8 = 0x10
	TCPFlagURG uint8 = 0x20
	TCPFlagECE uint8 = 0x40
	TCPFlagCWR uint8 = 0x80
)

// IP protocol numbers that Frame.Proto is compared against.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
)

// Frame holds the fields decoded from one frame. A Classifier reuses one
// Frame: it is valid until the next Classify on that Classifier and must not
// be kept or shared across goroutines. Fields a frame does not have are zero.
// When Classify returns Malformed, the fields of the headers before the
// faulty one are filled and Malformed names the fault.
type Frame struct {
	Len            int        // whole frame length in bytes, padding included
	VLANs          int        // number of 802.1Q/802.1ad tags, 0..2
	VLANID         uint16     // outermost VLAN id (12 bits) when VLANs > 0
	SrcMAC, DstMAC [6]byte    // Ethernet addresses
	EtherType      uint16     // innermost ethertype; below 0x0600 an 802.3 length
	IPVersion      uint8      // 0 (not IP), 4 or 6
	SrcIP, DstIP   netip.Addr // zero (invalid) when not IP
	Proto          uint8      // IPv4 protocol, or IPv6 next header after the extension headers
	Fragment       bool       // IPv4 MF or offset != 0, or an IPv6 fragment header is present
	FirstFragment  bool       // Fragment with offset 0: the L4 header is decoded
	SrcPort        uint16     // TCP/UDP source port
	DstPort        uint16     // TCP/UDP destination port
	TCPFlags       uint8      // TCPFlagFIN..TCPFlagCWR
	ICMPType       uint8      // ICMPv4 or ICMPv6 type
	ICMPCode       uint8      // ICMPv4 or ICMPv6 code

	// ARP (Ethernet/IPv4 only): the operation (1 request, 2 reply), the
	// sender's hardware and protocol addresses and the target protocol
	// address. Zero unless the ARP header was decoded.
	ARPOp        uint16
	ARPSenderMAC [6]byte
	ARPSenderIP  netip.Addr
	ARPTargetIP  netip.Addr

	// Neighbour discovery (ICMPv6 133-137 that passed the checks of
	// Control; partly filled when the options make it bad-ndp): NDTarget
	// is the target address of a neighbour
	// solicitation, advertisement or redirect. NDLinkAddr is the address
	// in the first source or target link-layer address option, NDLinkAddrs
	// how many such options the message carries, and NDLinkAddrsDiffer
	// whether two of them disagree. Zero for other frames.
	NDTarget          netip.Addr
	NDLinkAddr        [6]byte
	NDLinkAddrs       uint8
	NDLinkAddrsDiffer bool

	// Malformed is a short constant reason ("truncated-ethernet", "bad-ihl",
	// see MalformedReasons) when the class is Malformed, "" otherwise.
	Malformed string
}

// IsIP reports whether f is a well-formed IPv4 or IPv6 packet.
func (f *Frame) IsIP() bool { return f.IPVersion != 0 && f.Malformed == "" }

// IsNonFirstFragment reports whether f is an IP fragment with a non-zero
// offset, which carries no L4 header.
func (f *Frame) IsNonFirstFragment() bool { return f.Fragment && !f.FirstFragment }

// hasL4 reports whether the TCP/UDP/ICMP header of f was decoded.
func (f *Frame) hasL4() bool { return f.IsIP() && !f.IsNonFirstFragment() }

// IsTCP reports whether f carries a decoded TCP header.
func (f *Frame) IsTCP() bool { return f.Proto == ProtoTCP && f.hasL4() }

// IsUDP reports whether f carries a decoded UDP header.
func (f *Frame) IsUDP() bool { return f.Proto == ProtoUDP && f.hasL4() }

// IsTCPSyn reports whether f is a TCP segment with SYN set and ACK clear:
// the opening segment of a connection.
func (f *Frame) IsTCPSyn() bool {
	return f.IsTCP() && f.TCPFlags&(TCPFlagSYN|TCPFlagACK) == TCPFlagSYN
}

// IsFirstFragment reports whether f is the first fragment (offset 0) of a
// fragmented IP packet: the one that must carry the whole header chain.
func (f *Frame) IsFirstFragment() bool { return f.Fragment && f.FirstFragment }

// IPv6ChainBroken reports whether f is an IPv6 packet whose extension
// header chain could not be walked to its upper-layer header (it runs off
// the packet, or it breaks the ordering and count rules), so that nobody
// can say what it carries (RFC 7112, RFC 7113).
func (f *Frame) IPv6ChainBroken() bool {
	return f.IPVersion == 6 && (f.Malformed == string(reasonTruncIPv6Ext) || f.Malformed == string(reasonBadIPv6Ext))
}

// IsTCPRst reports whether f is a TCP segment with RST set.
func (f *Frame) IsTCPRst() bool { return f.IsTCP() && f.TCPFlags&TCPFlagRST != 0 }
