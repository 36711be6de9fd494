package ovssplice

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/vishvananda/netlink"
)

// linkInfo is what the backend needs to know about a network interface.
type linkInfo struct {
	index int
	kind  string // netlink type: "tuntap", "veth", ...
	mtu   int
	alias string
}

// kernel creates and removes the splice's taps, the filter on the VM tap
// and the XDP program on the port; a fake in unit tests.
type kernel interface {
	// lookup returns the link named name; ok is false if there is none.
	lookup(name string) (l linkInfo, ok bool, err error)
	// createTap creates a persistent tap named name (failing if the name is
	// taken), with mtu and alias, IPv6 off, and sets it up.
	createTap(name string, mtu int, alias string) error
	// deleteTap deletes the link named name.
	deleteTap(name string) error
	// redirectTap adds to the tap ifindex an ingress qdisc and a filter
	// that redirects every frame to the egress of link to.
	redirectTap(ifindex, to int) error
	// attachXDP attaches the XDP program prog to link ifindex until the
	// returned closer is closed (or the process exits).
	attachXDP(ifindex int, prog []byte) (io.Closer, error)
}

// netlinkLinks works in the network namespace of the calling thread, which
// must be the one ovs-vswitchd runs in (the userspace datapath opens
// interfaces by name in its own namespace).
type netlinkLinks struct{}

var _ kernel = netlinkLinks{}

// tapTxQLen is the taps' transmit queue length in frames: a flood from the
// VM should overflow the tap queue as late as possible.
const tapTxQLen = 10000

func (netlinkLinks) lookup(name string) (linkInfo, bool, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return linkInfo{}, false, nil
	}
	if err != nil {
		return linkInfo{}, false, fmt.Errorf("look up %s: %w", name, err)
	}
	a := l.Attrs()
	return linkInfo{index: a.Index, kind: l.Type(), mtu: a.MTU, alias: a.Alias}, true, nil
}

// createTap creates a tap of exactly IFF_TAP|IFF_NO_PI, persistent, which
// a forwarder re-attaches to with the same flags (songgao/water with
// Persist: true). IFF_TUN_EXCL makes creation fail rather than attach if the
// name was taken since validation. Its MAC stays the kernel's random,
// locally administered one: OVS never picks such an address for the bridge,
// so the bridge's MAC and datapath id do not change.
func (netlinkLinks) createTap(name string, mtu int, alias string) error {
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up new tap %s: %w", name, err)
	}
	// Before it goes up: no link-local address, DAD or MLD of the host's
	// own on the tap, which the forwarder would take for the VM's frames.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disable ipv6 on %s: %w", name, err)
	}
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("set mtu of %s: %w", name, err)
	}
	if err := netlink.LinkSetTxQLen(link, tapTxQLen); err != nil {
		return fmt.Errorf("set txqueuelen of %s: %w", name, err)
	}
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		return fmt.Errorf("set alias of %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func (netlinkLinks) deleteTap(name string) error {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func (netlinkLinks) redirectTap(ifindex, to int) error {
	if err := netlink.QdiscAdd(ingressQdisc(ifindex)); err != nil {
		return fmt.Errorf("add ingress qdisc: %w", err)
	}
	if err := netlink.FilterAdd(redirectFilter(ifindex, vmTapPrio, to)); err != nil {
		return fmt.Errorf("add redirect filter: %w", err)
	}
	return nil
}

func (netlinkLinks) attachXDP(ifindex int, prog []byte) (io.Closer, error) {
	return attachXDP(ifindex, prog)
}
