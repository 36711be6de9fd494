package guard

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/classify"
)

// Hand-built frames, run through a real Classifier so that the guard is
// tested on what the forwarder gives it.

var (
	vmMAC    = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	otherMAC = [6]byte{0x52, 0x54, 0x00, 0x65, 0x43, 0x21}
	gwMAC    = [6]byte{0x52, 0x54, 0x00, 0x00, 0x00, 0x01}
	vm4      = netip.MustParseAddr("198.18.0.2")
	gw4      = netip.MustParseAddr("198.18.0.1")
	peer4    = netip.MustParseAddr("198.18.0.3")
	vm6      = netip.MustParseAddr("2001:db8::2")
	peer6    = netip.MustParseAddr("2001:db8::3")
	vmLL     = LinkLocal(vmMAC) // fe80::5054:ff:fe12:3456
	rtrLL    = netip.MustParseAddr("fe80::1")
	allNodes = netip.MustParseAddr("ff02::1")
	unspec6  = netip.IPv6Unspecified()
)

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func eth(src [6]byte, etherType uint16, payload []byte, vlans ...uint16) []byte {
	b := append([]byte{}, gwMAC[:]...)
	b = append(b, src[:]...)
	for _, v := range vlans {
		b = append(b, 0x81, 0x00)
		b = append(b, be16(v)...)
	}
	b = append(b, be16(etherType)...)
	return append(b, payload...)
}

func arp(op uint16, sha [6]byte, spa, tpa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4}
	b = append(b, be16(op)...)
	b = append(b, sha[:]...)
	s, d := spa.As4(), tpa.As4()
	b = append(b, s[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	return append(b, d[:]...)
}

func ip4(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	b := make([]byte, 20)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
	b[8], b[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := append(be16(sport), be16(dport)...)
	b = append(b, be16(uint16(8+len(payload)))...)
	b = append(b, 0, 0)
	return append(b, payload...)
}

func tcp(sport, dport uint16) []byte {
	b := append(be16(sport), be16(dport)...)
	b = append(b, make([]byte, 16)...)
	b[12], b[13] = 0x50, 0x02
	return b
}

// ip6 builds an IPv6 packet; exts are complete extension headers whose
// first byte (next header) is fixed up here, each given with its own type
// as exts[i][0] on the way in.
func ip6(src, dst netip.Addr, next uint8, hop uint8, payload []byte, exts ...[]byte) []byte {
	var chain []byte
	first := next
	for i := len(exts) - 1; i >= 0; i-- {
		e := append([]byte(nil), exts[i]...)
		typ := e[0]
		e[0] = next
		next = typ
		chain = append(e, chain...)
	}
	first = next
	b := make([]byte, 40)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(chain)+len(payload)))
	b[6], b[7] = first, hop
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b = append(b, chain...)
	return append(b, payload...)
}

var (
	hbh      = []byte{0, 0, 5, 2, 0, 0, 1, 0} // hop-by-hop: router alert, PadN
	dstOpts  = []byte{60, 0, 1, 4, 0, 0, 0, 0}
	firstFrg = []byte{44, 0, 0, 0, 0, 0, 0, 1} // offset 0, more fragments
)

func laterFrag(offset uint16) []byte {
	return []byte{44, 0, byte(offset << 3 >> 8), byte(offset << 3), 0, 0, 0, 1}
}

