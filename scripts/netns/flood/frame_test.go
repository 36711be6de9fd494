package main

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	testMAC1 = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	testMAC2 = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// decodeAndVerify parses frame with gopacket and checks the L3/L4 checksums
// by recomputing them.
func decodeAndVerify(t *testing.T, frame []byte) gopacket.Packet {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("decode: %v", el.Error())
	}
	// Re-serialise with ComputeChecksums and compare bytes.
	var ls []gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	for _, l := range p.Layers() {
		switch v := l.(type) {
		case *layers.IPv4:
			nl = v
		case *layers.IPv6:
			nl = v
		case *layers.TCP:
			v.SetNetworkLayerForChecksum(nl)
		case *layers.UDP:
			v.SetNetworkLayerForChecksum(nl)
		}
		if s, ok := l.(gopacket.SerializableLayer); ok {
			ls = append(ls, s)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	// gopacket may pad TCP options; zero padding does not change checksums.
	if ref := buf.Bytes(); len(ref) < len(frame) || string(ref[:len(frame)]) != string(frame) {
		t.Fatalf("frame differs from gopacket's re-serialisation with computed checksums:\n got %x\nwant %x", frame, ref)
	}
	return p
}

func TestUDPFrame(t *testing.T) {
	for _, tc := range []struct {
		src, dst string
		size     int
	}{
		{"198.18.0.11", "198.18.0.100", 250},
		{"198.18.0.11", "198.18.0.100", 60},
		{"198.18.0.11", "198.18.0.100", 1514},
		{"2001:2::11", "2001:2::100", 250},
		{"2001:2::11", "2001:2::100", 63},
	} {
		f := flow{src: netip.MustParseAddr(tc.src), dst: netip.MustParseAddr(tc.dst), sport: 40000, dport: 9}
		payload := tc.size - ethLen - ipLen(f.dst) - udpLen
		frame := make([]byte, tc.size)
		rest := putEth(frame, testMAC2, testMAC1, f.dst.Is6())
		rest = putIP(rest, f, protoUDP, udpLen+payload)
		putUDP(rest, f, payload)
		p := decodeAndVerify(t, frame)
		u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if u == nil || len(u.Payload) != payload || u.DstPort != 9 || u.SrcPort != 40000 {
			t.Fatalf("%v: bad UDP layer %+v", tc, u)
		}
	}
}

func TestSYNFrame(t *testing.T) {
	for _, dst := range []string{"198.18.0.100", "2001:2::100"} {
		src := "198.18.0.11"
		if netip.MustParseAddr(dst).Is6() {
			src = "2001:2::11"
		}
		f := flow{src: netip.MustParseAddr(src), dst: netip.MustParseAddr(dst), sport: 1024, dport: 22}
		frame := make([]byte, ethLen+ipLen(f.dst)+synLen)
		rest := putEth(frame, testMAC2, testMAC1, f.dst.Is6())
		rest = putIP(rest, f, protoTCP, synLen)
		syn := putSYN(rest, f, 12345)
		decodeAndVerify(t, frame)
		// Rewrite port and sequence: checksum must follow.
		setSYN(syn, pseudoSum(f, protoTCP, synLen), 65535, 0xdeadbeef)
		p := decodeAndVerify(t, frame)
		tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !tcp.SYN || tcp.ACK || tcp.SrcPort != 65535 || tcp.DstPort != 22 || tcp.Seq != 0xdeadbeef {
			t.Fatalf("bad SYN %+v", tcp)
		}
	}
}

func TestSetSYNAllocs(t *testing.T) {
	f := flow{src: netip.MustParseAddr("198.18.0.11"), dst: netip.MustParseAddr("198.18.0.100"), sport: 1, dport: 9}
	b := make([]byte, synLen)
	putSYN(b, f, 1)
	ps := pseudoSum(f, protoTCP, synLen)
	if n := testing.AllocsPerRun(100, func() { setSYN(b, ps, 2000, 7) }); n != 0 {
		t.Fatalf("setSYN allocates %v times", n)
	}
}
