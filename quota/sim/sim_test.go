package sim

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/units"
)

const month = 30 * 24 * time.Hour

func tenant(commit, ceiling units.Rate) quota.Config {
	c := quota.Defaults("sim", commit)
	c.Period = quota.Period{Length: month}
	c.BurstCeiling = ceiling
	return c
}

// TestMonthReplay is the acceptance test: a month of bursty
// synthetic traffic, bursts above the commit in more than 5% of the
// intervals, over several seeds and with and without a burst ceiling.
// shaperd must bill at or under the commit every time, deliver more than
// flat and seed75, and at least 0.9 of the offline optimum.
func TestMonthReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("a month of replays per seed")
	}
	const commit = 100_000_000
	seeds := uint64(5)
	if raceEnabled {
		seeds = 1
	}
	for _, ceiling := range []units.Rate{0, 300_000_000} {
		for seed := uint64(1); seed <= seeds; seed++ {
			tr := Generate(GenConfig{Commit: commit, Seed: seed})
			r, err := Run(tr, Options{Config: tenant(commit, ceiling)})
			if err != nil {
				t.Fatal(err)
			}
			p := r.Policies
			if frac := float64(r.AboveCommit) / float64(r.Intervals); frac <= 0.05 {
				t.Fatalf("seed %d: only %.1f%% of the intervals above the commit: not bursty enough to test", seed, 100*frac)
			}
			orc := float64(p.Oracle.DeliveredBytes)
			t.Logf("ceiling %-8v seed %d: %4d of %d intervals above the commit; billed/commit %.4f; delivered/oracle: shaperd %.4f flat %.4f seed75 %.4f",
				ceiling, seed, r.AboveCommit, r.Intervals, float64(p.Shaperd.BilledBPS)/commit,
				float64(p.Shaperd.DeliveredBytes)/orc, float64(p.Flat.DeliveredBytes)/orc, float64(p.Seed75.DeliveredBytes)/orc)
			if p.Shaperd.BilledBPS > commit {
				t.Errorf("seed %d: shaperd billed %d bit/s, above the commit", seed, p.Shaperd.BilledBPS)
			}
			if p.Shaperd.DeliveredBytes <= p.Flat.DeliveredBytes || p.Shaperd.DeliveredBytes <= p.Seed75.DeliveredBytes {
				t.Errorf("seed %d: shaperd delivered %d, flat %d, seed75 %d", seed, p.Shaperd.DeliveredBytes, p.Flat.DeliveredBytes, p.Seed75.DeliveredBytes)
			}
			if float64(p.Shaperd.DeliveredBytes) < 0.9*orc {
				t.Errorf("seed %d: shaperd delivered %.3f of the oracle", seed, float64(p.Shaperd.DeliveredBytes)/orc)
			}
			checkInvariants(t, r, commit)
		}
	}
}

// checkInvariants holds for any trace: every policy bills at or under the
// commit, nobody beats the oracle, and bytes add up.
func checkInvariants(t *testing.T, r Result, commit uint64) {
	t.Helper()
	p := r.Policies
	for name, o := range map[string]Outcome{"shaperd": p.Shaperd, "flat": p.Flat, "seed75": p.Seed75, "oracle": p.Oracle} {
		if o.BilledBPS > commit {
			t.Errorf("%s billed %d above the commit %d", name, o.BilledBPS, commit)
		}
		if o.DeliveredBytes+o.DroppedBytes != r.OfferedBytes || o.DeliveredBytes < 0 || o.DroppedBytes < -int64(r.Intervals) {
			t.Errorf("%s: delivered %d + dropped %d != offered %d", name, o.DeliveredBytes, o.DroppedBytes, r.OfferedBytes)
		}
		if o.DeliveredBytes > p.Oracle.DeliveredBytes {
			t.Errorf("%s delivered %d, more than the oracle's %d", name, o.DeliveredBytes, p.Oracle.DeliveredBytes)
		}
	}
	// shaperd never ran more intervals above the commit than are free.
	above := 0
	qc := int64(commit / 8 * uint64(r.intervalSeconds()))
	for _, v := range r.ShaperdSamples {
		if v > qc {
			above++
		}
	}
	if above > r.FreeIntervals {
		t.Errorf("shaperd ran %d intervals above the commit, %d free", above, r.FreeIntervals)
	}
}

func (r Result) intervalSeconds() float64 { return month.Seconds() / float64(r.Intervals) }

