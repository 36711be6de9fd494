package baseline

import (
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names of the objects in the table. A profile's chains and meters are
// "p<id>_..." (see Limits.profileID).
const (
	// TableName is the one bridge-family table the package owns.
	TableName = "shaperd_baseline"

	chainFrom = "from_vm" // base chain, bridge prerouting: frames from a port
	chainTo   = "to_vm"   // base chain, bridge postrouting: frames to a port
	mapFrom   = "from_ports"
	mapTo     = "to_ports"
	mapFromIx = "from_index" // the same ports by ifindex, as Apply last found them
	mapToIx   = "to_index"
	setFlows4 = "flows4" // UDP flows seen: port . vm addr . remote addr . vm port . remote port
	setFlows6 = "flows6"
	setDrops  = "drops" // port name . reason, with a counter per element
)

// Sizes of the dynamic sets. A full set fails open for that one check (the
// kernel refuses the add and the rule does not match); see docs/baseline.md.
const (
	// MaxPorts bounds the port maps (by name and by ifindex). They are
	// fixed-size hash tables (the kernel's nft_hash, and its 4-byte-key
	// variant for the index maps: cheaper per frame than the resizable
	// rhash it picks for a set without a size), which refuse elements
	// beyond their size; Validate refuses a larger desired set first.
	MaxPorts   = 16384
	meterSize  = 4096   // per-port meters: one element per port of the profile
	sourceSize = 65536  // per-source meters: one element per (port, source)
	flowSize   = 131072 // UDP flows, per address family
	dropsSize  = 65536  // (port, reason) counters
)

// 32-bit registers for concatenated keys (NFT_REG32_00 and up).
const reg32 = 8

type direction int

const (
	fromVM direction = iota // frames the port receives from its guest
	toVM                    // frames the bridge sends out of the port
)

func (d direction) suffix() string {
	if d == fromVM {
		return "_out"
	}
	return "_in"
}

// portIndex is the port's ifindex key: the incoming port for frames from
// the VM, the outgoing one for frames to it.
func (d direction) portIndex(reg uint32) *expr.Meta {
	if d == fromVM {
		return &expr.Meta{Key: expr.MetaKeyIIF, Register: reg}
	}
	return &expr.Meta{Key: expr.MetaKeyOIF, Register: reg}
}

// portIndexMap and portNameMap are the verdict maps of direction d's base
// chain.
func (s *skeleton) portIndexMap(d direction) *nftables.Set {
	if d == fromVM {
		return s.mapFromIx
	}
	return s.mapToIx
}

func (s *skeleton) portNameMap(d direction) *nftables.Set {
	if d == fromVM {
		return s.mapFrom
	}
	return s.mapTo
}

func (d direction) portName(reg uint32) *expr.Meta {
	if d == fromVM {
		return &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg}
	}
	return &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}
}

func mustConcat(t ...nftables.SetDatatype) nftables.SetDatatype {
	return nftables.MustConcatSetType(t...)
}

// skeleton is what every non-empty table has, whatever the ports.
type skeleton struct {
	table                 *nftables.Table
	from, to              *nftables.Chain
	mapFrom, mapTo        *nftables.Set // port name -> jump to its profile
	mapFromIx, mapToIx    *nftables.Set // ifindex -> goto its profile
	flows4, flows6, drops *nftables.Set
}

