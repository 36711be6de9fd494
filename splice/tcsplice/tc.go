package tcsplice

import (
	"errors"
	"fmt"
	"slices"

	"github.com/shaperd/shaperd/splice/steer"
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

// pickPriority chooses the tc priority ("pref") for the port's steering
// filter among the existing ingress filters, such that the pref just
// before it is free too (earlier versions put u32 steering filters there,
// and keep the choice stable): one below the lowest existing one, so the
// splice's filter runs first, or failing that the lowest free pair
// (shadowed reports that then some existing filter runs before it).
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

// steerFilter is the direct-action bpf filter at prio on from's ingress
// that runs the kernel half's entry program fd (package steer), named name.
func steerFilter(from int, prio uint16, fd int, name string) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    filterParent,
			Priority:  prio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}

// steerOf returns the priority and program id of the kernel half's filter
// among fs (a port's ingress filters); ok is false if there is none.
func steerOf(fs []netlink.Filter) (prio uint16, id uint32, ok bool) {
	for _, f := range fs {
		if b, isBPF := f.(*netlink.BpfFilter); isBPF && b.Name == steer.PortTC.EntryName() {
			return b.Priority, uint32(b.Id), true
		}
	}
	return 0, 0, false
}

// delSteer deletes the kernel half's filter at prio on link if it is still
// there; a filter someone else put at prio stays.
func delSteer(link netlink.Link, prio uint16) error {
	fs, err := ingressFilters(link)
	if err != nil {
		return err
	}
	if p, _, ok := steerOf(fs); !ok || p != prio {
		return nil
	}
	// Handle 0 deletes the whole bpf instance at prio: the one filter.
	f := steerFilter(link.Attrs().Index, prio, 0, "")
	if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete tc filter pref %d on %s: %w", prio, link.Attrs().Name, err)
	}
	return nil
}
