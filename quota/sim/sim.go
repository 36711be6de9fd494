package sim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/shaperd/shaperd/quota"
)

// Options configures a replay.
type Options struct {
	// Config is the tenant: commit, interval, percentile, soft, exponent,
	// burst ceiling, reserves. Its Period must be a fixed length (the
	// replay covers exactly one period); its Direction and Anchor are
	// ignored: the trace is one direction, and the period starts at Start.
	Config quota.Config
	// Start is the simulated clock's start; zero means 2025-01-01 UTC.
	Start time.Time
	// Step is the fluid step; 0 means min(1s, interval/300).
	Step time.Duration
}

// Outcome is one policy's result over the period.
type Outcome struct {
	BilledBPS      uint64 `json:"billed_bps"`
	DeliveredBytes int64  `json:"delivered_bytes"`
	DroppedBytes   int64  `json:"dropped_bytes"`
}

// Policies holds every policy's outcome.
type Policies struct {
	// Shaperd is quota.Account with the tenant's settings.
	Shaperd Outcome `json:"shaperd"`
	// Flat is min(offered, commit) at every instant.
	Flat Outcome `json:"flat"`
	// Seed75 is quota.Account without bursting or bypass reserve: full
	// speed to 75% of each interval's commit quota, then the linear drop
	// curve (in expectation), hard cap at the quota.
	Seed75 Outcome `json:"seed75"`
	// Oracle is the offline optimum: in each interval min(offered, commit
	// quota), except in the period's free intervals where bursting gains
	// the most, which get min(offered, ceiling quota).
	Oracle Outcome `json:"oracle"`
}

// Result is a replay's output: the JSON object `shaperd quota simulate
// --json` prints.
type Result struct {
	OfferedBytes int64    `json:"offered_bytes"`
	Policies     Policies `json:"policies"`

	// Not printed: details for tests and plots.
	Intervals      int          `json:"-"` // intervals in the period
	AboveCommit    int          `json:"-"` // intervals whose offered load averaged above the commit
	FreeIntervals  int          `json:"-"` // intervals the percentile leaves unbilled
	ShaperdReport  quota.Report `json:"-"` // shaperd's samples, for PlotSVG
	ShaperdSamples []int64      `json:"-"` // bytes per interval
	OracleSamples  []int64      `json:"-"`
}

