// Package ovspolicy keeps the port guards and one-way isolations of Open
// vSwitch ports (see package portpolicy for the policies) as OpenFlow flows:
// the seed's publicrouter.of and gw_mgmt flows, one port each, tagged with
// a cookie per port and policy and installed and removed in one bundle per
// bridge (ovs-ofctl --bundle), so that a removal leaves the bridge's flow
// dump as it was. The rules, their order and how they live with a splice
// are in docs/guard.md.
package ovspolicy

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/splice/ovssplice"
)

// Cookies. Every flow of one port's guard (or isolation) carries the
// cookie CookieTag | id<<8 | reason: id is a 40-bit hash of the port, its
// OpenFlow number, the policy and the VM's MACs (so a changed policy gets
// new flows, swapped in one bundle, and an unchanged one is recognised
// after a restart), reason the index of the drop reason the flow counts
// (0: a flow that passes or tracks). The tag differs from the splice's
// (ovssplice.CookieTag), which removes stale cookies of its own tag.
const (
	CookieTag  uint64 = ovssplice.PolicyCookieTag
	CookieMask uint64 = 0xffff << 48
	policyMask uint64 = ^uint64(0xff) // one port's policy: its flows, all reasons
)

// Priorities in table 0. Above the splice's (ovssplice's flows are at 65000
// and below), so that a frame meets a port's guard and isolation before a
// splice steers it: a spliced VM's frames come back from the forwarder as
// if from its port, and are guarded then (see docs/guard.md).
const (
	prioGuard   = 65500 // downwards, one per rule
	prioIsoFrom = 65400
	prioIsoTo   = 65300
	prioIsoMany = 65200 // the bridge's fan-out of multicast and broadcast to its isolated ports
	// prioIsoSpliced keeps a splice's copy of every multicast frame from
	// an isolated VM: just above the splice's flow that makes it, below
	// its flows from the VM and to the VM's MACs.
	prioIsoSpliced = ovssplice.MulticastPriority + 5
)

// DeliverTable is the table where an isolated port's flows decide which
// multicast and broadcast frames reach the VM (one flow per rule, keyed on
// the port's number in the upper half of MarkReg; see isolateRules).
// A bridge with a flow of someone else's in it is refused.
const DeliverTable = 0x53

// deliverPrio is the priority of the first rule in DeliverTable.
const deliverPrio = 100

// MarkReg is the register whose bits mark a frame that passed a policy, so
// that the policy's flows let it by when it re-enters table 0
// (resubmit(,0)) for the bridge's own flows: bit 0 the guard, 1 the
// isolation from the VM, 2 the isolation to the VM. A bridge with a flow of
// someone else's that uses it is refused.
const MarkReg = 11

const (
	bitGuard   = 0
	bitIsoFrom = 1
	bitIsoTo   = 2
	bitIsoMany = 3 // the frame went through the fan-out
)

// portField is the part of MarkReg that holds the isolated port a copy of
// a multicast frame is for, in DeliverTable.
const portField = "NXM_NX_REG11[16..31]"

// Zone is the conntrack zone of the isolations' ct() flows.
const Zone = 0x5350

// noVLAN matches a frame without an 802.1Q header: OVS reads the EtherType
// behind a tag, the nftables engine reads the frame's own, so tagged frames
// match no allowing rule on either.
const noVLAN = "vlan_tci=0x0000/0x1000"

// Port is where a policy is installed: the port's OpenFlow number and, for
// an isolation, the VM's MACs (the frames to the VM are those to them).
type Port struct {
	Name   string
	OFPort int
	MACs   []net.HardwareAddr
	// Splice is the splice on the port, for an isolation (its mark; nil
	// if none): the isolation keeps the splice's copies of multicast
	// frames from the VM.
	Splice *ovssplice.Spliced
	// VLAN is the port's access VLAN (its tag; 0 if none), under which
	// an isolation pins the VM's MACs in the bridge's MAC table.
	VLAN int
}

