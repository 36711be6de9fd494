package quota

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shaperd/shaperd/units"
)

// t0 is the manual clock's start: a period boundary for the test configs.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func rateOf(r uint64) units.Rate { return units.Rate(r) }

// small is a tenant whose intervals are 1 s with a commit quota of 1000
// bytes, in periods of 100 intervals (5 free at the 95th percentile),
// billed to_vm, with bursting off (ceiling = commit) and no bypass reserve
// unless a test sets them.
func small() Config {
	c := Defaults("t", 8000)
	c.Period = Period{Length: 100 * time.Second, Anchor: t0}
	c.Interval = time.Second
	c.Direction = BillToVM
	c.BurstCeiling = c.Commit
	c.BypassReserve = 0
	c.BurstReserve = 0
	return c
}

// smallMax is small billed on the larger direction: two lanes.
func smallMax() Config {
	c := small()
	c.Direction = BillMax
	return c
}

func mustNew(t testing.TB, c Config, now time.Time) *Account {
	t.Helper()
	a, err := New(c, now)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// at returns t0 plus s seconds.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func TestSoftZoneAndHardCap(t *testing.T) {
	a := mustNew(t, small(), t0)
	// Full speed to 75%: even rnd = 0, which drops whenever p > 0, passes.
	for i := range 75 {
		if v := a.Admit(ToVM, 10, false, at(0.001*float64(i)), 0); v != Pass {
			t.Fatalf("frame %d at level %d: %v below soft", i, 10*i, v)
		}
	}
	// At 75% exactly p = 0; past it, p > 0: rnd = 0 drops, rnd = max passes.
	if v := a.Admit(ToVM, 10, false, at(0.1), 0); v != Pass {
		t.Fatalf("at 750 bytes with rnd 0: %v, want pass (p = 0)", v)
	}
	if v := a.Admit(ToVM, 10, false, at(0.1), 0); v != DropSoft {
		t.Fatalf("at 760 bytes with rnd 0: %v, want quota_soft", v)
	}
	for i := range 24 {
		if v := a.Admit(ToVM, 10, false, at(0.2), math.MaxUint32); v != Pass {
			t.Fatalf("zone frame %d with rnd max: %v", i, v)
		}
	}
	// At the quota (1000 bytes): hard cap, whatever rnd.
	for _, rnd := range []uint32{0, math.MaxUint32} {
		if v := a.Admit(ToVM, 1, false, at(0.3), rnd); v != DropCap {
			t.Fatalf("at the quota: %v, want quota_cap", v)
		}
	}
	// A frame that would cross the quota is capped even below it.
	b := mustNew(t, small(), t0)
	b.Admit(ToVM, 990, false, at(0), math.MaxUint32)
	if v := b.Admit(ToVM, 20, false, at(0.1), math.MaxUint32); v != DropCap {
		t.Fatalf("990+20 > 1000: %v, want quota_cap", v)
	}
	// The next interval starts afresh.
	if v := a.Admit(ToVM, 10, false, at(1), 0); v != Pass {
		t.Fatalf("next interval: %v", v)
	}
	c := a.Counters(ToVM)
	if c.PassedBytes != 1010 || c.SoftDropPackets != 1 || c.CapDropPackets != 2 {
		t.Errorf("counters %+v", c)
	}
	if r := a.Report(at(2)); len(r.Samples) != 2 || r.Samples[0].BPS != 8000 || r.Samples[1].BPS != 80 {
		t.Errorf("report samples %+v", r.Samples)
	}
}

// TestDropCurve measures the drop probability at fixed levels with a
// seeded source and compares it with ((level-soft)/(quota-soft))^exponent.
func TestDropCurve(t *testing.T) {
	for _, exp := range []float64{1, 2, 0.5} {
		c := small()
		c.Commit = 8_000_000 // 1e6 bytes per interval
		c.BurstCeiling = c.Commit
		c.Soft = 0.5
		c.Exponent = exp
		a := mustNew(t, c, t0)
		l := a.route[ToVM]
		rnd := NewRand(7)
		for _, x := range []float64{0.1, 0.25, 0.5, 0.75, 0.95} {
			level := int64(500_000 + x*500_000)
			drops := 0
			const trials = 40000
			for range trials {
				l.normal = level
				if a.Admit(ToVM, 100, false, t0, rnd.Uint32()) == DropSoft {
					drops++
				}
			}
			want := math.Pow(x, exp)
			got := float64(drops) / trials
			sd := math.Sqrt(want * (1 - want) / trials)
			if math.Abs(got-want) > 5*sd+1e-3 {
				t.Errorf("exponent %v at %.0f%% of the zone: drop rate %.4f, want %.4f", exp, 100*x, got, want)
			}
		}
	}
}