func newSkeleton(t *nftables.Table, flowTimeout time.Duration) *skeleton {
	prio := nftables.ChainPriorityRef(-200) // the bridge family's "filter"
	accept := nftables.ChainPolicyAccept
	return &skeleton{
		table: t,
		from:  &nftables.Chain{Table: t, Name: chainFrom, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: prio, Policy: &accept},
		to:    &nftables.Chain{Table: t, Name: chainTo, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPostrouting, Priority: prio, Policy: &accept},
		mapFrom: &nftables.Set{Table: t, Name: mapFrom, IsMap: true, Size: MaxPorts,
			KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian},
		mapTo: &nftables.Set{Table: t, Name: mapTo, IsMap: true, Size: MaxPorts,
			KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian},
		mapFromIx: &nftables.Set{Table: t, Name: mapFromIx, IsMap: true, Size: MaxPorts,
			KeyType: nftables.TypeIFIndex, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian},
		mapToIx: &nftables.Set{Table: t, Name: mapToIx, IsMap: true, Size: MaxPorts,
			KeyType: nftables.TypeIFIndex, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian},
		flows4: &nftables.Set{Table: t, Name: setFlows4, Dynamic: true, HasTimeout: true, Timeout: flowTimeout, Size: flowSize, Concatenation: true,
			KeyType: mustConcat(nftables.TypeIFIndex, nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeInetService)},
		flows6: &nftables.Set{Table: t, Name: setFlows6, Dynamic: true, HasTimeout: true, Timeout: flowTimeout, Size: flowSize, Concatenation: true,
			KeyType: mustConcat(nftables.TypeIFIndex, nftables.TypeIP6Addr, nftables.TypeIP6Addr, nftables.TypeInetService, nftables.TypeInetService)},
		drops: &nftables.Set{Table: t, Name: setDrops, Dynamic: true, Size: dropsSize, Concatenation: true,
			KeyType: mustConcat(nftables.TypeIFName, nftables.TypeMark)},
	}
}

func (s *skeleton) sets() []*nftables.Set {
	return []*nftables.Set{s.mapFrom, s.mapTo, s.mapFromIx, s.mapToIx, s.flows4, s.flows6, s.drops}
}

// add queues the whole skeleton on c.
func (s *skeleton) add(c *nftables.Conn) error {
	c.AddTable(s.table)
	for _, set := range s.sets() {
		if err := c.AddSet(set, nil); err != nil {
			return err
		}
	}
	c.AddChain(s.from)
	c.AddChain(s.to)
	// iif vmap @from_index; iifname vmap @from_ports (and oif, oifname
	// for to_vm). The index map's elements are gotos: a frame it sends to
	// a profile does not come back to the name map.
	for _, x := range []struct {
		ch  *nftables.Chain
		dir direction
	}{{s.from, fromVM}, {s.to, toVM}} {
		ix, name := s.portIndexMap(x.dir), s.portNameMap(x.dir)
		c.AddRule(&nftables.Rule{Table: s.table, Chain: x.ch, Exprs: []expr.Any{
			x.dir.portIndex(1),
			&expr.Lookup{SourceRegister: 1, SetName: ix.Name, SetID: ix.ID, IsDestRegSet: true, DestRegister: 0},
		}})
		c.AddRule(&nftables.Rule{Table: s.table, Chain: x.ch, Exprs: []expr.Any{
			x.dir.portName(1),
			&expr.Lookup{SourceRegister: 1, SetName: name.Name, SetID: name.ID, IsDestRegSet: true, DestRegister: 0},
		}})
	}
	return nil
}

// profile is the chains and meters of one distinct Limits value.
type profile struct {
	id     string
	limits Limits
	// chains[d] is nil when the direction needs no rules.
	chains [2]*nftables.Chain
	meters []*nftables.Set
}

func (p *profile) chainName(d direction) string { return "p" + p.id + d.suffix() }

// needs reports whether direction d has any rule.
func (p *profile) needs(d direction) bool {
	l := p.limits
	if l.tracksUDP() {
		return true
	}
	if d == fromVM {
		return !l.PPSFromVM.IsZero() || !l.NewTCPFromVM.IsZero()
	}
	return !l.PPSToVM.IsZero() || !l.NewTCPToVM.IsZero() || !l.NewPerSourceToVM.IsZero()
}

func newProfile(l Limits) *profile { return &profile{id: l.profileID(), limits: l} }

// builder queues a profile's objects on one connection.
type builder struct {
	c     *nftables.Conn
	sk    *skeleton
	p     *profile
	chain *nftables.Chain
	dir   direction
}

// meter adds a dynamic set holding one token bucket per key, with a timeout
// long enough for an idle bucket to have refilled before it is forgotten
// (so forgetting never gives a fresh burst early).
func (b *builder) meter(name string, key nftables.SetDatatype, size uint32, r Rate) (*nftables.Set, error) {
	timeout := (r.refill() + time.Second).Truncate(time.Second)
	s := &nftables.Set{Table: b.sk.table, Name: "p" + b.p.id + "_" + name, Dynamic: true, HasTimeout: true,
		Timeout: timeout, Size: size, KeyType: key, Concatenation: len(nftables.ConcatSetTypeElements(key)) > 1}
	if err := b.c.AddSet(s, nil); err != nil {
		return nil, err
	}
	b.p.meters = append(b.p.meters, s)
	return s, nil
}

