package detect

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// load is a port's steady traffic: frames per second and bytes per frame in
// each direction.
type load struct {
	rxPPS, rxFrame, txPPS, txFrame float64
}

var (
	flood = load{rxPPS: 400_000, rxFrame: 250} // seed 001's attacker
	quiet = load{rxPPS: 1000, rxFrame: 500, txPPS: 800, txFrame: 900}
	idle  = load{}
)

// sim is a manual clock and a set of port counters advanced by it.
type sim struct {
	t   *testing.T
	tr  *Tracker
	now time.Time
	c   map[string]Sample
}

func newSim(t *testing.T, cfg Config) *sim {
	t.Helper()
	tr, err := NewTracker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Config() != cfg {
		t.Fatalf("Config() = %+v; want %+v", tr.Config(), cfg)
	}
	return &sim{t: t, tr: tr, now: t0, c: map[string]Sample{}}
}

// observe reads the current counters at the current time.
func (s *sim) observe() []Flag {
	return s.tr.Observe(s.now, s.c)
}

// step advances the clock by dt, each named port's counters by its load
// over dt, and observes. Ports not in loads keep their counters.
func (s *sim) step(dt time.Duration, loads map[string]load) []Flag {
	s.now = s.now.Add(dt)
	sec := dt.Seconds()
	for name, l := range loads {
		c := s.c[name]
		c.RxPackets += uint64(math.Round(l.rxPPS * sec))
		c.RxBytes += uint64(math.Round(l.rxPPS * sec * l.rxFrame))
		c.TxPackets += uint64(math.Round(l.txPPS * sec))
		c.TxBytes += uint64(math.Round(l.txPPS * sec * l.txFrame))
		s.c[name] = c
	}
	return s.observe()
}

func ports(f []Flag) []string {
	var out []string
	for _, x := range f {
		out = append(out, x.Port)
	}
	return out
}

func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

func TestFloodFlaggedAfterFlagAfter(t *testing.T) {
	for _, tt := range []struct {
		interval, flagAfter time.Duration
		wantAt              time.Duration // after the flood starts
	}{
		{500 * time.Millisecond, time.Second, time.Second}, // the default: second observation
		{300 * time.Millisecond, time.Second, 1200 * time.Millisecond},
		{500 * time.Millisecond, 1100 * time.Millisecond, 1500 * time.Millisecond},
		{500 * time.Millisecond, 0, 500 * time.Millisecond},
		{500 * time.Millisecond, 400 * time.Millisecond, 500 * time.Millisecond},
		{time.Second, 5 * time.Second, 5 * time.Second},
	} {
		cfg := DefaultConfig()
		cfg.Interval, cfg.FlagAfter = tt.interval, tt.flagAfter
		s := newSim(t, cfg)
		loads := map[string]load{"vm-1": flood, "vm-2": quiet}
		s.c["vm-1"], s.c["vm-2"] = Sample{}, Sample{}
		if f := s.observe(); len(f) != 0 {
			t.Fatalf("baseline flagged %v", ports(f))
		}
		var got []Flag
		for s.now.Sub(t0) < 10*time.Minute {
			f := s.step(tt.interval, loads)
			if len(f) > 0 {
				if got != nil {
					t.Errorf("%v/%v: flagged again at %v: %v", tt.interval, tt.flagAfter, s.now.Sub(t0), ports(f))
				}
				got = append([]Flag(nil), f...)
			}
		}
		if len(got) != 1 || got[0].Port != "vm-1" {
			t.Fatalf("%v/%v: flagged %v; want [vm-1] once", tt.interval, tt.flagAfter, ports(got))
		}
		f := got[0]
		if f.At.Sub(t0) != tt.wantAt || !f.Since.Equal(t0) {
			t.Errorf("%v/%v: flagged at +%v since +%v; want at +%v since +0s",
				tt.interval, tt.flagAfter, f.At.Sub(t0), f.Since.Sub(t0), tt.wantAt)
		}
		if r := f.Rates.FromVM; r.PPS != 400_000 || r.BitsPerSec != 800e6 || r.AvgFrame != 250 || f.Rates.Span != tt.interval {
			t.Errorf("flag rates %+v span %v; want 400000 pps, 800 Mbit/s, 250 B over %v", r, f.Rates.Span, tt.interval)
		}
	}
}

