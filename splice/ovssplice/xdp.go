package ovssplice

// The kernel half of the splice: an XDP program on the VM's port hands every
// frame to the taps before anything else sees it.
//
// Why XDP and not OpenFlow or tc: the userspace datapath reads the port
// through a packet socket, which a flood overflows. Steered by OpenFlow, 94%
// of a max-rate flood's frames were lost in that socket, and the bypass
// replies with them (95 of 100 probe round trips, p99 3.7 s). A tc redirect
// runs after packet sockets have taken their copy, so ovs-vswitchd still
// spent half a core reading and dropping a copy of the flood, and starved,
// lost frames the forwarder had passed (4447-4906 pps delivered of 5000).
// Generic XDP runs before both: OVS never sees the VM's frames while the
// program is attached.
//
// The program is attached through a BPF link, which the kernel detaches when
// its last file descriptor closes: if the daemon dies (kill -9, a crash),
// the port's frames go to OVS again, whose fast-failover groups (the
// forwarder's taps have lost carrier) send them the direct way, or with
// fail closed nowhere. The program is a few dozen instructions assembled
// here: the module has no eBPF library.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/shaperd/shaperd/splice"
	"golang.org/x/sys/unix"
)

// eBPF opcodes used by the program.
const (
	opLdxW    = 0x61 // dst = *(u32 *)(src + off)
	opLdxH    = 0x69 // dst = *(u16 *)(src + off)
	opLdxB    = 0x71 // dst = *(u8 *)(src + off)
	opMovImm  = 0xb7 // dst = imm (64-bit)
	opMovReg  = 0xbf // dst = src (64-bit)
	opAddImm  = 0x07 // dst += imm (64-bit)
	opJa      = 0x05 // goto off
	opJgtReg  = 0x2d // if dst > src goto off
	opJeqImm  = 0x15 // if dst == imm goto off
	opJneImm  = 0x55 // if dst != imm goto off
	opJltImm  = 0xa5 // if dst < imm goto off
	opJgtImm  = 0x25 // if dst > imm goto off
	opCall    = 0x85 // call helper imm
	opExit    = 0x95 // return r0
	helperRed = 23   // bpf_redirect(ifindex, flags)
)

// insn is one eBPF instruction; a jump names its target label.
type insn struct {
	op       uint8
	dst, src uint8
	off      int16
	imm      int32
	target   string
}

// asm assembles a straight-line eBPF program with forward jumps to labels.
type asm struct {
	ins    []insn
	labels map[string]int
}

func (a *asm) emit(i insn)                       { a.ins = append(a.ins, i) }
func (a *asm) label(name string)                 { a.labels[name] = len(a.ins) }
func (a *asm) ldx(op, dst, src uint8, off int16) { a.emit(insn{op: op, dst: dst, src: src, off: off}) }
func (a *asm) jmpImm(op, dst uint8, imm int32, t string) {
	a.emit(insn{op: op, dst: dst, imm: imm, target: t})
}

// bytes resolves the labels and encodes the program.
func (a *asm) bytes() ([]byte, error) {
	out := make([]byte, 0, 8*len(a.ins))
	for pc, i := range a.ins {
		if i.target != "" {
			t, ok := a.labels[i.target]
			if !ok {
				return nil, fmt.Errorf("xdp: no label %q", i.target)
			}
			i.off = int16(t - pc - 1)
		}
		var b [8]byte
		b[0], b[1] = i.op, i.dst|i.src<<4
		binary.LittleEndian.PutUint16(b[2:], uint16(i.off))
		binary.LittleEndian.PutUint32(b[4:], uint32(i.imm))
		out = append(out, b[:]...)
	}
	return out, nil
}

// be16 is the value a little-endian 16-bit load returns for the network
// order bytes of v.
func be16(v uint16) int32 { return int32(v>>8 | v<<8&0xff00) }

