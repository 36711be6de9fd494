package classify

import (
	"net/netip"
	"testing"
	"time"
)

// pair is the two Classifiers of one port, sharing a table.
type pair struct {
	t        *testing.T
	table    *ConnTable
	from, to *Classifier
	now      int64
}

func newPair(t *testing.T, capacity int, cfg Config) *pair {
	t.Helper()
	p := &pair{t: t, table: NewConnTable(capacity), now: int64(time.Hour)}
	var err error
	if p.from, err = New(FromVM, cfg, p.table); err != nil {
		t.Fatal(err)
	}
	if p.to, err = New(ToVM, cfg, p.table); err != nil {
		t.Fatal(err)
	}
	return p
}

// step is one frame and the class it must get.
type step struct {
	name  string
	dir   Direction
	frame []byte
	want  Class
	after time.Duration // advance the clock by this much first
}

func (p *pair) run(steps []step) {
	p.t.Helper()
	for i, s := range steps {
		p.now += int64(s.after)
		c := p.from
		if s.dir == ToVM {
			c = p.to
		}
		got := c.Classify(s.frame, p.now)
		if got != s.want {
			p.t.Fatalf("step %d (%s, %v): got %v, want %v (table len %d)", i, s.name, s.dir, got, s.want, p.table.Len())
		}
		if msg := consistent(got, c.Frame()); msg != "" {
			p.t.Fatalf("step %d (%s): %s", i, s.name, msg)
		}
	}
}

func TestBypassInbound(t *testing.T) {
	p := newPair(t, 64, Config{})
	other := func(flags uint8) []byte { return fromVM(0x0800, tcp4(vm4, 22, rem4b, 40000, flags)) }
	p.run([]step{
		{"vm from 22 to unknown remote", FromVM, sshOut(fACK), TCP, 0},
		{"vm syn-ack from 22 unknown", FromVM, sshOut(fSYNACK), TCP, 0},
		{"syn to 22", ToVM, sshIn(fSYN), Bypass, 0},
		{"vm syn-ack", FromVM, sshOut(fSYNACK), Bypass, 0},
		{"ack", ToVM, sshIn(fACK), Bypass, 0},
		{"vm data", FromVM, sshOut(fPSHACK), Bypass, 0},
		{"vm to another remote", FromVM, other(fPSHACK), TCP, 0},
		{"vm to the remote's other port", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, 40001, fPSHACK)), TCP, 0},
		{"vm from another port to the remote", FromVM, fromVM(0x0800, tcp4(vm4, 23, rem4, 40000, fPSHACK)), TCP, 0},
		{"vm bare syn from 22 to the remote", FromVM, sshOut(fSYN), TCPSyn, 0},
		{"non-bypass port to vm", ToVM, toVM(0x0800, tcp4(rem4, 40000, vm4, 80, fSYN)), TCPSyn, 0},
		{"rdp syn", ToVM, toVM(0x0800, tcp4(rem4, 40002, vm4, 3389, fSYN)), Bypass, 0},
		{"rst from remote", ToVM, sshIn(fRST | fACK), Bypass, 0},
		{"vm after rst", FromVM, sshOut(fPSHACK), TCP, 0},
		{"rst not in table", ToVM, sshIn(fRST), TCP, 0},
	})
	if p.table.Len() != 1 { // the rdp half-open entry
		t.Fatalf("Len = %d, want 1", p.table.Len())
	}
}

func TestBypassJoinEstablished(t *testing.T) {
	p := newPair(t, 64, Config{})
	p.run([]step{
		{"vm data before any remote frame", FromVM, sshOut(fPSHACK), TCP, 0},
		{"remote ack joins", ToVM, sshIn(fACK), Bypass, 0},
		{"vm data", FromVM, sshOut(fPSHACK), Bypass, 0},
		{"established survives 1h59m", FromVM, sshOut(fPSHACK), Bypass, 119 * time.Minute},
		{"expired after 2h idle", FromVM, sshOut(fPSHACK), TCP, 2*time.Hour + 1},
		{"remote rejoins", ToVM, sshIn(fPSHACK), Bypass, 0},
		{"vm again", FromVM, sshOut(fPSHACK), Bypass, 0},
		// A SYN-ACK or a bare RST does not join.
		{"syn-ack to 22 does not join", ToVM, toVM(0x0800, tcp4(rem4b, 1, vm4, 22, fSYNACK)), TCP, 0},
		{"rst to 22 does not join", ToVM, toVM(0x0800, tcp4(rem4b, 1, vm4, 22, fRST|fACK)), TCP, 0},
	})
}

