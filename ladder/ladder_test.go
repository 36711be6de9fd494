package ladder

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/detect"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// Offered loads as pps and bits/s of 250-byte frames.
const (
	floodPPS  = 400_000
	floodBits = 400_000 * 250 * 8 // 800 Mbit/s
)

// clock drives a Ladder with observations every step, as the watch loop
// does, and records the transitions.
type clock struct {
	t    *testing.T
	l    *Ladder
	now  time.Time
	step time.Duration
	trs  []Transition
}

func newClock(t *testing.T, cfg Config, avgFrame float64) *clock {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: t, l: l, now: t0, step: time.Second}
	tr := l.Start(t0, avgFrame)
	if tr == nil || tr.From != "" || tr.To != Stage1 || !tr.At.Equal(t0) || tr.Reason != ReasonStart {
		t.Fatalf("Start = %+v; want \"\" -> stage1 at t0", tr)
	}
	c.trs = append(c.trs, *tr)
	return c
}

// run observes pps and bits/s until d has passed, and returns the
// transitions on the way.
func (c *clock) run(d time.Duration, pps, bits float64) []Transition {
	var out []Transition
	for end := c.now.Add(d); c.now.Before(end); {
		c.now = c.now.Add(c.step)
		if tr := c.l.Observe(c.now, pps, bits); tr != nil {
			out = append(out, *tr)
		}
	}
	c.trs = append(c.trs, out...)
	return out
}

// runFunc is run with the load given for each observation by f(k), k
// counting observations from 1.
func (c *clock) runFunc(d time.Duration, f func(k int) (pps, bits float64)) []Transition {
	var out []Transition
	k := 0
	for end := c.now.Add(d); c.now.Before(end); {
		c.now = c.now.Add(c.step)
		k++
		pps, bits := f(k)
		if tr := c.l.Observe(c.now, pps, bits); tr != nil {
			out = append(out, *tr)
		}
	}
	c.trs = append(c.trs, out...)
	return out
}

func (c *clock) stage(want Stage) {
	c.t.Helper()
	if got := c.l.Stage(); got != want {
		c.t.Fatalf("at +%v stage %q; want %q", c.now.Sub(t0), got, want)
	}
}

func (c *clock) next(want time.Duration) {
	c.t.Helper()
	got := c.l.NextTransition()
	if want < 0 {
		if !got.IsZero() {
			c.t.Errorf("at +%v NextTransition +%v; want none", c.now.Sub(t0), got.Sub(t0))
		}
		return
	}
	if !got.Equal(t0.Add(want)) {
		c.t.Errorf("at +%v NextTransition +%v; want +%v", c.now.Sub(t0), got.Sub(t0), want)
	}
}

// want checks one transition: its stages, time after t0 and limits.
func want(t *testing.T, tr Transition, from, to Stage, at time.Duration, lim Limits) {
	t.Helper()
	if tr.From != from || tr.To != to || !tr.At.Equal(t0.Add(at)) || tr.Limits != lim {
		t.Errorf("transition %s -> %s at +%v limits %+v; want %s -> %s at +%v limits %+v",
			tr.From, tr.To, tr.At.Sub(t0), tr.Limits, from, to, at, lim)
	}
	if tr.RunOnBlockHook != (to == Stage3) {
		t.Errorf("%s -> %s: RunOnBlockHook %v", from, to, tr.RunOnBlockHook)
	}
}

var (
	// The seed's numbers with 250-byte frames.
	stage1Limits = Limits{PPS: 10000, BytesPerSec: 2_500_000, Delay: 200 * time.Millisecond}
	stage2Limits = Limits{PPS: 2500, BytesPerSec: 625_000, Delay: 400 * time.Millisecond}
	stage3Limits = Limits{Block: true}
)

