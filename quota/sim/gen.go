package sim

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/shaperd/shaperd/units"
)

// GenConfig describes a synthetic bursty tenant. Zero fields take the
// defaults noted; only Commit is required.
type GenConfig struct {
	Commit units.Rate    // the tenant's commit, bits per second
	Period time.Duration // length of the trace (default 30 days)
	Seed   uint64
	// BaseLoad is the mean base load as a fraction of the commit (default
	// 0.35). It follows a day/night cycle (peak in the evening, UTC),
	// drops by a third on weekends and wobbles every few minutes.
	BaseLoad float64
	// BurstsPerDay is the mean number of burst episodes per day, arriving
	// at random (default 3).
	BurstsPerDay float64
	// BurstMinutes is the median length of a burst episode (default 45;
	// log-normal, from 5 minutes to 8 hours).
	BurstMinutes float64
	// BurstHeight is the median rate a burst adds, as a multiple of the
	// commit (default 1.2; log-normal, spikes reach 10× and more).
	BurstHeight float64
}

// Generate returns a seeded synthetic trace: a base load with daily and
// weekly cycles, plus burst episodes of random start, length and height
// that wobble as they go, overlapping bursts adding up. With the defaults
// about 10 to 20% of the 5-minute intervals average above the commit, and
// burst heights vary widely, so choosing which intervals to burst in
// matters.
func Generate(c GenConfig) Trace {
	if c.Period <= 0 {
		c.Period = 30 * 24 * time.Hour
	}
	if c.BaseLoad <= 0 {
		c.BaseLoad = 0.35
	}
	if c.BurstsPerDay <= 0 {
		c.BurstsPerDay = 3
	}
	if c.BurstMinutes <= 0 {
		c.BurstMinutes = 45
	}
	if c.BurstHeight <= 0 {
		c.BurstHeight = 1.2
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x5eed_0f_0004))
	commit := float64(c.Commit)
	day := 24 * time.Hour
	type event struct {
		at    time.Duration
		delta float64
	}
	var ev []event
	add := func(from, to time.Duration, rate float64) {
		if to > c.Period {
			to = c.Period
		}
		if from >= to || rate <= 0 {
			return
		}
		ev = append(ev, event{from, rate}, event{to, -rate})
	}
	logn := func(median, sigma float64) float64 { return median * math.Exp(sigma*rng.NormFloat64()) }
	minutes := func(m float64) time.Duration { return time.Duration(m * float64(time.Minute)) }

	// Base load: segments of 3 to 17 minutes.
	for t := time.Duration(0); t < c.Period; {
		d := minutes(3 + 14*rng.Float64())
		h := math.Mod((t + d/2).Hours(), 24)
		diurnal := 1 + 0.6*math.Sin(2*math.Pi*(h-14)/24) // peak at 20:00
		weekday := (int((t+d/2)/day) + 3) % 7            // day 0 is a Wednesday, like 2025-01-01
		weekly := 1.0
		if weekday >= 5 {
			weekly = 0.67
		}
		add(t, t+d, commit*c.BaseLoad*diurnal*weekly*logn(1, 0.2))
		t += d
	}
	// Bursts: Poisson arrivals.
	for t := time.Duration(0); ; {
		t += time.Duration(rng.ExpFloat64() / c.BurstsPerDay * float64(day))
		if t >= c.Period {
			break
		}
		length := minutes(min(max(logn(c.BurstMinutes, 0.9), 5), 480))
		height := logn(c.BurstHeight, 0.7)
		for s := t; s < t+length; {
			d := min(minutes(5+10*rng.Float64()), t+length-s)
			add(s, s+d, commit*height*logn(1, 0.2))
			s += d
		}
	}
	slices.SortFunc(ev, func(a, b event) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return 0
	})
	var tr Trace
	level := 0.0
	for i := 0; i < len(ev); {
		at := ev[i].at
		for i < len(ev) && ev[i].at == at {
			level += ev[i].delta
			i++
		}
		// Round to the second so that the CSV holds the trace exactly.
		at = at.Round(time.Second)
		r := units.Rate(math.Round(max(level, 0)))
		if n := len(tr); n > 0 && tr[n-1].At >= at {
			tr[n-1].Rate = r
			continue
		}
		if n := len(tr); n > 0 && tr[n-1].Rate == r {
			continue
		}
		if at >= c.Period {
			break
		}
		tr = append(tr, Step{At: at, Rate: r})
	}
	if len(tr) == 0 || tr[0].At != 0 {
		tr = append(Trace{{At: 0}}, tr...)
	}
	return tr
}
