package bucket

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func mustNew(t *testing.T, l Limits, now int64) *Budget {
	t.Helper()
	b, err := New(l, now)
	if err != nil {
		t.Fatalf("New(%+v): %v", l, err)
	}
	return b
}

// tokens returns the tokens in b's packet and byte buckets at now, -1 for a
// dimension without a bucket. It reads the buckets without charging.
func tokens(b *Budget, now int64) (pkts, bytes float64) {
	pkts, bytes = -1, -1
	if b.pkts != nil {
		pkts = b.pkts.TokensAt(stamp(now))
	}
	if b.bytes != nil {
		bytes = b.bytes.TokensAt(stamp(now))
	}
	return pkts, bytes
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestValidateRejects(t *testing.T) {
	for _, tt := range []struct {
		name string
		l    Limits
		want []string // fragments of the message
	}{
		{"negative pps", Limits{PPS: -5}, []string{"--pps -5 packets/s is negative", "0 for no packet limit"}},
		{"NaN pps", Limits{PPS: math.NaN()}, []string{"--pps NaN is not a rate"}},
		{"Inf pps", Limits{PPS: math.Inf(1)}, []string{"--pps +Inf is not a rate", "0 for no packet limit"}},
		{"-Inf pps", Limits{PPS: math.Inf(-1)}, []string{"--pps -Inf is not a rate"}},
		{"negative bps", Limits{BytesPerSec: -1}, []string{"--bps -1 bytes/s is negative", "0 for no byte limit"}},
		{"NaN bps", Limits{BytesPerSec: math.NaN()}, []string{"--bps NaN is not a rate"}},
		{"Inf bps", Limits{BytesPerSec: math.Inf(1)}, []string{"--bps +Inf is not a rate"}},
		{"negative burst", Limits{PPS: 10, BurstPackets: -1}, []string{"--burst -1 is negative", "0 for the default (10ms of --pps)"}},
		{"negative burst-bytes", Limits{BytesPerSec: 1e6, BurstBytes: -1}, []string{"--burst-bytes -1b is negative", "at least 1522b"}},
		{"burst-bytes below a frame", Limits{BytesPerSec: 1e6, BurstBytes: 100},
			[]string{"--burst-bytes 100b is smaller than the largest frame, 1522 bytes with two VLAN tags; use at least 1522b"}},
		{"burst-bytes one short", Limits{BytesPerSec: 1e6, BurstBytes: MaxFrame - 1}, []string{"--burst-bytes 1521b is smaller"}},
		{"burst-bytes below a frame, no rate", Limits{BurstBytes: 1}, []string{"--burst-bytes 1b is smaller"}},
		{"bad rate under block", Limits{Block: true, PPS: -1}, []string{"--pps"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.l.Validate()
			if err == nil {
				t.Fatalf("Validate(%+v) = nil; want an error", tt.l)
			}
			if !errors.Is(err, ErrInvalidLimits) {
				t.Errorf("errors.Is(%v, ErrInvalidLimits) = false", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error %q; want it to contain %q", err, w)
				}
			}
			if b, err := New(tt.l, t0); err == nil || b != nil {
				t.Errorf("New(%+v) = %v, %v; want nil, error", tt.l, b, err)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	for _, l := range []Limits{
		{},
		{Block: true},
		{PPS: 1},
		{PPS: 0.5},
		{BytesPerSec: 1},
		{BytesPerSec: 1e6, BurstBytes: MaxFrame},
		{PPS: 1e9, BytesPerSec: 1e12, BurstPackets: 1, BurstBytes: 1 << 30},
		// A burst without its rate is accepted and unused.
		{BurstPackets: 10},
		{BurstBytes: 4 * MaxFrame},
	} {
		if err := l.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v; want nil", l, err)
		}
	}
}

func TestEffective(t *testing.T) {
	for _, tt := range []struct {
		in, want Limits
	}{
		{Limits{}, Limits{}},
		{Limits{PPS: 1000}, Limits{PPS: 1000, BurstPackets: 10}},
		{Limits{PPS: 150}, Limits{PPS: 150, BurstPackets: 2}}, // 1.5 rounded up
		{Limits{PPS: 50}, Limits{PPS: 50, BurstPackets: 1}},   // at least 1
		{Limits{PPS: 1000, BurstPackets: 3}, Limits{PPS: 1000, BurstPackets: 3}},
		{Limits{BytesPerSec: 1e6}, Limits{BytesPerSec: 1e6, BurstBytes: 10_000}},
		{Limits{BytesPerSec: 1000}, Limits{BytesPerSec: 1000, BurstBytes: MaxFrame}}, // at least a frame
		{Limits{BytesPerSec: 1e300}, Limits{BytesPerSec: 1e300, BurstBytes: maxDefaultBurst}},
		{Limits{BytesPerSec: 1e6, BurstBytes: 5000}, Limits{BytesPerSec: 1e6, BurstBytes: 5000}},
		{Limits{BurstPackets: 7, BurstBytes: 9000}, Limits{BurstPackets: 7, BurstBytes: 9000}}, // no rates: as given
		{Limits{Block: true, PPS: 100}, Limits{Block: true, PPS: 100, BurstPackets: 1}},
	} {
		if got := tt.in.Effective(); got != tt.want {
			t.Errorf("%+v.Effective() = %+v; want %+v", tt.in, got, tt.want)
		}
	}
}

func TestUnlimited(t *testing.T) {
	for _, tt := range []struct {
		l    Limits
		want bool
	}{
		{Limits{}, true},
		{Limits{BurstPackets: 5, BurstBytes: 5000}, true},
		{Limits{Block: true}, false},
		{Limits{PPS: 1}, false},
		{Limits{BytesPerSec: 1}, false},
	} {
		if got := tt.l.Unlimited(); got != tt.want {
			t.Errorf("%+v.Unlimited() = %v; want %v", tt.l, got, tt.want)
		}
	}
}

func TestNewStartsFullAndKeepsConfiguredLimits(t *testing.T) {
	l := Limits{PPS: 100, BytesPerSec: 1e5, BurstBytes: 4000}
	b := mustNew(t, l, t0)
	if got := b.Limits(); got != l {
		t.Errorf("Limits() = %+v; want as configured %+v", got, l)
	}
	if p, by := b.Fill(t0); p != 1 || by != 1 {
		t.Errorf("Fill at start = %v, %v; want 1, 1", p, by)
	}
	if p, by := tokens(b, t0); p != 1 || by != 4000 {
		t.Errorf("tokens at start = %v, %v; want 1, 4000", p, by)
	}
	// Also at the zero time, which a careless caller might pass.
	z := mustNew(t, Limits{PPS: 100, BurstPackets: 5}, 0)
	if p, _ := tokens(z, 0); p != 5 {
		t.Errorf("tokens at the zero time = %v; want 5", p)
	}
}

func TestZeroValues(t *testing.T) {
	var b Budget
	for i := range 1000 {
		if got := Admit(t0, 9000, &b); got != -1 {
			t.Fatalf("frame %d: zero Budget refused", i)
		}
	}
	u := mustNew(t, Limits{}, t0)
	for i := range 1000 {
		if got := Admit(t0, MaxFrame, u); got != -1 {
			t.Fatalf("frame %d: Limits{} refused", i)
		}
	}
	if p, by := u.Fill(t0); p != 1 || by != 1 {
		t.Errorf("unlimited Fill = %v, %v; want 1, 1", p, by)
	}
	if got := Admit(t0, 100); got != -1 {
		t.Errorf("Admit with no budgets = %d; want -1", got)
	}
	if got := Admit(t0, 100, nil, nil); got != -1 {
		t.Errorf("Admit with nil budgets = %d; want -1", got)
	}
}

func TestBlock(t *testing.T) {
	b := mustNew(t, Limits{Block: true}, t0)
	other := mustNew(t, Limits{PPS: 10, BurstPackets: 3}, t0)
	for range 10 {
		if b.Fits(t0, 64) {
			t.Fatal("blocked budget fits a frame")
		}
		if got := Admit(t0, 64, other, b); got != 1 {
			t.Fatalf("Admit = %d; want 1 (the blocked budget)", got)
		}
	}
	if b.Fits(at(t0, time.Hour), 64) {
		t.Fatal("blocked budget fits a frame an hour later")
	}
	if p, _ := tokens(other, t0); p != 3 {
		t.Errorf("other budget holds %v packets; want 3: a blocked frame charges nothing", p)
	}
	if err := b.SetLimits(Limits{}, at(t0, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := Admit(at(t0, 10*time.Second), 64, b); got != -1 {
		t.Errorf("Admit after unblocking = %d; want -1", got)
	}
}

// A frame that the byte bucket refuses must leave the packet bucket as it
// was, although the packet bucket alone would have admitted it.
func TestRefusedFrameChargesNothing(t *testing.T) {
	b := mustNew(t, Limits{PPS: 1000, BurstPackets: 10, BytesPerSec: 10_000, BurstBytes: 3000}, t0)
	if got := Admit(t0, 1500, b); got != -1 {
		t.Fatalf("first frame refused: %d", got)
	}
	// 1500 bytes left.
	if got := Admit(t0, 1501, b); got != 0 {
		t.Fatalf("Admit(1501 bytes) = %d; want 0 (byte bucket refuses)", got)
	}
	if b.Fits(t0, 1501) {
		t.Fatal("Fits(1501 bytes) = true with 1500 bytes left")
	}
	if p, by := tokens(b, t0); p != 9 || by != 1500 {
		t.Errorf("after a refused frame: %v packets, %v bytes; want 9, 1500 (refusal charged something)", p, by)
	}
	// Exactly what is left fits.
	if got := Admit(t0, 1500, b); got != -1 {
		t.Fatalf("Admit(1500 bytes) = %d; want -1", got)
	}
	if p, by := tokens(b, t0); p != 8 || by != 0 {
		t.Errorf("after two frames: %v packets, %v bytes; want 8, 0", p, by)
	}
	// The other way round: packets run out, bytes must stay.
	b = mustNew(t, Limits{PPS: 1, BurstPackets: 1, BytesPerSec: 1e6, BurstBytes: 10_000}, t0)
	Admit(t0, 1000, b)
	if got := Admit(t0, 1000, b); got != 0 {
		t.Fatalf("Admit = %d; want 0 (packet bucket refuses)", got)
	}
	if p, by := tokens(b, t0); p != 0 || by != 9000 {
		t.Errorf("after a refused frame: %v packets, %v bytes; want 0, 9000", p, by)
	}
}

func TestAdmitTwoBudgetsChargesNeitherOnRefusal(t *testing.T) {
	agg := mustNew(t, Limits{PPS: 1000, BurstPackets: 10, BytesPerSec: 1e6, BurstBytes: 100_000}, t0)
	class := mustNew(t, Limits{BytesPerSec: 2000, BurstBytes: 2000}, t0)

	if got := Admit(t0, 1500, agg, class); got != -1 {
		t.Fatalf("first frame: Admit = %d; want -1", got)
	}
	// The class has 500 bytes left: it refuses, and the aggregate, which
	// was asked first and had room, must not be charged.
	if got := Admit(t0, 1500, agg, class); got != 1 {
		t.Fatalf("Admit = %d; want 1 (the class refuses)", got)
	}
	if p, by := tokens(agg, t0); p != 9 || by != 98_500 {
		t.Errorf("aggregate after the class refused: %v packets, %v bytes; want 9, 98500", p, by)
	}
	if _, by := tokens(class, t0); by != 500 {
		t.Errorf("class after refusing: %v bytes; want 500", by)
	}
	// Order does not change the outcome, only the index.
	if got := Admit(t0, 1500, class, agg); got != 0 {
		t.Fatalf("Admit(class, agg) = %d; want 0", got)
	}
	if got := Admit(t0, 1500, nil, agg, nil, class); got != 3 {
		t.Fatalf("Admit(nil, agg, nil, class) = %d; want 3", got)
	}
	if p, by := tokens(agg, t0); p != 9 || by != 98_500 {
		t.Errorf("aggregate after three refusals: %v packets, %v bytes; want 9, 98500", p, by)
	}
	// A small frame passes both.
	if got := Admit(t0, 500, agg, class); got != -1 {
		t.Fatalf("Admit(500 bytes) = %d; want -1", got)
	}
	if p, by := tokens(agg, t0); p != 8 || by != 98_000 {
		t.Errorf("aggregate: %v packets, %v bytes; want 8, 98000", p, by)
	}
}

func TestFrameLargerThanBurstNeverFits(t *testing.T) {
	b := mustNew(t, Limits{BytesPerSec: 1e9, BurstBytes: MaxFrame}, t0)
	if !b.Fits(t0, MaxFrame) {
		t.Error("a MaxFrame frame does not fit a MaxFrame-deep bucket")
	}
	if b.Fits(at(t0, time.Hour), MaxFrame+1) {
		t.Error("a frame deeper than the bucket fits")
	}
}

func TestSetLimits(t *testing.T) {
	t.Run("a lower rate takes effect at once", func(t *testing.T) {
		b := mustNew(t, Limits{PPS: 1000, BurstPackets: 10}, t0)
		for range 10 {
			Admit(t0, 64, b)
		}
		if err := b.SetLimits(Limits{PPS: 100, BurstPackets: 10}, t0); err != nil {
			t.Fatal(err)
		}
		// At 1000 pps, 5 ms would give 5 packets; at 100 pps, half of one.
		if b.Fits(at(t0, ms(5)), 64) {
			t.Error("frame fits 5 ms after lowering the rate to 100 pps")
		}
		if !b.Fits(at(t0, ms(10)), 64) {
			t.Error("frame does not fit 10 ms after lowering the rate to 100 pps")
		}
	})
	t.Run("the old rate applies up to the change", func(t *testing.T) {
		b := mustNew(t, Limits{PPS: 1000, BurstPackets: 100}, t0)
		for range 100 {
			Admit(t0, 64, b)
		}
		if err := b.SetLimits(Limits{PPS: 10, BurstPackets: 100}, at(t0, ms(20))); err != nil {
			t.Fatal(err)
		}
		if p, _ := tokens(b, at(t0, ms(20))); math.Abs(p-20) > 1e-9 {
			t.Errorf("tokens after 20 ms at 1000 pps = %v; want 20", p)
		}
		if p, _ := tokens(b, at(t0, ms(120))); math.Abs(p-21) > 1e-9 {
			t.Errorf("tokens 100 ms later at 10 pps = %v; want 21", p)
		}
	})
	t.Run("fill is kept as far as it fits", func(t *testing.T) {
		b := mustNew(t, Limits{PPS: 1000, BurstPackets: 100, BytesPerSec: 1e6, BurstBytes: 100_000}, t0)
		for range 30 {
			Admit(t0, 1000, b)
		}
		// 70 packets, 70 000 bytes left. A shallower bucket cuts them.
		if err := b.SetLimits(Limits{PPS: 1000, BurstPackets: 50, BytesPerSec: 1e6, BurstBytes: 50_000}, t0); err != nil {
			t.Fatal(err)
		}
		if p, by := tokens(b, t0); p != 50 || by != 50_000 {
			t.Errorf("after shrinking: %v packets, %v bytes; want 50, 50000", p, by)
		}
		if p, by := b.Fill(t0); p != 1 || by != 1 {
			t.Errorf("Fill after shrinking = %v, %v; want 1, 1", p, by)
		}
		// A deeper bucket keeps the tokens, it does not top them up.
		if err := b.SetLimits(Limits{PPS: 1000, BurstPackets: 200, BytesPerSec: 1e6, BurstBytes: 200_000}, t0); err != nil {
			t.Fatal(err)
		}
		if p, by := tokens(b, t0); p != 50 || by != 50_000 {
			t.Errorf("after deepening: %v packets, %v bytes; want 50, 50000", p, by)
		}
		if p, by := b.Fill(t0); p != 0.25 || by != 0.25 {
			t.Errorf("Fill after deepening = %v, %v; want 0.25, 0.25", p, by)
		}
		// 50 frames pass, the 51st does not.
		for i := range 50 {
			if got := Admit(t0, 1000, b); got != -1 {
				t.Fatalf("frame %d refused after deepening", i)
			}
		}
		if got := Admit(t0, 1000, b); got != 0 {
			t.Errorf("frame 51 admitted with an empty bucket")
		}
	})
	t.Run("dimensions come and go", func(t *testing.T) {
		b := mustNew(t, Limits{}, t0)
		if err := b.SetLimits(Limits{PPS: 10, BurstPackets: 2}, t0); err != nil {
			t.Fatal(err)
		}
		if p, by := tokens(b, t0); p != 2 || by != -1 {
			t.Errorf("new packet bucket: %v packets, %v bytes; want full (2) and no byte bucket", p, by)
		}
		Admit(t0, 64, b)
		Admit(t0, 64, b)
		if got := Admit(t0, 64, b); got != 0 {
			t.Fatalf("third frame admitted from a 2-packet bucket")
		}
		if err := b.SetLimits(Limits{BytesPerSec: 1e6}, t0); err != nil {
			t.Fatal(err)
		}
		if p, by := tokens(b, t0); p != -1 || by != 10_000 {
			t.Errorf("after swapping: %v packets, %v bytes; want no packet bucket and a full byte one (10000)", p, by)
		}
		if got := Admit(t0, 64, b); got != -1 {
			t.Errorf("frame refused after lifting the packet limit")
		}
	})
	t.Run("invalid limits change nothing", func(t *testing.T) {
		l := Limits{PPS: 10, BurstPackets: 2}
		b := mustNew(t, l, t0)
		Admit(t0, 64, b)
		err := b.SetLimits(Limits{PPS: 1e6, BytesPerSec: 1e6, BurstBytes: 100}, t0)
		if !errors.Is(err, ErrInvalidLimits) || !strings.Contains(err.Error(), "--burst-bytes 100b") {
			t.Fatalf("SetLimits(bad) = %v; want the --burst-bytes error", err)
		}
		if b.Limits() != l {
			t.Errorf("Limits() = %+v after a rejected SetLimits; want %+v", b.Limits(), l)
		}
		if p, by := tokens(b, t0); p != 1 || by != -1 {
			t.Errorf("after a rejected SetLimits: %v packets, %v bytes; want 1, no byte bucket", p, by)
		}
	})
}

// A clock reading earlier than one already used must not make the buckets
// count the time in between twice.
func TestClockStepBack(t *testing.T) {
	b := mustNew(t, Limits{PPS: 10, BurstPackets: 5}, t0)
	t1 := at(t0, time.Second)
	for range 3 {
		Admit(t1, 64, b)
	}
	// 2 left at t1. A frame stamped a second earlier is charged at t1.
	if got := Admit(t0, 64, b); got != -1 {
		t.Fatalf("Admit at an earlier time = %d; want -1", got)
	}
	if p, _ := tokens(b, t1); p != 1 {
		t.Errorf("tokens at t1 = %v; want 1 (the step back refilled the bucket)", p)
	}
	if b.Fits(t0, 64) != true || b.Fits(at(t1, -ms(500)), 64) != true {
		t.Error("Fits at an earlier time does not see the bucket as at the latest time")
	}
	if p, _ := b.Fill(t0); p != 0.2 {
		t.Errorf("Fill at an earlier time = %v; want 0.2 (as at t1)", p)
	}
}

func TestFill(t *testing.T) {
	b := mustNew(t, Limits{PPS: 100, BurstPackets: 4, BytesPerSec: 1e5, BurstBytes: 10_000}, t0)
	Admit(t0, 2500, b)
	if p, by := b.Fill(t0); p != 0.75 || by != 0.75 {
		t.Errorf("Fill = %v, %v; want 0.75, 0.75", p, by)
	}
	if p, by := b.Fill(at(t0, time.Minute)); p != 1 || by != 1 {
		t.Errorf("Fill a minute later = %v, %v; want 1, 1", p, by)
	}
	c := mustNew(t, Limits{BytesPerSec: 1e5, BurstBytes: 10_000}, t0)
	Admit(t0, 5000, c)
	if p, by := c.Fill(t0); p != 1 || by != 0.5 {
		t.Errorf("Fill without a packet limit = %v, %v; want 1, 0.5", p, by)
	}
}