func TestSoftOneIsHardCapOnly(t *testing.T) {
	c := small()
	c.Soft = 1
	a := mustNew(t, c, t0)
	for i := range 100 {
		if v := a.Admit(ToVM, 10, false, t0, 0); v != Pass {
			t.Fatalf("frame %d: %v", i, v)
		}
	}
	if v := a.Admit(ToVM, 10, false, t0, math.MaxUint32); v != DropCap {
		t.Fatalf("past the quota: %v", v)
	}
}

func TestBypassReserve(t *testing.T) {
	c := small()
	c.Soft = 1
	c.BypassReserve = 0.1 // 100 of the 1000 bytes
	a := mustNew(t, c, t0)
	for range 90 {
		if v := a.Admit(ToVM, 10, false, t0, 0); v != Pass {
			t.Fatalf("below the reserve: %v", v)
		}
	}
	if v := a.Admit(ToVM, 10, false, t0, 0); v != DropCap {
		t.Fatalf("normal frame into the reserve: %v, want quota_cap", v)
	}
	// Bypass fills the reserve: the interval reaches the quota exactly.
	for range 10 {
		if v := a.Admit(ToVM, 10, true, t0, 0); v != Pass {
			t.Fatalf("bypass: %v", v)
		}
	}
	if r := a.Report(at(1)); r.Samples[0].BPS != 8000 || r.BurstIntervalsUsed != 0 {
		t.Fatalf("interval with the reserve used: %+v", r)
	}
	// Bypass beyond the reserve is never dropped, pushes normal frames out,
	// and counts towards the bill: the interval goes above the commit.
	for range 85 {
		a.Admit(ToVM, 10, false, at(1), 0)
	}
	for i := range 50 {
		if v := a.Admit(ToVM, 100, true, at(1.5), 0); v != Pass {
			t.Fatalf("bypass frame %d past the quota: %v", i, v)
		}
	}
	if v := a.Admit(ToVM, 1, false, at(1.5), math.MaxUint32); v != DropCap {
		t.Fatalf("normal frame after bypass overflow: %v", v)
	}
	r := a.Report(at(2))
	if r.Samples[1].BPS != (850+5000)*8 || r.BurstIntervalsUsed != 1 || r.BurstIntervalsLeft != 4 {
		t.Fatalf("bypass overflow: %+v", r)
	}
	if k := a.Counters(ToVM); k.BypassBytes != 5100 || k.BypassPackets != 60 || k.PassedBytes != 900+850 {
		t.Errorf("counters %+v", k)
	}
}

func TestUnbilledDirectionPasses(t *testing.T) {
	a := mustNew(t, small(), t0) // billed to_vm
	for range 1000 {
		if v := a.Admit(FromVM, 1500, false, t0, 0); v != Pass {
			t.Fatalf("from_vm frame: %v", v)
		}
	}
	if k := a.Counters(FromVM); k.PassedBytes != 1_500_000 {
		t.Errorf("from_vm counters %+v", k)
	}
	if r := a.Report(at(1)); r.Samples[0].BPS != 0 {
		t.Errorf("from_vm bytes billed: %+v", r.Samples)
	}
}

