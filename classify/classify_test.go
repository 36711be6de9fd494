package classify

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// plain returns a Classifier without bypass, for stateless classification.
func plain(t testing.TB, dir Direction) *Classifier {
	t.Helper()
	c, err := New(dir, Config{BypassPorts: []uint16{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type frameCase struct {
	name   string
	frame  []byte
	want   Class
	reason string              // Frame.Malformed wanted
	check  func(*Frame) string // extra field checks; returns what is wrong
	// validEnd is where the meaningful content ends (IP total length or
	// ARP end, from the frame start): truncating at or after it keeps the
	// class, before it gives Malformed. 0 means len(frame).
	validEnd int
}

func fields(want Frame) func(*Frame) string {
	return func(f *Frame) string {
		got := *f
		got.Len, got.SrcMAC, got.DstMAC = 0, [6]byte{}, [6]byte{}
		if got != want {
			return "fields\n got " + dump(&got) + "\nwant " + dump(&want)
		}
		return ""
	}
}

func dump(f *Frame) string {
	b, _ := json.Marshal(f)
	return string(b)
}

var (
	ipv6HBH  = ext{typ: 0, body: []byte{5, 2, 0, 0}} // router alert
	ipv6Dst  = ext{typ: 60, body: []byte{1, 4, 0, 0, 0, 0}}
	ipv6Rt   = ext{typ: 43, body: []byte{0, 0, 0, 0, 0, 0}} // type 0, segments left 0
	ipv6Frag = ext{typ: 44}
	ipv6AH   = ext{typ: 51, body: []byte{0, 0, 0, 0, 0x10, 0, 0, 1, 0, 0, 0, 7, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6}} // SPI, seq, 96-bit ICV
)

func frameCases(t testing.TB) []frameCase {
	syn4 := tcp4(vm4, 50000, rem4, 443, fSYN)
	ipOpts := []byte{0x94, 0x04, 0, 0, 1, 1, 1, 0}    // router alert, NOP, NOP, NOP, EOL
	mptcpDSS := []byte{30, 8, 0x20, 0x01, 0, 0, 0, 1} // DSS with a 4-byte data ACK
	echo := icmpMsg(8, 0, []byte{0, 1, 0, 1, 'p', 'i', 'n', 'g'})
	echo6 := icmpMsg(128, 0, []byte{0, 1, 0, 1})
	udp4 := v4{src: vm4, dst: rem4, proto: 17}.bytes(udpDgram(5353, 53, []byte("query")))

	return []frameCase{
		// Control.
		{name: "arp request", frame: pad(fromVM(0x0806, arpPkt(1))), want: Control, validEnd: 14 + 28},
		{name: "arp reply vlan", frame: fromVM(0x0806, arpPkt(2), 7), want: Control,
			check: func(f *Frame) string {
				if f.VLANs != 1 || f.VLANID != 7 || f.EtherType != 0x0806 || f.IPVersion != 0 || f.SrcIP.IsValid() {
					return dump(f)
				}
				return ""
			}},
		{name: "ns", frame: nd(135, 255), want: Control},
		{name: "na", frame: nd(136, 255), want: Control},
		{name: "ra", frame: nd(134, 255), want: Control},
		{name: "rs", frame: nd(133, 255), want: Control},
		{name: "redirect", frame: nd(137, 255), want: Control},
		{name: "ns vlan2", frame: fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255}.bytes(icmpMsg(135, 0, ndBody(135))), 100, 200), want: Control,
			check: func(f *Frame) string {
				if f.VLANs != 2 || f.VLANID != 100 || f.ICMPType != 135 {
					return dump(f)
				}
				return ""
			}},

		{name: "na with target and tll", frame: ndFrom(llVM6, llRtr6, ndMsg(136, vm6, llOpt(2, vmMAC))), want: Control,
			check: func(f *Frame) string {
				if f.NDTarget != vm6 || f.NDLinkAddr != vmMAC || f.NDLinkAddrs != 1 || f.NDLinkAddrsDiffer {
					return dump(f)
				}
				return ""
			}},
		{name: "ns two differing sll", frame: ndFrom(llVM6, llRtr6, ndMsg(135, rem6, llOpt(1, vmMAC), llOpt(1, gwMAC))), want: Control,
			check: func(f *Frame) string {
				if f.NDTarget != rem6 || f.NDLinkAddr != vmMAC || f.NDLinkAddrs != 2 || !f.NDLinkAddrsDiffer {
					return dump(f)
				}
				return ""
			}},
		{name: "ns unknown option", frame: ndFrom(llVM6, llRtr6, ndMsg(135, rem6, []byte{14, 1, 1, 2, 3, 4, 5, 6})), want: Control,
			check: func(f *Frame) string {
				if f.NDLinkAddrs != 0 {
					return dump(f)
				}
				return ""
			}},
		{name: "ra behind ah", frame: ndFrom(llVM6, llRtr6, ndMsg(134, netip.Addr{}, llOpt(1, vmMAC)), ipv6AH), want: Control,
			check: func(f *Frame) string {
				if f.ICMPType != 134 || f.Proto != 58 {
					return dump(f)
				}
				return ""
			}},
		{name: "arp fields", frame: fromVM(0x0806, arpPkt(2)), want: Control,
			check: func(f *Frame) string {
				if f.ARPOp != 2 || f.ARPSenderMAC != vmMAC || f.ARPSenderIP != vm4 || f.ARPTargetIP != rem4 {
					return dump(f)
				}
				return ""
			}},

		// TCP.
		{name: "tcp4 syn", frame: fromVM(0x0800, syn4), want: TCPSyn,
			check: fields(Frame{EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, SrcPort: 50000, DstPort: 443, TCPFlags: fSYN})},
		{name: "tcp4 syn-ack", frame: toVM(0x0800, tcp4(rem4, 443, vm4, 50000, fSYNACK)), want: TCP},
		{name: "tcp4 ack", frame: fromVM(0x0800, tcp4(vm4, 50000, rem4, 443, fACK)), want: TCP},
		{name: "tcp4 syn padded", frame: pad(fromVM(0x0800, syn4)), want: TCPSyn, validEnd: 14 + len(syn4)},
		{name: "tcp4 ip options", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, opts: ipOpts}.bytes(tcpSeg(50000, 443, fPSHACK, nil, []byte("data")))), want: TCP,
			check: fields(Frame{EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, SrcPort: 50000, DstPort: 443, TCPFlags: fPSHACK})},
		{name: "tcp4 mptcp dss", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6}.bytes(tcpSeg(50000, 443, fACK, mptcpDSS, []byte("data")))), want: TCP},
		{name: "tcp4 vlan1", frame: fromVM(0x0800, syn4, 42), want: TCPSyn,
			check: fields(Frame{VLANs: 1, VLANID: 42, EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, SrcPort: 50000, DstPort: 443, TCPFlags: fSYN})},
		{name: "tcp4 qinq", frame: fromVM(0x0800, syn4, 100, 42), want: TCPSyn,
			check: fields(Frame{VLANs: 2, VLANID: 100, EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, SrcPort: 50000, DstPort: 443, TCPFlags: fSYN})},
		{name: "tcp4 double 8100", frame: func() []byte {
			b := fromVM(0x0800, syn4, 100, 42)
			be16(b[12:], 0x8100) // both tags 802.1Q
			return b
		}(), want: TCPSyn},
		{name: "tcp6 syn", frame: fromVM(0x86dd, tcp6(vm6, 50000, rem6, 443, fSYN)), want: TCPSyn,
			check: fields(Frame{EtherType: 0x86dd, IPVersion: 6, SrcIP: vm6, DstIP: rem6, Proto: 6, SrcPort: 50000, DstPort: 443, TCPFlags: fSYN})},
		{name: "tcp6 behind ah", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6HBH, ipv6AH}}.bytes(tcpSeg(50000, 443, fSYN, nil, nil))), want: TCPSyn,
			check: fields(Frame{EtherType: 0x86dd, IPVersion: 6, SrcIP: vm6, DstIP: rem6, Proto: 6, SrcPort: 50000, DstPort: 443, TCPFlags: fSYN})},
		{name: "tcp6 hbh dst rt", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6HBH, ipv6Dst, ipv6Rt}}.bytes(tcpSeg(50000, 443, fACK, nil, nil))), want: TCP},
		{name: "tcp4 first fragment", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, mf: true}.bytes(tcpSeg(50000, 443, fACK, nil, make([]byte, 64)))), want: TCP,
			check: fields(Frame{EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, Fragment: true, FirstFragment: true, SrcPort: 50000, DstPort: 443, TCPFlags: fACK})},

		// UDP and ICMP.
		{name: "udp4", frame: fromVM(0x0800, udp4), want: UDP},
		{name: "udp6 hbh frag", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 17, exts: []ext{ipv6HBH, ipv6Frag}}.bytes(udpDgram(5353, 53, []byte("query")))), want: UDP,
			check: fields(Frame{EtherType: 0x86dd, IPVersion: 6, SrcIP: vm6, DstIP: rem6, Proto: 17, Fragment: true, FirstFragment: true, SrcPort: 5353, DstPort: 53})},
		{name: "icmp4 echo", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 1}.bytes(echo)), want: ICMP,
			check: fields(Frame{EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 1, ICMPType: 8})},
		{name: "icmp6 echo", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 58}.bytes(echo6)), want: ICMP},
		{name: "icmp6 mld report hbh", frame: fromVM(0x86dd, v6{src: llVM6, dst: netip.MustParseAddr("ff02::16"), next: 58, hop: 1, exts: []ext{ipv6HBH}}.bytes(icmpMsg(143, 0, make([]byte, 24)))), want: ICMP},
		{name: "icmp4 padded", frame: pad(fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 1}.bytes(icmpMsg(0, 0, []byte{0, 1, 0, 1})))), want: ICMP, validEnd: 14 + 28},

		// Other.
		{name: "lldp", frame: pad(ether(vmMAC, [6]byte{1, 0x80, 0xc2, 0, 0, 0xe}, 0x88cc, []byte{2, 7, 4})), want: Other, validEnd: 14},
		{name: "802.3 llc", frame: pad(ether(vmMAC, gwMAC, 3, []byte{0x42, 0x42, 3})), want: Other, validEnd: 17},
		{name: "eth header only", frame: fromVM(0x88b5, nil), want: Other},
		{name: "gre4", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 47}.bytes(make([]byte, 8))), want: Other},
		{name: "6in4", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 41}.bytes(tcp6(vm6, 1, rem6, 2, fSYN))), want: Other,
			check: func(f *Frame) string {
				if f.IPVersion != 4 || f.Proto != 41 || f.SrcPort != 0 {
					return dump(f)
				}
				return ""
			}},
		{name: "icmpv6 in ipv4", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 58}.bytes(icmpMsg(135, 0, make([]byte, 20)))), want: Other},
		{name: "tcp4 non-first fragment", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, offset: 185}.bytes(tcpSeg(1, 2, fSYN, nil, nil))), want: Other,
			check: fields(Frame{EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, Fragment: true})},
		{name: "tcp4 last fragment", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, offset: 1}.bytes([]byte{1})), want: Other},
		{name: "ip6 non-first fragment", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 17, exts: []ext{ipv6HBH, {typ: 44, offset: 100}}}.bytes(make([]byte, 16))), want: Other,
			check: fields(Frame{EtherType: 0x86dd, IPVersion: 6, SrcIP: vm6, DstIP: rem6, Proto: 17, Fragment: true})},
		{name: "ip6 no next header", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 59}.bytes(nil)), want: Other},
		{name: "ip6 esp", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 50}.bytes(make([]byte, 16))), want: Other},
		{name: "icmpv4 in ipv6", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 1}.bytes(echo)), want: Other},

		// Malformed: Ethernet and VLAN.
		{name: "empty", frame: nil, want: Malformed, reason: "truncated-ethernet"},
		{name: "13 bytes", frame: fromVM(0x0800, nil)[:13], want: Malformed, reason: "truncated-ethernet"},
		{name: "eth only ipv4", frame: fromVM(0x0800, nil), want: Malformed, reason: "truncated-ipv4"},
		{name: "eth only ipv6", frame: fromVM(0x86dd, nil), want: Malformed, reason: "truncated-ipv6"},
		{name: "eth only arp", frame: fromVM(0x0806, nil), want: Malformed, reason: "truncated-arp"},
		{name: "eth only vlan", frame: fromVM(0x8100, nil), want: Malformed, reason: "truncated-vlan"},
		{name: "vlan cut", frame: fromVM(0x8100, []byte{0, 5}), want: Malformed, reason: "truncated-vlan"},
		{name: "vlan only ipv4", frame: fromVM(0x0800, nil, 5), want: Malformed, reason: "truncated-ipv4"},
		{name: "three vlan tags", frame: fromVM(0x0800, syn4, 1, 2, 3), want: Malformed, reason: "too-many-vlan-tags"},
		{name: "802.3 length beyond", frame: ether(vmMAC, gwMAC, 1000, make([]byte, 46)), want: Malformed, reason: "bad-802.3-length"},
		{name: "802.3 length beyond in vlan", frame: fromVM(1000, make([]byte, 46), 5), want: Malformed, reason: "bad-802.3-length"},

		// Malformed: ARP.
		{name: "arp bad hlen", frame: func() []byte { b := arpPkt(1); b[4] = 8; return fromVM(0x0806, b) }(), want: Malformed, reason: "bad-arp"},
		{name: "arp ipv6 ptype", frame: func() []byte { b := arpPkt(1); be16(b[2:], 0x86dd); return fromVM(0x0806, b) }(), want: Malformed, reason: "bad-arp"},
		{name: "arp cut", frame: fromVM(0x0806, arpPkt(1)[:20]), want: Malformed, reason: "truncated-arp"},

		// Malformed: IPv4.
		{name: "ipv4 version 6", frame: func() []byte { b := fromVM(0x0800, syn4); b[14] = 0x65; return b }(), want: Malformed, reason: "bad-ip-version"},
		{name: "ihl 4", frame: func() []byte { b := fromVM(0x0800, syn4); b[14] = 0x44; return b }(), want: Malformed, reason: "bad-ihl"},
		{name: "ihl 0", frame: func() []byte { b := fromVM(0x0800, syn4); b[14] = 0x40; return b }(), want: Malformed, reason: "bad-ihl"},
		{name: "ihl beyond total length", frame: func() []byte {
			b := fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 1}.bytes(icmpMsg(8, 0, make([]byte, 4))))
			b[14] = 0x4f // 60 bytes of header in a 28-byte packet
			return b
		}(), want: Malformed, reason: "bad-ihl"},
		{name: "ihl beyond frame", frame: func() []byte {
			b := fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, opts: ipOpts}.bytes(nil))
			return b[:14+24]
		}(), want: Malformed, reason: "truncated-ipv4"},
		{name: "total length 0", frame: func() []byte { b := fromVM(0x0800, syn4); be16(b[16:], 0); return b }(), want: Malformed, reason: "bad-ip-length"},
		{name: "total length 19", frame: func() []byte { b := fromVM(0x0800, syn4); be16(b[16:], 19); return b }(), want: Malformed, reason: "bad-ip-length"},
		{name: "total length beyond frame", frame: func() []byte { b := fromVM(0x0800, syn4); be16(b[16:], 41); return b }(), want: Malformed, reason: "truncated-ip-payload"},
		{name: "ip option length 1", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, opts: []byte{0x94, 1, 0, 0}}.bytes(tcpSeg(1, 2, fACK, nil, nil))), want: Malformed, reason: "bad-ip-options"},
		{name: "ip option beyond header", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, opts: []byte{1, 0x94, 8, 0}}.bytes(tcpSeg(1, 2, fACK, nil, nil))), want: Malformed, reason: "bad-ip-options"},
		{name: "ip option cut", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, opts: []byte{1, 1, 1, 0x94}}.bytes(tcpSeg(1, 2, fACK, nil, nil))), want: Malformed, reason: "bad-ip-options"},
		{name: "ipv4 tcp no header", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6}.bytes(nil)), want: Malformed, reason: "truncated-tcp"},
		{name: "tiny first fragment", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6, mf: true}.bytes(tcpSeg(1, 22, fSYN, nil, nil)[:8])), want: Malformed, reason: "truncated-tcp"},

		// Malformed: IPv6.
		{name: "ipv6 version 4", frame: func() []byte { b := fromVM(0x86dd, tcp6(vm6, 1, rem6, 2, fSYN)); b[14] = 0x40; return b }(), want: Malformed, reason: "bad-ip-version"},
		{name: "ipv6 cut", frame: fromVM(0x86dd, tcp6(vm6, 1, rem6, 2, fSYN))[:14+39], want: Malformed, reason: "truncated-ipv6"},
		{name: "ipv6 payload length 0", frame: func() []byte { b := fromVM(0x86dd, tcp6(vm6, 1, rem6, 2, fSYN)); be16(b[18:], 0); return b }(), want: Malformed, reason: "truncated-tcp"},
		{name: "ipv6 jumbogram", frame: func() []byte {
			b := fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{{typ: 0, body: []byte{0xc2, 4, 0, 1, 0, 0}}}}.bytes(tcpSeg(1, 2, fSYN, nil, nil)))
			be16(b[18:], 0)
			return b
		}(), want: Malformed, reason: "truncated-ipv6-ext"},
		{name: "ipv6 payload length beyond", frame: func() []byte { b := fromVM(0x86dd, tcp6(vm6, 1, rem6, 2, fSYN)); be16(b[18:], 21); return b }(), want: Malformed, reason: "truncated-ip-payload"},
		{name: "ipv6 ext beyond payload", frame: func() []byte {
			b := fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6HBH}}.bytes(tcpSeg(1, 2, fSYN, nil, nil)))
			b[14+40+1] = 9 // hop-by-hop claims 80 bytes
			return b
		}(), want: Malformed, reason: "truncated-ipv6-ext"},
		{name: "ipv6 ext 1 byte", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 0}.bytes([]byte{6})), want: Malformed, reason: "truncated-ipv6-ext"},
		{name: "ipv6 frag cut", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 44}.bytes([]byte{6, 0, 0, 0})), want: Malformed, reason: "truncated-ipv6-ext"},
		{name: "ipv6 hbh not first", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6Dst, ipv6HBH}}.bytes(tcpSeg(1, 2, fSYN, nil, nil))), want: Malformed, reason: "bad-ipv6-ext"},
		{name: "ipv6 two fragment headers", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6Frag, ipv6Frag}}.bytes(tcpSeg(1, 2, fSYN, nil, nil))), want: Malformed, reason: "bad-ipv6-ext"},
		{name: "ipv6 nine ext headers", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: slices.Repeat([]ext{ipv6Dst}, 9)}.bytes(tcpSeg(1, 2, fSYN, nil, nil))), want: Malformed, reason: "bad-ipv6-ext"},
		{name: "ipv6 eight ext headers", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: slices.Repeat([]ext{ipv6Dst}, 8)}.bytes(tcpSeg(1, 2, fSYN, nil, nil))), want: TCPSyn},
		{name: "ipv6 chain ends without upper header", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 17, exts: []ext{ipv6HBH, ipv6Frag}}.bytes(nil)), want: Malformed, reason: "truncated-udp"},

		// Malformed: L4.
		{name: "tcp offset 4", frame: func() []byte { b := fromVM(0x0800, syn4); b[14+20+12] = 0x40; return b }(), want: Malformed, reason: "bad-tcp-offset"},
		{name: "tcp offset beyond", frame: func() []byte { b := fromVM(0x0800, syn4); b[14+20+12] = 0x60; return b }(), want: Malformed, reason: "bad-tcp-offset"},
		{name: "tcp cut", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 6}.bytes(make([]byte, 19))), want: Malformed, reason: "truncated-tcp"},
		{name: "tcp6 cut", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6}.bytes(make([]byte, 12))), want: Malformed, reason: "truncated-tcp"},
		{name: "udp cut", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 17}.bytes(make([]byte, 7))), want: Malformed, reason: "truncated-udp"},
		{name: "udp length 7", frame: func() []byte { b := fromVM(0x0800, udp4); be16(b[14+20+4:], 7); return b }(), want: Malformed, reason: "bad-udp-length"},
		{name: "udp length beyond", frame: func() []byte { b := fromVM(0x0800, udp4); be16(b[14+20+4:], 100); return b }(), want: Malformed, reason: "bad-udp-length"},
		{name: "icmp4 cut", frame: fromVM(0x0800, v4{src: vm4, dst: rem4, proto: 1}.bytes(make([]byte, 7))), want: Malformed, reason: "truncated-icmp"},
		{name: "icmp6 cut", frame: fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 58}.bytes(make([]byte, 3))), want: Malformed, reason: "truncated-icmp"},
		{name: "ns hop limit 64", frame: nd(135, 64), want: Malformed, reason: "bad-ndp"},
		{name: "ns code 1", frame: func() []byte { b := nd(135, 255); b[14+40+1] = 1; return b }(), want: Malformed, reason: "bad-ndp"},
		{name: "ns short", frame: fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255}.bytes(icmpMsg(135, 0, make([]byte, 8)))), want: Malformed, reason: "bad-ndp"},
		{name: "ns option length 0", frame: ndFrom(llVM6, llRtr6, ndMsg(135, rem6, []byte{1, 0, 0, 0, 0, 0, 0, 0})), want: Malformed, reason: "bad-ndp"},
		{name: "ns option past end", frame: ndFrom(llVM6, llRtr6, ndMsg(135, rem6, []byte{14, 2, 0, 0, 0, 0, 0, 0})), want: Malformed, reason: "bad-ndp"},
		{name: "na tll 16 bytes", frame: ndFrom(llVM6, llRtr6, ndMsg(136, vm6, []byte{2, 2, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0})), want: Malformed, reason: "bad-ndp"},
		{name: "ipv6 ah beyond payload", frame: func() []byte {
			b := fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6AH}}.bytes(tcpSeg(1, 2, fSYN, nil, nil)))
			b[14+40+1] = 20 // AH claims 88 bytes
			return b
		}(), want: Malformed, reason: "truncated-ipv6-ext"},
		{name: "ra fragmented", frame: fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: 255, exts: []ext{ipv6Frag}}.bytes(icmpMsg(134, 0, ndBody(134)))), want: Malformed, reason: "bad-ndp"},

		// Built by gopacket.
		{name: "gopacket tcp4 vlan", frame: gpFrame(t, gpEth(layers.EthernetTypeDot1Q),
			&layers.Dot1Q{VLANIdentifier: 9, Type: layers.EthernetTypeIPv4}, gpIP4(layers.IPProtocolTCP),
			&layers.TCP{SrcPort: 22, DstPort: 40000, SYN: true, ACK: true, DataOffset: 5, Window: 1}), want: TCP, validEnd: 14 + 4 + 40,
			check: fields(Frame{VLANs: 1, VLANID: 9, EtherType: 0x0800, IPVersion: 4, SrcIP: vm4, DstIP: rem4, Proto: 6, SrcPort: 22, DstPort: 40000, TCPFlags: fSYNACK})},
		{name: "gopacket udp6", frame: gpFrame(t, gpEth(layers.EthernetTypeIPv6), gpIP6(layers.IPProtocolUDP),
			&layers.UDP{SrcPort: 1, DstPort: 2}, gopacket.Payload("x")), want: UDP},
		{name: "gopacket icmp4", frame: gpFrame(t, gpEth(layers.EthernetTypeIPv4), gpIP4(layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}), want: ICMP, validEnd: 14 + 28,
			check: func(f *Frame) string {
				if f.ICMPType != 3 || f.ICMPCode != 3 {
					return dump(f)
				}
				return ""
			}},
		{name: "gopacket arp", frame: gpFrame(t, gpEth(layers.EthernetTypeARP), &layers.ARP{AddrType: layers.LinkTypeEthernet,
			Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, Operation: 1,
			SourceHwAddress: vmMAC[:], SourceProtAddress: vm4.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: rem4.AsSlice()}), want: Control, validEnd: 14 + 28},
	}
}