func TestWalkStage1To3ProbationRelease(t *testing.T) {
	c := newClock(t, DefaultConfig(), 250)
	c.step = 500 * time.Millisecond // the default watch interval
	want(t, c.trs[0], "", Stage1, 0, stage1Limits)
	c.next(5 * time.Minute)

	// The flood goes on: stage 2 after 5 minutes, stage 3 after 10.
	trs := c.run(12*time.Minute, floodPPS, floodBits)
	if len(trs) != 2 {
		t.Fatalf("flood for 12 minutes: %d transitions %+v; want 2", len(trs), trs)
	}
	want(t, trs[0], Stage1, Stage2, 5*time.Minute, stage2Limits)
	if trs[0].Reason != ReasonSaturated || trs[0].Saturation != 1 {
		t.Errorf("stage2: reason %q saturation %v; want saturated 1", trs[0].Reason, trs[0].Saturation)
	}
	want(t, trs[1], Stage2, Stage3, 10*time.Minute, stage3Limits)
	c.stage(Stage3)
	c.next(-1) // blocked, not calm: nothing scheduled

	// The VM stops at +12m (for example, the on-block hook shut it down
	// and its port still exists). 10 minutes of calm: probation with stage
	// 2's limits; 10 more: stage 1's; 10 more: release.
	c.run(30*time.Second, 0, 0)
	c.next(22 * time.Minute)
	trs = c.run(30*time.Minute-30*time.Second, 0, 0)
	if len(trs) != 3 {
		t.Fatalf("calm for 30 minutes: %d transitions %+v; want 3", len(trs), trs)
	}
	want(t, trs[0], Stage3, Probation, 22*time.Minute, stage2Limits)
	want(t, trs[1], Probation, Probation, 32*time.Minute, stage1Limits)
	want(t, trs[2], Probation, Released, 42*time.Minute, Limits{})
	for i, r := range []string{ReasonCalm, ReasonStepDown, ReasonRelease} {
		if trs[i].Reason != r {
			t.Errorf("transition %d reason %q; want %q", i, trs[i].Reason, r)
		}
	}
	c.stage(Released)
	c.next(-1)
	if tr := c.l.Observe(c.now.Add(time.Hour), floodPPS, floodBits); tr != nil || c.l.Limits() != (Limits{}) {
		t.Errorf("after release: Observe = %+v, Limits %+v; want nothing", tr, c.l.Limits())
	}
}

func TestNextTransitionInProbation(t *testing.T) {
	c := newClock(t, DefaultConfig(), 250)
	c.run(10*time.Minute, 0, 0) // calm from the start
	c.stage(Probation)
	c.next(20 * time.Minute)
	c.run(5*time.Minute, 0, 0)
	c.next(20 * time.Minute)
}

func TestUnevenObservations(t *testing.T) {
	c := newClock(t, DefaultConfig(), 250)
	c.step = 700 * time.Millisecond
	trs := c.run(6*time.Minute, floodPPS, floodBits)
	// The first observation at or after +5m: 429 × 0.7 s = 300.3 s.
	if len(trs) != 1 || !trs[0].At.Equal(t0.Add(300300*time.Millisecond)) || trs[0].To != Stage2 {
		t.Errorf("transitions %+v; want stage2 at +5m0.3s", trs)
	}
	// A gap in the observations counts as one interval at the load given.
	c.now = c.now.Add(5 * time.Minute)
	if tr := c.l.Observe(c.now, floodPPS, floodBits); tr == nil || tr.To != Stage3 {
		t.Errorf("after a 5 minute gap: %+v; want stage3", tr)
	}
	// Observations not later than the last are ignored.
	if tr := c.l.Observe(c.now, 0, 0); tr != nil {
		t.Errorf("repeated time: %+v", tr)
	}
	if tr := c.l.Observe(c.now.Add(-time.Hour), 0, 0); tr != nil {
		t.Errorf("earlier time: %+v", tr)
	}
}