func TestDirections(t *testing.T) {
	for _, c := range []struct {
		dir      Billed
		from, to int64 // bytes per interval offered
		sample   uint64
	}{
		{BillMax, 300, 700, 700 * 8},
		{BillSum, 300, 400, 700 * 8},
		{BillToVM, 300, 700, 700 * 8},
		{BillFromVM, 300, 700, 300 * 8},
	} {
		cfg := small()
		cfg.Direction = c.dir
		a := mustNew(t, cfg, t0)
		a.Admit(FromVM, int(c.from), false, t0, 0)
		a.Admit(ToVM, int(c.to), false, t0, 0)
		if r := a.Report(at(1)); r.Samples[0].BPS != c.sample {
			t.Errorf("%s: sample %d, want %d", c.dir, r.Samples[0].BPS, c.sample)
		}
	}
	// Billed max: each direction has its own quota and burst intervals.
	cfg := small()
	cfg.Direction = BillMax
	a := mustNew(t, cfg, t0)
	for _, d := range []Dir{FromVM, ToVM} {
		if v := a.Admit(d, 1000, false, t0, math.MaxUint32); v != Pass {
			t.Errorf("%s: a full quota: %v", d, v)
		}
		if v := a.Admit(d, 1, false, t0, math.MaxUint32); v != DropCap {
			t.Errorf("%s: past the quota: %v", d, v)
		}
	}
	// Billed sum: one quota for both.
	cfg.Direction = BillSum
	a = mustNew(t, cfg, t0)
	a.Admit(FromVM, 600, false, t0, math.MaxUint32)
	if v := a.Admit(ToVM, 600, false, t0, math.MaxUint32); v != DropCap {
		t.Errorf("sum: 600+600 passed")
	}
}

// offerConst offers rate bytes per second in frames of 100 bytes, evenly
// spread, from second s0 to s1, and returns the bytes passed.
func offerConst(a *Account, d Dir, bytesPerSec int, s0, s1 float64, rnd *Rand) int64 {
	frames := int(float64(bytesPerSec) * (s1 - s0) / 100)
	var passed int64
	for i := range frames {
		now := at(s0 + (s1-s0)*float64(i)/float64(frames))
		if a.Admit(d, 100, false, now, rnd.Uint32()) == Pass {
			passed += 100
		}
	}
	return passed
}

func TestBurstIntervalsNeverExceedFree(t *testing.T) {
	for _, keep := range []int{0, 2} {
		c := small()
		c.BurstCeiling = 0 // the port's speed
		c.BurstReserve = keep
		a := mustNew(t, c, t0)
		rnd := NewRand(1)
		// Three times the commit all period long.
		offerConst(a, ToVM, 3000, 0, 100, &rnd)
		a.Tick(at(99.999))
		r := a.Report(at(99.999))
		if want := 5 - keep; r.BurstIntervalsUsed != want || r.BurstIntervalsLeft != keep {
			t.Errorf("reserve %d: used %d left %d, want %d %d", keep, r.BurstIntervalsUsed, r.BurstIntervalsLeft, want, keep)
		}
		if r.PercentileBPS > r.CommitBPS {
			t.Errorf("reserve %d: percentile %d above the commit %d", keep, r.PercentileBPS, r.CommitBPS)
		}
		// The burst intervals passed the whole offer (no ceiling).
		n := 0
		for _, s := range r.Samples {
			if s.BPS == 3000*8 {
				n++
			}
		}
		// The last interval is still open: at the end of the period the
		// policy spends what is left, since it can no longer save it.
		if s := a.Snapshot(at(99.999)); s.Lanes[0].Normal == 3000 {
			n++
		}
		if n != 5-keep {
			t.Errorf("reserve %d: %d intervals at the full offer, want %d", keep, n, 5-keep)
		}
	}
}

func TestBurstCeiling(t *testing.T) {
	c := small()
	c.BurstCeiling = 16000 // 2000 bytes per interval
	c.Soft = 1
	a := mustNew(t, c, t0)
	rnd := NewRand(1)
	got := offerConst(a, ToVM, 5000, 0, 1, &rnd)
	if got != 2000 {
		t.Errorf("burst interval under a 2× ceiling passed %d bytes, want 2000", got)
	}
	if r := a.Report(at(1)); r.BurstIntervalsUsed != 1 {
		t.Errorf("used %d", r.BurstIntervalsUsed)
	}
}