func TestWellBehavedNeverFlagged(t *testing.T) {
	s := newSim(t, DefaultConfig())
	// Just under both thresholds: 49999 pps of 2000-byte frames is
	// 799.984 Mbit/s.
	busy := load{rxPPS: 49_999, rxFrame: 2000, txPPS: 49_999, txFrame: 2000}
	loads := map[string]load{"vm-quiet": quiet, "vm-busy": busy, "vm-idle": idle}
	for name := range loads {
		s.c[name] = Sample{}
	}
	s.observe()
	for range 1200 { // 10 minutes
		if f := s.step(500*time.Millisecond, loads); len(f) != 0 {
			t.Fatalf("at +%v flagged %v", s.now.Sub(t0), ports(f))
		}
	}
	if got := s.tr.AppendFlagged(nil); len(got) != 0 {
		t.Errorf("AppendFlagged = %v; want none", ports(got))
	}
}

func TestShortBurstsNotFlagged(t *testing.T) {
	s := newSim(t, DefaultConfig())
	s.c["vm-1"] = Sample{}
	s.observe()
	burst := map[string]load{"vm-1": flood}
	calm := map[string]load{"vm-1": quiet}
	// One interval (500 ms) of flood between calm intervals, for a minute:
	// never 1 s in a row.
	for i := range 120 {
		l := calm
		if i%2 == 0 {
			l = burst
		}
		if f := s.step(500*time.Millisecond, l); len(f) != 0 {
			t.Fatalf("at +%v flagged %v", s.now.Sub(t0), ports(f))
		}
	}
	// A 900 ms burst read at 500 ms: one interval fully above, one with
	// 400 ms of flood and 100 ms of calm, still above on average. That is
	// 1 s above as the tracker sees it, and is flagged: the tracker can
	// only see whole intervals.
	s.step(500*time.Millisecond, calm)
	s.step(500*time.Millisecond, burst)
	if f := s.step(500*time.Millisecond, map[string]load{"vm-1": {rxPPS: 0.8*400_000 + 0.2*1000, rxFrame: 250}}); len(f) != 1 {
		t.Errorf("900 ms burst: flagged %v; want vm-1 (two intervals above)", ports(f))
	}
}

func TestReArm(t *testing.T) {
	cfg := DefaultConfig() // ReArmAfter 10 s
	s := newSim(t, cfg)
	s.c["vm-1"] = Sample{}
	s.observe()
	on := map[string]load{"vm-1": flood}
	off := map[string]load{"vm-1": quiet}
	run := func(d time.Duration, l map[string]load) (flags []string) {
		for end := s.now.Add(d); s.now.Before(end); {
			flags = append(flags, ports(s.step(500*time.Millisecond, l))...)
		}
		return flags
	}
	if got := run(2*time.Second, on); len(got) != 1 {
		t.Fatalf("flood: flagged %v; want once", got)
	}
	if got := s.tr.AppendFlagged(nil); len(got) != 1 || got[0].Port != "vm-1" || !got[0].Since.Equal(t0) ||
		!got[0].At.Equal(t0.Add(time.Second)) || got[0].Rates.FromVM.PPS != 400_000 {
		t.Errorf("AppendFlagged = %+v; want vm-1 since t0, at +1s, 400000 pps", got)
	}
	// Calm for less than ReArmAfter, then a new flood: same episode.
	if got := run(9500*time.Millisecond, off); len(got) != 0 {
		t.Fatalf("calm: flagged %v", got)
	}
	if got := run(5*time.Second, on); len(got) != 0 {
		t.Fatalf("flood after %v of calm: flagged %v; want nothing (not re-armed)", 9500*time.Millisecond, got)
	}
	// Calm for ReArmAfter re-arms; the next flood is flagged after FlagAfter.
	run(cfg.ReArmAfter, off)
	if got := s.tr.AppendFlagged(nil); len(got) != 0 {
		t.Errorf("after re-arm AppendFlagged = %v; want none", ports(got))
	}
	start := s.now
	if got := run(500*time.Millisecond, on); len(got) != 0 {
		t.Fatalf("first interval of a new flood flagged %v", got)
	}
	f := s.step(500*time.Millisecond, on)
	if len(f) != 1 || !f[0].Since.Equal(start) {
		t.Fatalf("new flood: flags %+v; want vm-1 since %v", f, start)
	}
}

