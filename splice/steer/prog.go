package steer

// The programs, written with cilium/ebpf's asm package: one source, built
// for every hook. What differs between hooks is the context layout (XDP's
// xdp_md or tc's __sk_buff), the verdict codes, the direction, and what
// "the direct way" means when the daemon is gone; the maps and the logic
// are the same.

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Verdicts the programs return. These are return codes of the hooks, not
// instructions.
const (
	xdpDrop = 1 // XDP_DROP
	xdpPass = 2 // XDP_PASS
	tcOK    = 0 // TC_ACT_OK
	tcShot  = 2 // TC_ACT_SHOT
)

// Context offsets.
const (
	xdpData    = 0  // xdp_md.data
	xdpDataEnd = 4  // xdp_md.data_end
	skbLen     = 0  // __sk_buff.len
	skbData    = 76 // __sk_buff.data
	skbDataEnd = 80 // __sk_buff.data_end
)

// Frame layout.
const (
	ethLen     = 14
	ip6Len     = 40
	ethARP     = 0x0806
	ethIPv4    = 0x0800
	ethIPv6    = 0x86dd
	protoICMP  = 1
	protoTCP   = 6
	protoUDP   = 17
	protoICMP6 = 58
	// pullLen is how much of a tc frame the program wants in the linear
	// part: the Ethernet, IPv6 and TCP headers up to the flags.
	pullLen = ethLen + ip6Len + 14
)

// Stack slots (offsets from the frame pointer, R10).
const (
	slotKey   = -8  // u32 map key
	slotPort  = -16 // a TCP port, for inBypass
	slotPort2 = -24 // the other TCP port
	slotClass = -32 // the frame's Class
	slotNow   = -40 // bpf_ktime_get_ns at the start
	slotHB    = -48 // the heartbeat read
)

// gen emits one program.
type gen struct {
	hook    Hook
	maps    *Maps
	ins     asm.Instructions
	pending string
	n       int
}

func (g *gen) emit(ins ...asm.Instruction) {
	for _, i := range ins {
		if g.pending != "" {
			i = i.WithSymbol(g.pending)
			g.pending = ""
		}
		g.ins = append(g.ins, i)
	}
}

// label names the next instruction.
func (g *gen) label(name string) {
	if g.pending != "" {
		panic("steer: two labels on one instruction: " + g.pending + ", " + name)
	}
	g.pending = name
}

// fresh returns a new unique label.
func (g *gen) fresh(prefix string) string {
	g.n++
	return fmt.Sprintf("%s_%d", prefix, g.n)
}

func (g *gen) dir() Dir { return g.hook.Dir() }

func (g *gen) tc() bool { return g.hook != PortXDP }

// verdict returns into R0 and exits.
func (g *gen) ret(v int32) { g.emit(asm.Mov.Imm(asm.R0, v), asm.Return()) }

// drop returns the hook's drop verdict.
func (g *gen) drop() {
	if g.tc() {
		g.ret(tcShot)
	} else {
		g.ret(xdpDrop)
	}
}

// pass returns the hook's "let the frame go its normal way" verdict.
func (g *gen) pass() {
	if g.tc() {
		g.ret(tcOK)
	} else {
		g.ret(xdpPass)
	}
}

// lookup emits R0 = bpf_map_lookup_elem(m, &key) with key an immediate.
// It clobbers R1-R5.
func (g *gen) lookup(m *ebpf.Map, key int32) {
	g.emit(
		asm.StoreImm(asm.RFP, slotKey, int64(key), asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, slotKey),
		asm.FnMapLookupElem.Call(),
	)
}

// lookupReg is lookup with the key in register r (not R1 or R2).
func (g *gen) lookupReg(m *ebpf.Map, r asm.Register) {
	g.emit(
		asm.StoreMem(asm.RFP, slotKey, r, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, slotKey),
		asm.FnMapLookupElem.Call(),
	)
}

// count adds one to counter c of the hook's direction. Clobbers R0-R5.
func (g *gen) count(c Counter) {
	skip := g.fresh("count")
	g.lookup(g.maps.Stats, int32(counterIndex(g.dir(), c)))
	g.emit(
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
	)
	g.label(skip)
}