func TestClassifyFrames(t *testing.T) {
	for _, dir := range []Direction{FromVM, ToVM} {
		c := plain(t, dir)
		for _, tc := range frameCases(t) {
			t.Run(dir.String()+"/"+tc.name, func(t *testing.T) {
				got := c.Classify(tc.frame, 0)
				f := c.Frame()
				if got != tc.want || f.Malformed != tc.reason {
					t.Fatalf("Classify = %v %q, want %v %q; frame %s", got, f.Malformed, tc.want, tc.reason, dump(f))
				}
				if f.Len != len(tc.frame) {
					t.Errorf("Len = %d, want %d", f.Len, len(tc.frame))
				}
				if tc.check != nil {
					if msg := tc.check(f); msg != "" {
						t.Error(msg)
					}
				}
				if msg := consistent(got, f); msg != "" {
					t.Error(msg)
				}
			})
		}
	}
}

// TestTruncation cuts every well-formed frame of frameCases at every offset:
// a cut before the end of the meaningful content is Malformed, a cut in the
// Ethernet padding keeps the class.
func TestTruncation(t *testing.T) {
	c := plain(t, FromVM)
	n := 0
	for _, tc := range frameCases(t) {
		if tc.want == Malformed {
			continue
		}
		end := tc.validEnd
		if end == 0 {
			end = len(tc.frame)
		}
		for cut := range len(tc.frame) {
			got := c.Classify(tc.frame[:cut], 0)
			want := Malformed
			if cut >= end {
				want = tc.want
			}
			if got != want {
				t.Errorf("%s cut at %d of %d: %v %q, want %v", tc.name, cut, len(tc.frame), got, c.Frame().Malformed, want)
			}
			if msg := consistent(got, c.Frame()); msg != "" {
				t.Errorf("%s cut at %d: %s", tc.name, cut, msg)
			}
			n++
		}
	}
	if n < 1000 {
		t.Fatalf("only %d truncations tried", n)
	}
}

