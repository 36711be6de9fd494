// Package guard is shaperd's anti-spoofing guard: it checks each frame a
// quarantined VM sends against the VM's own addresses, the way the OpenFlow
// rules operators write for a router's public port do (seed 001) and
// Neutron's firewall does for a port.
//
// From the VM, with the guard on:
//
//   - the Ethernet source must be one of the VM's MACs (guard_mac);
//   - ARP's sender MAC must be the VM's, and its sender IP one of the VM's
//     addresses, or 0.0.0.0 for a probe (guard_arp);
//   - router and neighbour solicitations and neighbour advertisements must
//     come from the VM's addresses (or ::, for duplicate address detection
//     of one of them), an advertisement's target must be the VM's, and
//     every link-layer address option must carry the VM's MAC (guard_nd);
//   - DHCP and DHCPv6 server messages (UDP 67 to 68, 547 to 546) are
//     dropped (guard_dhcp);
//   - IPv6 router messages (router advertisement, redirect, router
//     renumbering, mobile prefix advertisement, multicast router
//     advertisement and termination) are dropped wherever they hide behind
//     extension headers, and so is every IPv6 first fragment that does not
//     carry its whole header chain and every IPv6 packet whose chain cannot
//     be walked, since either could hide one (RFC 7112, RFC 7113) (guard_ra);
//   - the IPv4 and IPv6 source must be one of the VM's addresses, the VM's
//     link-local address derived from its MAC included; 0.0.0.0 is allowed
//     for a DHCP client's request, :: for MLD reports (guard_ip).
//
// A frame whose headers are too broken to tell its source is dropped under
// the check that needed them. A frame in more VLAN tags than the
// classifier walks (two), or whose tag is cut short, could carry anything
// from any source, and is dropped as guard_ip. Frames to the VM are not
// the guard's concern.
//
// A Guard is immutable after New and safe for concurrent use; Check
// allocates nothing.
package guard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/shaperd/shaperd/classify"
)

// Verdict is the guard's answer for one frame.
type Verdict uint8

const (
	// Pass: the frame may go on to the budgets.
	Pass Verdict = iota
	// DropMAC: the Ethernet source is not one of the VM's MACs.
	DropMAC
	// DropIP: the IPv4 or IPv6 source is not one of the VM's addresses.
	DropIP
	// DropARP: ARP whose sender MAC or IP is not the VM's.
	DropARP
	// DropND: neighbour discovery whose source, target or link-layer
	// address option is not the VM's.
	DropND
	// DropDHCP: a DHCP or DHCPv6 server message.
	DropDHCP
	// DropRA: an IPv6 router message, or an IPv6 packet that could hide one.
	DropRA
	// NumVerdicts is the number of verdicts; it is not a verdict.
	NumVerdicts
)

var verdictNames = [NumVerdicts]string{
	Pass:     "pass",
	DropMAC:  "guard_mac",
	DropIP:   "guard_ip",
	DropARP:  "guard_arp",
	DropND:   "guard_nd",
	DropDHCP: "guard_dhcp",
	DropRA:   "guard_ra",
}

// String returns "pass" or the drop reason's name ("guard_mac", ...); it
// does not allocate.
func (v Verdict) String() string {
	if v < NumVerdicts {
		return verdictNames[v]
	}
	return "invalid"
}

// Bounds on a Config.
const (
	MaxMACs = 16
	MaxIPs  = 64
)

// ErrInvalidConfig is wrapped by every error of New, ParseMACs and
// ParseIPs. The message names the flag to fix (--guard-mac, --guard-ip);
// report it to the operator and change nothing.
var ErrInvalidConfig = errors.New("invalid guard")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// Config is the VM's addresses, as given (--guard-mac, --guard-ip) or
// learned before the splice (package guard/learn).
type Config struct {
	// MACs are the VM's unicast MAC addresses; at least one.
	MACs []net.HardwareAddr `json:"macs"`
	// IPs are the VM's IPv4 and IPv6 addresses, each a single address
	// (/32, /128) or a prefix that the VM may use any address of (such as
	// its SLAAC /64 with privacy addresses); at least one. The link-local
	// address derived from each MAC (EUI-64) is always allowed and need
	// not be listed.
	IPs []netip.Prefix `json:"ips"`
}

// String renders c as the flags that give it: "--guard-mac M --guard-ip A,B".
func (c Config) String() string {
	macs := make([]string, len(c.MACs))
	for i, m := range c.MACs {
		macs[i] = m.String()
	}
	return "--guard-mac " + strings.Join(macs, ",") + " --guard-ip " + FormatIPs(c.IPs)
}

// FormatIPs renders prefixes as --guard-ip takes them: single addresses
// without their /32 or /128.
func FormatIPs(ps []netip.Prefix) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		if p.IsSingleIP() {
			out[i] = p.Addr().String()
		} else {
			out[i] = p.String()
		}
	}
	return strings.Join(out, ",")
}