// TestBurstPolicyPrefersBigBursts runs a period where small bursts come
// first and big ones later, more candidates than free intervals: the
// policy must keep intervals for the big ones instead of spending them
// all on the first comers.
func TestBurstPolicyPrefersBigBursts(t *testing.T) {
	c := small()
	c.Period.Length = 1000 * time.Second // 50 free intervals
	c.BurstCeiling = 0
	a := mustNew(t, c, t0)
	rnd := NewRand(3)
	var small, big int64
	for s := 0; s < 1000; s++ {
		switch {
		case s%10 == 0 && s < 600: // 60 small bursts: 1.5× the commit
			small += offerConst(a, ToVM, 1500, float64(s), float64(s+1), &rnd)
		case s%10 == 5 && s >= 600: // 40 big ones: 10× the commit
			big += offerConst(a, ToVM, 10000, float64(s), float64(s+1), &rnd)
		default:
			offerConst(a, ToVM, 300, float64(s), float64(s+1), &rnd)
		}
	}
	r := a.Report(at(999.9))
	bigBursts := 0
	for _, s := range r.Samples {
		if s.BPS == 10000*8 {
			bigBursts++
		}
	}
	// Greedy would spend all 50 on the small ones and pass 40×1000 bytes
	// of the big ones; the oracle passes all 40 big ones.
	if bigBursts < 30 {
		t.Errorf("only %d of 40 big bursts passed whole (used %d, left %d)", bigBursts, r.BurstIntervalsUsed, r.BurstIntervalsLeft)
	}
	if r.PercentileBPS > r.CommitBPS {
		t.Errorf("billed %d above the commit", r.PercentileBPS)
	}
	t.Logf("big bursts passed whole: %d of 40; burst intervals used %d", bigBursts, r.BurstIntervalsUsed)
}

func TestAdmitFluidMatchesExpectation(t *testing.T) {
	// Offered far above the quota within one interval: the fluid passes
	// soft·Q at full speed, then the zone's expectation up to the quota.
	c := small()
	c.Commit = 8_000_000 // 1e6 bytes
	c.BurstCeiling = c.Commit
	a := mustNew(t, c, t0)
	got := a.AdmitFluid(ToVM, 10_000_000, t0)
	if got < 999_000 || got > 1_000_000 {
		t.Errorf("10× the quota offered at once: %d passed, want just under 1e6", got)
	}
	// Linear zone, offered exactly the quota in small steps over the
	// interval: u' = r·(1-(u-s)/(Q-s)); after the soft point the level
	// approaches Q as Q - (Q-s)·exp(-(offered-s)/(Q-s)).
	b := mustNew(t, c, t0)
	var passed int64
	for i := range 1000 {
		passed += b.AdmitFluid(ToVM, 1000, at(float64(i)/1000))
	}
	want := 1e6 - 0.25e6*math.Exp(-(1e6-0.75e6)/0.25e6)
	if math.Abs(float64(passed)-want) > 2000 {
		t.Errorf("the quota offered evenly: %d passed, want about %.0f", passed, want)
	}
	k := b.Counters(ToVM)
	if int64(k.PassedBytes) != passed || int64(k.SoftDropBytes+k.CapDropBytes) != 1_000_000-passed {
		t.Errorf("counters %+v for %d passed", k, passed)
	}
}

func TestTickClosesIdleIntervals(t *testing.T) {
	a := mustNew(t, small(), t0)
	a.Admit(ToVM, 500, false, at(0.5), 0)
	if n, _ := a.Tick(at(0.9)); n != 0 {
		t.Errorf("Tick inside the interval closed %d", n)
	}
	if n, save := a.Tick(at(3.5)); n != 3 || !save {
		t.Errorf("Tick 3 intervals later closed %d", n)
	}
	// Into the next period: 100 intervals per period.
	if n, _ := a.Tick(at(150)); n != 147 {
		t.Errorf("Tick into the next period closed %d", n)
	}
	r := a.Report(at(150))
	if len(r.Samples) != 50 || !r.Samples[0].Start.Equal(at(100)) {
		t.Errorf("new period: %d samples from %v", len(r.Samples), r.Samples[0].Start)
	}
	// Years later: jumps, without walking every interval.
	if n, _ := a.Tick(t0.AddDate(3, 0, 0)); n < 1_000_000 {
		t.Errorf("Tick 3 years later closed %d", n)
	}
	// A clock that goes back stays in the open interval.
	if v := a.Admit(ToVM, 10, false, t0, 0); v != Pass {
		t.Errorf("frame from the past: %v", v)
	}
}