// rule is one flow: a drop reason ("" for a flow that passes), a match and
// actions.
type rule struct {
	reason, match, actions string
}

// kind is the part of a port's policy one cookie covers.
type kind int

const (
	kindGuard kind = iota
	kindIsolate
)

func (k kind) reasons() []string {
	if k == kindGuard {
		return portpolicy.GuardReasons
	}
	return portpolicy.IsolateReasons
}

// reasonIndex returns the cookie's low byte for reason: its place in the
// kind's list, from 1; 0 for "".
func (k kind) reasonIndex(reason string) uint64 {
	for i, r := range k.reasons() {
		if r == reason {
			return uint64(i + 1)
		}
	}
	return 0
}

// reasonOf is reasonIndex's inverse: "" for 0 or an unknown index.
func (k kind) reasonOf(i uint64) string {
	if i == 0 || int(i) > len(k.reasons()) {
		return ""
	}
	return k.reasons()[i-1]
}

// policyCookie is the cookie (reason 0) of one port's guard or isolation.
func policyCookie(p Port, k kind, what string) uint64 {
	var macs []string
	for _, m := range p.MACs {
		macs = append(macs, m.String())
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d\x00%s\x00%s", p.Name, p.OFPort, k, what, strings.Join(macs, ",")))
	id := binary.BigEndian.Uint64(h[:8]) & (1<<40 - 1)
	if id == 0 {
		id = 1
	}
	return CookieTag | id<<8
}

func mark(bit int) string { return fmt.Sprintf("reg%d=0/%#x", MarkReg, 1<<bit) }

// pass marks the frame and sends it through table 0 again, past the
// policy that let it by.
func pass(bit int) string { return fmt.Sprintf("load:1->NXM_NX_REG%d[%d],resubmit(,0)", MarkReg, bit) }

// guardRules are a guard's rules, first match first (portpolicy's order,
// docs/guard.md). OpenFlow has no "not": the Ethernet source is in every
// rule but the last, which drops the rest as guard_mac.
func guardRules(g portpolicy.Guard) []rule {
	mac := g.MAC.String()
	ok := pass(bitGuard)
	own := func(m string) string { return m + "," + noVLAN + ",dl_src=" + mac }
	var rs []rule
	add := func(reason, match string) {
		a := ok
		if reason != "" {
			a = "drop"
		}
		rs = append(rs, rule{reason, match, a})
	}
	add(portpolicy.ReasonGuardDHCP, own("udp")+",tp_src=67")
	add("", own("udp")+",nw_src=0.0.0.0,tp_src=68,tp_dst=67")
	add("", own("arp")+",arp_sha="+mac+",arp_spa=0.0.0.0")
	for _, a := range g.IPs {
		add("", own("arp")+",arp_sha="+mac+",arp_spa="+a.String())
	}
	add(portpolicy.ReasonGuardARP, own("arp"))
	for _, a := range g.IPs {
		add("", own("ip")+",nw_src="+a.String())
	}
	if g.IPv6.IsValid() {
		icmp := func(t int) string { return own("icmp6") + fmt.Sprintf(",icmp_type=%d", t) }
		// Neighbour discovery fields need icmp_code=0 in OVS.
		nd := func(t int) string { return icmp(t) + ",icmp_code=0" }
		for _, t := range []int{134, 137, 146, 147, 151, 152, 153} {
			add(portpolicy.ReasonGuardRA, icmp(t))
		}
		add(portpolicy.ReasonGuardDHCP, own("udp6")+",tp_src=547")
		srcs := []netip.Prefix{g.IPv6, netip.PrefixFrom(guard.LinkLocal([6]byte(g.MAC)), 128)}
		const none = "00:00:00:00:00:00"
		for _, src := range srcs {
			for _, sll := range []string{none, mac} {
				add("", nd(135)+",ipv6_src="+src.String()+",nd_sll="+sll)
			}
			add("", nd(135)+",ipv6_src=::,nd_target="+src.String()+",nd_sll="+none)
			for _, target := range srcs {
				for _, tll := range []string{none, mac} {
					add("", nd(136)+",ipv6_src="+src.String()+",nd_target="+target.String()+",nd_tll="+tll)
				}
			}
		}
		add(portpolicy.ReasonGuardND, icmp(135))
		add(portpolicy.ReasonGuardND, icmp(136))
		add("", icmp(133)+",ipv6_src=::")
		add("", icmp(143)+",ipv6_src=::")
		for _, src := range srcs {
			add("", own("ipv6")+",ipv6_src="+src.String())
		}
	}
	add(portpolicy.ReasonGuardIP, "dl_src="+mac)
	add(portpolicy.ReasonGuardMAC, "")
	return rs
}

// isolateRules are an isolation's rules from the VM (out) and to it (in),
// first match first: the seed's gw_mgmt flows, for one port. The frame is
// sent through conntrack (zone Zone) once, and comes back to table 0
// tracked; a connection from the allowed network is committed on its first
// packet to the VM, and the VM's packets pass only when established.
func isolateRules(iso portpolicy.Isolate) (out, in []rule) {
	ct := fmt.Sprintf("ct(zone=%d,table=0)", Zone)
	ip := "ip," + noVLAN
	from := "ip," + noVLAN + ",nw_src=" + iso.AllowFrom.String()
	multicast := "dl_src=01:00:00:00:00:00/01:00:00:00:00:00"
	out = []rule{
		{portpolicy.ReasonIsoMulticast, multicast, "drop"},
		{"", "arp," + noVLAN, pass(bitIsoFrom)},
		{portpolicy.ReasonIsoUDP, "udp," + noVLAN, "drop"},
		{"", ip + ",ct_state=-trk", ct},
		{"", ip + ",ct_state=+trk+est", pass(bitIsoFrom)},
		{portpolicy.ReasonIsoNewFromVM, ip, "drop"},
		{portpolicy.ReasonIsoNotIPv4, "", "drop"},
	}
	in = []rule{
		{portpolicy.ReasonIsoMulticast, multicast, "drop"},
		{"", "arp," + noVLAN, pass(bitIsoTo)},
		{portpolicy.ReasonIsoUDP, "udp," + noVLAN, "drop"},
		{"", from + ",ct_state=-trk", ct},
		{"", from + ",ct_state=+trk+new", fmt.Sprintf("ct(commit,zone=%d),%s", Zone, pass(bitIsoTo))},
		{"", from + ",ct_state=+trk+est", pass(bitIsoTo)},
		{portpolicy.ReasonIsoNotAllowed, ip, "drop"},
		{portpolicy.ReasonIsoNotIPv4, "", "drop"},
	}
	return out, in
}

// deliverRules are an isolation's rules for a copy of a multicast or
// broadcast frame (any frame whose destination MAC has the group bit) for
// the VM, first match first: the port is no-flood while isolated, so
// NORMAL sends it none, and these flows send it those the isolation lets
// in: ARP. The rest is dropped for the port under the reason the same
// frame to its MAC would have: IPv4 to a group or broadcast address is not
// a connection into the VM (isolate_not_allowed, even from the allowed
// network). The VM's own frames come back to it never.
func deliverRules(ofport int) []rule {
	return []rule{
		{"", fmt.Sprintf("in_port=%d", ofport), "drop"},
		{portpolicy.ReasonIsoMulticast, "dl_src=01:00:00:00:00:00/01:00:00:00:00:00", "drop"},
		{"", "arp," + noVLAN, fmt.Sprintf("output:%d", ofport)},
		{portpolicy.ReasonIsoUDP, "udp," + noVLAN, "drop"},
		{portpolicy.ReasonIsoNotAllowed, "ip," + noVLAN, "drop"},
		{portpolicy.ReasonIsoNotIPv4, "", "drop"},
	}
}

const groupDst = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"

// fanOut is the flow of a bridge with isolated ports (their OpenFlow
// numbers, sorted) that sends a copy of every multicast and broadcast
// frame through each port's rules in DeliverTable, then on through table
// 0 (the bridge's own flows, NORMAL), marked so that it is not copied
// again. Its cookie is the tag and a hash of the ports.
func fanOut(ports []int) (uint64, string) {
	var acts []string
	for _, p := range ports {
		acts = append(acts, fmt.Sprintf("clone(load:%d->%s,resubmit(,%d))", p, portField, DeliverTable))
	}
	acts = append(acts, pass(bitIsoMany))
	h := sha256.Sum256(fmt.Appendf(nil, "fan-out\x00%v", ports))
	id := binary.BigEndian.Uint64(h[:8]) & (1<<40 - 1)
	if id == 0 {
		id = 1
	}
	c := CookieTag | id<<8
	return c, flowLine(c, 0, prioIsoMany, groupDst+","+mark(bitIsoMany), strings.Join(acts, ","))
}

// flowLine renders one "flow add" line of a bundle, in table 0 (or table
// if it is not 0).
func flowLine(cookie uint64, table, prio int, match, actions string) string {
	s := fmt.Sprintf("flow add table=%d,cookie=%#x,priority=%d", table, cookie, prio)
	if match != "" {
		s += "," + match
	}
	return s + ",actions=" + actions
}

// policyFlows is one port's guard or isolation as bundle lines, with the
// policy's cookie (reason 0).
func policyFlows(p Port, k kind, pol portpolicy.Policy) (uint64, []string) {
	var lines []string
	var what string
	emitIn := func(table int, cookie uint64, prio int, head string, rs []rule) {
		for i, r := range rs {
			m := head
			if r.match != "" {
				m += "," + r.match
			}
			lines = append(lines, flowLine(cookie|k.reasonIndex(r.reason), table, prio-i, m, r.actions))
		}
	}
	emit := func(cookie uint64, prio int, head string, rs []rule) { emitIn(0, cookie, prio, head, rs) }
	if k == kindGuard {
		what = pol.Guard.String()
		c := policyCookie(p, k, what)
		emit(c, prioGuard, fmt.Sprintf("in_port=%d,%s", p.OFPort, mark(bitGuard)), guardRules(*pol.Guard))
		return c, lines
	}
	what = pol.Isolate.String()
	c := policyCookie(p, k, what)
	out, in := isolateRules(*pol.Isolate)
	emit(c, prioIsoFrom, fmt.Sprintf("in_port=%d,%s", p.OFPort, mark(bitIsoFrom)), out)
	for _, mac := range p.MACs {
		emit(c, prioIsoTo, fmt.Sprintf("dl_dst=%s,%s", mac, mark(bitIsoTo)), in)
	}
	emitIn(DeliverTable, c, deliverPrio, fmt.Sprintf("reg%d=%#x/0xffff0000", MarkReg, p.OFPort<<16), deliverRules(p.OFPort))
	return c, lines
}

// splicedFlow is the flow an isolated port needs while it is spliced, with
// a cookie of its own (tag, a hash of the port and the splice's mark), so
// that the isolation's flows and counters stay as they are when a splice
// comes or goes. The splice copies every multicast frame to the VM through
// its forwarder unless the splice's mark is set: this sets it (the fan-out
// has delivered to the port what the isolation lets in).
func splicedFlow(p Port) (uint64, string) {
	h := sha256.Sum256(fmt.Appendf(nil, "spliced\x00%s\x00%d\x00%s", p.Name, p.OFPort, p.Splice.Mark))
	id := binary.BigEndian.Uint64(h[:8]) & (1<<40 - 1)
	if id == 0 {
		id = 1
	}
	c := CookieTag | id<<8
	return c, flowLine(c, 0, prioIsoSpliced, groupDst+","+p.Splice.Mark, p.Splice.SetMark+",resubmit(,0)")
}