// ParseMACs parses --guard-mac: MAC addresses separated by commas.
func ParseMACs(s string) ([]net.HardwareAddr, error) {
	var out []net.HardwareAddr
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		m, err := net.ParseMAC(f)
		if err != nil || len(m) != 6 {
			return nil, invalid("--guard-mac %q: %q is not an Ethernet MAC address such as 52:54:00:12:34:56", s, f)
		}
		out = append(out, m)
	}
	return out, nil
}

// ParseIPs parses --guard-ip: IPv4 or IPv6 addresses or prefixes
// (ADDR/BITS) separated by commas.
func ParseIPs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		var p netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return nil, invalid("--guard-ip %q: %q is not an IP address or prefix such as 198.18.0.2 or 2001:db8::/64", s, f)
		}
		out = append(out, p)
	}
	return out, nil
}

// Guard checks frames from one VM. See the package comment.
type Guard struct {
	cfg  Config
	macs [][6]byte
	v4   []netip.Prefix
	v6   []netip.Prefix // the configured ones and the EUI-64 link-locals
}

// New validates c and returns a Guard for it. It rejects a config without
// a MAC or without an address, a MAC that is not unicast, an address that
// a VM cannot own (unspecified, multicast, loopback), more than MaxMACs
// MACs or MaxIPs addresses.
func New(c Config) (*Guard, error) {
	switch {
	case len(c.MACs) == 0:
		return nil, invalid("--guard-mac: no MAC address for the VM; give --guard-mac, or let the profile learn it before the splice")
	case len(c.IPs) == 0:
		return nil, invalid("--guard-ip: no IP address for the VM; give --guard-ip, or let the profile learn it before the splice")
	case len(c.MACs) > MaxMACs:
		return nil, invalid("--guard-mac: %d MAC addresses; at most %d", len(c.MACs), MaxMACs)
	case len(c.IPs) > MaxIPs:
		return nil, invalid("--guard-ip: %d addresses; at most %d", len(c.IPs), MaxIPs)
	}
	g := &Guard{}
	for _, m := range c.MACs {
		if len(m) != 6 {
			return nil, invalid("--guard-mac %s: not a 6-byte Ethernet address", m)
		}
		a := [6]byte(m)
		if a[0]&1 != 0 || a == [6]byte{} {
			return nil, invalid("--guard-mac %s: not a unicast address, so no VM sends from it", m)
		}
		if !slices.Contains(g.macs, a) {
			g.macs = append(g.macs, a)
			g.cfg.MACs = append(g.cfg.MACs, slices.Clone(m))
		}
	}
	for _, p := range c.IPs {
		if !p.IsValid() {
			return nil, invalid("--guard-ip: an invalid prefix")
		}
		a := p.Addr().WithZone("")
		if a.Is4In6() {
			a = a.Unmap()
			p = netip.PrefixFrom(a, max(p.Bits()-96, 0))
		}
		p = netip.PrefixFrom(a, p.Bits()).Masked()
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || (a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
			return nil, invalid("--guard-ip %s: not an address a VM can own", p)
		}
		if p.Bits() == 0 {
			return nil, invalid("--guard-ip %s: a prefix of length 0 pins nothing; give the VM's addresses", p)
		}
		if slices.Contains(g.cfg.IPs, p) {
			continue
		}
		g.cfg.IPs = append(g.cfg.IPs, p)
		if a.Is4() {
			g.v4 = append(g.v4, p)
		} else {
			g.v6 = append(g.v6, p)
		}
	}
	for _, m := range g.macs {
		ll := LinkLocal(m)
		p := netip.PrefixFrom(ll, 128)
		if !slices.Contains(g.v6, p) {
			g.v6 = append(g.v6, p)
		}
	}
	return g, nil
}

// Config returns the addresses g pins, normalised (IPv4-mapped addresses
// unmapped, prefixes masked, duplicates removed).
func (g *Guard) Config() Config {
	return Config{MACs: slices.Clone(g.cfg.MACs), IPs: slices.Clone(g.cfg.IPs)}
}

// LinkLocal returns the IPv6 link-local address that stateless
// autoconfiguration derives from mac (modified EUI-64, RFC 4291
// appendix A).
func LinkLocal(mac [6]byte) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfe, 0x80, 8: mac[0] ^ 2, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]})
}

const (
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100 // 802.1Q
	etherTypeQinQ = 0x88a8 // 802.1ad
)

// ICMPv6 types the guard looks at.
const (
	icmp6MLDReport    = 131
	icmp6RS           = 133
	icmp6RA           = 134
	icmp6NS           = 135
	icmp6NA           = 136
	icmp6Redirect     = 137
	icmp6RouterRenum  = 138
	icmp6MLDv2Report  = 143
	icmp6MobilePfxAdv = 147
	icmp6MRDAdv       = 151
	icmp6MRDTerm      = 153
)

