package portpolicy

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/shaperd/shaperd/guard"
)

// Names of the objects in the table.
const (
	// TableName is the one bridge-family table the package owns.
	TableName = "shaperd_portpolicy"

	chainFrom = "from_vm" // base chain, bridge prerouting: frames from a port
	chainTo   = "to_vm"   // base chain, bridge postrouting: frames to a port
	mapGuard  = "guard_ports"
	mapIsoOut = "isolate_from_ports"
	mapIsoIn  = "isolate_to_ports"
	setFlows  = "flows" // isolation: port name . VM addr . remote addr . VM port . remote port

	flowSize = 65536
)

// Drop reasons, as counted per port in Stats (and shown by nft as each
// drop rule's comment). The guard's are the quarantine guard's names.
const (
	ReasonGuardMAC      = "guard_mac"           // Ethernet source is not the VM's
	ReasonGuardDHCP     = "guard_dhcp"          // a DHCP or DHCPv6 server message
	ReasonGuardARP      = "guard_arp"           // ARP not from the VM's MAC and addresses
	ReasonGuardND       = "guard_nd"            // neighbour solicitation/advertisement not the VM's
	ReasonGuardRA       = "guard_ra"            // ICMPv6 134, 137, 146, 147, 151, 152, 153
	ReasonGuardIP       = "guard_ip"            // any other frame: a source not pinned, another protocol
	ReasonIsoMulticast  = "isolate_multicast"   // a multicast source MAC
	ReasonIsoNotIPv4    = "isolate_not_ipv4"    // neither ARP nor IPv4 (IPv6 included)
	ReasonIsoUDP        = "isolate_udp"         // UDP
	ReasonIsoNewFromVM  = "isolate_new_from_vm" // from the VM, not on a flow opened from the allowed network
	ReasonIsoNotAllowed = "isolate_not_allowed" // to the VM, from outside the allowed network
)

// GuardReasons and IsolateReasons list the reasons in a stable order.
var (
	GuardReasons   = []string{ReasonGuardMAC, ReasonGuardDHCP, ReasonGuardARP, ReasonGuardND, ReasonGuardRA, ReasonGuardIP}
	IsolateReasons = []string{ReasonIsoMulticast, ReasonIsoNotIPv4, ReasonIsoUDP, ReasonIsoNewFromVM, ReasonIsoNotAllowed}
)

// reg32 is the first 32-bit register (NFT_REG32_00): a flow key is eight
// of them.
const reg32 = 8

const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
	etherARP  = 0x0806
)

// ICMPv6 types.
const (
	icmp6RS       = 133
	icmp6NS       = 135
	icmp6NA       = 136
	icmp6MLDv2Rep = 143
)

// routerTypes are the ICMPv6 types the guard drops from a VM (seed 001):
// router advertisement, redirect, mobile prefix solicitation and
// advertisement, multicast router advertisement, solicitation, termination.
var routerTypes = []byte{134, 137, 146, 147, 151, 152, 153}

type skeleton struct {
	table                *nftables.Table
	from, to             *nftables.Chain
	guard, isoOut, isoIn *nftables.Set
	flows                *nftables.Set
}

func newSkeleton(t *nftables.Table, flowTimeout time.Duration) *skeleton {
	prio := nftables.ChainPriorityRef(-200)
	accept := nftables.ChainPolicyAccept
	vmap := func(name string) *nftables.Set {
		return &nftables.Set{Table: t, Name: name, IsMap: true, KeyType: nftables.TypeIFName,
			DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
	}
	return &skeleton{
		table:  t,
		from:   &nftables.Chain{Table: t, Name: chainFrom, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: prio, Policy: &accept},
		to:     &nftables.Chain{Table: t, Name: chainTo, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPostrouting, Priority: prio, Policy: &accept},
		guard:  vmap(mapGuard),
		isoOut: vmap(mapIsoOut),
		isoIn:  vmap(mapIsoIn),
		flows: &nftables.Set{Table: t, Name: setFlows, Dynamic: true, HasTimeout: true, Timeout: flowTimeout, Size: flowSize, Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeInetService)},
	}
}

func (s *skeleton) add(c *nftables.Conn) error {
	c.AddTable(s.table)
	for _, set := range []*nftables.Set{s.guard, s.isoOut, s.isoIn, s.flows} {
		if err := c.AddSet(set, nil); err != nil {
			return err
		}
	}
	c.AddChain(s.from)
	c.AddChain(s.to)
	// The guard returns what it allows, so that an isolation of the same
	// port still sees it.
	for _, x := range []struct {
		ch  *nftables.Chain
		m   *nftables.Set
		key expr.MetaKey
	}{{s.from, s.guard, expr.MetaKeyIIFNAME}, {s.from, s.isoOut, expr.MetaKeyIIFNAME}, {s.to, s.isoIn, expr.MetaKeyOIFNAME}} {
		c.AddRule(&nftables.Rule{Table: s.table, Chain: x.ch, Exprs: []expr.Any{
			&expr.Meta{Key: x.key, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: x.m.Name, SetID: x.m.ID, IsDestRegSet: true, DestRegister: 0},
		}})
	}
	return nil
}