func TestNonSaturatingStaysInStage1(t *testing.T) {
	t.Run("above threshold, under budget", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Threshold = detect.Threshold{PPS: 1000} // under the 10000 pps budget
		c := newClock(t, cfg, 250)
		// 5000 pps of 250 bytes: 1.25 MB/s, under 2.5 MB/s.
		for i := 1; i <= 12; i++ {
			if trs := c.run(5*time.Minute, 5000, 5000*250*8); len(trs) != 0 {
				t.Fatalf("period %d: transitions %+v; want none", i, trs)
			}
			c.stage(Stage1)
			c.next(time.Duration(i+1) * 5 * time.Minute) // a new period each time
		}
		if c.l.Limits() != stage1Limits {
			t.Errorf("limits %+v; want stage 1's", c.l.Limits())
		}
	})
	t.Run("under threshold: stays, then probation", func(t *testing.T) {
		c := newClock(t, DefaultConfig(), 250)
		if trs := c.run(5*time.Minute, 5000, 5000*250*8); len(trs) != 0 {
			t.Fatalf("transitions %+v; want none", trs)
		}
		c.stage(Stage1)
		c.next(10 * time.Minute) // the new period and the calm end together
		trs := c.run(15*time.Minute, 5000, 5000*250*8)
		if len(trs) != 2 {
			t.Fatalf("transitions %+v; want probation and release", trs)
		}
		want(t, trs[0], Stage1, Probation, 10*time.Minute, stage1Limits)
		want(t, trs[1], Probation, Released, 20*time.Minute, Limits{})
	})
	t.Run("byte budget saturates", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Threshold = detect.Threshold{PPS: 1000}
		c := newClock(t, cfg, 250)
		// 5000 pps of 1500 bytes: 7.5 MB/s, over 2.5 MB/s.
		trs := c.run(5*time.Minute, 5000, 5000*1500*8)
		if len(trs) != 1 || trs[0].To != Stage2 {
			t.Errorf("transitions %+v; want stage2 at +5m", trs)
		}
	})
}

func TestFlapping(t *testing.T) {
	// on of every period observations is a flood, the rest silence.
	flap := func(on, period int) func(k int) (float64, float64) {
		return func(k int) (float64, float64) {
			if (k-1)%period < on {
				return floodPPS, floodBits
			}
			return 0, 0
		}
	}
	t.Run("60% saturated escalates, never calm", func(t *testing.T) {
		c := newClock(t, DefaultConfig(), 250)
		trs := c.runFunc(time.Hour, flap(3, 5))
		if len(trs) != 2 {
			t.Fatalf("transitions %+v; want stage2 and stage3 only", trs)
		}
		want(t, trs[0], Stage1, Stage2, 5*time.Minute, stage2Limits)
		if trs[0].Saturation != 0.6 {
			t.Errorf("saturation %v; want 0.6", trs[0].Saturation)
		}
		want(t, trs[1], Stage2, Stage3, 10*time.Minute, stage3Limits)
	})
	t.Run("50% saturated is not more than half: stays", func(t *testing.T) {
		c := newClock(t, DefaultConfig(), 250)
		if trs := c.runFunc(time.Hour, flap(2, 4)); len(trs) != 0 {
			t.Fatalf("transitions %+v; want none", trs)
		}
		c.stage(Stage1)
	})
	t.Run("a burst in probation goes back up", func(t *testing.T) {
		c := newClock(t, DefaultConfig(), 250)
		c.run(10*time.Minute, floodPPS, floodBits) // stage 3 at +10m
		c.run(10*time.Minute, 0, 0)                // probation (stage 2's limits) at +20m
		c.stage(Probation)
		trs := c.run(time.Second, floodPPS, floodBits)
		if len(trs) != 1 {
			t.Fatalf("burst in probation: %+v; want one transition", trs)
		}
		want(t, trs[0], Probation, Stage2, 20*time.Minute+time.Second, stage2Limits)
		if trs[0].Reason != ReasonRelapse {
			t.Errorf("reason %q; want %q", trs[0].Reason, ReasonRelapse)
		}
		c.next(25*time.Minute + time.Second) // a new period
		trs = c.run(5*time.Minute, floodPPS, floodBits)
		if len(trs) != 1 || trs[0].To != Stage3 {
			t.Errorf("flood after relapse: %+v; want stage3", trs)
		}
	})
	t.Run("bursts reset the calm", func(t *testing.T) {
		c := newClock(t, DefaultConfig(), 250)
		c.run(10*time.Minute, floodPPS, floodBits) // stage 3
		// One flood second every 9 minutes: never 10 minutes of calm.
		trs := c.runFunc(time.Hour, func(k int) (float64, float64) {
			if k%540 == 0 {
				return floodPPS, floodBits
			}
			return 0, 0
		})
		if len(trs) != 0 {
			t.Errorf("transitions %+v; want none", trs)
		}
		c.stage(Stage3)
	})
}

