package ovssplice

// The filter on the VM tap: what the forwarder writes into it (frames to the
// VM) leaves through the port, as in the tc backend. (The kernel half's
// filter on the net tap's egress is steer.AttachNetTap.)

import (
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
