package steer

// The net tap's half of a splice's kernel half is attached the same way by
// both backends: a direct-action tc filter on the egress of the net tap
// (frames to the VM), at priority NetTapPrio, under a clsact qdisc. The
// backend owns the tap, so the filter and the qdisc go with it.

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetTapPrio is the tc priority of the kernel half's filter on the net
// tap's egress.
const NetTapPrio = 1

// AttachNetTap gives the tap ifindex a clsact qdisc and the kernel half's
// program fd, named name, as a direct-action filter on its egress. A
// filter a dead daemon left there (a half not taken over) makes way.
func AttachNetTap(ifindex, fd int, name string) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	old := netTapFilter(ifindex, 0, "")
	if err := netlink.FilterDel(old); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete the stale egress filter: %w", err)
	}
	if err := netlink.FilterAdd(netTapFilter(ifindex, fd, name)); err != nil {
		return fmt.Errorf("add the egress filter: %w", err)
	}
	return nil
}

// NetTapProg returns the program id of the kernel half's filter on the
// egress of the tap ifindex; ok is false if there is none.
func NetTapProg(ifindex int) (id uint32, ok bool, err error) {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return 0, false, fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	fs, err := netlink.FilterList(link, netlink.HANDLE_MIN_EGRESS)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // no clsact qdisc
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("list the egress filters of %s: %w", link.Attrs().Name, err)
	}
	for _, f := range fs {
		if b, isBPF := f.(*netlink.BpfFilter); isBPF && b.Name == NetTC.EntryName() {
			return uint32(b.Id), true, nil
		}
	}
	return 0, false, nil
}

// netTapFilter is the direct-action bpf filter at NetTapPrio on the egress
// of ifindex that runs program fd, named name.
func netTapFilter(ifindex, fd int, name string) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Priority:  NetTapPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}
