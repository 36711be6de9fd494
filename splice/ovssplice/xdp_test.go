package ovssplice

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/shaperd/shaperd/splice"
)

// runXDP interprets prog (only the instructions xdpProgram emits) on frame
// and returns the ifindex passed to bpf_redirect. It fails on an
// out-of-bounds packet read, as the verifier would have refused it.
func runXDP(t *testing.T, prog []byte, frame []byte) int {
	t.Helper()
	var r [11]uint64
	const dataBase, endBase = 1 << 20, 1<<20 + 0 // packet pointers: base + offset
	r[1] = 0                                     // ctx
	redirected := -1
	load := func(addr uint64, size int) uint64 {
		if addr < dataBase {
			switch addr { // the ctx
			case 0:
				return dataBase
			case 4:
				return dataBase + uint64(len(frame))
			}
			t.Fatalf("ctx read at %d", addr)
		}
		off := int(addr - dataBase)
		if off < 0 || off+size > len(frame) {
			t.Fatalf("packet read at %d+%d beyond %d bytes", off, size, len(frame))
		}
		switch size {
		case 1:
			return uint64(frame[off])
		case 2:
			return uint64(binary.LittleEndian.Uint16(frame[off:]))
		}
		return uint64(binary.LittleEndian.Uint32(frame[off:]))
	}
	_ = endBase
	for pc := 0; pc < len(prog)/8; pc++ {
		i := prog[pc*8:]
		op, dst, src := i[0], i[1]&0xf, i[1]>>4
		off := int16(binary.LittleEndian.Uint16(i[2:]))
		imm := int32(binary.LittleEndian.Uint32(i[4:]))
		jump := func(cond bool) {
			if cond {
				pc += int(off)
			}
		}
		switch op {
		case opLdxW:
			r[dst] = load(r[src]+uint64(off), 4)
		case opLdxH:
			r[dst] = load(r[src]+uint64(off), 2)
		case opLdxB:
			r[dst] = load(r[src]+uint64(off), 1)
		case opMovImm:
			r[dst] = uint64(int64(imm))
		case opMovReg:
			r[dst] = r[src]
		case opAddImm:
			r[dst] += uint64(int64(imm))
		case opJa:
			jump(true)
		case opJgtReg:
			jump(r[dst] > r[src])
		case opJeqImm:
			jump(r[dst] == uint64(int64(imm)))
		case opJneImm:
			jump(r[dst] != uint64(int64(imm)))
		case opJltImm:
			jump(r[dst] < uint64(int64(imm)))
		case opJgtImm:
			jump(r[dst] > uint64(int64(imm)))
		case opCall:
			if imm != helperRed || r[2] != 0 {
				t.Fatalf("call %d flags %d", imm, r[2])
			}
			redirected = int(r[1])
			r[0] = 4 // XDP_REDIRECT
		case opExit:
			return redirected
		default:
			t.Fatalf("unknown opcode %#x at %d", op, pc)
		}
	}
	t.Fatal("program ran off its end")
	return 0
}

func ether(typ uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(f[12:], typ)
	return append(f, payload...)
}

func ipv4(ihl int, proto byte, l4 []byte) []byte {
	h := make([]byte, ihl*4)
	h[0] = 0x40 | byte(ihl)
	h[9] = proto
	return append(h, l4...)
}

func ipv6(next byte, l4 []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	h[6] = next
	return append(h, l4...)
}

func ports(src, dst uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b, src)
	binary.BigEndian.PutUint16(b[2:], dst)
	return b
}

func TestXDPProgram(t *testing.T) {
	const vm, prio = 41, 42
	in := splice.Options{BypassPorts: []uint16{22, 3389}}
	out := splice.Options{BypassPorts: []uint16{22, 3389}, BypassOutbound: true}
	icmp6 := func(typ byte) []byte { return ipv6(58, append([]byte{typ}, make([]byte, 23)...)) }
	tests := []struct {
		name  string
		opt   splice.Options
		frame []byte
		want  int
	}{
		{"arp", in, ether(0x0806, make([]byte, 28)), prio},
		{"ipv4 tcp from 22", in, ether(0x0800, ipv4(5, 6, ports(22, 40000))), prio},
		{"ipv4 tcp from 3389", in, ether(0x0800, ipv4(5, 6, ports(3389, 40000))), prio},
		{"ipv4 tcp to 22, inbound only", in, ether(0x0800, ipv4(5, 6, ports(40000, 22))), vm},
		{"ipv4 tcp to 22, outbound", out, ether(0x0800, ipv4(5, 6, ports(40000, 22))), prio},
		{"ipv4 tcp from 80", out, ether(0x0800, ipv4(5, 6, ports(80, 40000))), vm},
		{"ipv4 udp from 22", in, ether(0x0800, ipv4(5, 17, ports(22, 40000))), vm},
		{"ipv4 options", in, ether(0x0800, ipv4(6, 6, ports(22, 40000))), vm},
		{"ipv6 tcp from 22", in, ether(0x86dd, ipv6(6, ports(22, 40000))), prio},
		{"ipv6 tcp to 3389, outbound", out, ether(0x86dd, ipv6(6, ports(40000, 3389))), prio},
		{"ipv6 hop-by-hop", in, ether(0x86dd, ipv6(0, ports(22, 40000))), vm},
		{"ipv6 udp", in, ether(0x86dd, ipv6(17, ports(22, 40000))), vm},
		{"neighbour solicitation", in, ether(0x86dd, icmp6(135)), prio},
		{"router solicitation", in, ether(0x86dd, icmp6(133)), prio},
		{"redirect", in, ether(0x86dd, icmp6(137)), prio},
		{"echo request v6", in, ether(0x86dd, icmp6(128)), vm},
		{"mld", in, ether(0x86dd, icmp6(143)), vm},
		{"runt", in, []byte{1, 2, 3}, vm},
		{"ethernet header only", in, ether(0x0800, nil), vm},
		{"truncated ipv4 tcp", in, ether(0x0800, ipv4(5, 6, []byte{0, 22})), vm},
		{"truncated ipv6", in, ether(0x86dd, make([]byte, 30)), vm},
		{"vlan tagged", in, ether(0x8100, make([]byte, 60)), vm},
		{"no bypass ports", splice.Options{}, ether(0x0800, ipv4(5, 6, ports(22, 40000))), vm},
	}
	for _, tt := range tests {
		prog, err := xdpProgram(vm, prio, tt.opt)
		if err != nil {
			t.Fatal(err)
		}
		if got := runXDP(t, prog, tt.frame); got != tt.want {
			t.Errorf("%s: redirected to %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestBE16(t *testing.T) {
	b := []byte{0x08, 0x06}
	if got, want := int32(binary.LittleEndian.Uint16(b)), be16(0x0806); got != want {
		t.Errorf("be16(0x0806) = %#x, a little-endian load of 08 06 is %#x", want, got)
	}
	if s := fmt.Sprint(be16(22)); s != fmt.Sprint(22<<8) {
		t.Errorf("be16(22) = %s", s)
	}
}