func TestBypassExpiry(t *testing.T) {
	p := newPair(t, 64, Config{})
	p.run([]step{
		{"syn", ToVM, sshIn(fSYN), Bypass, 0},
		{"vm syn-ack within 30s", FromVM, sshOut(fSYNACK), Bypass, 29 * time.Second},
		{"vm syn-ack retransmit after 30s of silence", FromVM, sshOut(fSYNACK), TCP, 30*time.Second + 1},
		{"syn again", ToVM, sshIn(fSYN), Bypass, 0},
		{"vm syn-ack", FromVM, sshOut(fSYNACK), Bypass, 0},
		{"remote ack: established", ToVM, sshIn(fACK), Bypass, 0},
		{"vm after 1h", FromVM, sshOut(fPSHACK), Bypass, time.Hour},
		{"clock going back does not expire", FromVM, sshOut(fPSHACK), Bypass, -time.Minute},
	})
	// A half-open entry that only ever saw SYNs from a spoofed source expires.
	p.run([]step{{"spoofed syn", ToVM, toVM(0x0800, tcp4(rem4b, 9, vm4, 22, fSYN)), Bypass, 0}})
	if n := p.table.Sweep(p.now + int64(31*time.Second)); n != 1 {
		t.Fatalf("Sweep removed %d, want 1 (the half-open entry)", n)
	}
	if p.table.Len() != 1 {
		t.Fatalf("Len = %d after sweep, want 1", p.table.Len())
	}
	if n := p.table.Sweep(p.now + int64(3*time.Hour)); n != 1 || p.table.Len() != 0 {
		t.Fatalf("Sweep removed %d, Len %d", n, p.table.Len())
	}
}

func TestBypassIPv6(t *testing.T) {
	p := newPair(t, 64, Config{})
	in := func(flags uint8) []byte { return toVM(0x86dd, tcp6(rem6, 40000, vm6, 22, flags)) }
	out := func(flags uint8) []byte { return fromVM(0x86dd, tcp6(vm6, 22, rem6, 40000, flags)) }
	// An IPv4 session must not let the VM send IPv6 frames with the
	// IPv4-mapped forms of the same addresses.
	mappedVM, mappedRem := netip.AddrFrom16(vm4.As16()), netip.AddrFrom16(rem4.As16())
	p.run([]step{
		{"syn", ToVM, in(fSYN), Bypass, 0},
		{"vm syn-ack", FromVM, out(fSYNACK), Bypass, 0},
		{"ipv4 session", ToVM, sshIn(fACK), Bypass, 0},
		{"vm ipv4", FromVM, sshOut(fACK), Bypass, 0},
		{"vm ipv6 with mapped addresses", FromVM, fromVM(0x86dd, tcp6(mappedVM, 22, mappedRem, 40000, fACK)), TCP, 0},
		{"with hop-by-hop", FromVM, fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6HBH}}.bytes(tcpSeg(22, 40000, fACK, nil, nil))), Bypass, 0},
		// Fragments never bypass, even the first one.
		{"first fragment", FromVM, fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6Frag}}.bytes(tcpSeg(22, 40000, fACK, nil, nil))), TCP, 0},
		{"ipv4 first fragment syn to 22", ToVM, toVM(0x0800, v4{src: rem4, dst: vm4, proto: 6, mf: true}.bytes(tcpSeg(1, 22, fSYN, nil, nil))), TCPSyn, 0},
	})
}

func TestBypassVLAN(t *testing.T) {
	p := newPair(t, 64, Config{})
	p.run([]step{
		{"syn tagged", ToVM, toVM(0x0800, tcp4(rem4, 40000, vm4, 22, fSYN), 10, 20), Bypass, 0},
		{"vm reply tagged", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, 40000, fSYNACK), 10, 20), Bypass, 0},
	})
}

