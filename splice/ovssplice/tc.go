package ovssplice

// The filter on the VM tap: what the forwarder writes into it (frames to the
// VM) leaves through the port, as in the tc backend. And the kernel half's
// filter on the net tap's egress: frames to the VM.

import (
	"errors"
	"fmt"

	"github.com/shaperd/shaperd/splice/steer"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// filterParent is where the filter hangs: ffff:fff2, the ingress hook.
const filterParent = netlink.HANDLE_MIN_INGRESS

// vmTapPrio is the tc priority of the redirect filter on the VM tap, which
// the backend creates and owns entirely (it goes with the tap).
const vmTapPrio = 1

func ingressQdisc(ifindex int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// redirectFilter is a match-all u32 filter (protocol all, a nil selector)
// whose mirred action redirects every frame to the egress of ifindex to.
func redirectFilter(from int, prio uint16, to int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from,
			Parent:    filterParent,
			Priority:  prio,
			Protocol:  unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{netlink.NewMirredAction(to)},
	}
}

// netTapPrio is the tc priority of the kernel half's filter on the net
// tap's egress (frames to the VM), which the backend owns entirely: it goes
// with the tap.
const netTapPrio = 1

// attachEgress gives the tap ifindex a clsact qdisc and the kernel half's
// program fd, named name, as a direct-action filter on its egress.
func attachEgress(ifindex, fd int, name string) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	f := egressFilter(ifindex, fd, name)
	// A dead daemon's filter of a half not taken over makes way.
	old := egressFilter(ifindex, 0, "")
	if err := netlink.FilterDel(old); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete the stale egress filter: %w", err)
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("add the egress filter: %w", err)
	}
	return nil
}

// egressSteerOf returns the program id of the kernel half's filter on the
// egress of the tap ifindex; ok is false if there is none.
func egressSteerOf(ifindex int) (id uint32, ok bool, err error) {
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
		if b, isBPF := f.(*netlink.BpfFilter); isBPF && b.Name == steer.NetTC.EntryName() {
			return uint32(b.Id), true, nil
		}
	}
	return 0, false, nil
}

// egressFilter is the direct-action bpf filter at netTapPrio on the egress
// of ifindex that runs program fd, named name.
func egressFilter(ifindex, fd int, name string) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Priority:  netTapPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}
