package bucket

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// t0 is the manual clock's start, in ns: any fixed time will do.
var t0 = time.Unix(1_700_000_000, 0).UnixNano()

// at returns the time d after t, both in ns.
func at(t int64, d time.Duration) int64 { return t + int64(d) }

// offer drives budgets with frames offered at offerPPS for d of simulated
// time, in groups of group frames sent at the same instant (group 1: evenly
// spaced). Frame sizes cycle through sizes. It returns what was admitted.
func offer(budgets []*Budget, offerPPS float64, d time.Duration, group int, sizes []int) (pkts, bytes int) {
	groups := int(offerPPS * d.Seconds() / float64(group))
	gap := float64(group) / offerPPS * float64(time.Second) // ns between groups
	k := 0
	for g := 0; g < groups; g++ {
		now := at(t0, time.Duration(float64(g)*gap))
		for range group {
			n := sizes[k%len(sizes)]
			k++
			if Admit(now, n, budgets...) < 0 {
				pkts++
				bytes += n
			}
		}
	}
	return pkts, bytes
}

func TestAccuracy(t *testing.T) {
	type tc struct {
		name   string
		limits Limits
		class  *Limits // if set, a second budget: Admit(now, n, aggregate, class)
		sizes  []int   // frame sizes in bytes, cycled
		d      time.Duration
	}
	cases := []tc{
		{name: "pps only", limits: Limits{PPS: 1000}, sizes: []int{64}, d: 10 * time.Second},
		{name: "pps only/fractional rate", limits: Limits{PPS: 333.3}, sizes: []int{100}, d: 30 * time.Second},
		{name: "pps only/default burst of 1", limits: Limits{PPS: 50}, sizes: []int{64}, d: 60 * time.Second},
		{name: "pps only/deep burst", limits: Limits{PPS: 500, BurstPackets: 100}, sizes: []int{64}, d: 60 * time.Second},
		{name: "bytes only", limits: Limits{BytesPerSec: 1e6}, sizes: []int{1500}, d: 10 * time.Second},
		{name: "bytes only/small frames", limits: Limits{BytesPerSec: 64_000}, sizes: []int{64}, d: 10 * time.Second},
		{name: "bytes only/mixed sizes", limits: Limits{BytesPerSec: 2e6}, sizes: []int{64, 1522, 576, 1000, 128}, d: 20 * time.Second},
		{name: "both set/pps binds", limits: Limits{PPS: 1000, BytesPerSec: 10e6}, sizes: []int{1000}, d: 10 * time.Second},
		{name: "both set/bytes bind", limits: Limits{PPS: 10_000, BytesPerSec: 1.25e6}, sizes: []int{1500}, d: 10 * time.Second},
		{name: "both set/bytes bind/mixed", limits: Limits{PPS: 20_000, BytesPerSec: 1e6, BurstBytes: 64_000}, sizes: []int{1522, 64, 700}, d: 15 * time.Second},
		{name: "both bind", limits: Limits{PPS: 1000, BytesPerSec: 1e6, BurstPackets: 20, BurstBytes: 20_000}, sizes: []int{1000}, d: 10 * time.Second},
		{name: "both bind/default bursts", limits: Limits{PPS: 2000, BytesPerSec: 3e6}, sizes: []int{1500}, d: 10 * time.Second},
		{name: "two budgets/class bytes bind", limits: Limits{PPS: 5000}, class: &Limits{BytesPerSec: 500_000}, sizes: []int{1000}, d: 10 * time.Second},
		{name: "two budgets/aggregate pps binds", limits: Limits{PPS: 300}, class: &Limits{BytesPerSec: 5e6}, sizes: []int{1200}, d: 10 * time.Second},
	}
	for _, c := range cases {
		// Everything the test needs to know about the configuration, merged
		// over the one or two budgets.
		e := c.limits.Effective()
		if c.class != nil {
			ce := c.class.Effective()
			e.BytesPerSec, e.BurstBytes = ce.BytesPerSec, ce.BurstBytes
		}
		avg, maxSize := 0.0, 0
		for _, n := range c.sizes {
			avg += float64(n) / float64(len(c.sizes))
			maxSize = max(maxSize, n)
		}
		secs := c.d.Seconds()
		idealPkts, idealBytes := math.Inf(1), math.Inf(1)
		bindPPS := math.Inf(1) // packets per second the budgets allow
		burstFrames := math.Inf(1)
		if e.PPS > 0 {
			idealPkts = e.PPS*secs + float64(e.BurstPackets)
			bindPPS = e.PPS
			burstFrames = float64(e.BurstPackets)
		}
		if e.BytesPerSec > 0 {
			idealBytes = e.BytesPerSec*secs + float64(e.BurstBytes)
			bindPPS = min(bindPPS, e.BytesPerSec/avg)
			burstFrames = min(burstFrames, float64(e.BurstBytes)/float64(maxSize))
		}
		// The lower bound applies to the limit that binds: whichever
		// admits fewer packets over the run.
		idealBound := min(idealPkts, idealBytes/avg)

		// Groups must not outgrow the buckets between them, or the
		// buckets overflow and waste tokens, as they should, and the ideal
		// no longer applies. At 5x the rate, a gap refills group/5 frames
		// on top of a remainder of less than one frame.
		bigGroup := max(1, min(16, int(5*(burstFrames-1))))
		for _, group := range []int{1, bigGroup} {
			name := fmt.Sprintf("%s/group=%d", c.name, group)
			t.Run(name, func(t *testing.T) {
				agg, err := New(c.limits, t0)
				if err != nil {
					t.Fatal(err)
				}
				budgets := []*Budget{agg}
				if c.class != nil {
					cls, err := New(*c.class, t0)
					if err != nil {
						t.Fatal(err)
					}
					budgets = append(budgets, cls)
				}
				pkts, bytes := offer(budgets, 5*bindPPS, c.d, group, c.sizes)
				t.Logf("admitted %d packets, %d bytes; ideal %.1f packets, %.0f bytes", pkts, bytes, idealPkts, idealBytes)
				if float64(pkts) > idealPkts+1 {
					t.Errorf("admitted %d packets; want at most %.1f packets/s x %v + burst %d + 1 = %.1f",
						pkts, e.PPS, c.d, e.BurstPackets, idealPkts+1)
				}
				if float64(bytes) > idealBytes+float64(maxSize) {
					t.Errorf("admitted %d bytes; want at most %.0f bytes/s x %v + burst %d + one frame = %.0f",
						bytes, e.BytesPerSec, c.d, e.BurstBytes, idealBytes+float64(maxSize))
				}
				if idealBound == idealPkts {
					if float64(pkts) < 0.999*idealPkts {
						t.Errorf("admitted %d packets; want at least 0.999 x %.1f = %.1f (pps binds)", pkts, idealPkts, 0.999*idealPkts)
					}
				}
				if idealBound == idealBytes/avg || math.Abs(idealPkts-idealBytes/avg) < 1 {
					if float64(bytes) < 0.999*idealBytes {
						t.Errorf("admitted %d bytes; want at least 0.999 x %.0f = %.0f (bytes bind)", bytes, idealBytes, 0.999*idealBytes)
					}
				}
			})
		}
	}
}