func TestBypassPortsConfig(t *testing.T) {
	t.Run("no bypass", func(t *testing.T) {
		p := newPair(t, 64, Config{BypassPorts: []uint16{}})
		p.run([]step{
			{"syn to 22", ToVM, sshIn(fSYN), TCPSyn, 0},
			{"ack to 22", ToVM, sshIn(fACK), TCP, 0},
			{"vm", FromVM, sshOut(fACK), TCP, 0},
		})
		if p.table.Len() != 0 {
			t.Fatal("table used")
		}
	})
	t.Run("custom port", func(t *testing.T) {
		p := newPair(t, 64, Config{BypassPorts: []uint16{2222}})
		p.run([]step{
			{"syn to 22", ToVM, sshIn(fSYN), TCPSyn, 0},
			{"syn to 2222", ToVM, toVM(0x0800, tcp4(rem4, 1, vm4, 2222, fSYN)), Bypass, 0},
			{"vm from 2222", FromVM, fromVM(0x0800, tcp4(vm4, 2222, rem4, 1, fSYNACK)), Bypass, 0},
		})
	})
}

func TestBypassOutbound(t *testing.T) {
	vmSyn := fromVM(0x0800, tcp4(vm4, 50000, rem4, 22, fSYN))
	remSynAck := toVM(0x0800, tcp4(rem4, 22, vm4, 50000, fSYNACK))
	vmAck := fromVM(0x0800, tcp4(vm4, 50000, rem4, 22, fACK))
	t.Run("off", func(t *testing.T) {
		p := newPair(t, 64, Config{})
		p.run([]step{
			{"vm syn to 22", FromVM, vmSyn, TCPSyn, 0},
			{"remote syn-ack from 22", ToVM, remSynAck, TCP, 0},
			{"vm ack to 22", FromVM, vmAck, TCP, 0},
			{"remote data from 22", ToVM, toVM(0x0800, tcp4(rem4, 22, vm4, 50000, fPSHACK)), TCP, 0},
		})
	})
	t.Run("on", func(t *testing.T) {
		p := newPair(t, 64, Config{BypassOutbound: true})
		p.run([]step{
			{"vm ack to 22 not in table", FromVM, vmAck, TCP, 0},
			{"vm syn to 22", FromVM, vmSyn, Bypass, 0},
			{"remote syn-ack from 22", ToVM, remSynAck, Bypass, 0},
			{"vm ack", FromVM, vmAck, Bypass, 0},
			{"remote bare syn from 22", ToVM, toVM(0x0800, tcp4(rem4, 22, vm4, 50000, fSYN)), TCPSyn, 0},
			{"vm to another host's 22 without syn", FromVM, fromVM(0x0800, tcp4(vm4, 50000, rem4b, 22, fACK)), TCP, 0},
			{"pre-existing session: remote data joins", ToVM, toVM(0x0800, tcp4(rem4b, 22, vm4, 50001, fPSHACK)), Bypass, 0},
			{"vm reply", FromVM, fromVM(0x0800, tcp4(vm4, 50001, rem4b, 22, fACK)), Bypass, 0},
		})
	})
	t.Run("direction bit", func(t *testing.T) {
		// Identical endpoints, vm:22 <-> rem:22. An outbound entry (the VM
		// connected) must not make the VM's frames pass as an inbound
		// connection's, and an inbound entry not as an outbound one's.
		table := NewConnTable(64)
		fromOut, _ := New(FromVM, Config{BypassPorts: []uint16{22}, BypassOutbound: true}, table)
		fromIn, _ := New(FromVM, Config{BypassPorts: []uint16{22}}, table)
		toIn, _ := New(ToVM, Config{BypassPorts: []uint16{22}}, table)
		f := func(flags uint8) []byte { return fromVM(0x0800, tcp4(vm4, 22, rem4, 22, flags)) }
		if got := fromOut.Classify(f(fSYN), 0); got != Bypass {
			t.Fatalf("outbound syn: %v", got)
		}
		if got := fromIn.Classify(f(fACK), 0); got != TCP {
			t.Fatalf("outbound entry let an inbound-only classifier bypass: %v", got)
		}
		if got := toIn.Classify(toVM(0x0800, tcp4(rem4, 22, vm4, 22, fSYNACK)), 0); got != TCP {
			t.Fatalf("outbound entry matched an inbound lookup: %v", got)
		}
		var in, out connKey
		in.set(vm4, 22, rem4, 22, false)
		out.set(vm4, 22, rem4, 22, true)
		if in == out {
			t.Fatal("inbound and outbound keys are equal")
		}
	})
	t.Run("syn budget", func(t *testing.T) {
		p := newPair(t, 1024, Config{BypassOutbound: true})
		bypassed := 0
		for i := range 100 {
			dst := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
			if p.from.Classify(fromVM(0x0800, tcp4(vm4, 50000, dst, 22, fSYN)), p.now) == Bypass {
				bypassed++
			}
		}
		if bypassed != OutboundSYNBudget {
			t.Fatalf("%d of 100 scan SYNs bypassed in one second, want %d", bypassed, OutboundSYNBudget)
		}
		// A retransmitted SYN of an admitted connection still bypasses.
		if got := p.from.Classify(fromVM(0x0800, tcp4(vm4, 50000, netip.AddrFrom4([4]byte{203, 0, 113, 0}), 22, fSYN)), p.now); got != Bypass {
			t.Fatalf("retransmitted syn: %v", got)
		}
		p.now += int64(time.Second)
		if got := p.from.Classify(fromVM(0x0800, tcp4(vm4, 50000, rem4, 22, fSYN)), p.now); got != Bypass {
			t.Fatalf("syn a second later: %v", got)
		}
	})
}

