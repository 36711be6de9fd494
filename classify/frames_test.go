package classify

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Hand-built test frames. Checksums are left zero: Classify does not verify
// them. A few frames are also built with gopacket.SerializeLayers
// (gpFrame) so that the hand-built ones are not the only reference.

var (
	vmMAC  = [6]byte{0x52, 0x54, 0x00, 0x00, 0x00, 0x02}
	gwMAC  = [6]byte{0x52, 0x54, 0x00, 0x00, 0x00, 0x01}
	vm4    = netip.MustParseAddr("10.0.0.2")
	rem4   = netip.MustParseAddr("198.51.100.7")
	rem4b  = netip.MustParseAddr("198.51.100.8")
	vm6    = netip.MustParseAddr("2001:db8::2")
	rem6   = netip.MustParseAddr("2001:db8:1::7")
	llVM6  = netip.MustParseAddr("fe80::5054:ff:fe00:2")
	llRtr6 = netip.MustParseAddr("fe80::1")
)

var be16 = binary.BigEndian.PutUint16

// ether prepends an Ethernet header and VLAN tags (outer first; with two
// tags the outer one is 802.1ad, 0x88a8) to payload.
func ether(src, dst [6]byte, etherType uint16, payload []byte, vlans ...uint16) []byte {
	b := append([]byte{}, dst[:]...)
	b = append(b, src[:]...)
	for i, id := range vlans {
		tpid := uint16(0x8100)
		if i == 0 && len(vlans) > 1 {
			tpid = 0x88a8
		}
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, id)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

// fromVM and toVM are ether with the VM's and the gateway's MACs.
func fromVM(etherType uint16, payload []byte, vlans ...uint16) []byte {
	return ether(vmMAC, gwMAC, etherType, payload, vlans...)
}

func toVM(etherType uint16, payload []byte, vlans ...uint16) []byte {
	return ether(gwMAC, vmMAC, etherType, payload, vlans...)
}

// v4 describes an IPv4 header.
type v4 struct {
	src, dst netip.Addr
	proto    uint8
	opts     []byte // must be a multiple of 4 bytes
	mf       bool
	offset   uint16 // in 8-byte units
}

func (h v4) bytes(payload []byte) []byte {
	hl := 20 + len(h.opts)
	b := make([]byte, hl, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	be16(b[2:], uint16(hl+len(payload)))
	ff := h.offset & 0x1fff
	if h.mf {
		ff |= 0x2000
	}
	be16(b[6:], ff)
	b[8] = 64
	b[9] = h.proto
	s, d := h.src.As4(), h.dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], h.opts)
	return append(b, payload...)
}

// ext is an IPv6 extension header: typ 0, 43, 51 (AH) or 60 with body
// (padded to a multiple of 8 bytes with the 2-byte prefix), or 44
// (fragment) with offset and more.
type ext struct {
	typ    uint8
	body   []byte
	offset uint16
	more   bool
}

// v6 describes an IPv6 header and its extension headers.
type v6 struct {
	src, dst netip.Addr
	next     uint8 // upper-layer protocol after exts
	hop      uint8 // 0 means 64
	exts     []ext
}

func (h v6) bytes(payload []byte) []byte {
	var chain []byte
	for i, e := range h.exts {
		nh := h.next
		if i+1 < len(h.exts) {
			nh = h.exts[i+1].typ
		}
		if e.typ == 44 {
			fo := e.offset << 3
			if e.more {
				fo |= 1
			}
			chain = append(chain, nh, 0, byte(fo>>8), byte(fo), 0, 0, 0x12, 0x34)
			continue
		}
		body := e.body
		for (2+len(body))%8 != 0 {
			body = append(body, 0) // Pad1 options
		}
		if e.typ == 51 { // AH: length in 4-octet units, minus 2
			chain = append(chain, nh, byte((2+len(body))/4-2))
			chain = append(chain, body...)
			continue
		}
		chain = append(chain, nh, byte((2+len(body))/8-1))
		chain = append(chain, body...)
	}
	b := make([]byte, 40, 40+len(chain)+len(payload))
	b[0] = 0x60
	be16(b[4:], uint16(len(chain)+len(payload)))
	b[6] = h.next
	if len(h.exts) > 0 {
		b[6] = h.exts[0].typ
	}
	b[7] = h.hop
	if b[7] == 0 {
		b[7] = 64
	}
	s, d := h.src.As16(), h.dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b = append(b, chain...)
	return append(b, payload...)
}

