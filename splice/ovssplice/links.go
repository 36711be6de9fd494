package ovssplice

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
	"github.com/shaperd/shaperd/splice/tapdev"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkInfo is what the backend needs to know about a network interface.
type linkInfo struct {
	index int
	kind  string // netlink type: "tuntap", "veth", ...
	mtu   int
	alias string
}

// kernel creates and removes the splice's taps, the filter on the VM tap
// and the kernel half's XDP program on the port; a fake in unit tests.
type kernel interface {
	// lookup returns the link named name; ok is false if there is none.
	lookup(name string) (l linkInfo, ok bool, err error)
	// createTap creates a persistent tap named name (failing if the name is
	// taken), with mtu and alias, IPv6 off, and sets it up.
	createTap(name string, mtu int, alias string) error
	// deleteTap deletes the link named name.
	deleteTap(name string) error
	// redirectTap gives the tap ifindex an ingress qdisc (unless it has
	// one) and, at vmTapPrio, a filter that redirects every frame to the
	// egress of link to, in place of any filter there.
	redirectTap(ifindex, to int) error
	// redirectOf returns the link the tap ifindex's filter at vmTapPrio
	// redirects to; 0 if there is none.
	redirectOf(ifindex int) (int, error)
	// attachSteer creates a kernel half with cfg and attaches its entry
	// programs: to the egress of the tap netTap (frames to the VM), and as
	// generic XDP to link port, failing if the link has an XDP program.
	// The XDP program stays attached until detachXDP, the other with the
	// tap.
	attachSteer(port, netTap int, cfg steer.Config) (h kernelHalf, id uint32, err error)
	// adoptSteer takes over the kernel half whose entry program id is
	// attached to link port (see steer.Adopt), and its program on the
	// egress of netTap, attaching one there if there is none.
	adoptSteer(port int, id uint32, netTap int, cfg steer.Config) (kernelHalf, error)
	// xdpProgram returns the XDP program attached to link ifindex.
	xdpProgram(ifindex int) (xdpProg, bool, error)
	// steerHeld reports whether a live daemon holds the kernel half of
	// entry program id (see steer.Held).
	steerHeld(id uint32) (bool, error)
	// detachXDP detaches link ifindex's XDP program if it is still id.
	detachXDP(ifindex int, id uint32) error
	// taps lists the tuntap links whose names start with splice.TapPrefix.
	taps() (map[string]linkInfo, error)
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
// name was taken since validation. The tap carries alias from the instant
// it persists (tapdev): a daemon killed here leaves no tap a restart cannot
// recognise. Its MAC stays the kernel's random, locally administered one:
// OVS never picks such an address for the bridge, so the bridge's MAC and
// datapath id do not change.
//
// The file that created the tap is closed here, which waits for one RCU
// grace period (tapdev), rather than handed to the forwarder as the tc
// backend does: this backend holds no files (splice.TapHolder).
func (netlinkLinks) createTap(name string, mtu int, alias string) error {
	_, f, err := tapdev.Create(tapdev.Spec{Name: name, Alias: alias, MTU: mtu, TxQLen: tapTxQLen})
	if err != nil {
		return err
	}
	return f.Close()
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
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	if !slices.ContainsFunc(qs, func(q netlink.Qdisc) bool { return q.Attrs().Parent == netlink.HANDLE_INGRESS }) {
		if err := netlink.QdiscAdd(ingressQdisc(ifindex)); err != nil {
			return fmt.Errorf("add ingress qdisc: %w", err)
		}
	}
	if to0, err := redirectOf(link); err != nil {
		return err
	} else if to0 != 0 {
		// Handle 0 deletes the whole u32 instance at the priority (its
		// hash table and the one filter in it), which are the tap's own.
		if err := netlink.FilterDel(redirectFilter(ifindex, vmTapPrio, 0)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete the stale redirect filter (to ifindex %d): %w", to0, err)
		}
	}
	if err := netlink.FilterAdd(redirectFilter(ifindex, vmTapPrio, to)); err != nil {
		return fmt.Errorf("add redirect filter: %w", err)
	}
	return nil
}

func (netlinkLinks) redirectOf(ifindex int) (int, error) {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return 0, fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	return redirectOf(link)
}

// redirectOf returns where link's u32 filter at vmTapPrio on its ingress
// redirects to: 0 if there is none.
func redirectOf(link netlink.Link) (int, error) {
	fs, err := netlink.FilterList(link, filterParent)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // no ingress qdisc
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list filters of %s: %w", link.Attrs().Name, err)
	}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok || u.Priority != vmTapPrio {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
				return m.Ifindex, nil
			}
		}
	}
	return 0, nil
}

func (netlinkLinks) taps() (map[string]linkInfo, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := map[string]linkInfo{}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() == "tuntap" && strings.HasPrefix(a.Name, splice.TapPrefix) {
			out[a.Name] = linkInfo{index: a.Index, kind: l.Type(), mtu: a.MTU, alias: a.Alias}
		}
	}
	return out, nil
}