func TestDirectionsAndBitRate(t *testing.T) {
	toVM := load{txPPS: 400_000, txFrame: 250}
	bulk := load{rxPPS: 70_000, rxFrame: 1500} // 840 Mbit/s at 70 Kpps
	for _, tt := range []struct {
		name string
		th   Threshold
		l    load
		want bool
	}{
		{"from_vm flood", DefaultThreshold(), flood, true},
		{"from_vm ignores to_vm", DefaultThreshold(), toVM, false},
		{"to_vm", Threshold{PPS: 50_000, Direction: ToVM}, toVM, true},
		{"to_vm ignores from_vm", Threshold{PPS: 50_000, Direction: ToVM}, flood, false},
		{"either, from", Threshold{PPS: 50_000, Direction: Either}, flood, true},
		{"either, to", Threshold{PPS: 50_000, Direction: Either}, toVM, true},
		{"bit rate only", Threshold{BitsPerSecond: 800e6}, bulk, true},
		{"bit rate only, small frames", Threshold{BitsPerSecond: 800e6}, flood, false}, // exactly 800 Mbit/s: not above
		{"pps only, big frames", Threshold{PPS: 100_000}, bulk, false},
	} {
		cfg := DefaultConfig()
		cfg.Threshold = tt.th
		s := newSim(t, cfg)
		s.c["p"] = Sample{}
		s.observe()
		s.step(500*time.Millisecond, map[string]load{"p": tt.l})
		got := len(s.step(500*time.Millisecond, map[string]load{"p": tt.l})) == 1
		if got != tt.want {
			t.Errorf("%s: flagged %v; want %v", tt.name, got, tt.want)
		}
	}
}

func TestFlagsOrderedWorstFirst(t *testing.T) {
	s := newSim(t, DefaultConfig())
	loads := map[string]load{
		"vm-a": {rxPPS: 100_000, rxFrame: 100},
		"vm-b": flood,
		"vm-c": {rxPPS: 100_000, rxFrame: 100},
		"vm-d": quiet,
	}
	for n := range loads {
		s.c[n] = Sample{}
	}
	s.observe()
	s.step(500*time.Millisecond, loads)
	f := s.step(500*time.Millisecond, loads)
	if got := strings.Join(ports(f), ","); got != "vm-b,vm-a,vm-c" {
		t.Fatalf("flags %s; want vm-b,vm-a,vm-c", got)
	}
	admit, refuse := SplitAtCap(f, 9, 10)
	if strings.Join(ports(admit), ",") != "vm-b" || strings.Join(ports(refuse), ",") != "vm-a,vm-c" {
		t.Errorf("SplitAtCap(9 of 10) = %v, %v; want [vm-b], [vm-a vm-c]", ports(admit), ports(refuse))
	}
	if a := append(admit, Flag{Port: "x"}); a[0].Port != "vm-b" || f[1].Port != "vm-a" {
		t.Errorf("appending to admit overwrote refuse: %v", ports(f))
	}
}

func TestSplitAtCap(t *testing.T) {
	f := []Flag{{Port: "a"}, {Port: "b"}, {Port: "c"}}
	for _, tt := range []struct {
		active, max   int
		admit, refuse string
	}{
		{0, 10, "a,b,c", ""},
		{8, 10, "a,b", "c"},
		{10, 10, "", "a,b,c"},
		{12, 10, "", "a,b,c"},
		{0, 0, "", "a,b,c"},
		{0, -1, "", "a,b,c"},
		{0, 3, "a,b,c", ""},
	} {
		a, r := SplitAtCap(f, tt.active, tt.max)
		if strings.Join(ports(a), ",") != tt.admit || strings.Join(ports(r), ",") != tt.refuse {
			t.Errorf("SplitAtCap(active %d, max %d) = %v, %v; want %s | %s", tt.active, tt.max, ports(a), ports(r), tt.admit, tt.refuse)
		}
	}
}

