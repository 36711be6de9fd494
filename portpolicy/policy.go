// Package portpolicy keeps the kernel's per-port policies equal to a
// desired set: the port guard of a router's public port (seed 001's
// publicrouter.of, without a splice) and the one-way isolation of a
// management leg (seed 001's gw_mgmt flows), as nftables rules in the
// bridge family, one table for every port.
//
// The rules, and why the isolation tracks flows in sets rather than with
// conntrack, are described in docs/guard.md.
package portpolicy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/shaperd/shaperd/guard"
)

// MaxIPs bounds a guard's pinned IPv4 addresses (each is two rules).
const MaxIPs = 16

// Guard is a port guard: what the VM behind the port may send.
//
// From the VM it allows the DHCP client (UDP 68 to 67 from 0.0.0.0), ARP
// whose Ethernet and sender MAC are MAC and whose sender address is
// 0.0.0.0 or one of IPs, IPv4 from MAC and one of IPs, and, when IPv6 is
// set, IPv6 from MAC and IPv6 or the link-local address derived from MAC,
// with the neighbour discovery that needs (see docs/guard.md). It drops
// DHCP and DHCPv6 server messages, neighbour solicitations and
// advertisements that are not the VM's, ICMPv6 types 134, 137, 146, 147,
// 151, 152 and 153, and everything else. Frames to the VM are not its
// concern.
type Guard struct {
	MAC  net.HardwareAddr
	IPs  []netip.Addr // IPv4 addresses (/32s); at least one
	IPv6 netip.Prefix // optional; the zero Prefix means no IPv6 at all
}

// Isolate is a one-way isolation: connections from AllowFrom into the VM
// are allowed, and nothing else; the VM may only answer on them. ARP
// passes both ways; frames with a multicast source MAC, UDP and anything
// that is neither ARP nor IPv4 are dropped both ways.
type Isolate struct {
	AllowFrom netip.Prefix // IPv4
}

// Policy is one port's policy: a guard, an isolation, or both.
type Policy struct {
	Guard   *Guard
	Isolate *Isolate
}

// ErrInvalid is wrapped by every validation error: nothing was changed;
// the message names the flag to fix.
var ErrInvalid = errors.New("invalid port policy")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ParseGuard reads a guard in the command line's words: --mac M, --ip
// A[,A...] (IPv4 addresses) and, optionally, --ipv6 PREFIX. The addresses
// are checked as the quarantine's guard checks them (package guard).
func ParseGuard(mac, ips, ipv6 string) (Guard, error) {
	var g Guard
	macs, err := guard.ParseMACs(mac)
	if err != nil || len(macs) != 1 {
		return g, invalid("--mac %q: want one Ethernet MAC address such as 52:54:00:12:34:56", mac)
	}
	pfx, err := guard.ParseIPs(ips)
	if ips == "" || err != nil {
		return g, invalid("--ip %q: want the VM's IPv4 addresses such as 198.18.0.11[,198.18.0.12]", ips)
	}
	// The quarantine guard's own checks: unicast MAC, addresses a VM can own.
	if _, err := guard.New(guard.Config{MACs: macs, IPs: pfx}); err != nil {
		return g, invalid("%s", strings.NewReplacer("--guard-mac", "--mac", "--guard-ip", "--ip", "invalid guard: ", "").Replace(err.Error()))
	}
	g.MAC = macs[0]
	for _, p := range pfx {
		if !p.Addr().Is4() || !p.IsSingleIP() {
			return g, invalid("--ip %s: want IPv4 addresses (each pinned as a /32); give IPv6 as --ipv6 PREFIX", p)
		}
		if !slices.Contains(g.IPs, p.Addr()) {
			g.IPs = append(g.IPs, p.Addr())
		}
	}
	if ipv6 != "" {
		p, err := netip.ParsePrefix(ipv6)
		if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
			return g, invalid("--ipv6 %q: want an IPv6 prefix such as 2001:db8:0:1::/64", ipv6)
		}
		g.IPv6 = p.Masked()
	}
	return g, g.Validate()
}

// ParseIsolate reads --allow-from CIDR.
func ParseIsolate(cidr string) (Isolate, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Isolate{}, invalid("--allow-from %q: want an IPv4 prefix such as 198.18.0.0/24", cidr)
	}
	i := Isolate{AllowFrom: p.Masked()}
	return i, i.Validate()
}

// Validate reports the first setting that cannot be installed.
func (g Guard) Validate() error {
	if len(g.MAC) != 6 || g.MAC[0]&1 != 0 || [6]byte(g.MAC) == [6]byte{} {
		return invalid("--mac %s: want the VM's unicast Ethernet address", g.MAC)
	}
	if len(g.IPs) == 0 || len(g.IPs) > MaxIPs {
		return invalid("--ip: %d addresses; give 1 to %d IPv4 addresses", len(g.IPs), MaxIPs)
	}
	for _, a := range g.IPs {
		if !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return invalid("--ip %s: not an IPv4 address a VM can own", a)
		}
	}
	if g.IPv6.IsValid() {
		a := g.IPv6.Addr()
		if !a.Is6() || a.Is4In6() || a.IsMulticast() || a.IsLoopback() || g.IPv6.Bits() < 8 {
			return invalid("--ipv6 %s: want the VM's IPv6 prefix (/8 to /128, unicast)", g.IPv6)
		}
	}
	return nil
}

// Validate reports whether i can be installed.
func (i Isolate) Validate() error {
	if !i.AllowFrom.IsValid() || !i.AllowFrom.Addr().Is4() {
		return invalid("--allow-from %s: want an IPv4 prefix such as 198.18.0.0/24", i.AllowFrom)
	}
	if i.AllowFrom.Bits() == 0 {
		return invalid("--allow-from %s: a /0 lets every host in; name the management network", i.AllowFrom)
	}
	return nil
}

// Validate reports whether p can be installed.
func (p Policy) Validate() error {
	if p.Guard == nil && p.Isolate == nil {
		return invalid("no guard and no isolation; remove the port instead")
	}
	if p.Guard != nil {
		if err := p.Guard.Validate(); err != nil {
			return err
		}
	}
	if p.Isolate != nil {
		return p.Isolate.Validate()
	}
	return nil
}

// String renders g as the flags that give it.
func (g Guard) String() string {
	ips := make([]string, len(g.IPs))
	for i, a := range g.IPs {
		ips[i] = a.String()
	}
	s := "--mac " + g.MAC.String() + " --ip " + strings.Join(ips, ",")
	if g.IPv6.IsValid() {
		s += " --ipv6 " + g.IPv6.String()
	}
	return s
}

// String renders i as the flag that gives it.
func (i Isolate) String() string { return "--allow-from " + i.AllowFrom.String() }

// chainID names a port's chains: a hash of the port and its policy part,
// so that a changed policy gets new chains (swapped in one transaction)
// and an unchanged one is recognised after a restart.
func chainID(port, what string) string {
	h := sha256.Sum256([]byte(port + "\x00" + what))
	return hex.EncodeToString(h[:6])
}