// consistent checks the invariants between a class and its Frame.
func consistent(cl Class, f *Frame) string {
	switch {
	case cl >= NumClasses:
		return "class out of range"
	case (cl == Malformed) != (f.Malformed != ""):
		return "Malformed reason " + f.Malformed + " with class " + cl.String()
	case f.Malformed != "" && !slices.Contains(MalformedReasons(), f.Malformed):
		return "unknown reason " + f.Malformed
	case f.VLANs < 0 || f.VLANs > 2 || (f.VLANs == 0 && f.VLANID != 0) || f.VLANID > 0xfff:
		return "bad VLAN fields " + dump(f)
	case f.IPVersion == 0 && (f.SrcIP.IsValid() || f.DstIP.IsValid() || f.Proto != 0 || f.Fragment):
		return "IP fields without IP " + dump(f)
	case f.IPVersion == 4 && !(f.SrcIP.Is4() && f.DstIP.Is4()),
		f.IPVersion == 6 && !(f.SrcIP.Is6() && f.DstIP.Is6()),
		f.IPVersion != 0 && f.IPVersion != 4 && f.IPVersion != 6:
		return "bad IP version " + dump(f)
	case f.FirstFragment && !f.Fragment:
		return "FirstFragment without Fragment"
	case f.ARPOp != 0 && f.EtherType != 0x0806:
		return "ARP fields without ARP " + dump(f)
	case (f.NDTarget.IsValid() || f.NDLinkAddrs != 0) && !(f.IPVersion == 6 && f.Proto == ProtoICMPv6 && isND(f.ICMPType)):
		return "ND fields without ND " + dump(f)
	case f.NDLinkAddrsDiffer && f.NDLinkAddrs < 2:
		return "differing link-layer options without two of them " + dump(f)
	case f.IPv6ChainBroken() && cl != Malformed:
		return "broken IPv6 chain but not malformed"
	}
	switch cl {
	case Bypass, TCP, TCPSyn:
		if !f.IsTCP() || (cl == TCPSyn) != f.IsTCPSyn() && cl != Bypass {
			return cl.String() + " but " + dump(f)
		}
	case UDP:
		if !f.IsUDP() {
			return "udp but " + dump(f)
		}
	case ICMP:
		if !f.hasL4() || !(f.IPVersion == 4 && f.Proto == ProtoICMP || f.IPVersion == 6 && f.Proto == ProtoICMPv6 && !isND(f.ICMPType)) {
			return "icmp but " + dump(f)
		}
	case Control:
		if !(f.EtherType == 0x0806 && f.IPVersion == 0 || f.Proto == ProtoICMPv6 && isND(f.ICMPType) && f.hasL4()) {
			return "control but " + dump(f)
		}
	case Other:
		if f.IPVersion != 0 && f.hasL4() && (f.Proto == ProtoTCP || f.Proto == ProtoUDP ||
			f.IPVersion == 4 && f.Proto == ProtoICMP || f.IPVersion == 6 && f.Proto == ProtoICMPv6) {
			return "other but " + dump(f)
		}
	}
	if cl != Malformed && cl != Bypass && cl != TCP && cl != TCPSyn && cl != UDP && (f.SrcPort != 0 || f.DstPort != 0 || f.TCPFlags != 0) {
		return "ports without TCP/UDP " + dump(f)
	}
	return ""
}