func TestWindowMath(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Window = 2 * time.Second // 4 intervals of 500 ms
	s := newSim(t, cfg)
	s.c["p"] = Sample{RxPackets: 1000, RxBytes: 1_000_000}
	s.observe()
	if _, _, _, ok := s.tr.Window("p"); ok {
		t.Fatal("Window after one reading: ok; want no history")
	}
	// Per-interval deltas (packets, bytes) of frames from the VM.
	for _, d := range [][2]uint64{{100, 25_000}, {200, 30_000}, {300, 90_000}, {400, 40_000}, {1000, 64_000}} {
		c := s.c["p"]
		c.RxPackets += d[0]
		c.RxBytes += d[1]
		s.c["p"] = c
		s.now = s.now.Add(500 * time.Millisecond)
		s.observe()
	}
	// The first interval has left the window. By hand, over the last 2 s:
	// 1900 packets, 224000 bytes.
	pps, bps, avg, ok := s.tr.Window("p")
	if !ok || !near(pps, 950) || !near(bps, 896_000) || !near(avg, 117.89473684210526) {
		t.Errorf("Window = %v pps, %v bit/s, %v B, %v; want 950, 896000, 117.89473684210526 (224000/1900)", pps, bps, avg, ok)
	}
	if r, _ := s.tr.WindowRates("p"); r.Span != 2*time.Second || !r.At.Equal(s.now) {
		t.Errorf("WindowRates span %v at %v; want 2s at %v", r.Span, r.At, s.now)
	}
	// The short-term rates are the last interval's.
	if r, ok := s.tr.Rates("p"); !ok || r.FromVM.PPS != 2000 || r.FromVM.BitsPerSec != 1_024_000 || r.FromVM.AvgFrame != 64 || r.Span != 500*time.Millisecond {
		t.Errorf("Rates = %+v, %v; want 2000 pps, 1024000 bit/s, 64 B over 500ms", r, ok)
	}
}

func TestWindowFiveMinutes(t *testing.T) {
	s := newSim(t, DefaultConfig())
	s.c["vm-1"] = Sample{}
	s.observe()
	// Partial history: 10 s of flood.
	for range 20 {
		s.step(500*time.Millisecond, map[string]load{"vm-1": flood})
	}
	if pps, bps, avg, ok := s.tr.Window("vm-1"); !ok || pps != 400_000 || bps != 800e6 || avg != 250 {
		t.Errorf("after 10 s: Window = %v, %v, %v, %v; want 400000, 8e8, 250", pps, bps, avg, ok)
	}
	if r, _ := s.tr.WindowRates("vm-1"); r.Span != 10*time.Second {
		t.Errorf("after 10 s: span %v; want 10s", r.Span)
	}
	// 5 minutes of flood in all, then 1 minute of 1000 pps of 1000 bytes.
	for range 580 {
		s.step(500*time.Millisecond, map[string]load{"vm-1": flood})
	}
	for range 120 {
		s.step(500*time.Millisecond, map[string]load{"vm-1": {rxPPS: 1000, rxFrame: 1000}})
	}
	// By hand: the window holds 4 minutes of flood and the last minute.
	// packets 400000×240 + 1000×60 = 96060000; bytes 96000000×250 +
	// 60000×1000 = 24060000000; over 300 s.
	pps, bps, avg, ok := s.tr.Window("vm-1")
	if !ok || !near(pps, 320_200) || !near(bps, 641.6e6) || !near(avg, 250.4684572142411) {
		t.Errorf("Window = %v pps, %v bit/s, %v B; want 320200, 641600000, 250.4684572142411", pps, bps, avg)
	}
	if r, _ := s.tr.WindowRates("vm-1"); r.Span != 5*time.Minute {
		t.Errorf("span %v; want 5m", r.Span)
	}
	// Irregular intervals are weighted by their length: 2 s of silence.
	s.step(2*time.Second, map[string]load{"vm-1": idle})
	if r, _ := s.tr.WindowRates("vm-1"); r.Span != 5*time.Minute {
		t.Errorf("span after a 2 s interval %v; want 5m", r.Span)
	}
}

func TestWindowFasterObservations(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Window = 2 * time.Second // a ring of 5 intervals
	s := newSim(t, cfg)
	s.c["p"] = Sample{}
	s.observe()
	for range 20 {
		s.step(100*time.Millisecond, map[string]load{"p": quiet})
	}
	if r, ok := s.tr.WindowRates("p"); !ok || r.Span != 500*time.Millisecond || r.FromVM.PPS != 1000 {
		t.Errorf("WindowRates = %+v, %v; want 1000 pps over the ring's 5 × 100ms", r, ok)
	}
}

