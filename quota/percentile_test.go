package quota

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBilledRank(t *testing.T) {
	cases := []struct {
		n    int
		p    float64
		rank int
		free int
	}{
		{8640, 95, 8208, 432}, // 30 days of 5 minutes: 36 hours free
		{8928, 95, 8482, 446}, // 31 days: floor(446.4)
		{8064, 95, 7661, 403}, // 28 days: floor(403.2)
		{20, 95, 19, 1},
		{19, 95, 19, 0}, // 5% of 19 is 0.95: no free interval
		{1, 95, 1, 0},
		{100, 100, 100, 0},
		{1000, 95.5, 955, 45},
		{1000, 99.9, 999, 1},
		{3, 1, 1, 2},
		{0, 95, 0, 0},
	}
	for _, c := range cases {
		if r, f := BilledRank(c.n, c.p), FreeIntervals(c.n, c.p); r != c.rank || f != c.free {
			t.Errorf("n %d p %v: rank %d free %d, want %d %d", c.n, c.p, r, f, c.rank, c.free)
		}
	}
}

// TestNearestRankDefinition checks NearestRank against the definition
// spelled out: pad with zeros to n, sort, drop the top free intervals,
// bill the highest left.
func TestNearestRankDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		n := 1 + rng.IntN(300)
		got := rng.IntN(n + 1)
		s := make([]int64, got)
		for i := range s {
			s[i] = rng.Int64N(1000)
		}
		p := []float64{95, 50, 99, 90.5, 100}[rng.IntN(5)]
		all := make([]int64, n)
		copy(all, s)
		slices.Sort(all)
		kept := all[:n-FreeIntervals(n, p)]
		want := kept[len(kept)-1]
		orig := slices.Clone(s)
		if v := NearestRank(s, n, p); v != want {
			t.Fatalf("n %d p %v samples %v: %d, want %d", n, p, s, v, want)
		}
		if !slices.Equal(s, orig) {
			t.Fatal("NearestRank changed its input")
		}
	}
	// The text-book case: 1..100, 95th percentile is 95.
	s := make([]int64, 100)
	for i := range s {
		s[i] = int64(i + 1)
	}
	if v := NearestRank(s, 100, 95); v != 95 {
		t.Errorf("1..100: %d, want 95", v)
	}
	// Half the period missing: the missing half counts as zero.
	if v := NearestRank(s, 200, 95); v != 90 {
		t.Errorf("1..100 of 200: %d, want 90", v)
	}
	if v := NearestRank(s, 2000, 95); v != 0 {
		t.Errorf("1..100 of 2000: %d, want 0", v)
	}
}

func TestBytesToBPS(t *testing.T) {
	cases := []struct {
		b    int64
		d    time.Duration
		want uint64
	}{
		{3_750_000_000, 5 * time.Minute, 100_000_000},
		{3_749_999_999, 5 * time.Minute, 99_999_999}, // rounded down
		{0, time.Second, 0},
		{125, time.Second, 1000},
	}
	for _, c := range cases {
		if v := BytesToBPS(c.b, c.d); v != c.want {
			t.Errorf("%d bytes in %v: %d bit/s, want %d", c.b, c.d, v, c.want)
		}
	}
	// A quota computed from a rate never reads above it.
	rng := rand.New(rand.NewPCG(3, 4))
	for range 10000 {
		r := uint64(1 + rng.Int64N(1<<40))
		d := time.Duration(1+rng.Int64N(31*24*3600)) * time.Second
		q := rateBytes(rateOf(r), d)
		if BytesToBPS(q, d) > r {
			t.Fatalf("rate %d over %v: quota %d bytes bills %d", r, d, q, BytesToBPS(q, d))
		}
		if BytesToBPS(q+1, d)+1 < r {
			t.Fatalf("rate %d over %v: quota %d is short", r, d, q)
		}
	}
}