// redirectTo emits bpf_redirect(*(u32 *)(R9 + off), 0) and returns its
// result (XDP_REDIRECT, TC_ACT_REDIRECT, or the drop verdict for an
// ifindex of 0). R9 holds the config.
func (g *gen) redirectTo(off int16) {
	g.emit(
		asm.LoadMem(asm.R1, asm.R9, off, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
	)
}

// config loads the config into R9, or fails with the drop verdict when the
// map is empty (it never is: an array always has its element).
func (g *gen) config() {
	ok := g.fresh("cfg")
	g.lookup(g.maps.Config, 0)
	g.emit(asm.JNE.Imm(asm.R0, 0, ok))
	g.drop()
	g.label(ok)
	g.emit(asm.Mov.Reg(asm.R9, asm.R0))
}

// failPath is what a hook does when the daemon is gone (its socket is out
// of the alive map) or its heartbeat is stale:
// with fail open, the frame goes the direct way in the kernel; with fail
// closed, it is dropped and counted. R9 must hold the config.
func (g *gen) failPath() {
	closed := g.fresh("closed")
	g.emit(
		asm.LoadMem(asm.R1, asm.R9, cfgFlags, asm.Word),
		asm.JSet.Imm(asm.R1, flagFailOpen, g.fresh("open")),
	)
	open := g.ins[len(g.ins)-1].Reference()
	g.emit(asm.Ja.Label(closed))
	g.label(open)
	g.count(FailOpen)
	switch g.hook {
	case PortXDP:
		// OVS takes the frame; its fast-failover groups send it the
		// direct way when the taps have no carrier.
		g.pass()
	case PortTC:
		// Into the bridge through the fallback pair.
		g.redirectTo(cfgFallback)
	case NetTC:
		// The net tap's own queue, as without the program.
		g.pass()
	case FallbackTC:
		// From the bridge, through the fallback pair, to the VM.
		g.redirectTo(cfgPort)
	}
	g.label(closed)
	if g.hook == NetTC {
		// The net tap's queue: with no forwarder, nothing reads it.
		g.pass()
		return
	}
	g.count(FailClosed)
	g.drop()
}

// program is the hook's program: liveness, heartbeat, steering, backstop
// and counters.
func (g *gen) program() {
	g.emit(asm.Mov.Reg(asm.R6, asm.R1))
	g.config()

	// Liveness: the daemon's socket is in the alive map for as long as
	// the daemon lives; the kernel removes it from the map when the
	// socket closes, in the close itself, so when the daemon dies the
	// very next frame takes the fail path.
	alive := g.fresh("alive")
	g.lookup(g.maps.Alive, 0)
	g.emit(asm.JNE.Imm(asm.R0, 0, alive))
	g.failPath()
	g.label(alive)
	g.emit(
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.FnSkRelease.Call(),
	)

	// The heartbeat: stale after cfg.stale_ns (0: never).
	fresh := g.fresh("fresh")
	g.lookup(g.maps.Heartbeat, 0)
	g.emit(
		asm.Mov.Imm(asm.R1, 0),
		asm.JEq.Imm(asm.R0, 0, g.fresh("nohb")),
	)
	nohb := g.ins[len(g.ins)-1].Reference()
	g.emit(asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord))
	g.label(nohb)
	g.emit(
		asm.StoreMem(asm.RFP, slotHB, asm.R1, asm.DWord),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.RFP, slotNow, asm.R0, asm.DWord),
		asm.LoadMem(asm.R2, asm.R9, cfgStale, asm.DWord),
		asm.JEq.Imm(asm.R2, 0, fresh),
		asm.LoadMem(asm.R1, asm.RFP, slotHB, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R2),
		asm.JLE.Reg(asm.R0, asm.R1, fresh),
	)
	g.count(Stale)
	g.failPath()
	g.label(fresh)

	if g.hook == FallbackTC {
		// The daemon is alive: frames the bridge floods to the fallback
		// pair are copies of what the net tap gets.
		g.count(Idle)
		g.drop()
		return
	}
	g.parse()
	g.backstop()
}