func TestCounterReset(t *testing.T) {
	s := newSim(t, DefaultConfig())
	s.c["vm-1"] = Sample{RxPackets: 5_000_000_000, RxBytes: 900_000_000_000, TxPackets: 7, TxBytes: 700}
	s.observe()
	for range 4 {
		s.step(500*time.Millisecond, map[string]load{"vm-1": flood})
	}
	if f := s.tr.AppendFlagged(nil); len(f) != 1 {
		t.Fatalf("flood not flagged before the reset")
	}
	// The VM restarts: its port is re-created and counts from zero.
	s.c["vm-1"] = Sample{RxPackets: 10, RxBytes: 1000}
	s.now = s.now.Add(500 * time.Millisecond)
	if f := s.observe(); len(f) != 0 {
		t.Fatalf("reset flagged %v", ports(f))
	}
	if _, ok := s.tr.Rates("vm-1"); ok {
		t.Error("Rates right after a reset: ok; want none (new baseline)")
	}
	if _, _, _, ok := s.tr.Window("vm-1"); ok {
		t.Error("Window right after a reset: ok; want history restarted")
	}
	if f := s.tr.AppendFlagged(nil); len(f) != 0 {
		t.Error("flag state survived the reset")
	}
	s.step(500*time.Millisecond, map[string]load{"vm-1": quiet})
	if r, ok := s.tr.Rates("vm-1"); !ok || r.FromVM.PPS != 1000 || r.ToVM.PPS != 800 {
		t.Errorf("Rates after reset = %+v, %v; want 1000 pps from, 800 to", r, ok)
	}
	if pps, _, avg, _ := s.tr.Window("vm-1"); pps != 1000 || avg != 500 {
		t.Errorf("Window after reset = %v pps, %v B; want only the new history (1000, 500)", pps, avg)
	}
	// A flood on the re-created port is flagged again.
	s.step(500*time.Millisecond, map[string]load{"vm-1": flood})
	if f := s.step(500*time.Millisecond, map[string]load{"vm-1": flood}); len(f) != 1 {
		t.Errorf("flood after reset: flags %v; want vm-1", ports(f))
	}
}

func TestCounterWrap(t *testing.T) {
	s := newSim(t, DefaultConfig())
	const top = 1 << 32
	s.c["vm-1"] = Sample{RxPackets: 100_000, RxBytes: top - 1000, TxPackets: top - 10, TxBytes: 5000}
	s.observe()
	s.c["vm-1"] = Sample{RxPackets: 100_100, RxBytes: 24_000, TxPackets: 40, TxBytes: 5000 + 50*100}
	s.now = s.now.Add(500 * time.Millisecond)
	s.observe()
	r, ok := s.tr.Rates("vm-1")
	if !ok || r.FromVM.PPS != 200 || r.FromVM.AvgFrame != 250 || r.ToVM.PPS != 100 || r.ToVM.AvgFrame != 100 {
		t.Errorf("after wrap Rates = %+v, %v; want 200 pps of 250 B from, 100 pps of 100 B to", r, ok)
	}
}

func TestDelta(t *testing.T) {
	const top = 1 << 32
	for _, tt := range []struct {
		name      string
		prev, cur Sample
		wantOK    bool
		rxp, rxb  uint64
		txp, _    uint64
	}{
		{"steady", Sample{10, 1000, 1, 100}, Sample{20, 3000, 1, 100}, true, 10, 2000, 0, 0},
		{"no change", Sample{10, 1000, 1, 100}, Sample{10, 1000, 1, 100}, true, 0, 0, 0, 0},
		{"rx bytes wrap", Sample{100, top - 1000, 0, 0}, Sample{104, 200, 0, 0}, true, 4, 1200, 0, 0},
		{"rx packets wrap", Sample{top - 2, 1e6, 0, 0}, Sample{3, 1e6 + 500, 0, 0}, true, 5, 500, 0, 0},
		{"all down: reset", Sample{1000, 100000, 50, 5000}, Sample{1, 60, 0, 0}, false, 0, 0, 0, 0},
		{"both rx down from upper half: reset, not two wraps", Sample{3e9, 4e9, 0, 0}, Sample{10, 1000, 0, 0}, false, 0, 0, 0, 0},
		{"64-bit counter down: reset", Sample{10, 5e9, 0, 0}, Sample{20, 1000, 0, 0}, false, 0, 0, 0, 0},
		{"down from lower half: reset", Sample{100, 1e9, 0, 0}, Sample{200, 30000, 0, 0}, false, 0, 0, 0, 0},
		{"wrap with too few packets: reset", Sample{5, top - 100, 0, 0}, Sample{6, 1 << 30, 0, 0}, false, 0, 0, 0, 0},
		{"bytes wrap without packets: reset", Sample{5, top - 100, 0, 0}, Sample{5, 100, 0, 0}, false, 0, 0, 0, 0},
		{"packets wrap with fewer bytes than packets: reset", Sample{top - 10, 1e6, 0, 0}, Sample{100, 1e6 + 5, 0, 0}, false, 0, 0, 0, 0},
		{"tx reset only", Sample{10, 1000, 1e4, 1e6}, Sample{20, 2000, 3, 180}, false, 0, 0, 0, 0},
	} {
		d, ok := delta(tt.prev, tt.cur)
		if ok != tt.wantOK || (ok && (d.rxp != tt.rxp || d.rxb != tt.rxb || d.txp != tt.txp)) {
			t.Errorf("%s: delta = %+v, %v; want rx %d/%d tx %d, %v", tt.name, d, ok, tt.rxp, tt.rxb, tt.txp, tt.wantOK)
		}
	}
}