// chain queues rules on one port chain.
type chain struct {
	c  *nftables.Conn
	sk *skeleton
	ch *nftables.Chain
}

// pass appends "match... return": allowed, on to the next check.
func (b *chain) pass(m ...[]expr.Any) {
	b.c.AddRule(&nftables.Rule{Table: b.sk.table, Chain: b.ch, Exprs: append(join(m), &expr.Verdict{Kind: expr.VerdictReturn})})
}

// drop appends "match... counter drop comment REASON".
func (b *chain) drop(reason string, m ...[]expr.Any) {
	b.c.AddRule(&nftables.Rule{Table: b.sk.table, Chain: b.ch,
		Exprs:    append(join(m), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}),
		UserData: userdata.AppendString(nil, userdata.TypeComment, reason)})
}

func join(m [][]expr.Any) []expr.Any {
	var all []expr.Any
	for _, x := range m {
		all = append(all, x...)
	}
	return all
}

// eq compares len(data) bytes at off of base with data (or, with neq, not).
func eq(base expr.PayloadBase, off uint32, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: uint32(len(data))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
	}
}

func neq(base expr.PayloadBase, off uint32, data []byte) []expr.Any {
	e := eq(base, off, data)
	e[1].(*expr.Cmp).Op = expr.CmpOpNeq
	return e
}

// etherType reads the type in the frame itself, so that an 802.1Q tag
// (even one the driver took into the skb's metadata) reads 0x8100 and
// matches no rule that allows.
func etherType(t uint16) []expr.Any {
	return eq(expr.PayloadBaseLLHeader, 12, binaryutil.BigEndian.PutUint16(t))
}

func l4(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func notL4(p byte) []expr.Any {
	e := l4(p)
	e[1].(*expr.Cmp).Op = expr.CmpOpNeq
	return e
}

func multicastSource() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{1}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
	}
}

// inPrefix matches an address at off of the network header within p.
func inPrefix(off uint32, p netip.Prefix) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	if p.IsSingleIP() {
		return eq(expr.PayloadBaseNetworkHeader, off, p.Addr().AsSlice())
	}
	mask := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// inPrefixTH is inPrefix at off of the transport header (an ND target).
func inPrefixTH(off uint32, p netip.Prefix) []expr.Any {
	e := inPrefix(0, p)
	e[0].(*expr.Payload).Base, e[0].(*expr.Payload).Offset = expr.PayloadBaseTransportHeader, off
	return e
}

func icmp6(t byte) []expr.Any {
	return append(append(etherType(etherIPv6), l4(unix.IPPROTO_ICMPV6)...), eq(expr.PayloadBaseTransportHeader, 0, []byte{t})...)
}

// addGuard queues the chain of one port's guard. See Guard's doc and
// docs/guard.md for the order.
func addGuard(b *chain, g Guard) {
	th, nh := expr.PayloadBaseTransportHeader, expr.PayloadBaseNetworkHeader
	mac := []byte(g.MAC)
	b.drop(ReasonGuardMAC, neq(expr.PayloadBaseLLHeader, 6, mac))
	ipv4UDP := append(etherType(etherIPv4), l4(unix.IPPROTO_UDP)...)
	b.drop(ReasonGuardDHCP, ipv4UDP, eq(th, 0, []byte{0, 67}))
	b.pass(ipv4UDP, eq(th, 0, []byte{0, 68, 0, 67}), eq(nh, 12, []byte{0, 0, 0, 0}))
	// ARP for IPv4 over Ethernet, sender MAC the VM's, sender address
	// 0.0.0.0 (a probe) or pinned.
	arp := append(etherType(etherARP), eq(nh, 0, []byte{0, 1, 8, 0, 6, 4})...)
	arp = append(arp, eq(nh, 8, mac)...)
	b.pass(arp, eq(nh, 14, []byte{0, 0, 0, 0}))
	for _, a := range g.IPs {
		b.pass(arp, eq(nh, 14, a.AsSlice()))
	}
	b.drop(ReasonGuardARP, etherType(etherARP))
	for _, a := range g.IPs {
		b.pass(etherType(etherIPv4), eq(nh, 12, a.AsSlice()))
	}
	if g.IPv6.IsValid() {
		addGuard6(b, g)
	}
	b.drop(ReasonGuardIP)
}