// parse loads the packet pointers into R7 (data) and R8 (data_end), and
// jumps to "cand" for a bypass or control candidate, or stores the frame's
// Class in slotClass and jumps to "backstop".
func (g *gen) parse() {
	if g.tc() {
		// Make sure the headers are in the linear part.
		pulled := g.fresh("pulled")
		g.loadPointers()
		g.emit(
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.Add.Imm(asm.R1, pullLen),
			asm.JLE.Reg(asm.R1, asm.R8, pulled),
			asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
			asm.JLE.Imm(asm.R2, pullLen, g.fresh("short")),
		)
		short := g.ins[len(g.ins)-1].Reference()
		g.emit(asm.Mov.Imm(asm.R2, pullLen))
		g.label(short)
		g.emit(
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.FnSkbPullData.Call(),
		)
		g.label(pulled)
	}
	g.loadPointers()

	class := func(c Class) string { return "class_" + c.String() }
	// bounds jumps to other unless n bytes of the frame are there.
	bounds := func(n int32) {
		g.emit(
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.Add.Imm(asm.R1, n),
			asm.JGT.Reg(asm.R1, asm.R8, class(ClassOther)),
		)
	}
	// tcpPorts reads the TCP ports at R1 (a packet pointer with 14 bytes
	// checked) into the port slots, the one that marks a candidate in
	// slotPort, and jumps to cand if a bypass port matches, else to syn
	// or tcp by the flags.
	tcpPorts := func() {
		own, other := int16(0), int16(2) // frames from the VM: the VM is the server, its source port
		if g.dir() == ToVM {
			own, other = 2, 0
		}
		g.emit(
			asm.LoadMem(asm.R2, asm.R1, own, asm.Half),
			asm.HostTo(asm.BE, asm.R2, asm.Half),
			asm.StoreMem(asm.RFP, slotPort, asm.R2, asm.DWord),
			asm.LoadMem(asm.R2, asm.R1, other, asm.Half),
			asm.HostTo(asm.BE, asm.R2, asm.Half),
			asm.StoreMem(asm.RFP, slotPort2, asm.R2, asm.DWord),
			// SYN set and ACK clear: tcp-syn.
			asm.LoadMem(asm.R2, asm.R1, 13, asm.Byte),
			asm.And.Imm(asm.R2, 0x12),
			asm.Mov.Imm(asm.R3, int32(ClassTCP)),
			asm.JNE.Imm(asm.R2, 0x02, g.fresh("notsyn")),
		)
		notSyn := g.ins[len(g.ins)-1].Reference()
		g.emit(asm.Mov.Imm(asm.R3, int32(ClassSyn)))
		g.label(notSyn)
		g.emit(asm.StoreMem(asm.RFP, slotClass, asm.R3, asm.DWord))
		g.inBypass(slotPort, "cand")
		outbound := g.fresh("noout")
		g.emit(
			asm.LoadMem(asm.R1, asm.R9, cfgFlags, asm.Word),
			asm.JSet.Imm(asm.R1, flagOutbound, g.fresh("out")),
		)
		out := g.ins[len(g.ins)-1].Reference()
		g.emit(asm.Ja.Label(outbound))
		g.label(out)
		g.inBypass(slotPort2, "cand")
		g.label(outbound)
		g.emit(asm.Ja.Label("backstop"))
	}

	bounds(ethLen)
	g.emit(
		asm.LoadMem(asm.R2, asm.R7, 12, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.JEq.Imm(asm.R2, ethARP, "cand"),
		asm.JEq.Imm(asm.R2, ethIPv4, "ipv4"),
		asm.JEq.Imm(asm.R2, ethIPv6, "ipv6"),
		asm.Ja.Label(class(ClassOther)),
	)

	g.label("ipv4")
	bounds(ethLen + 20)
	g.emit(
		asm.LoadMem(asm.R2, asm.R7, ethLen, asm.Byte),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.And.Imm(asm.R3, 0xf0),
		asm.JNE.Imm(asm.R3, 0x40, class(ClassOther)),
		asm.And.Imm(asm.R2, 0x0f),
		asm.JLT.Imm(asm.R2, 5, class(ClassOther)),
		asm.LSh.Imm(asm.R2, 2), // header length in bytes, 20-60
		// A non-first fragment has no transport header.
		asm.LoadMem(asm.R3, asm.R7, ethLen+6, asm.Half),
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.And.Imm(asm.R3, 0x1fff),
		asm.JNE.Imm(asm.R3, 0, class(ClassOther)),
		asm.LoadMem(asm.R3, asm.R7, ethLen+9, asm.Byte),
		asm.JEq.Imm(asm.R3, protoICMP, class(ClassICMP)),
		asm.JEq.Imm(asm.R3, protoUDP, class(ClassUDP)),
		asm.JNE.Imm(asm.R3, protoTCP, class(ClassOther)),
		// TCP behind IPv4 options: no constant offset, and pointer
		// arithmetic with a variable needs CAP_PERFMON besides CAP_BPF.
		// Such frames are ordinary tcp here (the forwarder classifies
		// them fully).
		asm.JNE.Imm(asm.R2, 20, class(ClassTCP)),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Add.Imm(asm.R1, ethLen+20),
		asm.Mov.Reg(asm.R3, asm.R1),
		asm.Add.Imm(asm.R3, 14),
		asm.JGT.Reg(asm.R3, asm.R8, class(ClassOther)),
	)
	tcpPorts()

	g.label("ipv6")
	bounds(ethLen + ip6Len)
	g.emit(
		asm.LoadMem(asm.R3, asm.R7, ethLen+6, asm.Byte),
		asm.JEq.Imm(asm.R3, protoUDP, class(ClassUDP)),
		asm.JEq.Imm(asm.R3, protoICMP6, "icmp6"),
		asm.JNE.Imm(asm.R3, protoTCP, class(ClassOther)),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Add.Imm(asm.R1, ethLen+ip6Len),
		asm.Mov.Reg(asm.R3, asm.R1),
		asm.Add.Imm(asm.R3, 14),
		asm.JGT.Reg(asm.R3, asm.R8, class(ClassOther)),
	)
	tcpPorts()

	g.label("icmp6")
	bounds(ethLen + ip6Len + 1)
	g.emit(
		// Router and neighbour discovery, types 133-137, are control.
		asm.LoadMem(asm.R3, asm.R7, ethLen+ip6Len, asm.Byte),
		asm.JLT.Imm(asm.R3, 133, class(ClassICMP)),
		asm.JLE.Imm(asm.R3, 137, "cand"),
		asm.Ja.Label(class(ClassICMP)),
	)

	for _, c := range []Class{ClassOther, ClassUDP, ClassICMP, ClassTCP} {
		g.label(class(c))
		g.emit(
			asm.Mov.Imm(asm.R3, int32(c)),
			asm.StoreMem(asm.RFP, slotClass, asm.R3, asm.DWord),
			asm.Ja.Label("backstop"),
		)
	}

	// A candidate: never charged.
	g.label("cand")
	g.count(Priority)
	if g.dir() == FromVM {
		g.redirectTo(cfgPrio)
	} else {
		g.pass()
	}
}

// loadPointers loads data and data_end into R7 and R8.
func (g *gen) loadPointers() {
	if g.tc() {
		g.emit(
			asm.LoadMem(asm.R7, asm.R6, skbData, asm.Word),
			asm.LoadMem(asm.R8, asm.R6, skbDataEnd, asm.Word),
		)
		return
	}
	g.emit(
		asm.LoadMem(asm.R7, asm.R6, xdpData, asm.Word),
		asm.LoadMem(asm.R8, asm.R6, xdpDataEnd, asm.Word),
	)
}

// inBypass jumps to hit if the port in stack slot is set in the bypass
// port bitmap. Clobbers R0-R5.
func (g *gen) inBypass(slot int16, hit string) {
	miss := g.fresh("miss")
	g.emit(
		asm.LoadMem(asm.R3, asm.RFP, slot, asm.DWord),
		asm.RSh.Imm(asm.R3, 6),
	)
	g.lookupReg(g.maps.Ports, asm.R3)
	g.emit(
		asm.JEq.Imm(asm.R0, 0, miss),
		asm.LoadMem(asm.R1, asm.RFP, slot, asm.DWord),
		asm.And.Imm(asm.R1, 63),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.DWord),
		asm.RSh.Reg(asm.R2, asm.R1),
		asm.And.Imm(asm.R2, 1),
		asm.JNE.Imm(asm.R2, 0, hit),
	)
	g.label(miss)
	g.emit(asm.Mov.Reg(asm.R9, asm.R9)) // a landing pad for the label
}