func TestPortsComeAndGo(t *testing.T) {
	s := newSim(t, DefaultConfig())
	s.c["a"], s.c["b"] = Sample{}, Sample{}
	s.observe()
	s.step(500*time.Millisecond, map[string]load{"a": quiet, "b": quiet})
	if s.tr.Len() != 2 {
		t.Fatalf("Len = %d; want 2", s.tr.Len())
	}
	delete(s.c, "b")
	s.c["c"] = Sample{RxPackets: 42}
	s.step(500*time.Millisecond, map[string]load{"a": quiet})
	if _, ok := s.tr.Rates("b"); ok || s.tr.Len() != 2 {
		t.Errorf("b gone: Rates ok %v, Len %d; want forgotten, 2", ok, s.tr.Len())
	}
	if _, ok := s.tr.Rates("c"); ok {
		t.Error("c new: Rates ok; want a baseline only")
	}
	s.step(500*time.Millisecond, map[string]load{"a": quiet, "c": quiet})
	if r, ok := s.tr.Rates("c"); !ok || r.FromVM.PPS != 1000 {
		t.Errorf("c: Rates %+v, %v; want 1000 pps", r, ok)
	}
	// b comes back with its old counters: a new port, a new baseline.
	s.c["b"] = Sample{RxPackets: 1 << 40}
	s.step(500*time.Millisecond, nil)
	if _, ok := s.tr.Rates("b"); ok {
		t.Error("b back: Rates ok; want a baseline only")
	}
	// A reading not later than the last is ignored.
	before, _ := s.tr.Rates("a")
	s.c["a"] = Sample{}
	s.observe()
	if after, ok := s.tr.Rates("a"); !ok || after != before {
		t.Errorf("a reading at the same time changed Rates: %+v -> %+v", before, after)
	}
}

func TestMaxPorts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPorts = 2
	s := newSim(t, cfg)
	s.c["a"], s.c["b"], s.c["c"] = Sample{}, Sample{}, Sample{}
	s.observe()
	if s.tr.Len() != 2 || s.tr.Untracked() != 1 {
		t.Errorf("Len %d, Untracked %d; want 2, 1", s.tr.Len(), s.tr.Untracked())
	}
	var tracked, left string
	for _, n := range []string{"a", "b", "c"} {
		if _, ok := s.tr.ports[n]; !ok {
			left = n
		} else {
			tracked = n
		}
	}
	delete(s.c, tracked)
	s.step(500*time.Millisecond, nil)
	if _, ok := s.tr.ports[left]; !ok || s.tr.Untracked() != 0 {
		t.Errorf("after a port left, %s not tracked (untracked %d)", left, s.tr.Untracked())
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"default", func(*Config) {}, ""},
		{"flag-after 0", func(c *Config) { c.FlagAfter = 0 }, ""},
		{"interval 0", func(c *Config) { c.Interval = 0 }, "--watch-interval 0s"},
		{"interval negative", func(c *Config) { c.Interval = -time.Second }, "--watch-interval -1s"},
		{"window < interval", func(c *Config) { c.Window = 100 * time.Millisecond }, "window 100ms is shorter than --watch-interval 500ms"},
		{"too many slots", func(c *Config) { c.Interval = time.Millisecond }, "--watch-interval 1ms is too short for a 5m0s window: at least"},
		{"flag-after negative", func(c *Config) { c.FlagAfter = -1 }, "--flag-after -1ns is negative"},
		{"rearm negative", func(c *Config) { c.ReArmAfter = -1 }, "rearm_after -1ns is negative"},
		{"max ports", func(c *Config) { c.MaxPorts = 0 }, "max_ports 0"},
		{"threshold zero", func(c *Config) { c.Threshold = Threshold{} }, "threshold_pps and threshold_bps are both 0"},
		{"threshold pps negative", func(c *Config) { c.Threshold.PPS = -1 }, "threshold_pps -1 is negative"},
		{"threshold bps NaN", func(c *Config) { c.Threshold.BitsPerSecond = math.NaN() }, "threshold_bps NaN is not a rate"},
		{"threshold pps Inf", func(c *Config) { c.Threshold.PPS = math.Inf(1) }, "threshold_pps +Inf is not a rate"},
		{"threshold direction", func(c *Config) { c.Threshold.Direction = 7 }, "threshold_direction 7"},
	} {
		c := DefaultConfig()
		tt.mod(&c)
		err := c.Validate()
		_, nerr := NewTracker(c)
		switch {
		case tt.want == "" && (err != nil || nerr != nil):
			t.Errorf("%s: %v / %v; want nil", tt.name, err, nerr)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidConfig) || nerr == nil):
			t.Errorf("%s: %v; want an ErrInvalidConfig containing %q", tt.name, err, tt.want)
		}
	}
	// The smallest interval the message suggests is accepted.
	c := DefaultConfig()
	c.Interval = (c.Window + maxSlots - 2) / (maxSlots - 1)
	if err := c.Validate(); err != nil {
		t.Errorf("suggested interval %v: %v", c.Interval, err)
	}
}