func TestClassStrings(t *testing.T) {
	want := []string{"control", "bypass", "tcp-syn", "tcp", "udp", "icmp", "other", "malformed"}
	for c := range NumClasses {
		if c.String() != want[c] {
			t.Errorf("Class(%d).String() = %q, want %q", c, c.String(), want[c])
		}
		p, err := ParseClass(want[c])
		if err != nil || p != c {
			t.Errorf("ParseClass(%q) = %v, %v", want[c], p, err)
		}
	}
	if NumClasses.String() != "invalid" {
		t.Errorf("NumClasses.String() = %q", NumClasses.String())
	}
	if _, err := ParseClass("TCP"); !errors.Is(err, ErrUnknownClass) {
		t.Errorf("ParseClass(TCP) error = %v, want ErrUnknownClass", err)
	}
	if FromVM.String() != "from_vm" || ToVM.String() != "to_vm" || Direction(2).String() != "invalid" {
		t.Error("Direction strings")
	}
	// Classes as JSON map keys.
	b, err := json.Marshal(map[Class]int{TCPSyn: 1, Malformed: 2})
	if err != nil || string(b) != `{"malformed":2,"tcp-syn":1}` {
		t.Fatalf("json = %s, %v", b, err)
	}
	var m map[Class]int
	if err := json.Unmarshal(b, &m); err != nil || m[TCPSyn] != 1 || m[Malformed] != 2 {
		t.Fatalf("unmarshal = %v, %v", m, err)
	}
	if err := json.Unmarshal([]byte(`{"nope":1}`), &m); err == nil {
		t.Fatal("unmarshal of unknown class succeeded")
	}
	allocs := testing.AllocsPerRun(100, func() { _ = TCPSyn.String(); _ = ToVM.String() })
	if allocs != 0 {
		t.Errorf("String allocates %v", allocs)
	}
}