func TestConnTableBounded(t *testing.T) {
	for _, capacity := range []int{1, 5, 8, 64, 1000} {
		p := newPair(t, capacity, Config{})
		for i := range 3 * capacity {
			src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
			if got := p.to.Classify(toVM(0x0800, tcp4(src, 40000, vm4, 22, fSYN)), p.now); got != Bypass {
				t.Fatalf("cap %d syn %d: %v", capacity, i, got)
			}
			if p.table.Len() > capacity {
				t.Fatalf("cap %d: Len %d", capacity, p.table.Len())
			}
		}
		// Every insert either filled a free slot or evicted one.
		if got := uint64(p.table.Len()) + p.table.Evictions(); got != uint64(3*capacity) {
			t.Fatalf("cap %d: Len %d + Evictions %d != %d inserts", capacity, p.table.Len(), p.table.Evictions(), 3*capacity)
		}
		if p.table.Evictions() < uint64(2*capacity) {
			t.Fatalf("cap %d: %d evictions", capacity, p.table.Evictions())
		}
		if p.table.Cap() != capacity {
			t.Fatalf("Cap = %d", p.table.Cap())
		}
	}
	if NewConnTable(0).Cap() != 1 {
		t.Fatal("NewConnTable(0) is not of capacity 1")
	}
}

// TestConnTableSynFloodSparesEstablished: with the whole table in one probe
// window, a SYN flood evicts half-open entries, not established sessions.
func TestConnTableSynFloodSparesEstablished(t *testing.T) {
	p := newPair(t, probeWindow, Config{})
	for i := range 4 {
		port := uint16(41000 + i)
		p.run([]step{
			{"syn", ToVM, toVM(0x0800, tcp4(rem4, port, vm4, 22, fSYN)), Bypass, 0},
			{"syn-ack", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, port, fSYNACK)), Bypass, 0},
			{"ack", ToVM, toVM(0x0800, tcp4(rem4, port, vm4, 22, fACK)), Bypass, time.Millisecond},
		})
	}
	for i := range 1000 {
		p.now++
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		p.to.Classify(toVM(0x0800, tcp4(src, 1234, vm4, 22, fSYN)), p.now)
	}
	if p.table.Len() != probeWindow || p.table.Evictions() != 1000-4 {
		t.Fatalf("Len %d Evictions %d", p.table.Len(), p.table.Evictions())
	}
	for i := range 4 {
		port := uint16(41000 + i)
		if got := p.from.Classify(fromVM(0x0800, tcp4(vm4, 22, rem4, port, fPSHACK)), p.now); got != Bypass {
			t.Fatalf("established session %d evicted by the flood: %v", i, got)
		}
	}
	// When the window holds only established sessions, the least recently
	// seen one goes.
	q := newPair(t, 2, Config{})
	for i := range 3 {
		port := uint16(42000 + i)
		q.run([]step{
			{"join", ToVM, toVM(0x0800, tcp4(rem4, port, vm4, 22, fACK)), Bypass, time.Second},
			{"vm", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, port, fACK)), Bypass, 0},
		})
	}
	q.run([]step{
		{"oldest evicted", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, 42000, fACK)), TCP, 0},
		{"newest kept", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, 42002, fACK)), Bypass, 0},
		{"middle kept", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4, 42001, fACK)), Bypass, 0},
	})
}