// xdpProgram returns the program for a port: frames that may be bypass or
// control (the matches of the tc backend: ARP; ICMPv6 types 133-137 and TCP
// from, with BypassOutbound also to, the bypass ports, in IPv4 with a
// 20-byte header or IPv6 without extension headers) go to the priority tap,
// every other frame to the VM tap, with bpf_redirect. Steering only picks a
// queue: the forwarder classifies every frame the same either way.
func xdpProgram(vmTap, prioTap int, opt splice.Options) ([]byte, error) {
	const (
		rCtx, rData, rEnd, rPtr, rVal = 1, 6, 7, 8, 9
		ethHdr, ip4Hdr, ip6Hdr        = 14, 20, 40
	)
	a := &asm{labels: map[string]int{}}
	a.ldx(opLdxW, rData, rCtx, 0) // xdp_md.data
	a.ldx(opLdxW, rEnd, rCtx, 4)  // xdp_md.data_end
	// bounds(n): frames shorter than n bytes are ordinary.
	bounds := func(n int32) {
		a.emit(insn{op: opMovReg, dst: rPtr, src: rData})
		a.emit(insn{op: opAddImm, dst: rPtr, imm: n})
		a.emit(insn{op: opJgtReg, dst: rPtr, src: rEnd, target: "vm"})
	}
	ports := func(off int16) {
		a.ldx(opLdxH, rVal, rData, off)
		for _, p := range opt.BypassPorts {
			a.jmpImm(opJeqImm, rVal, be16(p), "prio")
		}
	}
	bounds(ethHdr)
	a.ldx(opLdxH, rVal, rData, 12) // ethertype
	a.jmpImm(opJeqImm, rVal, be16(unix.ETH_P_ARP), "prio")
	a.jmpImm(opJeqImm, rVal, be16(unix.ETH_P_IP), "ipv4")
	a.jmpImm(opJeqImm, rVal, be16(unix.ETH_P_IPV6), "ipv6")
	a.emit(insn{op: opJa, target: "vm"})

	a.label("ipv4")
	bounds(ethHdr + ip4Hdr + 4)
	a.ldx(opLdxB, rVal, rData, ethHdr)
	a.jmpImm(opJneImm, rVal, 0x45, "vm") // version 4, IHL 5
	a.ldx(opLdxB, rVal, rData, ethHdr+9)
	a.jmpImm(opJneImm, rVal, unix.IPPROTO_TCP, "vm")
	ports(ethHdr + ip4Hdr)
	if opt.BypassOutbound {
		ports(ethHdr + ip4Hdr + 2)
	}
	a.emit(insn{op: opJa, target: "vm"})

	a.label("ipv6")
	bounds(ethHdr + ip6Hdr + 4)
	a.ldx(opLdxB, rVal, rData, ethHdr+6) // next header
	a.jmpImm(opJeqImm, rVal, unix.IPPROTO_ICMPV6, "icmp6")
	a.jmpImm(opJneImm, rVal, unix.IPPROTO_TCP, "vm")
	ports(ethHdr + ip6Hdr)
	if opt.BypassOutbound {
		ports(ethHdr + ip6Hdr + 2)
	}
	a.emit(insn{op: opJa, target: "vm"})

	a.label("icmp6")
	a.ldx(opLdxB, rVal, rData, ethHdr+ip6Hdr) // type: RS, RA, NS, NA, redirect
	a.jmpImm(opJltImm, rVal, 133, "vm")
	a.jmpImm(opJgtImm, rVal, 137, "vm")

	a.label("prio")
	a.emit(insn{op: opMovImm, dst: 1, imm: int32(prioTap)})
	a.emit(insn{op: opMovImm, dst: 2})
	a.emit(insn{op: opCall, imm: helperRed})
	a.emit(insn{op: opExit})
	a.label("vm")
	a.emit(insn{op: opMovImm, dst: 1, imm: int32(vmTap)})
	a.emit(insn{op: opMovImm, dst: 2})
	a.emit(insn{op: opCall, imm: helperRed})
	a.emit(insn{op: opExit})
	return a.bytes()
}

// bpfLicense is the program's license string; bpf_redirect is not GPL-only.
var bpfLicense = []byte("Dual MIT/GPL\x00")

// xdpLink is an XDP program attached to a link through a BPF link: Close
// detaches it.
type xdpLink struct{ fd int }

func (l *xdpLink) Close() error {
	if l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

func bpf(cmd int, attr []byte) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// attachXDP loads prog and attaches it in generic (skb) mode to link
// ifindex through a BPF link, whose file descriptor (close-on-exec) it
// returns wrapped.
func attachXDP(ifindex int, prog []byte) (*xdpLink, error) {
	// The kernel reads prog, the license and the log buffer through the
	// addresses in load: they must not live on a (movable) goroutine stack.
	// prog was built by append and logBuf is too large for the stack; the
	// license is a package variable.
	license := bpfLicense
	logBuf := make([]byte, 1<<17)
	ne := binary.NativeEndian
	load := make([]byte, 128)
	ne.PutUint32(load[0:], unix.BPF_PROG_TYPE_XDP)
	ne.PutUint32(load[4:], uint32(len(prog)/8))
	ne.PutUint64(load[8:], uint64(uintptr(unsafe.Pointer(&prog[0]))))
	ne.PutUint64(load[16:], uint64(uintptr(unsafe.Pointer(&license[0]))))
	ne.PutUint32(load[24:], 1) // log_level
	ne.PutUint32(load[28:], uint32(len(logBuf)))
	ne.PutUint64(load[32:], uint64(uintptr(unsafe.Pointer(&logBuf[0]))))
	copy(load[48:64], "shaperd_splice")
	ne.PutUint32(load[68:], unix.BPF_XDP) // expected_attach_type
	progFD, err := bpf(unix.BPF_PROG_LOAD, load)
	runtime.KeepAlive(prog)
	runtime.KeepAlive(license)
	runtime.KeepAlive(logBuf)
	if err != nil {
		msg := string(logBuf)
		if i := indexByte0(logBuf); i >= 0 {
			msg = string(logBuf[:i])
		}
		return nil, fmt.Errorf("load the XDP program: %w: %s", err, msg)
	}
	defer unix.Close(progFD)
	link := make([]byte, 64)
	ne.PutUint32(link[0:], uint32(progFD))
	ne.PutUint32(link[4:], uint32(ifindex))
	ne.PutUint32(link[8:], unix.BPF_XDP)
	ne.PutUint32(link[12:], unix.XDP_FLAGS_SKB_MODE)
	fd, err := bpf(unix.BPF_LINK_CREATE, link)
	if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("attach the XDP program to ifindex %d: the port already has an XDP program (%w)", ifindex, err)
	}
	if err != nil {
		return nil, fmt.Errorf("attach the XDP program to ifindex %d: %w", ifindex, err)
	}
	return &xdpLink{fd: fd}, nil
}

func indexByte0(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
