package tcsplice

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// brPort is what the kernel reports about one bridge port in an AF_BRIDGE
// link dump: its master, MTU, raw port attributes and VLAN entries.
type brPort struct {
	master int
	mtu    int
	// attrs holds the raw IFLA_BRPORT_* attributes as dumped, by type.
	attrs map[uint16][]byte
	// vlans is sorted by VID.
	vlans []vlan
}

// vlan is one bridge VLAN entry of a port.
type vlan struct {
	VID      uint16
	PVID     bool
	Untagged bool
}

func (v vlan) String() string {
	s := fmt.Sprint(v.VID)
	if v.PVID {
		s += " pvid"
	}
	if v.Untagged {
		s += " untagged"
	}
	return s
}

// writableAttrs are the bridge port attributes that are configuration (not
// STP state or counters) and that the kernel accepts back in RTM_SETLINK.
// netlink.Protinfo exposes only eleven of them, hence the raw handling.
//
// Left out: STATE (kernel-managed; setting it fails on a port without carrier
// or under kernel STP), BACKUP_PORT and BACKUP_NHID (they name other objects;
// see warnings), and read-only ids, timers and counters.
var writableAttrs = []uint16{
	unix.IFLA_BRPORT_PRIORITY,              // u16
	unix.IFLA_BRPORT_COST,                  // u32
	unix.IFLA_BRPORT_MODE,                  // hairpin
	unix.IFLA_BRPORT_GUARD,                 // bpdu guard
	unix.IFLA_BRPORT_PROTECT,               // root block
	unix.IFLA_BRPORT_FAST_LEAVE,            //
	unix.IFLA_BRPORT_LEARNING,              //
	unix.IFLA_BRPORT_UNICAST_FLOOD,         //
	unix.IFLA_BRPORT_PROXYARP,              //
	unix.IFLA_BRPORT_LEARNING_SYNC,         //
	unix.IFLA_BRPORT_PROXYARP_WIFI,         //
	unix.IFLA_BRPORT_MULTICAST_ROUTER,      // u8
	unix.IFLA_BRPORT_MCAST_FLOOD,           //
	unix.IFLA_BRPORT_MCAST_TO_UCAST,        //
	unix.IFLA_BRPORT_VLAN_TUNNEL,           //
	unix.IFLA_BRPORT_BCAST_FLOOD,           //
	unix.IFLA_BRPORT_GROUP_FWD_MASK,        // u16
	unix.IFLA_BRPORT_NEIGH_SUPPRESS,        //
	unix.IFLA_BRPORT_ISOLATED,              //
	unix.IFLA_BRPORT_MCAST_EHT_HOSTS_LIMIT, // u32
	unix.IFLA_BRPORT_LOCKED,                //
	unix.IFLA_BRPORT_MAB,                   //
	unix.IFLA_BRPORT_MCAST_MAX_GROUPS,      // u32
	unix.IFLA_BRPORT_NEIGH_VLAN_SUPPRESS,   //
}

// dumpBrPort returns the bridge view of the link with index ifindex, and
// ok=false if that link is not a bridge port. It retries a dump that the
// kernel reports as interrupted by a concurrent change.
func dumpBrPort(ifindex int) (p brPort, ok bool, err error) {
	for range 5 {
		p, ok, err = dumpBrPortOnce(ifindex)
		if !errors.Is(err, nl.ErrDumpInterrupted) {
			return p, ok, err
		}
	}
	return p, ok, err
}

func dumpBrPortOnce(ifindex int) (brPort, bool, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_BRIDGE))
	req.AddData(nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(uint32(nl.RTEXT_FILTER_BRVLAN))))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return brPort{}, false, err
	}
	for _, m := range msgs {
		ifi := nl.DeserializeIfInfomsg(m)
		if int(ifi.Index) != ifindex {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[ifi.Len():])
		if err != nil {
			return brPort{}, false, err
		}
		p := brPort{attrs: map[uint16][]byte{}}
		isPort := false
		for _, a := range attrs {
			switch a.Attr.Type &^ unix.NLA_F_NESTED {
			case unix.IFLA_MASTER:
				p.master = int(nl.NativeEndian().Uint32(a.Value))
			case unix.IFLA_MTU:
				p.mtu = int(nl.NativeEndian().Uint32(a.Value))
			case unix.IFLA_PROTINFO:
				isPort = true
				infos, err := nl.ParseRouteAttr(a.Value)
				if err != nil {
					return brPort{}, false, err
				}
				for _, info := range infos {
					p.attrs[info.Attr.Type&^unix.NLA_F_NESTED] = bytes.Clone(info.Value)
				}
			case unix.IFLA_AF_SPEC:
				nested, err := nl.ParseRouteAttr(a.Value)
				if err != nil {
					return brPort{}, false, err
				}
				for _, n := range nested {
					if n.Attr.Type != nl.IFLA_BRIDGE_VLAN_INFO || len(n.Value) < nl.SizeofBridgeVlanInfo {
						continue
					}
					vi := nl.DeserializeBridgeVlanInfo(n.Value)
					p.vlans = append(p.vlans, vlan{VID: vi.Vid, PVID: vi.PortVID(), Untagged: vi.EngressUntag()})
				}
			}
		}
		if !isPort || p.master == 0 {
			return brPort{}, false, nil
		}
		slices.SortFunc(p.vlans, func(a, b vlan) int { return int(a.VID) - int(b.VID) })
		return p, true, nil
	}
	return brPort{}, false, nil
}