func addGuard6(b *chain, g Guard) {
	th, nh := expr.PayloadBaseTransportHeader, expr.PayloadBaseNetworkHeader
	mac := []byte(g.MAC)
	for _, t := range routerTypes {
		b.drop(ReasonGuardRA, icmp6(t))
	}
	b.drop(ReasonGuardDHCP, etherType(etherIPv6), l4(unix.IPPROTO_UDP), eq(th, 0, []byte{0x02, 0x23})) // from port 547
	own := []netip.Prefix{g.IPv6, netip.PrefixFrom(guard.LinkLocal([6]byte(g.MAC)), 128)}
	noOption := eq(nh, 4, []byte{0, 24})  // payload length: the message alone (no extension header either)
	option := func(typ byte) []expr.Any { // the first option is a link-layer address, the VM's
		return append(eq(th, 24, []byte{typ, 1}), eq(th, 26, mac)...)
	}
	for _, src := range own {
		b.pass(icmp6(icmp6NS), inPrefix(8, src), noOption)
		b.pass(icmp6(icmp6NS), inPrefix(8, src), option(1))
		// Duplicate address detection of one of its own addresses.
		b.pass(icmp6(icmp6NS), eq(nh, 8, make([]byte, 16)), inPrefixTH(8, src), noOption)
		for _, target := range own {
			b.pass(icmp6(icmp6NA), inPrefix(8, src), inPrefixTH(8, target), noOption)
			b.pass(icmp6(icmp6NA), inPrefix(8, src), inPrefixTH(8, target), option(2))
		}
	}
	b.drop(ReasonGuardND, icmp6(icmp6NS))
	b.drop(ReasonGuardND, icmp6(icmp6NA))
	// Router solicitation and MLD reports before the VM has an address.
	b.pass(icmp6(icmp6RS), eq(nh, 8, make([]byte, 16)))
	b.pass(icmp6(icmp6MLDv2Rep), eq(nh, 8, make([]byte, 16)))
	for _, src := range own {
		b.pass(etherType(etherIPv6), inPrefix(8, src))
	}
}

// flowKey loads the canonical flow key into reg32..reg32+7: port name
// (four registers),
// VM address, remote address, VM port, remote port (both the ICMP
// identifier for ICMP), so that a flow and its replies share one key. The
// protocol is not in it (a concatenation holds at most five fields): a
// flow opened by TCP lets the VM answer with any protocol whose first four
// bytes carry the same two numbers.
func flowKey(toVM, icmp bool) []expr.Any {
	idx := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32}
	vmAddr, remAddr, vmPort, remPort := uint32(12), uint32(16), uint32(0), uint32(2)
	if toVM {
		idx.Key = expr.MetaKeyOIFNAME
		vmAddr, remAddr, vmPort, remPort = 16, 12, 2, 0
	}
	if icmp {
		vmPort, remPort = 4, 4
	}
	nh, th := expr.PayloadBaseNetworkHeader, expr.PayloadBaseTransportHeader
	return []expr.Any{
		idx,
		&expr.Payload{DestRegister: reg32 + 4, Base: nh, Offset: vmAddr, Len: 4},
		&expr.Payload{DestRegister: reg32 + 5, Base: nh, Offset: remAddr, Len: 4},
		&expr.Payload{DestRegister: reg32 + 6, Base: th, Offset: vmPort, Len: 2},
		&expr.Payload{DestRegister: reg32 + 7, Base: th, Offset: remPort, Len: 2},
	}
}

// addIsolate queues one port's isolation chains: out (frames from the VM)
// and in (frames to it).
func addIsolate(out, in *chain, iso Isolate) {
	flows := out.sk.flows
	for _, b := range []*chain{out, in} {
		b.drop(ReasonIsoMulticast, multicastSource())
		b.pass(etherType(etherARP))
		b.drop(ReasonIsoNotIPv4, neq(expr.PayloadBaseLLHeader, 12, binaryutil.BigEndian.PutUint16(etherIPv4)))
		b.drop(ReasonIsoUDP, l4(unix.IPPROTO_UDP))
	}
	// From the VM: only on a flow the allowed network opened; each packet
	// refreshes its flow.
	for _, icmp := range []bool{true, false} {
		proto := l4(unix.IPPROTO_ICMP)
		if !icmp {
			proto = notL4(unix.IPPROTO_ICMP)
		}
		out.pass(proto, flowKey(false, icmp), []expr.Any{
			&expr.Lookup{SourceRegister: reg32, SetName: flows.Name, SetID: flows.ID},
			&expr.Dynset{SrcRegKey: reg32, SetName: flows.Name, SetID: flows.ID, Operation: unix.NFT_DYNSET_OP_UPDATE},
		})
		// To the VM from the allowed network: a new flow or a known one.
		in.pass(inPrefix(12, iso.AllowFrom), proto, flowKey(true, icmp), []expr.Any{
			&expr.Dynset{SrcRegKey: reg32, SetName: flows.Name, SetID: flows.ID, Operation: unix.NFT_DYNSET_OP_UPDATE},
		})
	}
	out.drop(ReasonIsoNewFromVM)
	in.drop(ReasonIsoNotAllowed)
}