// ndMsg is an ICMPv6 ND message with a target (for NS, NA) and options.
func ndMsg(typ uint8, target netip.Addr, opts ...[]byte) []byte {
	n := map[uint8]int{133: 8, 134: 16, 135: 24, 136: 24, 137: 40}[typ]
	b := make([]byte, n)
	b[0] = typ
	if typ >= 135 {
		t := target.As16()
		copy(b[8:], t[:])
	}
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

func ll(typ uint8, mac [6]byte) []byte { return append([]byte{typ, 1}, mac[:]...) }

func icmp6(typ uint8, body int) []byte { return append([]byte{typ, 0, 0, 0}, make([]byte, body)...) }

func nd(src, dst netip.Addr, msg []byte, exts ...[]byte) []byte {
	return eth(vmMAC, 0x86dd, ip6(src, dst, 58, 255, msg, exts...))
}

func newGuard(t testing.TB) *Guard {
	t.Helper()
	g, err := New(Config{
		MACs: []net.HardwareAddr{vmMAC[:]},
		IPs:  []netip.Prefix{netip.PrefixFrom(vm4, 32), netip.PrefixFrom(vm6, 128), netip.MustParsePrefix("2001:db8:0:1::/64")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func classifier(t testing.TB) *classify.Classifier {
	t.Helper()
	c, err := classify.New(classify.FromVM, classify.Config{BypassPorts: []uint16{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCheck(t *testing.T) {
	g := newGuard(t)
	c := classifier(t)
	cases := []struct {
		name  string
		frame []byte
		want  Verdict
	}{
		// Legitimate traffic.
		{"udp4", eth(vmMAC, 0x0800, ip4(vm4, peer4, 17, udp(40000, 53, []byte("q")))), Pass},
		{"tcp4 vlan", eth(vmMAC, 0x0800, ip4(vm4, peer4, 6, tcp(40000, 80)), 7), Pass},
		{"udp4 in two vlan tags", eth(vmMAC, 0x0800, ip4(vm4, peer4, 17, udp(40000, 53, []byte("q"))), 7, 8), Pass},
		{"tcp6", eth(vmMAC, 0x86dd, ip6(vm6, peer6, 6, 64, tcp(40000, 80))), Pass},
		{"tcp6 from the /64", eth(vmMAC, 0x86dd, ip6(netip.MustParseAddr("2001:db8:0:1:abcd::9"), peer6, 6, 64, tcp(40000, 80))), Pass},
		{"icmp6 echo from link-local", eth(vmMAC, 0x86dd, ip6(vmLL, rtrLL, 58, 64, icmp6(128, 4))), Pass},
		{"arp request", eth(vmMAC, 0x0806, arp(1, vmMAC, vm4, gw4)), Pass},
		{"arp reply", eth(vmMAC, 0x0806, arp(2, vmMAC, vm4, gw4)), Pass},
		{"arp probe", eth(vmMAC, 0x0806, arp(1, vmMAC, netip.IPv4Unspecified(), vm4)), Pass},
		{"dhcp discover", eth(vmMAC, 0x0800, ip4(netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), 17, udp(68, 67, make([]byte, 240)))), Pass},
		{"dhcpv6 solicit", eth(vmMAC, 0x86dd, ip6(vmLL, netip.MustParseAddr("ff02::1:2"), 17, 1, udp(546, 547, []byte("s")))), Pass},
		{"rs", nd(vmLL, netip.MustParseAddr("ff02::2"), ndMsg(133, netip.Addr{}, ll(1, vmMAC))), Pass},
		{"rs from ::", nd(unspec6, netip.MustParseAddr("ff02::2"), ndMsg(133, netip.Addr{})), Pass},
		{"ns resolve peer", nd(vm6, peer6, ndMsg(135, peer6, ll(1, vmMAC))), Pass},
		{"ns dad", nd(unspec6, netip.MustParseAddr("ff02::1:ff00:2"), ndMsg(135, vm6)), Pass},
		{"na", nd(vm6, peer6, ndMsg(136, vm6, ll(2, vmMAC))), Pass},
		{"na link-local", nd(vmLL, rtrLL, ndMsg(136, vmLL, ll(2, vmMAC))), Pass},
		{"mld report from ::", eth(vmMAC, 0x86dd, ip6(unspec6, netip.MustParseAddr("ff02::16"), 58, 1, icmp6(143, 24), hbh)), Pass},
		{"lldp", eth(vmMAC, 0x88cc, []byte{2, 7, 4, 1, 2, 3, 4, 5, 6}), Pass},
		{"ipv6 later fragment", eth(vmMAC, 0x86dd, ip6(vm6, peer6, 58, 64, make([]byte, 16), laterFrag(2))), Pass},

		// Spoofed MAC.
		{"spoofed mac", eth(otherMAC, 0x0800, ip4(vm4, peer4, 17, udp(1, 2, nil))), DropMAC},
		{"multicast source mac", eth([6]byte{1, 0, 0x5e, 0, 0, 1}, 0x0800, ip4(vm4, peer4, 17, udp(1, 2, nil))), DropMAC},
		{"spoofed mac lldp", eth(otherMAC, 0x88cc, []byte{2, 7, 4}), DropMAC},

		// Spoofed IP.
		{"spoofed ipv4", eth(vmMAC, 0x0800, ip4(peer4, gw4, 17, udp(1, 2, nil))), DropIP},
		{"spoofed ipv4 vlan", eth(vmMAC, 0x0800, ip4(peer4, gw4, 6, tcp(1, 2)), 9), DropIP},
		{"spoofed ipv6", eth(vmMAC, 0x86dd, ip6(peer6, vm6, 6, 64, tcp(1, 2))), DropIP},
		{"other link-local", eth(vmMAC, 0x86dd, ip6(rtrLL, allNodes, 17, 64, udp(1, 2, nil))), DropIP},
		{"ipv4-mapped source in ipv6", eth(vmMAC, 0x86dd, ip6(netip.AddrFrom16(vm4.As16()), peer6, 6, 64, tcp(1, 2))), DropIP},
		{"ipv4 from 0.0.0.0 not dhcp", eth(vmMAC, 0x0800, ip4(netip.IPv4Unspecified(), peer4, 17, udp(1, 2, nil))), DropIP},
		{"ipv6 from :: not mld", eth(vmMAC, 0x86dd, ip6(unspec6, peer6, 17, 64, udp(1, 2, nil))), DropIP},
		{"ipv4 bad ihl", func() []byte { b := eth(vmMAC, 0x0800, ip4(vm4, peer4, 17, udp(1, 2, nil))); b[14] = 0x43; return b }(), DropIP},
		{"ipv4 truncated", eth(vmMAC, 0x0800, ip4(vm4, peer4, 17, nil)[:10]), DropIP},
		{"spoofed ipv4 in three vlan tags", eth(vmMAC, 0x0800, ip4(peer4, gw4, 17, udp(1, 2, nil)), 100, 200, 300), DropIP},
		{"own ipv4 in three vlan tags", eth(vmMAC, 0x0800, ip4(vm4, peer4, 17, udp(1, 2, nil)), 100, 200, 300), DropIP},
		{"ra in three vlan tags", eth(vmMAC, 0x86dd, ip6(vmLL, allNodes, 58, 255, ndMsg(134, netip.Addr{})), 1, 2, 3), DropIP},
		{"vlan tag cut short", eth(vmMAC, 0x0800, nil, 100)[:16], DropIP},
		{"qinq tag cut short", append(eth(vmMAC, 0x88a8, nil), 0x00), DropIP},

		// ARP.
		{"forged arp reply", eth(vmMAC, 0x0806, arp(2, vmMAC, gw4, peer4)), DropARP},
		{"arp other sender mac", eth(vmMAC, 0x0806, arp(2, otherMAC, vm4, peer4)), DropARP},
		{"arp truncated", eth(vmMAC, 0x0806, arp(2, vmMAC, vm4, peer4)[:20]), DropARP},

		// Neighbour discovery.
		{"forged na", nd(vmLL, allNodes, ndMsg(136, netip.MustParseAddr("2001:db8::1"), ll(2, vmMAC))), DropND},
		{"na from other source", nd(peer6, allNodes, ndMsg(136, peer6, ll(2, vmMAC))), DropND},
		{"na other tll", nd(vm6, peer6, ndMsg(136, vm6, ll(2, otherMAC))), DropND},
		{"ns other sll", nd(vm6, peer6, ndMsg(135, peer6, ll(1, otherMAC))), DropND},
		{"ns two sll", nd(vm6, peer6, ndMsg(135, peer6, ll(1, vmMAC), ll(1, otherMAC))), DropND},
		{"ns other source", nd(peer6, vm6, ndMsg(135, vm6, ll(1, vmMAC))), DropND},
		{"ns dad for another", nd(unspec6, netip.MustParseAddr("ff02::1:ff00:3"), ndMsg(135, peer6)), DropND},
		{"rs other source", nd(rtrLL, netip.MustParseAddr("ff02::2"), ndMsg(133, netip.Addr{}, ll(1, vmMAC))), DropND},
		{"na hop limit 64", eth(vmMAC, 0x86dd, ip6(vm6, peer6, 58, 64, ndMsg(136, vm6, ll(2, vmMAC)))), DropND},

		// DHCP servers.
		{"rogue dhcp offer", eth(vmMAC, 0x0800, ip4(vm4, netip.MustParseAddr("255.255.255.255"), 17, udp(67, 68, make([]byte, 240)))), DropDHCP},
		{"rogue dhcpv6 advertise", eth(vmMAC, 0x86dd, ip6(vmLL, rtrLL, 17, 64, udp(547, 546, []byte("a")))), DropDHCP},
		{"dhcpv6 advertise behind dst opts", eth(vmMAC, 0x86dd, ip6(vmLL, rtrLL, 17, 64, udp(547, 546, []byte("a")), dstOpts)), DropDHCP},
		{"ipv4 first fragment without udp header", func() []byte {
			p := ip4(vm4, peer4, 17, udp(67, 68, nil)[:4])
			p[6] = 0x20 // more fragments
			return eth(vmMAC, 0x0800, p)
		}(), DropDHCP},

		// Router messages, plain and hidden.
		{"ra", nd(vmLL, allNodes, ndMsg(134, netip.Addr{}, ll(1, vmMAC))), DropRA},
		{"ra behind hop-by-hop", nd(vmLL, allNodes, ndMsg(134, netip.Addr{}, ll(1, vmMAC)), hbh), DropRA},
		{"ra behind hbh and dst opts", nd(vmLL, allNodes, ndMsg(134, netip.Addr{}), hbh, dstOpts), DropRA},
		{"ra in a first fragment", nd(vmLL, allNodes, ndMsg(134, netip.Addr{}), firstFrg), DropRA},
		{"ra hop limit 64", eth(vmMAC, 0x86dd, ip6(vmLL, allNodes, 58, 64, ndMsg(134, netip.Addr{}))), DropRA},
		{"redirect", nd(vmLL, peer6, ndMsg(137, peer6)), DropRA},
		{"router renumbering", eth(vmMAC, 0x86dd, ip6(vmLL, allNodes, 58, 255, icmp6(138, 12))), DropRA},
		{"ra from a spoofed source", nd(rtrLL, allNodes, ndMsg(134, netip.Addr{})), DropRA},
		{"first fragment without the icmp header", nd(vmLL, allNodes, nil, dstOpts, firstFrg), DropRA},
		{"first fragment with half a chain", func() []byte {
			// Fragment header, then a destination options header that
			// claims 16 bytes but the first fragment ends after 8.
			opts := []byte{60, 1, 1, 4, 0, 0, 0, 0}
			return nd(vmLL, allNodes, nil, firstFrg, opts)
		}(), DropRA},
		{"chain of nine headers", nd(vmLL, allNodes, ndMsg(133, netip.Addr{}), dstOpts, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts, dstOpts), DropRA},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.Classify(tc.frame, 0)
			f := c.Frame()
			if got := g.Check(f); got != tc.want {
				t.Fatalf("Check = %v, want %v (class malformed %q, frame %+v)", got, tc.want, f.Malformed, *f)
			}
		})
	}
}

func TestNew(t *testing.T) {
	mac := net.HardwareAddr(vmMAC[:])
	one := []netip.Prefix{netip.PrefixFrom(vm4, 32)}
	for _, c := range []struct {
		cfg  Config
		want string // substring of the error, "" for success
	}{
		{Config{IPs: one}, "--guard-mac: no MAC"},
		{Config{MACs: []net.HardwareAddr{mac}}, "--guard-ip: no IP"},
		{Config{MACs: []net.HardwareAddr{{1, 0, 0x5e, 0, 0, 1}}, IPs: one}, "not a unicast"},
		{Config{MACs: []net.HardwareAddr{{0, 0, 0, 0, 0, 0}}, IPs: one}, "not a unicast"},
		{Config{MACs: []net.HardwareAddr{{1, 2, 3}}, IPs: one}, "6-byte"},
		{Config{MACs: []net.HardwareAddr{mac}, IPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/32")}}, "can own"},
		{Config{MACs: []net.HardwareAddr{mac}, IPs: []netip.Prefix{netip.MustParsePrefix("ff02::1/128")}}, "can own"},
		{Config{MACs: []net.HardwareAddr{mac}, IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/0")}}, "length 0"},
		{Config{MACs: []net.HardwareAddr{mac}, IPs: []netip.Prefix{{}}}, "invalid"},
		{Config{MACs: []net.HardwareAddr{mac}, IPs: one}, ""},
	} {
		_, err := New(c.cfg)
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.cfg, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want an error with %q", c.cfg, err, c.want)
		}
	}
}

func TestNormalisedConfig(t *testing.T) {
	g, err := New(Config{
		MACs: []net.HardwareAddr{vmMAC[:], vmMAC[:]},
		IPs:  []netip.Prefix{netip.MustParsePrefix("::ffff:198.18.0.2/128"), netip.MustParsePrefix("198.18.0.2/32"), netip.MustParsePrefix("2001:db8:0:1::5/64")},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := g.Config().String()
	if want := "--guard-mac 52:54:00:12:34:56 --guard-ip 198.18.0.2,2001:db8:0:1::/64"; got != want {
		t.Fatalf("Config %q, want %q", got, want)
	}
}

func TestParse(t *testing.T) {
	macs, err := ParseMACs("52:54:00:12:34:56, 52:54:00:65:43:21")
	if err != nil || len(macs) != 2 || macs[1].String() != "52:54:00:65:43:21" {
		t.Fatalf("ParseMACs: %v %v", macs, err)
	}
	for _, bad := range []string{"", "52:54:00:12:34", "00:00:00:00:00:00:00:01", "x"} {
		if _, err := ParseMACs(bad); err == nil || !strings.Contains(err.Error(), "--guard-mac") {
			t.Errorf("ParseMACs(%q): %v", bad, err)
		}
	}
	ips, err := ParseIPs("198.18.0.2, 2001:db8::/64,fe80::1")
	if err != nil || FormatIPs(ips) != "198.18.0.2,2001:db8::/64,fe80::1" {
		t.Fatalf("ParseIPs: %v %v", ips, err)
	}
	for _, bad := range []string{"", "198.18.0.256", "2001:db8::/129", "a,b"} {
		if _, err := ParseIPs(bad); err == nil || !strings.Contains(err.Error(), "--guard-ip") {
			t.Errorf("ParseIPs(%q): %v", bad, err)
		}
	}
}

func TestLinkLocal(t *testing.T) {
	if got := LinkLocal([6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}).String(); got != "fe80::5054:ff:fe12:3456" {
		t.Fatalf("LinkLocal = %s", got)
	}
}

func TestVerdictStrings(t *testing.T) {
	want := []string{"pass", "guard_mac", "guard_ip", "guard_arp", "guard_nd", "guard_dhcp", "guard_ra"}
	for v := range NumVerdicts {
		if v.String() != want[v] {
			t.Errorf("%d: %q", v, v.String())
		}
	}
	if NumVerdicts.String() != "invalid" {
		t.Error("out of range")
	}
}

func TestCheckZeroAllocs(t *testing.T) {
	g := newGuard(t)
	c := classifier(t)
	frames := [][]byte{
		eth(vmMAC, 0x0800, ip4(vm4, peer4, 17, udp(40000, 53, nil))),
		eth(vmMAC, 0x86dd, ip6(vm6, peer6, 6, 64, tcp(40000, 80))),
		nd(vm6, peer6, ndMsg(136, vm6, ll(2, vmMAC))),
		nd(vmLL, allNodes, ndMsg(134, netip.Addr{}), hbh),
		eth(vmMAC, 0x0806, arp(2, vmMAC, gw4, peer4)),
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for _, fr := range frames {
			c.Classify(fr, 0)
			g.Check(c.Frame())
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations", allocs)
	}
}

func BenchmarkCheck(b *testing.B) {
	g := newGuard(b)
	c := classifier(b)
	fr := eth(vmMAC, 0x86dd, ip6(vm6, peer6, 6, 64, tcp(40000, 80)))
	c.Classify(fr, 0)
	f := c.Frame()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		g.Check(f)
	}
}