// TestTickSave: Tick asks for a save after an interval closes or the open
// one is raised to a burst interval, until the next Snapshot.
func TestTickSave(t *testing.T) {
	c := small()
	c.BurstCeiling = 0
	a := mustNew(t, c, t0)
	if _, save := a.Tick(at(0.1)); save {
		t.Error("a new Account asks for a save")
	}
	a.Admit(ToVM, 500, false, at(0.2), 0)
	if _, save := a.Tick(at(0.3)); save {
		t.Error("counting bytes asks for a save")
	}
	rnd := NewRand(1)
	offerConst(a, ToVM, 3000, 0.3, 0.6, &rnd) // raised to a burst interval
	if _, save := a.Tick(at(0.7)); !save {
		t.Error("a burst raise does not ask for a save")
	}
	a.Snapshot(at(0.8))
	if _, save := a.Tick(at(0.9)); save {
		t.Error("still asks after a Snapshot")
	}
	if n, save := a.Tick(at(1.1)); n != 1 || !save {
		t.Errorf("an interval closed: %d, save %v", n, save)
	}
}

func TestReportJSONKeys(t *testing.T) {
	a := mustNew(t, small(), t0)
	a.Admit(ToVM, 500, false, at(0.5), 0)
	data, err := json.Marshal(a.Report(at(2)))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	json.Unmarshal(data, &m)
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"burst_intervals_left", "burst_intervals_used", "commit_bps", "percentile_bps", "projected_bps", "samples", "tenant"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys %v, want %v", keys, want)
	}
	var samples []map[string]any
	json.Unmarshal(m["samples"], &samples)
	if len(samples) != 2 || len(samples[0]) != 2 || samples[0]["start"] != "2025-01-01T00:00:00Z" || samples[0]["bps"] != 4000.0 {
		t.Errorf("samples %s", m["samples"])
	}
	// An empty period still has a list, not null.
	data, _ = json.Marshal(mustNew(t, small(), t0).Report(t0))
	if !strings.Contains(string(data), `"samples":[]`) {
		t.Errorf("empty report %s", data)
	}
}

func TestRand(t *testing.T) {
	var zero Rand
	if zero.Uint32() == zero.Uint32() {
		t.Error("the zero Rand repeats")
	}
	a, b := NewRand(1), NewRand(1)
	for range 100 {
		if a.Uint32() != b.Uint32() {
			t.Fatal("the same seed gave two streams")
		}
	}
	// Roughly uniform: 16 buckets of 160 000 draws.
	r := NewRand(2)
	var buckets [16]int
	for range 160_000 {
		buckets[r.Uint32()>>28]++
	}
	for i, n := range buckets {
		if n < 9_500 || n > 10_500 {
			t.Errorf("bucket %d: %d of 160000", i, n)
		}
	}
}

func TestCalendarMonth(t *testing.T) {
	c := Defaults("m", 100_000_000)
	c.Direction = BillToVM
	now := time.Date(2024, 2, 10, 12, 0, 0, 0, time.UTC)
	a := mustNew(t, c, now)
	r := a.Report(now)
	// 9.5 days of 2024-02 are closed (zeros: before the Account existed).
	if len(r.Samples) != 9*288+144 || !r.Samples[0].Start.Equal(time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("%d samples from %v", len(r.Samples), r.Samples[0].Start)
	}
	// February 2024 has 29 days: 8352 intervals, 417 free.
	if r.BurstIntervalsLeft != 417 {
		t.Errorf("left %d, want 417", r.BurstIntervalsLeft)
	}
	a.Tick(time.Date(2024, 3, 1, 0, 0, 1, 0, time.UTC))
	r = a.Report(time.Date(2024, 3, 1, 0, 0, 1, 0, time.UTC))
	if len(r.Samples) != 0 || r.BurstIntervalsLeft != 446 { // March: 31 days
		t.Errorf("March: %d samples, left %d", len(r.Samples), r.BurstIntervalsLeft)
	}
}