func TestCalmWinsOverSaturation(t *testing.T) {
	// 20000 pps: over stage 1's budget, under the 50000 pps threshold.
	c := newClock(t, DefaultConfig(), 250)
	trs := c.run(25*time.Minute, 20000, 20000*250*8)
	if len(trs) != 3 {
		t.Fatalf("transitions %+v; want stage2, probation, release", trs)
	}
	want(t, trs[0], Stage1, Stage2, 5*time.Minute, stage2Limits)
	// At +10m stage 2's period ends saturated and 10 minutes of calm are
	// up: probation, not stage 3.
	want(t, trs[1], Stage2, Probation, 10*time.Minute, stage1Limits)
	want(t, trs[2], Probation, Released, 20*time.Minute, Limits{})
}

func TestSetAvgFrame(t *testing.T) {
	c := newClock(t, DefaultConfig(), 0)
	want(t, c.trs[0], "", Stage1, 0, Limits{PPS: 10000, Delay: 200 * time.Millisecond})
	// Without a byte budget, only pps saturates.
	c.run(time.Minute, 5000, 1e9)
	if got := c.l.SetAvgFrame(250); got != stage1Limits || c.l.Limits() != stage1Limits || c.l.AvgFrame() != 250 {
		t.Errorf("SetAvgFrame(250) = %+v; want %+v", got, stage1Limits)
	}
	c.run(5*time.Minute, floodPPS, floodBits) // stage 2 at +5m
	c.stage(Stage2)
	if got := c.l.SetAvgFrame(100); got != (Limits{PPS: 2500, BytesPerSec: 250_000, Delay: 400 * time.Millisecond}) {
		t.Errorf("SetAvgFrame(100) in stage 2 = %+v", got)
	}
	for _, bad := range []float64{-1, math.NaN(), math.Inf(1)} {
		if got := c.l.SetAvgFrame(bad); got.BytesPerSec != 0 || c.l.AvgFrame() != 0 {
			t.Errorf("SetAvgFrame(%v) = %+v; want no byte budget", bad, got)
		}
	}
}

func TestStartAgain(t *testing.T) {
	c := newClock(t, DefaultConfig(), 250)
	c.run(6*time.Minute, floodPPS, floodBits)
	c.stage(Stage2)
	tr := c.l.Start(c.now, 500)
	if tr.From != Stage2 || tr.To != Stage1 || tr.Limits.BytesPerSec != 5_000_000 {
		t.Errorf("Start again = %+v; want stage2 -> stage1 with 5 MB/s", tr)
	}
	c.next(11 * time.Minute)
}

func TestNotStarted(t *testing.T) {
	l, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if tr := l.Observe(t0, floodPPS, floodBits); tr != nil || l.Stage() != "" || !l.NextTransition().IsZero() || l.Limits() != (Limits{}) {
		t.Errorf("before Start: Observe %+v, stage %q", tr, l.Stage())
	}
}