// attrsDiff returns the writable attributes of want whose value differs from
// (or is missing in) have.
func attrsDiff(want, have map[uint16][]byte) map[uint16][]byte {
	diff := map[uint16][]byte{}
	for _, typ := range writableAttrs {
		w, ok := want[typ]
		if !ok {
			continue
		}
		if h, ok := have[typ]; ok && bytes.Equal(h, w) {
			continue
		}
		diff[typ] = w
	}
	return diff
}

// setBrPortAttrs writes attrs to the bridge port ifindex in one RTM_SETLINK,
// so that interdependent flags (MAB needs LOCKED and LEARNING) are checked by
// the kernel together.
func setBrPortAttrs(ifindex int, attrs map[uint16][]byte) error {
	if len(attrs) == 0 {
		return nil
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	pi := nl.NewRtAttr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nil)
	for _, typ := range writableAttrs { // a stable order, for readable straces
		if v, ok := attrs[typ]; ok {
			pi.AddRtAttr(int(typ), v)
		}
	}
	req.AddData(pi)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// copyBrPortAttrs makes the writable port attributes of ifindex equal to want.
func copyBrPortAttrs(ifindex int, want map[uint16][]byte) error {
	cur, ok, err := dumpBrPort(ifindex)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("ifindex %d is not a bridge port", ifindex)
	}
	return setBrPortAttrs(ifindex, attrsDiff(want, cur.attrs))
}

// vlanRun is a run of consecutive VIDs with identical flags; the kernel takes
// it in one request.
type vlanRun struct {
	first, last uint16
	pvid        bool
	untagged    bool
}

// runs groups sorted vlans into runs. A PVID entry is always a run of its own
// (the kernel refuses a PVID flag on a range).
func runs(vs []vlan) []vlanRun {
	var out []vlanRun
	for _, v := range vs {
		if n := len(out); n > 0 && !v.PVID && !out[n-1].pvid &&
			out[n-1].untagged == v.Untagged && out[n-1].last+1 == v.VID {
			out[n-1].last = v.VID
			continue
		}
		out = append(out, vlanRun{first: v.VID, last: v.VID, pvid: v.PVID, untagged: v.Untagged})
	}
	return out
}

// bridgeVLANs are the kernel calls syncVLANs makes, with netlink's
// signatures; kernelVLANs makes them. A unit test records them instead: this
// machine's kernel has no bridge VLAN filtering.
type bridgeVLANs interface {
	dumpBrPort(ifindex int) (brPort, bool, error)
	BridgeVlanAdd(link netlink.Link, vid uint16, pvid, untagged, self, master bool) error
	BridgeVlanAddRange(link netlink.Link, vid, vidEnd uint16, pvid, untagged, self, master bool) error
	BridgeVlanDel(link netlink.Link, vid uint16, pvid, untagged, self, master bool) error
	BridgeVlanDelRange(link netlink.Link, vid, vidEnd uint16, pvid, untagged, self, master bool) error
}

// kernelVLANs is bridgeVLANs over netlink.
type kernelVLANs struct{}

func (kernelVLANs) dumpBrPort(ifindex int) (brPort, bool, error) { return dumpBrPort(ifindex) }

func (kernelVLANs) BridgeVlanAdd(link netlink.Link, vid uint16, pvid, untagged, self, master bool) error {
	return netlink.BridgeVlanAdd(link, vid, pvid, untagged, self, master)
}

func (kernelVLANs) BridgeVlanAddRange(link netlink.Link, vid, vidEnd uint16, pvid, untagged, self, master bool) error {
	return netlink.BridgeVlanAddRange(link, vid, vidEnd, pvid, untagged, self, master)
}

