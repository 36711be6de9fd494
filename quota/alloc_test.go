package quota

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestZeroAllocs asserts that the decision path allocates nothing, in
// every zone, and that neither does closing intervals.
func TestZeroAllocs(t *testing.T) {
	c := small()
	c.Commit = 8_000_000
	c.BurstCeiling = 0
	c.Direction = BillMax
	c.Exponent = 2 // math.Pow in the zone
	a := mustNew(t, c, t0)
	rnd := NewRand(1)
	now := t0
	cases := []struct {
		name string
		f    func()
	}{
		{"pass", func() { a.Admit(ToVM, 64, false, now, rnd.Uint32()) }},
		{"bypass", func() { a.Admit(FromVM, 1522, true, now, rnd.Uint32()) }},
		{"zone and cap", func() {
			for range 1000 {
				a.Admit(FromVM, 1500, false, now, rnd.Uint32())
			}
		}},
		{"next interval", func() {
			now = now.Add(time.Second)
			a.Admit(ToVM, 1500, false, now, rnd.Uint32())
		}},
		{"fluid", func() { a.AdmitFluid(ToVM, 1_000_000, now) }},
		{"tick", func() {
			now = now.Add(3 * time.Second)
			a.Tick(now)
		}},
		{"counters", func() { _ = a.Counters(ToVM) }},
	}
	for _, tc := range cases {
		if n := testing.AllocsPerRun(200, tc.f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", tc.name, n)
		}
	}
	// And with the threshold selection over a full history of gains.
	h := mustNew(t, func() Config { c := small(); c.BurstCeiling = 0; return c }(), t0)
	for s := range 300 {
		h.AdmitFluid(ToVM, int64(500+(s*7919)%5000), at(float64(s)+0.5))
	}
	s := 300.5
	if n := testing.AllocsPerRun(100, func() {
		s++
		h.AdmitFluid(ToVM, int64(500+int(s*7919)%5000), at(s))
	}); n != 0 {
		t.Errorf("interval close with history: %v allocations per run", n)
	}
}

// BenchmarkAdmit measures one decision, serial and with every goroutine
// of the machine deciding for the same tenant (both directions of a
// billed-max tenant, and the contended case: one direction).
func BenchmarkAdmit(b *testing.B) {
	for _, bc := range []struct {
		name     string
		billed   Billed
		parallel bool
		dirs     int // directions the goroutines spread over
	}{
		{"serial", BillMax, false, 1},
		{"parallel/one direction", BillMax, true, 1},
		{"parallel/two directions", BillMax, true, 2},
		{"parallel/sum", BillSum, true, 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := Defaults("bench", 10_000_000_000) // 10 Gbit/s: the zone is never reached
			c.Direction = bc.billed
			a := mustNew(b, c, t0)
			b.ReportAllocs()
			if !bc.parallel {
				rnd := NewRand(1)
				now := t0
				for i := 0; b.Loop(); i++ {
					a.Admit(ToVM, 1500, false, now.Add(time.Duration(i)), rnd.Uint32())
				}
			} else {
				var seq atomic.Uint64
				b.RunParallel(func(pb *testing.PB) {
					g := seq.Add(1) // one Rand and one direction per goroutine
					rnd := NewRand(g)
					d := Dir(g % uint64(bc.dirs))
					i := 0
					for pb.Next() {
						i++
						a.Admit(d, 1500, false, t0.Add(time.Duration(i)), rnd.Uint32())
					}
				})
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/decision")
		})
	}
	b.Run("soft zone", func(b *testing.B) {
		c := Defaults("bench", 100_000_000)
		c.Direction = BillToVM
		c.Exponent = 2
		a := mustNew(b, c, t0)
		l := a.route[ToVM]
		rnd := NewRand(1)
		b.ReportAllocs()
		for b.Loop() {
			l.normal = l.softB + (l.quota-l.softB)/2
			a.Admit(ToVM, 1500, false, t0, rnd.Uint32())
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/decision")
	})
}