// DefaultStart is the simulated clock's default start.
var DefaultStart = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Run replays trace over one period under every policy. It returns an
// error if the options are invalid or the trace reaches past the period.
func Run(tr Trace, o Options) (Result, error) {
	cfg := o.Config
	if cfg.Period.IsMonth() {
		return Result{}, fmt.Errorf("quota: --period: the simulation needs a fixed length, such as 30d")
	}
	start := o.Start
	if start.IsZero() {
		start = DefaultStart
	}
	cfg.Period.Anchor = start
	cfg.Direction = quota.BillToVM
	if cfg.Tenant == "" {
		cfg.Tenant = "sim"
	}
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	if len(tr) == 0 {
		return Result{}, fmt.Errorf("%w: empty", ErrBadTrace)
	}
	period, iv := cfg.Period.Length, cfg.Interval
	if last := tr[len(tr)-1]; last.At >= period {
		return Result{}, fmt.Errorf("%w: line %d: %ss is at or after the end of the %s period; shorten the trace or lengthen --period",
			ErrBadTrace, last.Line, fmtSec(last.At), cfg.Period)
	}
	step := o.Step
	if step <= 0 {
		step = min(time.Second, iv/300)
	}
	n := int(period / iv)
	commit := float64(cfg.Commit)

	// Offered and flat, exactly, per interval.
	offered := make([]float64, n)
	flat := make([]float64, n)
	{
		c1, c2 := newCursor(tr), newCursor(tr)
		for i := range n {
			a, b := time.Duration(i)*iv, time.Duration(i+1)*iv
			offered[i] = c1.integrate(a, b, func(r float64) float64 { return r / 8 })
			flat[i] = c2.integrate(a, b, func(r float64) float64 { return min(r, commit) / 8 })
		}
	}
	res := Result{Intervals: n, FreeIntervals: quota.FreeIntervals(n, cfg.Percentile)}
	qcExact := commit / 8 * iv.Seconds()
	var offTotal float64
	for _, v := range offered {
		offTotal += v
		if v > qcExact*(1+1e-9) {
			res.AboveCommit++
		}
	}
	res.OfferedBytes = int64(math.Round(offTotal))

	outcome := func(samples []int64) Outcome {
		var d int64
		for _, v := range samples {
			d += v
		}
		return Outcome{
			BilledBPS:      quota.BytesToBPS(quota.NearestRank(samples, n, cfg.Percentile), iv),
			DeliveredBytes: d,
			DroppedBytes:   res.OfferedBytes - d,
		}
	}
	floorAll := func(v []float64) []int64 {
		out := make([]int64, len(v))
		for i, x := range v {
			out[i] = int64(math.Floor(x + 1e-6))
		}
		return out
	}
	res.Policies.Flat = outcome(floorAll(flat))

	// Oracle.
	qc := float64(quotaBytes(cfg, cfg.Commit))
	qb := math.Inf(1)
	if cfg.BurstCeiling != 0 {
		qb = float64(quotaBytes(cfg, cfg.BurstCeiling))
	}
	orc := make([]float64, n)
	gains := make([]int, n)
	for i, v := range offered {
		orc[i] = min(v, qc)
		gains[i] = i
	}
	slices.SortFunc(gains, func(a, b int) int {
		ga, gb := min(offered[a], qb)-orc[a], min(offered[b], qb)-orc[b]
		switch {
		case ga > gb:
			return -1
		case ga < gb:
			return 1
		}
		return a - b
	})
	for _, i := range gains[:res.FreeIntervals] {
		orc[i] = min(offered[i], qb)
	}
	res.OracleSamples = floorAll(orc)
	res.Policies.Oracle = outcome(res.OracleSamples)

	// shaperd and seed75: the real Account, fed as a fluid.
	seed := cfg
	seed.Soft, seed.Exponent, seed.BurstCeiling, seed.BypassReserve = quota.DefaultSoft, 1, cfg.Commit, 0
	var err error
	var rep quota.Report
	res.ShaperdSamples, rep, err = replay(tr, cfg, start, step, n)
	if err != nil {
		return Result{}, err
	}
	res.Policies.Shaperd = outcome(res.ShaperdSamples)
	res.ShaperdReport = rep
	seedSamples, _, err := replay(tr, seed, start, step, n)
	if err != nil {
		return Result{}, err
	}
	res.Policies.Seed75 = outcome(seedSamples)
	return res, nil
}

// quotaBytes is the byte quota of one interval at rate r, as the Account
// computes it.
func quotaBytes(cfg quota.Config, r interface{ BytesPerSecond() float64 }) int64 {
	return int64(math.Floor(r.BytesPerSecond() * cfg.Interval.Seconds()))
}

// replay drives an Account through the trace in fluid steps and returns
// the bytes it delivered per interval and its report at the end of the
// period (its last sample appended).
func replay(tr Trace, cfg quota.Config, start time.Time, step time.Duration, n int) ([]int64, quota.Report, error) {
	a, err := quota.New(cfg, start)
	if err != nil {
		return nil, quota.Report{}, err
	}
	iv := cfg.Interval
	samples := make([]int64, n)
	c := newCursor(tr)
	carry := 0.0
	for i := range n {
		var got int64
		end := time.Duration(i+1) * iv
		for from := time.Duration(i) * iv; from < end; from += step {
			to := min(from+step, end)
			b := c.integrate(from, to, func(r float64) float64 { return r / 8 }) + carry
			nb := math.Floor(b)
			carry = b - nb
			if nb > 0 {
				// Offered over [from, to): decided at its end, as Admit
				// decides a frame when it has arrived.
				got += a.AdmitFluid(quota.ToVM, int64(nb), start.Add(to-1))
			}
		}
		samples[i] = got
	}
	end := start.Add(time.Duration(n) * iv)
	rep := a.Report(end.Add(-1))
	rep.Samples = append(rep.Samples, quota.Sample{Start: end.Add(-iv), BPS: quota.BytesToBPS(samples[n-1], iv)})
	rep.PercentileBPS = quota.BytesToBPS(quota.NearestRank(samples, n, cfg.Percentile), iv)
	rep.ProjectedBPS = rep.PercentileBPS
	if l := a.Counters(quota.ToVM); l.PassedBytes != uint64(sum(samples)) {
		return nil, quota.Report{}, fmt.Errorf("quota: simulation: account passed %d bytes, intervals hold %d", l.PassedBytes, sum(samples))
	}
	return samples, rep, nil
}

func sum(v []int64) int64 {
	var s int64
	for _, x := range v {
		s += x
	}
	return s
}