// backstop charges the frame's class bucket (if its class has one) and the
// aggregate bucket of the direction, both or neither, as GCRA: a bucket's
// tat (theoretical arrival time) moves by interval per frame admitted, and
// a frame is refused when tat would run more than tau ahead of now. Then it
// passes the frame on (to the VM tap from the VM, the net tap's queue to
// the VM) or drops it with the reason counted.
//
// Two CPUs charging one bucket at the same moment may both read the same
// tat, so one of the frames goes uncharged: the ceiling is approximate
// under concurrency, which a backstop far above the limits can afford.
func (g *gen) backstop() {
	base := int32(g.dir()) * NumClasses
	g.label("backstop")
	g.emit(
		asm.Mov.Imm(asm.R7, 0), // the class bucket to commit, if any
		asm.LoadMem(asm.R3, asm.RFP, slotClass, asm.DWord),
		asm.Add.Imm(asm.R3, base),
	)
	g.lookupReg(g.maps.Buckets, asm.R3)
	g.gcra("aggregate", "drop_class")
	g.emit(asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Reg(asm.R8, asm.R2))

	g.label("aggregate")
	g.lookup(g.maps.Buckets, base+int32(ClassAggregate))
	g.gcra("commit", "drop_aggregate")
	g.emit(asm.StoreMem(asm.R0, bucketTAT, asm.R2, asm.DWord))

	g.label("commit")
	g.emit(
		asm.JEq.Imm(asm.R7, 0, "passed"),
		asm.StoreMem(asm.R7, bucketTAT, asm.R8, asm.DWord),
	)
	g.label("passed")
	g.count(Main) // R9 still holds the config
	if g.dir() == FromVM {
		g.redirectTo(cfgVM)
	} else {
		g.pass()
	}

	g.label("drop_class")
	g.count(DropClass)
	g.drop()
	g.label("drop_aggregate")
	g.count(DropAggregate)
	g.drop()
}