func TestCustomConfig(t *testing.T) {
	cfg := Config{
		TargetPPS: 5000, Stage2Factor: 0.5, Delay1: 50 * time.Millisecond, DelayFactor2: 3,
		Stage1Duration: time.Minute, Stage2Duration: 2 * time.Minute, SaturationShare: 0,
		ClearAfter: 30 * time.Second, Threshold: detect.Threshold{BitsPerSecond: 100e6},
	}
	c := newClock(t, cfg, 1000)
	want(t, c.trs[0], "", Stage1, 0, Limits{PPS: 5000, BytesPerSec: 5e6, Delay: 50 * time.Millisecond})
	// Calm (under 100 Mbit/s) for ClearAfter: probation, then release.
	trs := c.run(time.Minute, 6000, 48e6)
	if len(trs) != 2 || trs[0].To != Probation || !trs[0].At.Equal(t0.Add(30*time.Second)) ||
		trs[1].To != Released || !trs[1].At.Equal(t0.Add(time.Minute)) {
		t.Fatalf("transitions %+v; want probation at +30s, release at +1m", trs)
	}
	// SaturationShare 0: any time over budget escalates. One second of
	// 6000 pps in a minute of traffic above the threshold.
	cfg.Threshold = detect.Threshold{PPS: 100}
	c = newClock(t, cfg, 1000)
	trs = c.runFunc(time.Minute, func(k int) (float64, float64) {
		if k == 1 {
			return 6000, 48e6
		}
		return 200, 1.6e6
	})
	if len(trs) != 1 || trs[0].To != Stage2 || math.Abs(trs[0].Saturation-1.0/60) > 1e-12 {
		t.Fatalf("transitions %+v; want stage2 with saturation 1/60", trs)
	}
	c = newClock(t, cfg, 1000)
	trs = c.run(3*time.Minute, 6000, 200e6)
	if len(trs) != 2 {
		t.Fatalf("transitions %+v; want stage2, stage3", trs)
	}
	want(t, trs[0], Stage1, Stage2, time.Minute, Limits{PPS: 2500, BytesPerSec: 2.5e6, Delay: 150 * time.Millisecond})
	want(t, trs[1], Stage2, Stage3, 3*time.Minute, stage3Limits)
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"default", func(*Config) {}, ""},
		{"no delay", func(c *Config) { c.Delay1 = 0 }, ""},
		{"share 0", func(c *Config) { c.SaturationShare = 0 }, ""},
		{"factor 1", func(c *Config) { c.Stage2Factor = 1 }, ""},
		{"zero config", func(c *Config) { *c = Config{} }, "target_pps 0"},
		{"target 0", func(c *Config) { c.TargetPPS = 0 }, "target_pps 0: want a positive number"},
		{"target negative", func(c *Config) { c.TargetPPS = -5 }, "target_pps -5"},
		{"target NaN", func(c *Config) { c.TargetPPS = math.NaN() }, "target_pps NaN"},
		{"target Inf", func(c *Config) { c.TargetPPS = math.Inf(1) }, "target_pps +Inf"},
		{"factor 0", func(c *Config) { c.Stage2Factor = 0 }, "stage2_factor 0: want a share"},
		{"factor > 1", func(c *Config) { c.Stage2Factor = 1.5 }, "stage2_factor 1.5"},
		{"delay negative", func(c *Config) { c.Delay1 = -time.Millisecond }, "stage1_delay -1ms is negative"},
		{"delay factor < 1", func(c *Config) { c.DelayFactor2 = 0.5 }, "stage2_delay_factor 0.5"},
		{"delay factor NaN", func(c *Config) { c.DelayFactor2 = math.NaN() }, "stage2_delay_factor NaN"},
		{"delay overflow", func(c *Config) { c.Delay1, c.DelayFactor2 = time.Hour, 1e12 }, "stage1_delay 1h0m0s × stage2_delay_factor 1e+12 is over an hour"},
		{"stage1 duration", func(c *Config) { c.Stage1Duration = 0 }, "stage1_duration 0s"},
		{"stage2 duration", func(c *Config) { c.Stage2Duration = -time.Minute }, "stage2_duration -1m0s"},
		{"share 1", func(c *Config) { c.SaturationShare = 1 }, "saturation_share 1"},
		{"share negative", func(c *Config) { c.SaturationShare = -0.1 }, "saturation_share -0.1"},
		{"clear_after", func(c *Config) { c.ClearAfter = 0 }, "clear_after 0s"},
		{"threshold zero", func(c *Config) { c.Threshold = detect.Threshold{} }, "ladder: threshold_pps and threshold_bps are both 0"},
		{"threshold negative", func(c *Config) { c.Threshold.BitsPerSecond = -1 }, "ladder: threshold_bps -1 is negative"},
	} {
		c := DefaultConfig()
		tt.mod(&c)
		err := c.Validate()
		_, nerr := New(c)
		switch {
		case tt.want == "" && (err != nil || nerr != nil):
			t.Errorf("%s: %v / %v; want nil", tt.name, err, nerr)
		case tt.want != "" && (err == nil || nerr == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %v; want an ErrInvalidConfig containing %q", tt.name, err, tt.want)
		}
	}
	c := DefaultConfig()
	c.Threshold.PPS = math.NaN()
	if err := c.Validate(); !errors.Is(err, detect.ErrInvalidConfig) || !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("threshold error %v: want both ladder's and detect's ErrInvalidConfig", err)
	}
}
