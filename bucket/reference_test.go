package bucket

import (
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// refBudget is the Budget as it was built on golang.org/x/time/rate, with
// time.Time: the reference that the integer-nanosecond Budget must match
// decision for decision and token for token.
type refBudget struct {
	block       bool
	pkts, bytes *rate.Limiter
	last        time.Time
}

func refLimiter(lim *rate.Limiter, perSec float64, burst int, now time.Time) *rate.Limiter {
	if perSec == 0 {
		return nil
	}
	if lim == nil {
		return rate.NewLimiter(rate.Limit(perSec), burst)
	}
	lim.SetLimitAt(now, rate.Limit(perSec))
	lim.SetBurstAt(now, burst)
	return lim
}

func (b *refBudget) clamp(now time.Time) time.Time {
	if now.Before(b.last) {
		return b.last
	}
	return now
}

func (b *refBudget) set(l Limits, now time.Time) {
	now = b.clamp(now)
	e := l.Effective()
	b.pkts = refLimiter(b.pkts, e.PPS, e.BurstPackets, now)
	b.bytes = refLimiter(b.bytes, e.BytesPerSec, e.BurstBytes, now)
	b.block, b.last = l.Block, now
}

func (b *refBudget) fitsN(now time.Time, k, n int) bool {
	if b.block {
		return false
	}
	now = b.clamp(now)
	if b.pkts != nil && b.pkts.TokensAt(now) < float64(k) {
		return false
	}
	return b.bytes == nil || n <= 0 || b.bytes.TokensAt(now) >= float64(n)
}

func (b *refBudget) takeN(now time.Time, k, n int) {
	if b.block {
		return
	}
	now = b.clamp(now)
	b.last = now
	if b.pkts != nil {
		b.pkts.AllowN(now, k)
	}
	if b.bytes != nil && n > 0 {
		b.bytes.AllowN(now, n)
	}
}

func (b *refBudget) tokens(now time.Time) (pkts, bytes float64) {
	pkts, bytes = -1, -1
	if b.pkts != nil {
		pkts = b.pkts.TokensAt(now)
	}
	if b.bytes != nil {
		bytes = b.bytes.TokensAt(now)
	}
	return pkts, bytes
}

// The Budget on integer nanoseconds decides as the one on x/time/rate
// did, and holds the same tokens, over random frames, limit changes,
// clock steps back and charges without a check.
func TestMatchesXTimeRate(t *testing.T) {
	limits := []Limits{
		{},
		{PPS: 1000},
		{PPS: 333.3, BurstPackets: 7},
		{BytesPerSec: 1e6},
		{BytesPerSec: 64_000, BurstBytes: 3000},
		{PPS: 5000, BytesPerSec: 1.25e6},
		{PPS: 50, BurstPackets: 1, BytesPerSec: 2e6, BurstBytes: MaxFrame},
		{PPS: 1e6, BytesPerSec: 1e9},
		{PPS: 100, Block: true},
	}
	base := time.Unix(1_700_000_000, 0)
	for seed := uint64(1); seed <= 20; seed++ {
		rnd := rand.New(rand.NewPCG(seed, 7))
		l := limits[rnd.IntN(len(limits))]
		b := mustNew(t, l, 0)
		var ref refBudget
		ref.last = base
		ref.set(l, base)
		var now int64
		for i := range 20_000 {
			switch r := rnd.IntN(100); {
			case r < 1:
				now -= rnd.Int64N(int64(time.Millisecond)) // a clock step back
			case r < 60:
				now += rnd.Int64N(int64(200 * time.Microsecond))
			default:
				now += rnd.Int64N(int64(5 * time.Millisecond))
			}
			at := base.Add(time.Duration(now))
			k, n := 1+rnd.IntN(3), 60+rnd.IntN(MaxFrame-59)
			switch r := rnd.IntN(100); {
			case r < 2:
				l = limits[rnd.IntN(len(limits))]
				if err := b.SetLimits(l, now); err != nil {
					t.Fatal(err)
				}
				ref.set(l, at)
			case r < 5:
				b.TakeN(now, k, n) // a charge without a check
				ref.takeN(at, k, n)
			default:
				got, want := b.FitsN(now, k, n), ref.fitsN(at, k, n)
				if got != want {
					t.Fatalf("seed %d, step %d, %+v: FitsN(%d, %d) = %v; x/time/rate says %v", seed, i, l, k, n, got, want)
				}
				if got {
					b.TakeN(now, k, n)
					ref.takeN(at, k, n)
				}
			}
			gp, gb := tokens(b, b.clamp(now))
			wp, wb := ref.tokens(ref.clamp(at))
			if gp != wp || gb != wb {
				t.Fatalf("seed %d, step %d, %+v: tokens %v, %v; x/time/rate has %v, %v", seed, i, l, gp, gb, wp, wb)
			}
		}
	}
}