func limitOver(r Rate) *expr.Limit {
	unit := map[time.Duration]expr.LimitTime{time.Second: expr.LimitTimeSecond, time.Minute: expr.LimitTimeMinute,
		time.Hour: expr.LimitTimeHour, 24 * time.Hour: expr.LimitTimeDay}[r.per()]
	return &expr.Limit{Type: expr.LimitTypePkts, Rate: r.Count, Unit: unit, Burst: r.burst(), Over: true}
}

// overDrop is the tail of every limiting rule: the meter's bucket for the
// key in keyReg is over its limit, so count the drop under (port, reason)
// and drop.
func (b *builder) overDrop(m *nftables.Set, keyReg uint32, r Rate, reason Reason) []expr.Any {
	return []expr.Any{
		&expr.Dynset{SrcRegKey: keyReg, SetName: m.Name, SetID: m.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Exprs: []expr.Any{limitOver(r)}},
		b.dir.portName(reg32),
		&expr.Immediate{Register: reg32 + 4, Data: binaryutil.NativeEndian.PutUint32(uint32(reason))},
		&expr.Dynset{SrcRegKey: reg32, SetName: b.sk.drops.Name, SetID: b.sk.drops.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Exprs: []expr.Any{&expr.Counter{}}},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

func (b *builder) rule(e ...[]expr.Any) {
	var all []expr.Any
	for _, x := range e {
		all = append(all, x...)
	}
	b.c.AddRule(&nftables.Rule{Table: b.sk.table, Chain: b.chain, Exprs: all})
}

const (
	etherIPv4 = 0x0800
	etherIPv6 = 0x86dd
)

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

// tcpSYN matches a TCP segment with SYN set and ACK clear: a new connection.
func tcpSYN() []expr.Any {
	return append(l4proto(unix.IPPROTO_TCP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	)
}

type family struct {
	ether          uint16
	addrLen        uint32
	saddr, daddr   uint32 // offsets in the network header
	flows, sources func(*builder) *nftables.Set
}

// flowKey loads the canonical flow key into reg32..: port index, the VM's
// address, the remote address, the VM's port, the remote port, so that a
// flow and its replies share one key.
func (b *builder) flowKey(f family) []expr.Any {
	vmAddr, remAddr := f.saddr, f.daddr
	vmPort, remPort := uint32(0), uint32(2)
	if b.dir == toVM {
		vmAddr, remAddr = f.daddr, f.saddr
		vmPort, remPort = 2, 0
	}
	words := f.addrLen / 4
	return []expr.Any{
		b.dir.portIndex(reg32),
		&expr.Payload{DestRegister: reg32 + 1, Base: expr.PayloadBaseNetworkHeader, Offset: vmAddr, Len: f.addrLen},
		&expr.Payload{DestRegister: reg32 + 1 + words, Base: expr.PayloadBaseNetworkHeader, Offset: remAddr, Len: f.addrLen},
		&expr.Payload{DestRegister: reg32 + 1 + 2*words, Base: expr.PayloadBaseTransportHeader, Offset: vmPort, Len: 2},
		&expr.Payload{DestRegister: reg32 + 2 + 2*words, Base: expr.PayloadBaseTransportHeader, Offset: remPort, Len: 2},
	}
}

// sourceKey loads port index . remote source address into reg32...
func (b *builder) sourceKey(f family) []expr.Any {
	return []expr.Any{
		b.dir.portIndex(reg32),
		&expr.Payload{DestRegister: reg32 + 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.addrLen},
	}
}

// add queues the profile's meters, chains and rules.
func (p *profile) add(c *nftables.Conn, sk *skeleton) error {
	l := p.limits
	var src4, src6 *nftables.Set
	for _, dir := range []direction{fromVM, toVM} {
		if !p.needs(dir) {
			continue
		}
		ch := c.AddChain(&nftables.Chain{Table: sk.table, Name: p.chainName(dir)})
		p.chains[dir] = ch
		b := &builder{c: c, sk: sk, p: p, chain: ch, dir: dir}

		pps, tcp, udp := l.PPSFromVM, l.NewTCPFromVM, l.NewUDPFromVM
		ppsR, tcpR, udpR := ReasonPPSFromVM, ReasonNewTCPFromVM, ReasonNewUDPFromVM
		if dir == toVM {
			pps, tcp, udp = l.PPSToVM, l.NewTCPToVM, l.NewUDPToVM
			ppsR, tcpR, udpR = ReasonPPSToVM, ReasonNewTCPToVM, ReasonNewUDPToVM
		}
		perSource := dir == toVM && !l.NewPerSourceToVM.IsZero()
		if perSource && src4 == nil {
			var err error
			r := l.NewPerSourceToVM
			if src4, err = b.meter("src4", mustConcat(nftables.TypeIFIndex, nftables.TypeIPAddr), sourceSize, r); err != nil {
				return err
			}
			if src6, err = b.meter("src6", mustConcat(nftables.TypeIFIndex, nftables.TypeIP6Addr), sourceSize, r); err != nil {
				return err
			}
		}
		v4 := family{ether: etherIPv4, addrLen: 4, saddr: 12, daddr: 16}
		v6 := family{ether: etherIPv6, addrLen: 16, saddr: 8, daddr: 24}
		srcOf := map[uint16]*nftables.Set{etherIPv4: src4, etherIPv6: src6}
		flowsOf := map[uint16]*nftables.Set{etherIPv4: sk.flows4, etherIPv6: sk.flows6}

		// 1. The packet-rate ceiling, on every frame.
		if !pps.IsZero() {
			m, err := b.meter("pps"+dir.suffix(), nftables.TypeIFIndex, meterSize, pps)
			if err != nil {
				return err
			}
			b.rule([]expr.Any{dir.portIndex(1)}, b.overDrop(m, 1, pps, ppsR))
		}
		// 2. New UDP flows: a known flow refreshes its entry and leaves;
		// a new one is checked per source, then per VM, then remembered.
		// Before the TCP rules, so that a frame of a known flow (the
		// common case) leaves after the fewest rules.
		if l.tracksUDP() {
			var udpMeter *nftables.Set
			if !udp.IsZero() {
				var err error
				if udpMeter, err = b.meter("udp"+dir.suffix(), nftables.TypeIFIndex, meterSize, udp); err != nil {
					return err
				}
			}
			for _, f := range []family{v4, v6} {
				isUDP := append(l4proto(unix.IPPROTO_UDP), etherType(f.ether)...) // TCP fails at the first test
				flows := flowsOf[f.ether]
				b.rule(isUDP, b.flowKey(f), []expr.Any{
					&expr.Lookup{SourceRegister: reg32, SetName: flows.Name, SetID: flows.ID},
					&expr.Dynset{SrcRegKey: reg32, SetName: flows.Name, SetID: flows.ID, Operation: unix.NFT_DYNSET_OP_UPDATE},
					&expr.Verdict{Kind: expr.VerdictReturn},
				})
				if perSource {
					b.rule(isUDP, b.sourceKey(f), b.overDrop(srcOf[f.ether], reg32, l.NewPerSourceToVM, ReasonPerSourceToVM))
				}
				if udpMeter != nil {
					b.rule(isUDP, []expr.Any{dir.portIndex(1)}, b.overDrop(udpMeter, 1, udp, udpR))
				}
				b.rule(isUDP, b.flowKey(f), []expr.Any{
					&expr.Dynset{SrcRegKey: reg32, SetName: flows.Name, SetID: flows.ID, Operation: unix.NFT_DYNSET_OP_ADD},
				})
			}
		}
		// 3. New TCP connections: per source first, then per VM.
		if perSource {
			for _, f := range []family{v4, v6} {
				b.rule(tcpSYN(), etherType(f.ether), b.sourceKey(f), b.overDrop(srcOf[f.ether], reg32, l.NewPerSourceToVM, ReasonPerSourceToVM))
			}
		}
		if !tcp.IsZero() {
			m, err := b.meter("tcp"+dir.suffix(), nftables.TypeIFIndex, meterSize, tcp)
			if err != nil {
				return err
			}
			b.rule(tcpSYN(), []expr.Any{dir.portIndex(1)}, b.overDrop(m, 1, tcp, tcpR))
		}
	}
	return nil
}