func (kernelVLANs) BridgeVlanDel(link netlink.Link, vid uint16, pvid, untagged, self, master bool) error {
	return netlink.BridgeVlanDel(link, vid, pvid, untagged, self, master)
}

func (kernelVLANs) BridgeVlanDelRange(link netlink.Link, vid, vidEnd uint16, pvid, untagged, self, master bool) error {
	return netlink.BridgeVlanDelRange(link, vid, vidEnd, pvid, untagged, self, master)
}

// syncVLANs makes the VLAN entries of bridge port link exactly want through
// k (kernelVLANs{} but in tests): it first deletes the entries want lacks
// (so the port is never in more VLANs than both sets share), then adds or
// re-flags the rest.
func syncVLANs(k bridgeVLANs, link netlink.Link, want []vlan) error {
	cur, ok, err := k.dumpBrPort(link.Attrs().Index)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is not a bridge port", link.Attrs().Name)
	}
	wantByVID := map[uint16]vlan{}
	for _, v := range want {
		wantByVID[v.VID] = v
	}
	haveByVID := map[uint16]vlan{}
	var del []vlan
	for _, v := range cur.vlans {
		haveByVID[v.VID] = v
		if _, keep := wantByVID[v.VID]; !keep {
			del = append(del, vlan{VID: v.VID})
		}
	}
	for _, r := range runs(del) {
		var err error
		if r.first == r.last { // the kernel refuses a range of one
			err = k.BridgeVlanDel(link, r.first, false, false, false, false)
		} else {
			err = k.BridgeVlanDelRange(link, r.first, r.last, false, false, false, false)
		}
		if err != nil {
			return fmt.Errorf("delete vlan %d-%d: %w", r.first, r.last, err)
		}
	}
	var add []vlan
	for _, v := range want {
		if h, ok := haveByVID[v.VID]; !ok || h != v {
			add = append(add, v)
		}
	}
	for _, r := range runs(add) {
		var err error
		if r.first == r.last {
			err = k.BridgeVlanAdd(link, r.first, r.pvid, r.untagged, false, false)
		} else {
			err = k.BridgeVlanAddRange(link, r.first, r.last, r.pvid, r.untagged, false, false)
		}
		if err != nil {
			return fmt.Errorf("add vlan %d-%d: %w", r.first, r.last, err)
		}
	}
	return nil
}

// staticFDB returns the user-added bridge FDB entries on the port ifindex:
// static ones, and permanent (local) ones for addresses other than the
// port's own mac, which the kernel adds by itself. The kernel flushes them
// all when the port leaves the bridge.
func staticFDB(ifindex int, mac net.HardwareAddr) ([]netlink.Neigh, error) {
	var (
		all []netlink.Neigh
		err error
	)
	for range 5 {
		all, err = netlink.NeighList(ifindex, unix.AF_BRIDGE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var out []netlink.Neigh
	for _, n := range all {
		// The bridge's entries name it in NDA_MASTER (not with NTF_MASTER);
		// NTF_SELF ones are the device's own address lists.
		if n.LinkIndex != ifindex || n.MasterIndex == 0 || n.Flags&(unix.NTF_SELF|unix.NTF_EXT_LEARNED) != 0 {
			continue
		}
		switch {
		case n.State&unix.NUD_NOARP != 0:
		case n.State&unix.NUD_PERMANENT != 0 && !bytes.Equal(n.HardwareAddr, mac):
		default:
			continue
		}
		out = append(out, netlink.Neigh{
			Family:       unix.AF_BRIDGE,
			State:        n.State & (unix.NUD_NOARP | unix.NUD_PERMANENT),
			Flags:        unix.NTF_MASTER | n.Flags&netlink.NTF_STICKY,
			HardwareAddr: bytes.Clone(n.HardwareAddr),
			Vlan:         n.Vlan,
		})
	}
	return out, nil
}

// moveFDB points entries at the bridge port ifindex. A bridge holds one
// entry per address and VLAN, so this moves an entry that points at another
// port (NLM_F_REPLACE), and re-creates one the kernel flushed.
func moveFDB(ifindex int, entries []netlink.Neigh) error {
	for _, e := range entries {
		e.LinkIndex = ifindex
		if err := netlink.NeighSet(&e); err != nil {
			return fmt.Errorf("set fdb %s vlan %d: %w", e.HardwareAddr, e.Vlan, err)
		}
	}
	return nil
}
