package main

import (
	"testing"
	"time"
)

// simulate drives p from t0 for dur, waking at least step apart (or at
// the pacer's wait, whichever is later), and sending whatever it allows.
// stallAt/stall inject one late wake-up. It returns the send times of
// every packet and the last wake-up.
func simulate(p *pacer, t0 time.Time, dur, step, stallAt, stall time.Duration) (times []time.Duration, last time.Duration) {
	stalled := false
	for now := t0; now.Sub(t0) < dur; {
		if !stalled && stall > 0 && now.Sub(t0) >= stallAt {
			stalled = true
			now = now.Add(stall)
			continue
		}
		n, wait := p.next(now, 64)
		last = now.Sub(t0)
		if n > 0 {
			p.sent(n)
			for range n {
				times = append(times, now.Sub(t0))
			}
			continue
		}
		now = now.Add(max(step, wait))
	}
	return times, last
}

func TestPacerSchedule(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		pps, burst int64
		step       time.Duration // simulated wake-up granularity
	}{
		{5000, 10, 37 * time.Microsecond},
		{5000, 10, 1 * time.Millisecond},
		{1, 1, 100 * time.Millisecond},
		{333333, 64, 50 * time.Microsecond},
		{2000000, 64, 20 * time.Microsecond},
	} {
		p := newPacer(tc.pps, tc.burst, t0)
		times, last := simulate(p, t0, time.Second, tc.step, 0, 0)
		if want := p.due(last); int64(len(times)) != want || p.behind != 0 {
			t.Errorf("%+v: sent %d (behind %d) by %v, want %d", tc, len(times), p.behind, last, want)
		}
	}
}

// TestPacerCatchUp: a 20 ms stall at 5000 pps owes 100 packets; they are
// caught up at no more than twice the rate, with runs of at most burst,
// and nothing is forgiven.
func TestPacerCatchUp(t *testing.T) {
	t0 := time.Unix(0, 0)
	p := newPacer(5000, 10, t0)
	times, last := simulate(p, t0, time.Second, 10*time.Microsecond, 500*time.Millisecond, 20*time.Millisecond)
	if want := p.due(last); int64(len(times)) != want || p.behind != 0 {
		t.Fatalf("sent %d behind %d, want %d and 0", len(times), p.behind, want)
	}
	// In any window of w, at most burst + w*2*pps packets.
	for _, w := range []time.Duration{0, 100 * time.Microsecond, time.Millisecond, 10 * time.Millisecond} {
		limit := 10 + int(w.Seconds()*2*5000)
		j := 0
		for i := range times {
			for times[i]-times[j] > w {
				j++
			}
			if i-j+1 > limit {
				t.Fatalf("%d packets within %v at %v, limit %d", i-j+1, w, times[i], limit)
			}
		}
	}
}

func TestPacerForgivesLongStall(t *testing.T) {
	t0 := time.Unix(0, 0)
	p := newPacer(1000, 5, t0) // maxDebt 1000
	n, _ := p.next(t0.Add(3*time.Second), 64)
	if n != 5 || p.behind != 2000 {
		t.Fatalf("after 3 s stall: n=%d behind=%d, want 5 and 2000", n, p.behind)
	}
}

func TestPacerAt(t *testing.T) {
	p := newPacer(3, 1, time.Time{})
	for n, want := range []time.Duration{0, 333333334, 666666667, time.Second, 1333333334} {
		if got := p.at(int64(n)); got != want {
			t.Errorf("at(%d) = %d, want %d", n, got, want)
		}
		if p.due(p.at(int64(n))) < int64(n) {
			t.Errorf("due(at(%d)) < %d", n, n)
		}
	}
}