func TestConfig(t *testing.T) {
	table := NewConnTable(16)
	for _, tc := range []struct {
		name    string
		dir     Direction
		cfg     Config
		table   *ConnTable
		wantErr string
	}{
		{name: "zero config", cfg: Config{}, table: table},
		{name: "no bypass without table", cfg: Config{BypassPorts: []uint16{}}},
		{name: "outbound", dir: ToVM, cfg: Config{BypassPorts: []uint16{22}, BypassOutbound: true}, table: table},
		{name: "port 0", cfg: Config{BypassPorts: []uint16{22, 0}}, table: table, wantErr: "classify: --bypass: port 0 is not a TCP port"},
		{name: "duplicate", cfg: Config{BypassPorts: []uint16{22, 3389, 22}}, table: table, wantErr: "classify: --bypass: port 22 is listed twice"},
		{name: "default ports need a table", cfg: Config{}, wantErr: "ConnTable is nil"},
		{name: "bad direction", dir: 2, cfg: Config{}, table: table, wantErr: "direction 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.dir, tc.cfg, tc.table)
			if tc.wantErr == "" {
				if err != nil || c == nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New error = %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(tc.wantErr, "--bypass:") && tc.cfg.Validate() == nil {
				t.Fatal("Validate accepted it")
			}
		})
	}
}

// TestMalformedAllocs: a flood of garbage must not make garbage either.
func TestMalformedAllocs(t *testing.T) {
	c := plain(t, FromVM)
	for _, tc := range frameCases(t) {
		if tc.want != Malformed {
			continue
		}
		if a := testing.AllocsPerRun(100, func() { c.Classify(tc.frame, 0) }); a != 0 {
			t.Errorf("%s: %v allocs per Classify", tc.name, a)
		}
	}
}
