// Package learn finds the addresses of the VM behind a bridge port, for the
// anti-spoofing guard, from what the host's kernel already learned: the
// bridge's forwarding table (the MACs seen on the port) and the neighbour
// table (the IPv4 and IPv6 addresses that ARP and neighbour discovery
// resolved to those MACs).
//
// Call it before the splice, and only when the profile allows: once a VM
// floods, what it sends is not evidence of who it is. A port with more
// learned MACs or addresses than a VM has is refused rather than pinned
// (ErrTooMany): a VM flooding spoofed frames fills both tables.
//
// It reads kernel tables over netlink and changes nothing. A port of Open
// vSwitch's userspace datapath has no kernel forwarding table: give the
// addresses with --guard-mac and --guard-ip there.
package learn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/guard"
)

// Bounds on what one port may have taught the kernel. A VM has one MAC per
// interface and a handful of addresses.
const (
	MaxMACs = 4
	MaxIPs  = 16
)

// Errors, for errors.Is at the call site.
var (
	// ErrNotBridgePort: the port is not enslaved to a Linux bridge, so the
	// kernel has no forwarding table for it. Give --guard-mac and
	// --guard-ip.
	ErrNotBridgePort = errors.New("not a bridge port")
	// ErrNoMAC: the bridge has not learned any MAC on the port (the VM has
	// been silent, or its entries aged out). Give --guard-mac, or retry
	// after the VM has sent something.
	ErrNoMAC = errors.New("no MAC learned on the port")
	// ErrTooMany: more MACs or addresses than a VM has; the VM may be
	// spoofing. Give the addresses explicitly.
	ErrTooMany = errors.New("too many addresses learned")
)

// usable FDB states: learned (reachable, stale) or static (noarp), not the
// port's own local address (permanent).
const fdbLearned = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_NOARP

// usable neighbour states: resolved at some point, not failed or
// incomplete.
const neighResolved = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE |
	netlink.NUD_PERMANENT | netlink.NUD_NOARP

// FromBridge returns the addresses of the VM behind the bridge port named
// port, in the network namespace of h (nil: the caller's). MACs come from
// the bridge's forwarding entries for the port, except the port's own
// address and multicast entries; IPs from the neighbour entries of every
// interface of the namespace whose link-layer address is one of those
// MACs, as single addresses (/32, /128). Config.IPs may be empty when the
// host has no address on the VM's network: the caller then needs
// --guard-ip, or guard.New refuses.
func FromBridge(h *netlink.Handle, port string) (guard.Config, error) {
	var cfg guard.Config
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(); err != nil {
			return cfg, fmt.Errorf("learn: %w", err)
		}
		defer h.Close()
	}
	link, err := h.LinkByName(port)
	if err != nil {
		return cfg, fmt.Errorf("learn: port %s: %w", port, err)
	}
	attrs := link.Attrs()
	if attrs.MasterIndex == 0 {
		return cfg, fmt.Errorf("learn: port %s: %w; give --guard-mac and --guard-ip", port, ErrNotBridgePort)
	}
	if master, err := h.LinkByIndex(attrs.MasterIndex); err != nil || master.Type() != "bridge" {
		return cfg, fmt.Errorf("learn: port %s: %w (its master is not a Linux bridge); give --guard-mac and --guard-ip", port, ErrNotBridgePort)
	}
	fdb, err := h.NeighList(attrs.Index, unix.AF_BRIDGE)
	if err != nil {
		return cfg, fmt.Errorf("learn: forwarding table of %s: %w", port, err)
	}
	for _, n := range fdb {
		m := n.HardwareAddr
		if n.State&fdbLearned == 0 || n.State&netlink.NUD_PERMANENT != 0 || n.Flags&netlink.NTF_SELF != 0 {
			continue
		}
		if len(m) != 6 || m[0]&1 != 0 || slices.Equal(m, attrs.HardwareAddr) {
			continue
		}
		if !slices.ContainsFunc(cfg.MACs, func(x net.HardwareAddr) bool { return slices.Equal(x, m) }) {
			cfg.MACs = append(cfg.MACs, slices.Clone(m))
		}
	}
	switch {
	case len(cfg.MACs) == 0:
		return cfg, fmt.Errorf("learn: port %s: %w; give --guard-mac", port, ErrNoMAC)
	case len(cfg.MACs) > MaxMACs:
		return guard.Config{}, fmt.Errorf("learn: port %s: %w: %d MACs (at most %d), the VM may be spoofing; give --guard-mac and --guard-ip",
			port, ErrTooMany, len(cfg.MACs), MaxMACs)
	}
	neigh, err := h.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		return cfg, fmt.Errorf("learn: neighbour table: %w", err)
	}
	for _, n := range neigh {
		if n.Family != unix.AF_INET && n.Family != unix.AF_INET6 || n.State&neighResolved == 0 {
			continue
		}
		if !slices.ContainsFunc(cfg.MACs, func(x net.HardwareAddr) bool { return slices.Equal(x, n.HardwareAddr) }) {
			continue
		}
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			continue
		}
		p := netip.PrefixFrom(a, a.BitLen())
		if !slices.Contains(cfg.IPs, p) {
			cfg.IPs = append(cfg.IPs, p)
		}
	}
	if len(cfg.IPs) > MaxIPs {
		return guard.Config{}, fmt.Errorf("learn: port %s: %w: %d addresses for %s (at most %d), the VM may be spoofing; give --guard-ip",
			port, ErrTooMany, len(cfg.IPs), cfg.MACs[0], MaxIPs)
	}
	slices.SortFunc(cfg.IPs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return cfg, nil
}