// TestPoliciesByHand checks each policy on a trace small enough to work
// out: 10 intervals of 10 s (so 0 free at the 95th percentile, and 1 at
// the 90th), commit 8 kbit/s = 10 000 bytes per interval.
func TestPoliciesByHand(t *testing.T) {
	c := quota.Defaults("h", 8000)
	c.Period = quota.Period{Length: 100 * time.Second}
	c.Interval = 10 * time.Second
	c.Percentile = 90
	c.BypassReserve = 0
	// 4 kbit/s, except 24 kbit/s from 30 s to 35 s (a spike in interval
	// 3) and 16 kbit/s from 60 s to 70 s (all of interval 6).
	tr, err := ParseTrace(strings.NewReader("0,4kbit\n30,24kbit\n35,4kbit\n60,16kbit\n70,4kbit\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(tr, Options{Config: c})
	if err != nil {
		t.Fatal(err)
	}
	// Offered: 9 intervals' worth at 4 kbit/s is 5000 bytes each, except
	// interval 3 (5 s at 24 kbit/s + 5 s at 4 kbit/s = 15 000 + 2 500) and
	// interval 6 (16 kbit/s: 20 000).
	if want := int64(8*5000 + 17500 + 20000); r.OfferedBytes != want {
		t.Fatalf("offered %d, want %d", r.OfferedBytes, want)
	}
	p := r.Policies
	// flat: min(offered, commit) at every instant: interval 3 passes 5 s
	// at 8 kbit/s + 5 s at 4 kbit/s = 7500, interval 6 passes 10 000.
	if want := int64(8*5000 + 7500 + 10000); p.Flat.DeliveredBytes != want {
		t.Errorf("flat delivered %d, want %d", p.Flat.DeliveredBytes, want)
	}
	// oracle: one free interval (10% of 10): interval 6 gains 10 000 by
	// bursting, interval 3 only 7 500 (capped at 10 000 of its 17 500).
	if want := int64(8*5000 + 10000 + 20000); p.Oracle.DeliveredBytes != want {
		t.Errorf("oracle delivered %d, want %d", p.Oracle.DeliveredBytes, want)
	}
	if p.Oracle.BilledBPS != 8000 {
		t.Errorf("oracle billed %d, want the commit", p.Oracle.BilledBPS)
	}
	// shaperd sees interval 3 first and bursts it (nothing to compare it
	// with yet): it passes all 17 500; interval 6 is then capped below
	// 10 000 by the soft zone.
	if got := r.ShaperdSamples[3]; got != 17500 {
		t.Errorf("shaperd interval 3: %d bytes, want 17500", got)
	}
	if got := r.ShaperdSamples[6]; got > 10000 || got < 9000 {
		t.Errorf("shaperd interval 6: %d bytes, want the soft zone's share of 10 000", got)
	}
	checkInvariants(t, r, 8000)
	// seed75 never bursts: intervals 3 and 6 pass 7 500 bytes at full
	// speed, then the zone's expectation, approaching 10 000 as
	// 10 000 - 2 500·exp(-(offered-7 500)/2 500): 9 954 and 9 983. That is
	// more than flat in interval 3, whose spike flat clips at the commit.
	if want := int64(8*5000 + 9954 + 9983); math.Abs(float64(p.Seed75.DeliveredBytes-want)) > 20 || p.Seed75.BilledBPS > 8000 {
		t.Errorf("seed75 %+v, want about %d delivered", p.Seed75, want)
	}
}

func TestRunErrors(t *testing.T) {
	tr := Trace{{At: 0, Rate: 1e6, Line: 1}, {At: 40 * 24 * time.Hour, Rate: 2e6, Line: 2}}
	if _, err := Run(tr, Options{Config: tenant(1e6, 0)}); !errors.Is(err, ErrBadTrace) || !strings.Contains(err.Error(), "line 2: 3456000s is at or after the end of the 30d period") {
		t.Errorf("trace past the period: %v", err)
	}
	c := quota.Defaults("m", 1e6)
	if _, err := Run(tr[:1], Options{Config: c}); err == nil || !strings.Contains(err.Error(), "--period") {
		t.Errorf("calendar month: %v", err)
	}
	c = tenant(0, 0)
	if _, err := Run(tr[:1], Options{Config: c}); !errors.Is(err, quota.ErrInvalidConfig) {
		t.Errorf("no commit: %v", err)
	}
}

func TestResultJSON(t *testing.T) {
	tr := Trace{{At: 0, Rate: 2e6}}
	c := tenant(1e6, 0)
	c.Period.Length = time.Hour
	r, err := Run(tr, Options{Config: c})
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(data, &m)
	if len(m) != 2 || m["offered_bytes"] == nil {
		t.Fatalf("keys %v", m)
	}
	pol := m["policies"].(map[string]any)
	for _, name := range []string{"shaperd", "flat", "seed75", "oracle"} {
		o, ok := pol[name].(map[string]any)
		if !ok || len(o) != 3 || o["billed_bps"] == nil || o["delivered_bytes"] == nil || o["dropped_bytes"] == nil {
			t.Errorf("%s: %v", name, pol[name])
		}
	}
	if len(pol) != 4 {
		t.Errorf("policies %v", pol)
	}
	// Twice the commit all hour long: 12 intervals, none free at the 95th
	// percentile: everybody but nobody bursts; the oracle gets the commit.
	if got := r.Policies.Oracle.DeliveredBytes; math.Abs(float64(got)-1e6/8*3600) > 12 {
		t.Errorf("oracle delivered %d", got)
	}
}