// tcpSeg builds a TCP segment; opts must be a multiple of 4 bytes.
func tcpSeg(sport, dport uint16, flags uint8, opts, payload []byte) []byte {
	b := make([]byte, 20, 20+len(opts)+len(payload))
	be16(b[0:], sport)
	be16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1000)
	b[12] = byte((20+len(opts))/4) << 4
	b[13] = flags
	be16(b[14:], 65535)
	b = append(b, opts...)
	return append(b, payload...)
}

func udpDgram(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	be16(b[0:], sport)
	be16(b[2:], dport)
	be16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// icmpMsg builds an ICMPv4 or ICMPv6 message of 4 header bytes plus body.
func icmpMsg(typ, code uint8, body []byte) []byte {
	return append([]byte{typ, code, 0, 0}, body...)
}

func arpPkt(op uint16) []byte {
	b := []byte{0, 1, 0x08, 0x00, 6, 4, 0, byte(op)}
	b = append(b, vmMAC[:]...)
	s := vm4.As4()
	b = append(b, s[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	d := rem4.As4()
	return append(b, d[:]...)
}

// pad pads a frame with zeros to the 60-byte Ethernet minimum.
func pad(b []byte) []byte {
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}

// Common frames.
func tcp4(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8) []byte {
	return v4{src: src, dst: dst, proto: 6}.bytes(tcpSeg(sport, dport, flags, nil, nil))
}

func tcp6(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8) []byte {
	return v6{src: src, dst: dst, next: 6}.bytes(tcpSeg(sport, dport, flags, nil, nil))
}

// ssh frames of one connection, remote rem4:40000 <-> vm4:22.
func sshIn(flags uint8) []byte  { return toVM(0x0800, tcp4(rem4, 40000, vm4, 22, flags)) }
func sshOut(flags uint8) []byte { return fromVM(0x0800, tcp4(vm4, 22, rem4, 40000, flags)) }

const (
	fSYN    = TCPFlagSYN
	fACK    = TCPFlagACK
	fSYNACK = TCPFlagSYN | TCPFlagACK
	fRST    = TCPFlagRST
	fPSHACK = TCPFlagPSH | TCPFlagACK
)

// ndBody returns an ICMPv6 ND message body (after the 4-byte header) of the
// minimum size of its type plus a source link-layer address option.
func ndBody(typ uint8) []byte {
	n := ndMinLen[typ-133] - 4
	b := make([]byte, n, n+8)
	return append(b, 1, 1, vmMAC[0], vmMAC[1], vmMAC[2], vmMAC[3], vmMAC[4], vmMAC[5])
}

func nd(typ uint8, hop uint8) []byte {
	return fromVM(0x86dd, v6{src: llVM6, dst: llRtr6, next: 58, hop: hop}.bytes(icmpMsg(typ, 0, ndBody(typ))))
}

// gpFrame serializes ls with gopacket, fixing lengths.
func gpFrame(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func gpEth(t layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: net.HardwareAddr(vmMAC[:]), DstMAC: net.HardwareAddr(gwMAC[:]), EthernetType: t}
}

func gpIP4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: vm4.AsSlice(), DstIP: rem4.AsSlice()}
}

func gpIP6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: vm6.AsSlice(), DstIP: rem6.AsSlice()}
}

// ndMsg builds an ND message of type typ with target (for 135-137) and
// the given options (each a complete option, type and length included).
func ndMsg(typ uint8, target netip.Addr, opts ...[]byte) []byte {
	n := ndMinLen[typ-133] - 4
	b := make([]byte, n)
	if typ >= 135 {
		t := target.As16()
		copy(b[4:], t[:])
	}
	for _, o := range opts {
		b = append(b, o...)
	}
	return icmpMsg(typ, 0, b)
}

// llOpt is a source (1) or target (2) link-layer address option.
func llOpt(typ uint8, mac [6]byte) []byte {
	return append([]byte{typ, 1}, mac[:]...)
}

// ndFrom sends an ND message from src to dst with hop limit 255 from the VM.
func ndFrom(src, dst netip.Addr, msg []byte, exts ...ext) []byte {
	return fromVM(0x86dd, v6{src: src, dst: dst, next: 58, hop: 255, exts: exts}.bytes(msg))
}
