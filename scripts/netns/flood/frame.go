package main

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

// Header lengths in bytes.
const (
	ethLen  = 14
	ipv4Len = 20
	ipv6Len = 40
	udpLen  = 8
	synLen  = 24 // TCP header with one option: MSS (4 bytes)

	protoTCP = 6
	protoUDP = 17
)

// flow is what every generated packet shares.
type flow struct {
	src, dst     netip.Addr
	sport, dport uint16
}

func ipLen(a netip.Addr) int {
	if a.Is4() {
		return ipv4Len
	}
	return ipv6Len
}

// putEth writes an Ethernet header to b and returns the rest of b.
func putEth(b []byte, dst, src net.HardwareAddr, v6 bool) []byte {
	copy(b[0:6], dst)
	copy(b[6:12], src)
	et := uint16(0x0800)
	if v6 {
		et = 0x86dd
	}
	binary.BigEndian.PutUint16(b[12:], et)
	return b[ethLen:]
}

// putIP writes an IPv4 (with checksum, DF set) or IPv6 header carrying
// l4Len bytes of protocol proto, and returns the rest of b.
func putIP(b []byte, f flow, proto uint8, l4Len int) []byte {
	if f.dst.Is4() {
		h := b[:ipv4Len]
		clear(h)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(ipv4Len+l4Len))
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
		h[8] = 64
		h[9] = proto
		s, d := f.src.As4(), f.dst.As4()
		copy(h[12:16], s[:])
		copy(h[16:20], d[:])
		binary.BigEndian.PutUint16(h[10:], ^labnet.Fold(labnet.Sum(h, 0)))
		return b[ipv4Len:]
	}
	h := b[:ipv6Len]
	clear(h)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(l4Len))
	h[6] = proto
	h[7] = 64
	s, d := f.src.As16(), f.dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return b[ipv6Len:]
}

// pseudoSum is the unfolded checksum of the IPv4 or IPv6 pseudo-header.
func pseudoSum(f flow, proto uint8, l4Len int) uint32 {
	acc := uint32(proto) + uint32(l4Len)
	if f.dst.Is4() {
		s, d := f.src.As4(), f.dst.As4()
		return labnet.Sum(d[:], labnet.Sum(s[:], acc))
	}
	s, d := f.src.As16(), f.dst.As16()
	return labnet.Sum(d[:], labnet.Sum(s[:], acc))
}

// putUDP writes a UDP header and payloadLen bytes of payload to b, with
// the checksum, and returns the UDP datagram.
func putUDP(b []byte, f flow, payloadLen int) []byte {
	d := b[:udpLen+payloadLen]
	clear(d[:udpLen])
	binary.BigEndian.PutUint16(d[0:], f.sport)
	binary.BigEndian.PutUint16(d[2:], f.dport)
	binary.BigEndian.PutUint16(d[4:], uint16(len(d)))
	fillPayload(d[udpLen:])
	c := ^labnet.Fold(labnet.Sum(d, pseudoSum(f, protoUDP, len(d))))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(d[6:], c)
	return d
}

// fillPayload marks the payload so captures are recognisable.
func fillPayload(p []byte) {
	const mark = "shaperd-lab-flood "
	for i := range p {
		p[i] = mark[i%len(mark)]
	}
}

// putSYN writes a TCP SYN with an MSS option to b and returns it. Use
// setSYN to change the source port and sequence number afterwards.
func putSYN(b []byte, f flow, seq uint32) []byte {
	t := b[:synLen]
	clear(t)
	binary.BigEndian.PutUint16(t[0:], f.sport)
	binary.BigEndian.PutUint16(t[2:], f.dport)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12] = (synLen / 4) << 4
	t[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	t[20], t[21] = 2, 4 // MSS
	binary.BigEndian.PutUint16(t[22:], 1460)
	setSYN(t, pseudoSum(f, protoTCP, synLen), f.sport, seq)
	return t
}

// setSYN rewrites the source port and sequence number of the SYN t and
// recomputes its checksum from the pseudo-header sum ps.
func setSYN(t []byte, ps uint32, sport uint16, seq uint32) {
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[16], t[17] = 0, 0
	binary.BigEndian.PutUint16(t[16:], ^labnet.Fold(labnet.Sum(t, ps)))
}
