package tcsplice

import (
	"errors"
	"fmt"
	"slices"

	"github.com/shaperd/shaperd/splice"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// filterParent is where the redirect filters hang: ffff:fff2, the ingress
// hook of both the "ingress" and the "clsact" qdisc (ffff:0 works only for
// "ingress"), so a port that already has a clsact qdisc is handled too.
const filterParent = netlink.HANDLE_MIN_INGRESS

// hasIngressQdisc reports whether link has an ingress or clsact qdisc.
func hasIngressQdisc(link netlink.Link) (bool, error) {
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return false, err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			return true, nil
		}
	}
	return false, nil
}

func ingressQdisc(ifindex int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// ingressFilters lists the filters on link's ingress hook.
func ingressFilters(link netlink.Link) ([]netlink.Filter, error) {
	fs, err := netlink.FilterList(link, filterParent)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // no ingress qdisc
		return nil, nil
	}
	return fs, err
}

// pickPriority chooses the tc priority ("pref") for the port's redirect
// filter among the existing ingress filters, such that the pref just before
// it is free too, for the steering filter: one below the lowest existing
// one, so the splice's filters run first, or failing that the lowest free
// pair (shadowed reports that then some existing filter runs before them).
func pickPriority(existing []netlink.Filter) (prio uint16, shadowed bool) {
	used := map[uint16]bool{}
	lowest := uint16(0)
	for _, f := range existing {
		p := f.Attrs().Priority
		used[p] = true
		if lowest == 0 || p < lowest {
			lowest = p
		}
	}
	switch {
	case lowest == 0:
		return 2, false
	case lowest > 2:
		return lowest - 1, false
	}
	for p := uint16(3); p != 0; p++ {
		if !used[p] && !used[p-1] {
			return p, true
		}
	}
	return 0, true
}

// redirectFilter is a match-all u32 filter (one key, mask 0: "match u32 0 0",
// protocol all) whose mirred action redirects every frame to the egress of
// ifindex to; the frame is stolen, so nothing else on from sees it. The
// kernel here lacks cls_matchall, hence u32.
func redirectFilter(from int, prio uint16, to int) *netlink.U32 {
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    filterParent,
			Priority:  prio,
			Protocol:  unix.ETH_P_ALL,
		},
		// A nil Sel makes netlink send the match-all selector.
	}
	if to != 0 {
		f.Actions = []netlink.Action{netlink.NewMirredAction(to)}
	}
	return f
}

// isRedirect reports whether f is a filter at prio whose mirred action
// redirects to the egress of ifindex to (or to a vanished device, 0).
func isRedirect(f netlink.Filter, prio uint16, to int) bool {
	u, ok := f.(*netlink.U32)
	if !ok || u.Priority != prio {
		return false
	}
	return slices.ContainsFunc(u.Actions, func(a netlink.Action) bool {
		m, ok := a.(*netlink.MirredAction)
		return ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && (m.Ifindex == to || m.Ifindex == 0)
	})
}

// delRedirect deletes the redirect filter at prio on link if it is still the
// one that redirects to ifindex to; a filter someone else put there stays.
// It reports whether filters remain on link's ingress hook afterwards.
func delRedirect(link netlink.Link, prio uint16, to int) (remaining int, err error) {
	fs, err := ingressFilters(link)
	if err != nil {
		return 0, err
	}
	if slices.ContainsFunc(fs, func(f netlink.Filter) bool { return isRedirect(f, prio, to) }) {
		// Handle 0 deletes the whole u32 instance at prio: the hash table the
		// kernel made for it and the one filter in it.
		if err := netlink.FilterDel(redirectFilter(link.Attrs().Index, prio, 0)); err != nil && !errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("delete tc filter pref %d on %s: %w", prio, link.Attrs().Name, err)
		}
	}
	fs, err = ingressFilters(link)
	return len(fs), err
}

// steerKeys returns one u32 key set per kind of frame that opt steers into
// the priority tap. Protocol is "all", so offsets are relative to the
// network header and the ethertype sits at -2 (in the word at -4). IPv4
// matches assume a 20-byte header and IPv6 ones no extension headers: frames
// with options take the ordinary queue, where they are classified just the
// same.
func steerKeys(opt splice.Options) [][]netlink.TcU32Key {
	ether := func(t uint32) netlink.TcU32Key { return netlink.TcU32Key{Off: -4, Mask: 0x0000ffff, Val: t} }
	var sets [][]netlink.TcU32Key
	sets = append(sets, []netlink.TcU32Key{ether(unix.ETH_P_ARP)})
	for _, typ := range []uint32{133, 134, 135, 136, 137} { // RS, RA, NS, NA, redirect
		sets = append(sets, []netlink.TcU32Key{
			ether(unix.ETH_P_IPV6),
			{Off: 4, Mask: 0x0000ff00, Val: 58 << 8}, // next header ICMPv6
			{Off: 40, Mask: 0xff000000, Val: typ << 24},
		})
	}
	for _, port := range opt.BypassPorts {
		masks := []uint32{0xffff0000} // source port: the VM as server
		vals := []uint32{uint32(port) << 16}
		if opt.BypassOutbound {
			masks, vals = append(masks, 0x0000ffff), append(vals, uint32(port))
		}
		for i := range masks {
			sets = append(sets,
				[]netlink.TcU32Key{
					ether(unix.ETH_P_IP),
					{Off: 0, Mask: 0x0f000000, Val: 5 << 24}, // IHL 5
					{Off: 8, Mask: 0x00ff0000, Val: 6 << 16}, // TCP
					{Off: 20, Mask: masks[i], Val: vals[i]},
				},
				[]netlink.TcU32Key{
					ether(unix.ETH_P_IPV6),
					{Off: 4, Mask: 0x0000ff00, Val: 6 << 8}, // next header TCP
					{Off: 40, Mask: masks[i], Val: vals[i]},
				})
		}
	}
	return sets
}

// steerFilters are the u32 filters, all at prio on the port's ingress, that
// redirect the frames steerKeys matches to the egress of ifindex to.
func steerFilters(from int, prio uint16, to int, opt splice.Options) []*netlink.U32 {
	var fs []*netlink.U32
	for _, keys := range steerKeys(opt) {
		fs = append(fs, &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: from, Parent: filterParent, Priority: prio, Protocol: unix.ETH_P_ALL},
			Sel:         &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: keys},
			Actions:     []netlink.Action{netlink.NewMirredAction(to)},
		})
	}
	return fs
}
