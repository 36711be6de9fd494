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
)

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
)

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

// flowLine renders one "flow add" line of a bundle.
func flowLine(cookie uint64, prio int, match, actions string) string {
	s := fmt.Sprintf("flow add table=0,cookie=%#x,priority=%d", cookie, prio)
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
	emit := func(cookie uint64, prio int, head string, rs []rule) {
		for i, r := range rs {
			m := head
			if r.match != "" {
				m += "," + r.match
			}
			lines = append(lines, flowLine(cookie|k.reasonIndex(r.reason), prio-i, m, r.actions))
		}
	}
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
	return c, lines
}