// gcra checks the bucket R0 points at (from a lookup): with no bucket or
// an interval of 0 it jumps to none; a frame over the bucket's tolerance
// jumps to refuse; otherwise it falls through with the bucket's new tat
// in R2 and R0 unchanged.
func (g *gen) gcra(none, refuse string) {
	late := g.fresh("late")
	g.emit(
		asm.JEq.Imm(asm.R0, 0, none),
		asm.LoadMem(asm.R1, asm.R0, bucketInterval, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, none),
		asm.LoadMem(asm.R2, asm.R0, bucketTAT, asm.DWord),
		asm.LoadMem(asm.R3, asm.RFP, slotNow, asm.DWord),
		asm.JGE.Reg(asm.R2, asm.R3, late),
		asm.Mov.Reg(asm.R2, asm.R3), // idle: the bucket is full
	)
	g.label(late)
	g.emit(
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Sub.Reg(asm.R4, asm.R3),
		asm.LoadMem(asm.R5, asm.R0, bucketTau, asm.DWord),
		asm.JGT.Reg(asm.R4, asm.R5, refuse),
		asm.Add.Reg(asm.R2, asm.R1),
	)
}

// build returns the instructions of the hook's program.
func build(hook Hook, m *Maps) (asm.Instructions, error) {
	g := &gen{hook: hook, maps: m}
	g.program()
	if g.pending != "" {
		return nil, fmt.Errorf("steer: label %s at the end of the program", g.pending)
	}
	return g.ins, nil
}