// routerMessage reports whether an ICMPv6 type is one only a router sends.
func routerMessage(t uint8) bool {
	switch t {
	case icmp6RA, icmp6Redirect, icmp6RouterRenum, icmp6MobilePfxAdv, icmp6MRDAdv, icmp6MRDTerm:
		return true
	}
	return false
}

// Check returns the guard's verdict for f, a frame from the VM as the VM's
// Classifier decoded it. It allocates nothing.
func (g *Guard) Check(f *classify.Frame) Verdict {
	if f.Len < 14 || !g.hasMAC(f.SrcMAC) {
		return DropMAC
	}
	switch f.EtherType {
	case etherTypeARP:
		return g.checkARP(f)
	case etherTypeIPv4:
		return g.checkIPv4(f)
	case etherTypeIPv6:
		return g.checkIPv6(f)
	case etherTypeVLAN, etherTypeQinQ:
		// The classifier stopped at a tag: a third one, or one cut
		// short. Nobody can say what it carries, or from whom.
		return DropIP
	}
	return Pass
}

func (g *Guard) checkARP(f *classify.Frame) Verdict {
	switch {
	case f.ARPOp == 0 || f.Malformed != "": // not decoded: cannot tell the sender
		return DropARP
	case !g.hasMAC(f.ARPSenderMAC):
		return DropARP
	case f.ARPSenderIP.IsUnspecified(): // a probe (RFC 5227)
		return Pass
	case !contains(g.v4, f.ARPSenderIP):
		return DropARP
	}
	return Pass
}

func (g *Guard) checkIPv4(f *classify.Frame) Verdict {
	if !f.SrcIP.IsValid() { // the header is too broken to tell the source
		return DropIP
	}
	if f.Proto == classify.ProtoUDP {
		if f.IsUDP() && f.SrcPort == 67 && f.DstPort == 68 {
			return DropDHCP
		}
		if f.IsFirstFragment() && f.Malformed != "" { // a first fragment hiding its UDP header
			return DropDHCP
		}
		if f.IsUDP() && f.SrcIP.IsUnspecified() && f.SrcPort == 68 && f.DstPort == 67 {
			return Pass // a DHCP client before it has an address
		}
	}
	if !contains(g.v4, f.SrcIP) {
		return DropIP
	}
	return Pass
}

func (g *Guard) checkIPv6(f *classify.Frame) Verdict {
	if !f.SrcIP.IsValid() {
		return DropIP
	}
	icmp := f.Proto == classify.ProtoICMPv6 && !f.IsNonFirstFragment()
	switch {
	case icmp && routerMessage(f.ICMPType):
		return DropRA
	case f.IPv6ChainBroken(), f.IsFirstFragment() && f.Malformed != "":
		return DropRA // could hide a router message (RFC 7113 section 3)
	case f.IsUDP() && f.SrcPort == 547 && f.DstPort == 546:
		return DropDHCP
	case icmp && (f.ICMPType == icmp6RS || f.ICMPType == icmp6NS || f.ICMPType == icmp6NA):
		return g.checkND(f)
	case f.SrcIP.IsUnspecified():
		if icmp && f.Malformed == "" && (f.ICMPType == icmp6MLDReport || f.ICMPType == icmp6MLDv2Report) {
			return Pass // MLD reports during duplicate address detection (RFC 3810 5.2.13)
		}
		return DropIP
	case !contains(g.v6, f.SrcIP):
		return DropIP
	}
	return Pass
}

// checkND checks a router solicitation, neighbour solicitation or neighbour
// advertisement.
func (g *Guard) checkND(f *classify.Frame) Verdict {
	if f.Malformed != "" { // hosts discard it; its fields are not to be trusted
		return DropND
	}
	if f.NDLinkAddrs > 0 && (f.NDLinkAddrsDiffer || !g.hasMAC(f.NDLinkAddr)) {
		return DropND
	}
	switch f.ICMPType {
	case icmp6NA:
		if !contains(g.v6, f.SrcIP) || !contains(g.v6, f.NDTarget) {
			return DropND
		}
	case icmp6NS:
		if f.SrcIP.IsUnspecified() { // duplicate address detection: only for its own address
			if !contains(g.v6, f.NDTarget) {
				return DropND
			}
		} else if !contains(g.v6, f.SrcIP) {
			return DropND
		}
	default: // router solicitation
		if !f.SrcIP.IsUnspecified() && !contains(g.v6, f.SrcIP) {
			return DropND
		}
	}
	return Pass
}

func (g *Guard) hasMAC(m [6]byte) bool {
	for _, a := range g.macs {
		if a == m {
			return true
		}
	}
	return false
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	if a.Is4In6() {
		return false // a VM sends IPv4 as IPv4; a mapped source in IPv6 is a spoof
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
