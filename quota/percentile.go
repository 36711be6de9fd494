package quota

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// BilledRank returns the 1-based rank, in ascending order, of the sample a
// nearest-rank percentile p (in (0, 100]) bills among n samples:
// ceil(p/100·n), at least 1. With p = 95 and n = 8640 it is 8208.
func BilledRank(n int, p float64) int {
	if n <= 0 {
		return 0
	}
	var r int
	if p == math.Trunc(p) { // exact integer arithmetic for the usual case
		r = (int(p)*n + 99) / 100
	} else {
		// A tolerance absorbs float error: 95.5% of 1000 is 955, not 956.
		r = int(math.Ceil(p*float64(n)/100 - 1e-9))
	}
	return min(max(r, 1), n)
}

// FreeIntervals returns how many of a period's n intervals percentile p
// leaves unbilled: the samples above the billed rank. For p = 95 it is
// floor(5%·n): 432 of the 8640 intervals of 30 days of 5 minutes.
func FreeIntervals(n int, p float64) int { return n - BilledRank(n, p) }

// NearestRank returns the nearest-rank percentile p of the samples,
// counting the n-len(samples) missing samples as zero: sort, drop the top
// FreeIntervals(n, p), return the highest left. It sorts a copy; samples is
// not changed. With n < len(samples), n is taken as len(samples).
func NearestRank(samples []int64, n int, p float64) int64 {
	n = max(n, len(samples))
	if n == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	// The billed sample is at rank r among n ascending values, the first
	// n-len(s) of which are the missing zeros.
	i := BilledRank(n, p) - 1 - (n - len(s))
	if i < 0 {
		return 0
	}
	return s[i]
}

// BytesToBPS converts the bytes of one interval of length d to its average
// rate in bits per second, rounded down (so a sample at a quota from
// rateBytes never reads above its rate).
func BytesToBPS(b int64, d time.Duration) uint64 {
	if b <= 0 || d <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(b), 8*uint64(time.Second))
	if hi >= uint64(d) {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, uint64(d))
	return q
}
