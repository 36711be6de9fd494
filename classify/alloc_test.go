package classify

import (
	"sync"
	"testing"
)

// TestClassifyAllocs asserts zero allocations per Classify for a well-formed
// frame of every class, in both directions, with bypass on.
func TestClassifyAllocs(t *testing.T) {
	p := newPair(t, 1024, Config{BypassOutbound: true})
	seen := map[Direction]map[Class]bool{FromVM: {}, ToVM: {}}
	try := func(name string, dir Direction, frame []byte) {
		t.Helper()
		c := p.from
		if dir == ToVM {
			c = p.to
		}
		cl := c.Classify(frame, p.now)
		seen[dir][cl] = true
		if a := testing.AllocsPerRun(200, func() { c.Classify(frame, p.now) }); a != 0 {
			t.Errorf("%s %v (%v): %v allocs per Classify", dir, name, cl, a)
		}
	}
	for _, tc := range frameCases(t) {
		for _, dir := range []Direction{FromVM, ToVM} {
			try(tc.name, dir, tc.frame)
		}
	}
	// Bypass, both directions, IPv4 and IPv6 with hop-by-hop.
	try("ssh syn", ToVM, sshIn(fSYN))
	try("ssh reply", FromVM, sshOut(fSYNACK))
	try("ssh ack", ToVM, sshIn(fACK))
	in6 := toVM(0x86dd, v6{src: rem6, dst: vm6, next: 6, exts: []ext{ipv6HBH}}.bytes(tcpSeg(40000, 22, fACK, nil, nil)))
	out6 := fromVM(0x86dd, v6{src: vm6, dst: rem6, next: 6, exts: []ext{ipv6HBH}}.bytes(tcpSeg(22, 40000, fACK, nil, nil)))
	try("ssh6 hbh join", ToVM, in6)
	try("ssh6 hbh reply", FromVM, out6)
	try("outbound syn", FromVM, fromVM(0x0800, tcp4(vm4, 50000, rem4, 22, fSYN)))
	try("outbound reply", ToVM, toVM(0x0800, tcp4(rem4, 22, vm4, 50000, fSYNACK)))
	try("tcp from 22 to unknown", FromVM, fromVM(0x0800, tcp4(vm4, 22, rem4b, 1, fACK)))

	for _, dir := range []Direction{FromVM, ToVM} {
		for cl := range NumClasses {
			if !seen[dir][cl] {
				t.Errorf("no %v frame of class %v was measured", dir, cl)
			}
		}
	}
}

// TestConcurrentDirections runs the two Classifiers of a port in two
// goroutines on one ConnTable, as forward does; run with -race.
func TestConcurrentDirections(t *testing.T) {
	const capacity, conns, rounds = 256, 512, 20
	p := newPair(t, capacity, Config{BypassOutbound: true})
	in := make([][]byte, conns)
	out := make([][]byte, conns)
	for i := range conns {
		port := uint16(10000 + i)
		flags := fACK
		if i%3 == 0 {
			flags = fSYN
		}
		in[i] = toVM(0x0800, tcp4(rem4, port, vm4, 22, flags))
		out[i] = fromVM(0x0800, tcp4(vm4, 22, rem4, port, fPSHACK))
	}
	var wg sync.WaitGroup
	var counts [2][NumClasses]int
	work := func(c *Classifier, frames [][]byte, counts *[NumClasses]int) {
		defer wg.Done()
		for r := range rounds {
			for i, fr := range frames {
				cl := c.Classify(fr, int64(r*conns+i))
				counts[cl]++
				if msg := consistent(cl, c.Frame()); msg != "" {
					t.Error(msg)
					return
				}
			}
		}
	}
	wg.Add(3)
	go work(p.to, in, &counts[ToVM])
	go work(p.from, out, &counts[FromVM])
	go func() {
		defer wg.Done()
		for range 50 {
			p.table.Sweep(int64(rounds * conns))
			if n := p.table.Len(); n > capacity {
				t.Errorf("Len %d > capacity", n)
			}
		}
	}()
	wg.Wait()
	if counts[ToVM][Bypass] != rounds*conns {
		t.Errorf("ToVM: %v, want every frame Bypass", counts[ToVM])
	}
	if counts[FromVM][Bypass] == 0 || counts[FromVM][Bypass]+counts[FromVM][TCP] != rounds*conns {
		t.Errorf("FromVM: %v", counts[FromVM])
	}
	if p.table.Evictions() == 0 {
		t.Error("no evictions with twice as many connections as slots")
	}
}