func TestReportProjection(t *testing.T) {
	c := small()
	c.BurstCeiling = 0
	a := mustNew(t, c, t0)
	rnd := NewRand(1)
	// 10 intervals: one at 3× (a burst), nine at 60% of the commit.
	offerConst(a, ToVM, 3000, 0, 1, &rnd)
	for s := 1; s < 10; s++ {
		offerConst(a, ToVM, 600, float64(s), float64(s+1), &rnd)
	}
	r := a.Report(at(10))
	// 90 of 100 intervals still to come count as zero: drop the top 5, the
	// highest left is the fifth of the nine at 60%.
	if r.PercentileBPS != 4800 {
		t.Errorf("percentile so far %d, want 4800", r.PercentileBPS)
	}
	// Repeating the 10 samples: 10 bursts wanted, 4 left: the rest capped
	// at the commit, so the 95th percentile is the commit.
	if r.ProjectedBPS != 8000 {
		t.Errorf("projected %d, want 8000", r.ProjectedBPS)
	}
	if r.BurstIntervalsUsed != 1 || r.BurstIntervalsLeft != 4 {
		t.Errorf("used %d left %d", r.BurstIntervalsUsed, r.BurstIntervalsLeft)
	}
}

// Billed max, at a period boundary: a forwarder whose clock is a little
// ahead has already moved to_vm into the next period when a report is
// taken for an instant before the boundary. The report shows from_vm's
// period, and none of to_vm's new samples as if they were that period's.
func TestReportLanesAPeriodApart(t *testing.T) {
	a := mustNew(t, smallMax(), t0)
	for s := range 99 {
		a.Admit(FromVM, 100, false, at(float64(s)+0.5), 0)
		a.Admit(ToVM, 100, false, at(float64(s)+0.5), 0)
	}
	// to_vm 2.5 s into the next period: intervals 99, 100 and 101 close.
	a.Admit(ToVM, 900, false, at(100.5), 0)
	a.Admit(ToVM, 900, false, at(102.5), 0)
	r := a.Report(at(99.5))
	if len(r.Samples) != 99 || !r.Samples[0].Start.Equal(t0) {
		t.Fatalf("%d samples from %v, want from_vm's 99 from %v", len(r.Samples), r.Samples[0].Start, t0)
	}
	for i, smp := range r.Samples {
		if smp.BPS != 800 {
			t.Fatalf("sample %d at %v: %d bit/s, want 800 (100 bytes a second in both directions)", i, smp.Start, smp.BPS)
		}
	}
}

// TestConcurrentUse runs forwarders of both directions with their own
// Rand, a ticker and a reporter together (run with -race), then checks
// that every byte passed is in exactly one sample.
func TestConcurrentUse(t *testing.T) {
	c := small()
	c.Direction = BillSum
	c.BurstCeiling = 0
	a := mustNew(t, c, t0)
	var wg sync.WaitGroup
	var clock sync.Mutex
	tick := 0
	now := func() time.Time {
		clock.Lock()
		defer clock.Unlock()
		tick++
		return t0.Add(time.Duration(tick) * 50 * time.Microsecond)
	}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := NewRand(uint64(g))
			for i := range 20000 {
				a.Admit(Dir(g%2), 50+i%1400, i%17 == 0, now(), rnd.Uint32())
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 200 {
			n := now()
			a.Tick(n)
			_ = a.Report(n)
			_ = a.Snapshot(n)
		}
	}()
	wg.Wait()
	s := a.Snapshot(t0.Add(99 * time.Second))
	var inSamples int64
	for _, v := range s.Lanes[0].Samples {
		inSamples += v
	}
	inSamples += s.Lanes[0].Normal + s.Lanes[0].Bypass
	var counted uint64
	for _, d := range []Dir{FromVM, ToVM} {
		k := a.Counters(d)
		counted += k.PassedBytes + k.BypassBytes
	}
	if uint64(inSamples) != counted {
		t.Errorf("samples hold %d bytes, counters %d", inSamples, counted)
	}
	if r := a.Report(t0.Add(99 * time.Second)); r.BurstIntervalsLeft < 0 || r.PercentileBPS > r.CommitBPS {
		t.Errorf("report %+v", r)
	}
}

func TestSelectDesc(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 3000 {
		n := 1 + rng.IntN(200)
		s := make([]float64, n)
		for i := range s {
			s[i] = float64(rng.IntN(1 + rng.IntN(50))) // many duplicates
		}
		sorted := append([]float64{}, s...)
		for i := 1; i < len(sorted); i++ { // insertion sort, descending
			for j := i; j > 0 && sorted[j] > sorted[j-1]; j-- {
				sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
			}
		}
		k := rng.IntN(n)
		if v := selectDesc(s, k); v != sorted[k] {
			t.Fatalf("k %d of %v: %v, want %v", k, sorted, v, sorted[k])
		}
	}
}