func TestDirectionText(t *testing.T) {
	for _, d := range []Direction{FromVM, ToVM, Either} {
		b, err := d.MarshalText()
		var back Direction
		if err != nil || back.UnmarshalText(b) != nil || back != d {
			t.Errorf("%v: round trip %q, %v -> %v", d, b, err, back)
		}
	}
	if d, err := ParseDirection(""); d != FromVM || err != nil {
		t.Errorf(`ParseDirection("") = %v, %v; want from_vm`, d, err)
	}
	var d Direction
	if err := d.UnmarshalText([]byte("inbound")); err == nil || !errors.Is(err, ErrInvalidConfig) ||
		!strings.Contains(err.Error(), `threshold_direction "inbound": want from_vm, to_vm or either`) {
		t.Errorf("UnmarshalText(inbound) = %v", err)
	}
	if _, err := Direction(9).MarshalText(); err == nil {
		t.Error("MarshalText(9): no error")
	}
	if s := Direction(9).String(); s != "Direction(9)" {
		t.Errorf("String = %q", s)
	}
}

// Observe on a steady set of ports allocates nothing: the port map, the
// rings and the result slice are reused. (A port seen for the first time
// allocates its ring; a flag grows the result slice once.)
func TestObserveZeroAllocs(t *testing.T) {
	s := newSim(t, DefaultConfig())
	names := make([]string, 100)
	for i := range names {
		names[i] = "vm-" + strconv.Itoa(i)
		s.c[names[i]] = Sample{}
	}
	s.c["vm-flood"] = Sample{}
	s.observe()
	s.step(500*time.Millisecond, map[string]load{"vm-flood": flood})
	s.step(500*time.Millisecond, map[string]load{"vm-flood": flood}) // flagged; grows the result once
	n := testing.AllocsPerRun(200, func() {
		s.now = s.now.Add(500 * time.Millisecond)
		for _, name := range names {
			c := s.c[name]
			c.RxPackets += 500
			c.RxBytes += 500 * 300
			s.c[name] = c
		}
		s.observe()
	})
	if n != 0 {
		t.Errorf("Observe of 101 ports: %v allocations; want 0", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	for _, nports := range []int{10, 100, 1000} {
		b.Run(strconv.Itoa(nports)+"ports", func(b *testing.B) {
			tr, _ := NewTracker(DefaultConfig())
			c := make(map[string]Sample, nports)
			names := make([]string, nports)
			for i := range names {
				names[i] = "vm-" + strconv.Itoa(i)
				c[names[i]] = Sample{}
			}
			now := t0
			tr.Observe(now, c)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				now = now.Add(500 * time.Millisecond)
				for _, n := range names {
					s := c[n]
					s.RxPackets += 1000
					s.RxBytes += 250_000
					c[n] = s
				}
				tr.Observe(now, c)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(nports), "ns/port")
		})
	}
}
