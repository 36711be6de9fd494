// Package labnet holds the safety guards shared by the lab tools (flood,
// sink, probe): every address they send to or listen on must be a
// benchmarking address, and a sender must run inside a named (lab) network
// namespace whose route to the destination is on-link.
//
// The lab uses only 198.18.0.0/15 (RFC 2544) and 2001:2::/48 (RFC 5180).
// Nothing here is imported by the product.
package labnet

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
)

var (
	lab4 = netip.MustParsePrefix("198.18.0.0/15")
	lab6 = netip.MustParsePrefix("2001:2::/48")
)

// ErrNotLabAddress means the address lies outside 198.18.0.0/15 and
// 2001:2::/48; the caller must pick a lab address instead.
var ErrNotLabAddress = errors.New("address outside the lab ranges 198.18.0.0/15 and 2001:2::/48")

// ErrRootNetns means the tool does not run inside a named network
// namespace (it may be the initial one); run it with `ip netns exec NS ...`.
var ErrRootNetns = errors.New("refusing to send from outside a named network namespace; run inside a lab namespace (ip netns exec NS ...)")

// ErrNotOnLink means the kernel would send to the destination through a
// gateway; lab destinations are always on-link.
var ErrNotOnLink = errors.New("destination is not on-link (route via a gateway); lab destinations must be on a connected subnet")

// IsLab reports whether a is inside 198.18.0.0/15 or 2001:2::/48.
// IPv4-mapped IPv6 addresses are judged as IPv4.
func IsLab(a netip.Addr) bool {
	a = a.Unmap()
	return lab4.Contains(a) || lab6.Contains(a)
}

// CheckAddr returns an error wrapping ErrNotLabAddress unless a is a lab
// address.
func CheckAddr(a netip.Addr) error {
	if !IsLab(a) {
		return fmt.Errorf("%s: %w", a, ErrNotLabAddress)
	}
	return nil
}

// CheckListen accepts a lab address or the unspecified address (listening
// sends nothing, and inside a lab namespace every local address is a lab
// address).
func CheckListen(a netip.Addr) error {
	if a.IsUnspecified() {
		return nil
	}
	return CheckAddr(a)
}

// NetnsName returns the name under /run/netns (as used by `ip netns`) of
// the calling process's network namespace, or "" if it is not a named
// namespace. The initial namespace is never named, so "" is how senders
// tell that they are not inside a lab.
func NetnsName() (string, error) {
	var self syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &self); err != nil {
		return "", fmt.Errorf("netns: %w", err)
	}
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("netns: %w", err)
	}
	for _, e := range ents {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/run/netns", e.Name()), &st) == nil && st.Dev == self.Dev && st.Ino == self.Ino {
			return e.Name(), nil
		}
	}
	return "", nil
}

// Route is the kernel's route to a destination.
type Route struct {
	Ifindex int
	Ifname  string
	Src     netip.Addr // preferred source address; may be invalid for local routes
}

// CheckDestination runs every guard a sender needs before it sends a single
// packet to dst: a lab address, not in the initial network namespace, and
// an on-link route. It returns the route for senders that build frames
// themselves.
func CheckDestination(dst netip.Addr) (Route, error) {
	dst = dst.Unmap()
	if err := CheckAddr(dst); err != nil {
		return Route{}, err
	}
	name, err := NetnsName()
	if err != nil {
		return Route{}, err
	}
	if name == "" {
		return Route{}, ErrRootNetns
	}
	routes, err := netlink.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return Route{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return Route{}, fmt.Errorf("route to %s: no route", dst)
	}
	r := routes[0]
	if r.Gw != nil && !r.Gw.IsUnspecified() {
		return Route{}, fmt.Errorf("route to %s via %s: %w", dst, r.Gw, ErrNotOnLink)
	}
	out := Route{Ifindex: r.LinkIndex}
	if src, ok := netip.AddrFromSlice(r.Src); ok {
		out.Src = src.Unmap()
	}
	if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		out.Ifname = l.Attrs().Name
	}
	return out, nil
}

// ParseAddrPort parses "198.18.0.11:22" or "[2001:2::11]:22".
func ParseAddrPort(flag, s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--%s %q: want ADDR:PORT such as 198.18.0.11:22 or [2001:2::11]:22: %w", flag, s, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
