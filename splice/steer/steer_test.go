package steer

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Verdicts as the test runs see them.
const (
	xdpRedirect = 4 // XDP_REDIRECT, what bpf_redirect returns in XDP
	tcRedirect  = 7 // TC_ACT_REDIRECT, what bpf_redirect returns in tc
)

// newHalf returns a kernel half with every hook loaded, or skips the test
// where BPF programs cannot be loaded (not root, no CAP_BPF).
func newHalf(t *testing.T, cfg Config) *Half {
	t.Helper()
	h, err := New(cfg)
	if errors.Is(err, os.ErrPermission) {
		t.Skipf("cannot create BPF maps here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	for hk := Hook(0); hk < numHooks; hk++ {
		if _, err := h.Entry(hk); err != nil {
			t.Fatalf("load %s: %v", hk, err)
		}
	}
	return h
}

// run runs hook's attached (entry) program on frame and returns its verdict.
func run(t *testing.T, h *Half, hook Hook, frame []byte) uint32 {
	t.Helper()
	p, err := h.Entry(hook)
	if err != nil {
		t.Fatal(err)
	}
	ret, err := p.Run(&ebpf.RunOptions{Data: frame, Repeat: 1})
	if err != nil {
		t.Fatalf("run %s on % x: %v", hook, frame, err)
	}
	return ret
}

func stats(t *testing.T, h *Half) Stats {
	t.Helper()
	s, err := h.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
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

func frag(b []byte) []byte { // marks an IPv4 packet as a non-first fragment
	b = append([]byte(nil), b...)
	b[14+6], b[14+7] = 0, 8
	return b
}

func ipv6(next byte, l4 []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	h[6] = next
	return append(h, l4...)
}

// tcp returns a TCP header with ports and flags (0x02 SYN, 0x10 ACK).
func tcp(src, dst uint16, flags byte) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b, src)
	binary.BigEndian.PutUint16(b[2:], dst)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

func pad(f []byte) []byte { // a frame padded to Ethernet's minimum
	if len(f) < 60 {
		f = append(f, make([]byte, 60-len(f))...)
	}
	return f
}

const ack, syn = 0x10, 0x02

// TestSteer checks where each kind of frame goes, per hook, and that
// candidates are counted as such: the matches of the old XDP program and
// tc filters, now in one program.
func TestSteer(t *testing.T) {
	icmp6 := func(typ byte) []byte { return ipv6(58, append([]byte{typ}, make([]byte, 23)...)) }
	tests := []struct {
		name     string
		outbound bool
		frame    []byte
		from     bool // from the VM: a candidate (priority tap)
		to       bool // to the VM: a candidate
		xdpOnly  bool // the kernel's skb test runner refuses IP frames shorter than their IP header
	}{
		{"arp", false, ether(0x0806, make([]byte, 28)), true, true, false},
		{"ipv4 tcp from 22", false, pad(ether(0x0800, ipv4(5, 6, tcp(22, 40000, ack)))), true, false, false},
		{"ipv4 tcp from 3389", false, pad(ether(0x0800, ipv4(5, 6, tcp(3389, 40000, ack)))), true, false, false},
		{"ipv4 tcp to 22", false, pad(ether(0x0800, ipv4(5, 6, tcp(40000, 22, syn)))), false, true, false},
		{"ipv4 tcp to 22, outbound", true, pad(ether(0x0800, ipv4(5, 6, tcp(40000, 22, syn)))), true, true, false},
		{"ipv4 tcp from 22, outbound", true, pad(ether(0x0800, ipv4(5, 6, tcp(22, 40000, ack)))), true, true, false},
		{"ipv4 tcp 80", true, pad(ether(0x0800, ipv4(5, 6, tcp(80, 40000, ack)))), false, false, false},
		{"ipv4 udp from 22", false, pad(ether(0x0800, ipv4(5, 17, tcp(22, 40000, 0)))), false, false, false},
		{"ipv4 options, tcp from 22", false, pad(ether(0x0800, ipv4(6, 6, tcp(22, 40000, ack)))), false, false, false},
		{"ipv4 fragment", false, frag(pad(ether(0x0800, ipv4(5, 6, tcp(22, 40000, ack))))), false, false, false},
		{"ipv6 tcp from 22", false, ether(0x86dd, ipv6(6, tcp(22, 40000, ack))), true, false, false},
		{"ipv6 tcp to 3389, outbound", true, ether(0x86dd, ipv6(6, tcp(40000, 3389, ack))), true, true, false},
		{"ipv6 hop-by-hop", false, ether(0x86dd, ipv6(0, tcp(22, 40000, ack))), false, false, false},
		{"ipv6 udp", false, ether(0x86dd, ipv6(17, tcp(22, 40000, 0))), false, false, false},
		{"neighbour solicitation", false, ether(0x86dd, icmp6(135)), true, true, false},
		{"router solicitation", false, ether(0x86dd, icmp6(133)), true, true, false},
		{"redirect", false, ether(0x86dd, icmp6(137)), true, true, false},
		{"echo request v6", false, ether(0x86dd, icmp6(128)), false, false, false},
		{"mld", false, ether(0x86dd, icmp6(143)), false, false, false},
		{"ethernet header only", false, ether(0x0800, nil), false, false, true},
		{"truncated ipv4 tcp", false, ether(0x0800, ipv4(5, 6, []byte{0, 22})), false, false, false},
		{"truncated ipv6", false, ether(0x86dd, make([]byte, 30)), false, false, true},
		{"vlan tagged", false, ether(0x8100, make([]byte, 60)), false, false, false},
	}
	for _, outbound := range []bool{false, true} {
		h := newHalf(t, Config{VMTap: 41, PrioTap: 42, Port: 43, BypassPorts: []uint16{22, 3389}, BypassOutbound: outbound})
		for _, tt := range tests {
			if tt.outbound && !outbound {
				continue
			}
			for _, hook := range []Hook{PortXDP, PortTC, NetTC} {
				if tt.xdpOnly && hook != PortXDP {
					continue
				}
				before := stats(t, h)
				got := run(t, h, hook, tt.frame)
				after := stats(t, h)
				d := hook.Dir()
				cand := tt.from
				if d == ToVM {
					cand = tt.to
				}
				if outbound {
					// A bypass port on either side makes a candidate both ways.
					cand = tt.from || tt.to
				}
				want := map[Hook]uint32{PortXDP: xdpRedirect, PortTC: tcRedirect, NetTC: tcOK}[hook]
				if got != want {
					t.Errorf("%s (outbound %v) at %s: verdict %d, want %d", tt.name, outbound, hook, got, want)
				}
				dp, dm := after[d][Priority]-before[d][Priority], after[d][Main]-before[d][Main]
				if cand && (dp != 1 || dm != 0) || !cand && (dp != 0 || dm != 1) {
					t.Errorf("%s (outbound %v) at %s: priority +%d, main +%d; candidate %v", tt.name, outbound, hook, dp, dm, cand)
				}
			}
		}
	}
}

// TestFallbackIdle: while the daemon lives, the fallback hook drops the
// bridge's copies and counts them as idle, not as kernel drops.
func TestFallbackIdle(t *testing.T) {
	h := newHalf(t, Config{VMTap: 41, PrioTap: 42, Port: 43, Fallback: 44, FailOpen: true})
	if got := run(t, h, FallbackTC, pad(ether(0x0800, ipv4(5, 17, tcp(1, 2, 0))))); got != tcShot {
		t.Errorf("fallback while alive: verdict %d, want %d", got, tcShot)
	}
	if s := stats(t, h); s[ToVM][Idle] != 1 || s[ToVM][FailOpen] != 0 {
		t.Errorf("counters %v", s[ToVM])
	}
}

// TestBackstop checks the GCRA buckets: a burst passes, the rest is
// dropped with the reason counted, candidates are never charged, and a
// class bucket is charged only for frames the aggregate admits.
func TestBackstop(t *testing.T) {
	udp := pad(ether(0x0800, ipv4(5, 17, tcp(5000, 6000, 0))))
	synF := pad(ether(0x0800, ipv4(5, 6, tcp(40000, 80, syn))))
	ackF := pad(ether(0x0800, ipv4(5, 6, tcp(40000, 80, ack))))
	ssh := pad(ether(0x0800, ipv4(5, 6, tcp(22, 40000, ack))))
	// A rate slow enough that no token comes back during the test.
	slow := func(burst float64) Ceiling { return Ceiling{PPS: 0.001, Burst: burst} }

	t.Run("aggregate", func(t *testing.T) {
		h := newHalf(t, Config{VMTap: 41, PrioTap: 42, BypassPorts: []uint16{22}})
		if err := h.SetBackstop(FromVM, Backstop{Aggregate: slow(5)}); err != nil {
			t.Fatal(err)
		}
		passed := 0
		for range 20 {
			if run(t, h, PortXDP, udp) == xdpRedirect {
				passed++
			}
		}
		for range 10 {
			if got := run(t, h, PortXDP, ssh); got != xdpRedirect {
				t.Fatalf("ssh frame: verdict %d", got)
			}
		}
		s := stats(t, h)
		if passed != 5 || s[FromVM][Main] != 5 || s[FromVM][DropAggregate] != 15 || s[FromVM][Priority] != 10 {
			t.Errorf("passed %d; counters %v", passed, s[FromVM])
		}
		if s[ToVM] != ([numCounters]uint64{}) {
			t.Errorf("to-VM counters moved: %v", s[ToVM])
		}
		// To the VM: its own bucket.
		for range 3 {
			if got := run(t, h, NetTC, udp); got != tcOK {
				t.Errorf("to the VM with no backstop: verdict %d", got)
			}
		}
		if err := h.SetBackstop(ToVM, Backstop{Aggregate: slow(1)}); err != nil {
			t.Fatal(err)
		}
		run(t, h, NetTC, udp)
		if got := run(t, h, NetTC, udp); got != tcShot {
			t.Errorf("to the VM beyond the burst: verdict %d", got)
		}
		if d := stats(t, h).Drops(ToVM); d["backstop"] != 1 || d["class_backstop"] != 0 || d["fail_closed"] != 0 {
			t.Errorf("to-VM drops %v", d)
		}
	})

	t.Run("class", func(t *testing.T) {
		h := newHalf(t, Config{VMTap: 41, PrioTap: 42})
		var b Backstop
		b.Classes[ClassSyn] = slow(3)
		if err := h.SetBackstop(FromVM, b); err != nil {
			t.Fatal(err)
		}
		for range 10 {
			run(t, h, PortTC, synF)
		}
		for range 10 {
			if got := run(t, h, PortTC, ackF); got != tcRedirect {
				t.Errorf("tcp beside a syn flood: verdict %d", got)
			}
		}
		s := stats(t, h)
		if s[FromVM][Main] != 13 || s[FromVM][DropClass] != 7 || s[FromVM][DropAggregate] != 0 {
			t.Errorf("counters %v", s[FromVM])
		}
	})

	t.Run("both or neither", func(t *testing.T) {
		h := newHalf(t, Config{VMTap: 41, PrioTap: 42})
		b := Backstop{Aggregate: slow(2)}
		b.Classes[ClassUDP] = slow(3)
		if err := h.SetBackstop(FromVM, b); err != nil {
			t.Fatal(err)
		}
		// Two UDP frames use the aggregate's burst; the next are refused
		// by the aggregate and must leave the UDP bucket uncharged.
		for range 6 {
			run(t, h, PortXDP, udp)
		}
		// Free the aggregate: the UDP bucket still has one frame left.
		b.Aggregate = Ceiling{}
		if err := h.SetBackstop(FromVM, b); err != nil {
			t.Fatal(err)
		}
		ok := 0
		for range 3 {
			if run(t, h, PortXDP, udp) == xdpRedirect {
				ok++
			}
		}
		s := stats(t, h)
		if ok != 1 || s[FromVM][DropAggregate] != 4 || s[FromVM][DropClass] != 2 {
			t.Errorf("after the aggregate was lifted %d passed; counters %v", ok, s[FromVM])
		}
	})

	t.Run("rate", func(t *testing.T) {
		// 1000 pps, burst 1: frames 1 ms apart pass, frames at once do not.
		h := newHalf(t, Config{VMTap: 41, PrioTap: 42})
		if err := h.SetBackstop(FromVM, Backstop{Aggregate: Ceiling{PPS: 1000, Burst: 1}}); err != nil {
			t.Fatal(err)
		}
		if run(t, h, PortXDP, udp) != xdpRedirect || run(t, h, PortXDP, udp) != xdpDrop {
			t.Fatal("burst 1: want one pass, then a drop")
		}
		time.Sleep(3 * time.Millisecond)
		if got := run(t, h, PortXDP, udp); got != xdpRedirect {
			t.Errorf("3 ms later: verdict %d", got)
		}
	})
}

// TestFailPath checks what each hook does when the daemon is gone (its
// liveness slot empty) or stale, with fail open and closed.
func TestFailPath(t *testing.T) {
	udp := pad(ether(0x0800, ipv4(5, 17, tcp(5000, 6000, 0))))
	for _, open := range []bool{true, false} {
		want := map[Hook]uint32{PortXDP: xdpDrop, PortTC: tcShot, NetTC: tcOK, FallbackTC: tcShot}
		if open {
			want = map[Hook]uint32{PortXDP: xdpPass, PortTC: tcRedirect, NetTC: tcOK, FallbackTC: tcRedirect}
		}
		t.Run("stale heartbeat", func(t *testing.T) {
			h := newHalf(t, Config{VMTap: 41, PrioTap: 42, Port: 43, Fallback: 44, FailOpen: open})
			// Not armed: an old heartbeat is not stale.
			if err := h.Maps().Heartbeat.Put(uint32(0), Now()-uint64(2*time.Second)); err != nil {
				t.Fatal(err)
			}
			if got := run(t, h, PortXDP, udp); got != xdpRedirect {
				t.Fatalf("before the first beat: verdict %d, want the main path", got)
			}
			if err := h.Beat(Now()-uint64(2*time.Second), time.Second); err != nil {
				t.Fatal(err)
			}
			for hook, w := range want {
				if got := run(t, h, hook, udp); got != w {
					t.Errorf("open %v, %s: verdict %d, want %d", open, hook, got, w)
				}
			}
			s := stats(t, h)
			if s[FromVM][Stale] != 2 || s[ToVM][Stale] != 2 || s[FromVM][Main] != 1 {
				t.Errorf("stale counters %d %d", s[FromVM][Stale], s[ToVM][Stale])
			}
			if err := h.Beat(Now(), time.Second); err != nil {
				t.Fatal(err)
			}
			if got := run(t, h, PortXDP, udp); got != xdpRedirect {
				t.Errorf("after a fresh beat: verdict %d", got)
			}
		})
		t.Run("daemon gone", func(t *testing.T) {
			h := newHalf(t, Config{VMTap: 41, PrioTap: 42, Port: 43, Fallback: 44, FailOpen: open})
			// What the kernel does to the alive map when the daemon's
			// liveness socket closes.
			if err := h.maps.Alive.Delete(uint32(0)); err != nil {
				t.Fatal(err)
			}
			for hook, w := range want {
				if got := run(t, h, hook, udp); got != w {
					t.Errorf("open %v, %s: verdict %d, want %d", open, hook, got, w)
				}
			}
			s := stats(t, h)
			c := FailClosed
			if open {
				c = FailOpen
			}
			// NetTC passes to the net tap's queue either way, and counts
			// only with fail open.
			wantTo := uint64(1)
			if open {
				wantTo = 2
			}
			if s[FromVM][c] != 2 || s[ToVM][c] != wantTo || s[FromVM][Main] != 0 {
				t.Errorf("open %v: counters from %v to %v", open, s[FromVM], s[ToVM])
			}
		})
	}
}

// TestAdopt plays a daemon's death and a new daemon's takeover: the
// programs stay (as attached ones do) and fail open once the old daemon's
// socket is out of the alive map; Adopt finds every map through them,
// keeps the counters and the buckets, and puts its own socket in. A second
// Adopt while the first holds the half is refused.
func TestAdopt(t *testing.T) {
	cfg := Config{VMTap: 41, PrioTap: 42, Port: 43, Fallback: 44, FailOpen: true, BypassPorts: []uint16{22}}
	h := newHalf(t, cfg)
	udp := pad(ether(0x0800, ipv4(5, 17, tcp(5000, 6000, 0))))
	if err := h.SetBackstop(FromVM, Backstop{Aggregate: Ceiling{PPS: 0.001, Burst: 2}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		run(t, h, PortTC, udp)
	}
	// The "attachments": clones of the entry programs outlive the daemon.
	ids := map[Hook]ebpf.ProgramID{}
	for _, hook := range []Hook{PortTC, NetTC, FallbackTC} {
		p, _ := h.Entry(hook)
		c, err := p.Clone()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		info, err := c.Info()
		if err != nil {
			t.Fatal(err)
		}
		ids[hook], _ = info.ID()
	}
	xdp, _ := h.Entry(PortXDP)
	xdpClone, _ := xdp.Clone()
	defer xdpClone.Close()
	h.Close() // the daemon dies

	// The entry programs fail open at once.
	if got, _ := xdpClone.Run(&ebpf.RunOptions{Data: udp}); got != xdpPass {
		t.Errorf("dead daemon: verdict %d, want pass", got)
	}

	cfg.PrioTap = 52 // the priority tap was re-created
	a, err := Adopt(cfg, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s := stats(t, a)
	if s[FromVM][Main] != 2 || s[FromVM][DropAggregate] != 1 || s[FromVM][FailOpen] != 1 {
		t.Errorf("counters after adoption: %v", s[FromVM])
	}
	if got := run(t, a, PortTC, udp); got != tcShot {
		t.Errorf("the bucket's state was lost: verdict %d", got)
	}
	if got := run(t, a, PortTC, pad(ether(0x0800, ipv4(5, 6, tcp(22, 1000, ack))))); got != tcRedirect {
		t.Errorf("ssh after adoption: verdict %d", got)
	}
	if _, err := Adopt(cfg, ids); !errors.Is(err, ErrHeld) {
		t.Errorf("second adoption: %v, want ErrHeld", err)
	}
	if got := a.Hooks(); len(got) != 3 {
		t.Errorf("hooks %v", got)
	}
}

// TestVerifierLog: a program the verifier refuses reports the log's end.
func TestVerifierLog(t *testing.T) {
	newHalf(t, Config{}) // skips where nothing can load
	// R0 is never set.
	spec := &ebpf.ProgramSpec{Name: "bad", Type: ebpf.XDP, License: "MIT", Instructions: asm.Instructions{asm.Return()}}
	p, err := loadSpec(spec)
	if err == nil {
		p.Close()
		t.Fatal("the verifier took a program that returns an unset R0")
	}
	if msg := err.Error(); !strings.Contains(msg, "verifier refused") || !strings.Contains(msg, "R0 !read_ok") {
		t.Errorf("error %q lacks the verifier's log", msg)
	}
}
