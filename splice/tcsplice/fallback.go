package tcsplice

// Fail open: a veth pair that stays in the bridge for the direct path.
//
// The issue asked for the direct path through the net tap (port to net tap
// ingress, net tap egress to port). That cannot work once the daemon is
// dead: a persistent tap loses carrier when its last file descriptor
// closes (the kernel refuses to set it again: EPERM), and the bridge
// disables a port without carrier, dropping what enters it and sending it
// nothing. So a splice with fail open also puts a veth pair in the
// bridge, whose carrier depends on no process:
//
//	bridge ─ fbBridge (veth, in the bridge, the port's MAC and bridge settings) ═ fbPeer
//
// While the daemon lives, the bridge's floods to fbBridge reach fbPeer,
// whose kernel half (steer.FallbackTC) drops them. When the daemon dies
// (its liveness slots empty) or its heartbeat goes stale, the port's
// kernel half sends the VM's frames out of fbPeer, so they enter the
// bridge through fbBridge, where the bridge learns the VM's MAC; and what
// the bridge sends to fbBridge, fbPeer's kernel half redirects to the
// port. Both directions in the kernel, no daemon involved.

import (
	"errors"
	"fmt"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fallbackPrio is the tc priority of the kernel half's filter on fbPeer's
// ingress, which the backend owns entirely.
const fallbackPrio = 1

// createFallback creates the fallback pair and puts its bridge end into
// bridge br with the port's MAC, MTU, VLANs and bridge port attributes.
func (s *spliced) createFallback(br netlink.Link) error {
	f, g := splice.FallbackNames(s.port)
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: f, MTU: s.mtu, HardwareAddr: s.portMAC},
		PeerName:  g,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s/%s: %w", f, g, err)
	}
	s.fbMade = true
	var fl, gl netlink.Link
	for _, x := range []struct {
		name string
		l    *netlink.Link
	}{{f, &fl}, {g, &gl}} {
		l, err := netlink.LinkByName(x.name)
		if err != nil {
			return fmt.Errorf("look up %s: %w", x.name, err)
		}
		*x.l = l
		if err := disableIPv6(x.name); err != nil {
			return err
		}
		if err := netlink.LinkSetAlias(l, aliasPrefix+s.port); err != nil {
			return fmt.Errorf("set alias of %s: %w", x.name, err)
		}
	}
	if err := netlink.LinkSetMTU(gl, s.mtu); err != nil {
		return fmt.Errorf("set mtu of %s: %w", g, err)
	}
	s.fbIndex = gl.Attrs().Index
	if err := netlink.LinkSetMasterByIndex(fl, br.Attrs().Index); err != nil {
		return fmt.Errorf("%s joins %s: %w", f, s.bridge, err)
	}
	if err := syncVLANs(kernelVLANs{}, fl, s.vlans); err != nil {
		return fmt.Errorf("copy vlans to %s: %w", f, err)
	}
	if err := copyBrPortAttrs(fl.Attrs().Index, s.attrs); err != nil {
		return fmt.Errorf("copy port attributes to %s: %w", f, err)
	}
	for _, l := range []netlink.Link{gl, fl} {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// deleteFallback deletes the fallback pair (its peer and filters go with it).
func (s *spliced) deleteFallback() error {
	f, _ := splice.FallbackNames(s.port)
	l, err := linkOrNil(f)
	if err != nil {
		return fmt.Errorf("look up %s: %w", f, err)
	}
	if l != nil {
		if l.Type() != "veth" || l.Attrs().Alias != aliasPrefix+s.port {
			return fmt.Errorf("%s is now a %s with alias %q, not the splice's fallback pair; leaving it", f, l.Type(), l.Attrs().Alias)
		}
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("delete %s: %w", f, err)
		}
	}
	s.fbMade, s.fbIndex = false, 0
	return nil
}

// findFallback looks up an existing fallback pair of the splice.
func (s *spliced) findFallback() (ok bool, err error) {
	f, g := splice.FallbackNames(s.port)
	fl, err := linkOrNil(f)
	if err != nil {
		return false, err
	}
	gl, err := linkOrNil(g)
	if err != nil {
		return false, err
	}
	if fl == nil || gl == nil {
		return false, nil
	}
	for _, l := range []netlink.Link{fl, gl} {
		if a := l.Attrs().Alias; l.Type() != "veth" || a != aliasPrefix+s.port && a != "" {
			return false, fmt.Errorf("%s exists but is not %s's fallback pair (a %s with alias %q)", l.Attrs().Name, s.port, l.Type(), a)
		}
	}
	// A pair of the splice's names with no alias was cut short in
	// createFallback (the pair is made in one step, its aliases after):
	// the names are the splice's own, so it is taken over and labelled.
	for _, l := range []netlink.Link{fl, gl} {
		if l.Attrs().Alias == "" {
			if err := netlink.LinkSetAlias(l, aliasPrefix+s.port); err != nil {
				return false, fmt.Errorf("label %s, a fallback pair cut short: %w", l.Attrs().Name, err)
			}
		}
	}
	s.fbMade, s.fbIndex = true, gl.Attrs().Index
	return true, nil
}

// attachFallback attaches h's fallback program to fbPeer's ingress.
func (s *spliced) attachFallback(h *steer.Half) error {
	entry, err := h.Entry(steer.FallbackTC)
	if err != nil {
		return err
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: s.fbIndex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc on the fallback peer: %w", err)
	}
	old := steerFilter(s.fbIndex, fallbackPrio, 0, "")
	if err := netlink.FilterDel(old); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete the stale filter on the fallback peer: %w", err)
	}
	if err := netlink.FilterAdd(steerFilter(s.fbIndex, fallbackPrio, entry.FD(), steer.FallbackTC.EntryName())); err != nil {
		return fmt.Errorf("add the filter on the fallback peer: %w", err)
	}
	return nil
}

// fallbackSteerOf returns the program id of the kernel half's filter on
// fbPeer's ingress.
func (s *spliced) fallbackSteerOf() (uint32, bool, error) {
	l, err := netlink.LinkByIndex(s.fbIndex)
	if err != nil {
		return 0, false, err
	}
	fs, err := ingressFilters(l)
	if err != nil {
		return 0, false, err
	}
	for _, f := range fs {
		if b, ok := f.(*netlink.BpfFilter); ok && b.Name == steer.FallbackTC.EntryName() {
			return uint32(b.Id), true, nil
		}
	}
	return 0, false, nil
}
