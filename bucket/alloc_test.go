package bucket

import (
	"testing"
	"time"
)

// Checking and charging a frame runs once per frame and must not allocate.
// Admit is called with literal variadic arguments, as the forwarder calls
// it, so a variadic slice that escaped would show up here as an allocation.
func TestZeroAllocs(t *testing.T) {
	both := Limits{PPS: 1e6, BytesPerSec: 1e9}
	newB := func(l Limits) *Budget { return mustNew(t, l, t0) }
	agg, class, port := newB(both), newB(Limits{BytesPerSec: 1e8}), newB(Limits{PPS: 1e5})
	tight := newB(Limits{PPS: 1, BurstPackets: 1, BytesPerSec: 2000, BurstBytes: 2000})
	blocked := newB(Limits{Block: true})
	unlimited := newB(Limits{})

	now := t0
	step := func() int64 { now = at(now, time.Microsecond); return now }
	for _, tt := range []struct {
		name string
		f    func()
	}{
		{"Fits", func() { agg.Fits(step(), 1500) }},
		{"Fits/unlimited", func() { unlimited.Fits(step(), 1500) }},
		{"Take", func() { agg.Take(step(), 1500) }},
		{"FitsN/refused", func() { tight.FitsN(step(), 2, 3000) }},
		{"TakeN", func() { agg.TakeN(step(), 4, 6000) }},
		{"SetLimits", func() { _ = port.SetLimits(Limits{PPS: 1e5, BytesPerSec: 1e7}, step()) }},
		{"Fill", func() { agg.Fill(step()) }},
		{"Admit/1", func() { Admit(step(), 1500, agg) }},
		{"Admit/2", func() { Admit(step(), 1500, agg, class) }},
		{"Admit/3", func() { Admit(step(), 1500, agg, class, port) }},
		{"Admit/3 with nil", func() { Admit(step(), 1500, agg, nil, port) }},
		{"Admit/refused", func() { Admit(step(), 1500, agg, class, tight) }},
		{"Admit/blocked", func() { Admit(step(), 1500, agg, blocked) }},
	} {
		if n := testing.AllocsPerRun(1000, tt.f); n != 0 {
			t.Errorf("%s: %v allocations per call; want 0", tt.name, n)
		}
	}
}

// BenchmarkAdmit measures the per-frame cost of policing: one budget (a
// port's aggregate) and two (aggregate and class), both dimensions limited.
// The clock advances so that every frame is admitted and charged, the
// expensive path; the refused path is measured separately.
func BenchmarkAdmit(b *testing.B) {
	const frame = 1500
	limits := Limits{PPS: 1e9, BytesPerSec: 1e9 * frame}
	for _, bm := range []struct {
		name    string
		budgets int
		refuse  bool
	}{
		{"budgets=1", 1, false},
		{"budgets=2", 2, false},
		{"budgets=2/refused", 2, true},
	} {
		b.Run(bm.name, func(b *testing.B) {
			agg, err := New(limits, t0)
			if err != nil {
				b.Fatal(err)
			}
			class, err := New(limits, t0)
			if err != nil {
				b.Fatal(err)
			}
			if bm.refuse {
				class, err = New(Limits{PPS: 1, BurstPackets: 1}, t0)
				if err != nil {
					b.Fatal(err)
				}
				Admit(t0, frame, class) // empty it
			}
			now := t0
			admitted := 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				now = at(now, time.Nanosecond)
				var r int
				if bm.budgets == 1 {
					r = Admit(now, frame, agg)
				} else {
					r = Admit(now, frame, agg, class)
				}
				if r < 0 {
					admitted++
				}
			}
			b.StopTimer()
			if want := !bm.refuse; (admitted == b.N) != want {
				b.Fatalf("admitted %d of %d frames", admitted, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}
