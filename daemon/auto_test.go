package daemon

import (
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
	"github.com/shaperd/shaperd/splice/fakesplice"
	"github.com/shaperd/shaperd/splice/steer"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// load drives the watch loop with synthetic counters on a simulated clock:
// each port offers rate[port] frames per second of size[port] bytes from
// the VM.
type load struct {
	t    *testing.T
	m    *Manager
	now  time.Time
	step time.Duration
	pps  map[string]float64
	tx   map[string]float64 // frames per second to the port (its TX)
	size map[string]float64
	c    map[string]detect.Sample
}

func newLoad(t *testing.T, m *Manager, ports ...string) *load {
	l := &load{t: t, m: m, now: t0, step: 500 * time.Millisecond,
		pps: map[string]float64{}, tx: map[string]float64{}, size: map[string]float64{}, c: map[string]detect.Sample{}}
	for _, p := range ports {
		l.c[p] = detect.Sample{}
		l.size[p] = 250
	}
	testHost(m).Clock = func() time.Time { return l.now }
	return l
}

// run observes every step until d has passed.
func (l *load) run(d time.Duration) {
	for end := l.now.Add(d); l.now.Before(end); {
		l.now = l.now.Add(l.step)
		sec := l.step.Seconds()
		for p, s := range l.c {
			n := uint64(l.pps[p] * sec)
			s.RxPackets += n
			s.RxBytes += uint64(float64(n) * l.size[p])
			tn := uint64(l.tx[p]*sec) + 10
			s.TxPackets += tn
			s.TxBytes += tn * 100
			l.c[p] = s
		}
		l.m.Observe(l.now, l.m.watchCounters(l.c))
	}
}

// watchCounters keeps the ports WatchPorts asks for, as RunWatch does.
func (m *Manager) watchCounters(all map[string]detect.Sample) map[string]detect.Sample {
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	out := map[string]detect.Sample{}
	for _, p := range m.WatchPorts(names) {
		out[p] = all[p]
	}
	return out
}

func configure(t *testing.T, m *Manager, profiles profile.Set, w WatchConfig) {
	t.Helper()
	if profiles == nil {
		profiles = profile.Set{profile.Quarantine: profile.Default()}
	}
	if err := m.Configure(profiles, w); err != nil {
		t.Fatal(err)
	}
}

func watchVMs() WatchConfig {
	w := DefaultWatchConfig()
	w.Watch, w.Exclude = []string{"vm-*"}, []string{"vm-x*"}
	return w
}

// A flood on a watched port is quarantined within --flag-after with the
// quarantine profile; a quiet port, an excluded port and an unwatched port
// are not.
func TestWatchQuarantinesAFlood(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2", "vm-x1", "other")
	m := newTestManager(t, t.TempDir(), fb)
	configure(t, m, nil, watchVMs())
	l := newLoad(t, m, "vm-1", "vm-2", "vm-x1", "other")
	l.pps["vm-2"] = 1000
	l.run(5 * time.Second) // history for vm-1: 0 pps
	start := l.now
	l.pps["vm-1"], l.pps["vm-x1"], l.pps["other"] = 400_000, 400_000, 400_000
	for !fb.Spliced("vm-1") && l.now.Sub(start) < 5*time.Second {
		l.run(l.step)
	}
	if took := l.now.Sub(start); !fb.Spliced("vm-1") || took > 1500*time.Millisecond {
		t.Fatalf("vm-1 spliced %v after %v; want within 1.5 s (flag-after 1 s, 500 ms interval)", fb.Spliced("vm-1"), took)
	}
	l.run(10 * time.Second)
	for _, p := range []string{"vm-2", "vm-x1", "other"} {
		if fb.Spliced(p) {
			t.Errorf("%s spliced", p)
		}
	}
	q := mustStatus(t, m, "vm-1")
	if q.Origin != OriginWatch || q.Profile != profile.Quarantine || q.Stage != "stage1" {
		t.Fatalf("origin/profile/stage = %s/%s/%s", q.Origin, q.Profile, q.Stage)
	}
	// AVGPKT from the watch history: 250-byte frames, so 2.5 MB/s.
	lim := q.Directions.FromVM.Limits
	if *lim.PPS != 10000 || lim.BitsPerSecond == nil || *lim.BitsPerSecond != 10000*250*8 {
		t.Fatalf("stage 1 limits %v pps %v bit/s; want 10000 and 20 Mbit/s", *lim.PPS, lim.BitsPerSecond)
	}
	if ev := m.Events(); ev.AutoStarted != 1 || ev.Flags != 1 || ev.Transitions[">stage1"] != 1 {
		t.Fatalf("events %+v", ev)
	}
}

func TestWatchDryRunOnlyFlags(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2")
	m := newTestManager(t, t.TempDir(), fb)
	w := watchVMs()
	w.DryRun = true
	configure(t, m, nil, w)
	l := newLoad(t, m, "vm-1", "vm-2")
	l.run(time.Second)
	l.pps["vm-1"] = 400_000
	l.run(3 * time.Second)
	if fb.Spliced("vm-1") {
		t.Fatal("dry run spliced vm-1")
	}
	st, _ := m.Status("")
	if len(st.Quarantines) != 0 || len(st.Flagged) != 1 || st.Flagged[0].Port != "vm-1" {
		t.Fatalf("status: %d quarantines, flagged %+v; want vm-1 flagged only", len(st.Quarantines), st.Flagged)
	}
	if f := st.Flagged[0]; f.PPS < 399_000 || f.PPS > 401_000 || f.BPS < 0.99*800e6 || f.Since.IsZero() {
		t.Fatalf("flagged %+v; want about 400000 pps and 800 Mbit/s", f)
	}
	// The flood stops: the flag clears once the port re-arms.
	l.pps["vm-1"] = 0
	l.run(11 * time.Second)
	if st, _ := m.Status(""); len(st.Flagged) != 0 {
		t.Fatalf("flagged after the flood stopped: %+v", st.Flagged)
	}
}

func TestWatchMaxAuto(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2", "vm-3")
	m := newTestManager(t, t.TempDir(), fb)
	w := watchVMs()
	w.MaxAuto = 1
	configure(t, m, nil, w)
	l := newLoad(t, m, "vm-1", "vm-2", "vm-3")
	l.run(time.Second)
	l.pps["vm-1"], l.pps["vm-2"] = 400_000, 300_000
	l.run(3 * time.Second)
	if !fb.Spliced("vm-1") || fb.Spliced("vm-2") {
		t.Fatalf("spliced vm-1 %v vm-2 %v; want the worst one only", fb.Spliced("vm-1"), fb.Spliced("vm-2"))
	}
	st, _ := m.Status("")
	if len(st.Flagged) != 1 || st.Flagged[0].Port != "vm-2" {
		t.Fatalf("flagged %+v; want the refused vm-2", st.Flagged)
	}
	if ev := m.Events(); ev.AutoRefused != 1 {
		t.Fatalf("refusals %d; want 1 (one event per flag)", ev.AutoRefused)
	}
	// A manual quarantine does not count against --max-auto.
	if err := m.Release("vm-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100"}, false); err != nil {
		t.Fatal(err)
	}
	l.pps["vm-3"] = 400_000
	l.run(3 * time.Second)
	if !fb.Spliced("vm-3") {
		t.Fatal("vm-3 not quarantined: a manual quarantine counted against --max-auto")
	}
}

// The ladder of seed 001 on a simulated clock: stage 1, 2, 3 while the
// flood goes on, the on-block hook at stage 3, probation once it stops, one
// rung down per clear_after, and release. Each step's limits are asserted,
// and a restart in stage 2 resumes the ladder where it was.
func TestLadderWalk(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, dir, fb)
	p := profile.Default()
	p.OnBlock = []string{"/bin/true", "--stop"}
	configure(t, m, profile.Set{profile.Quarantine: p}, watchVMs())
	var hookMu sync.Mutex
	var hooks [][]string
	runner := func(argv []string) ([]byte, error) {
		hookMu.Lock()
		defer hookMu.Unlock()
		hooks = append(hooks, argv)
		return nil, nil
	}
	testHost(m).Hook = runner
	l := newLoad(t, m, "vm-1")
	l.step = time.Second
	l.run(3 * time.Second)
	l.pps["vm-1"] = 400_000
	l.run(3 * time.Second)
	q := mustStatus(t, m, "vm-1")
	since := q.Since
	check := func(stage api.Stage, pps float64, bits uint64, delayMS float64, mode string) {
		t.Helper()
		q := mustStatus(t, m, "vm-1")
		d := q.Directions.FromVM
		if q.Stage != stage {
			t.Fatalf("at +%v: stage %s, want %s", l.now.Sub(since), q.Stage, stage)
		}
		if d.Limits.PPS == nil || *d.Limits.PPS != pps {
			t.Fatalf("%s: pps %v, want %v", stage, d.Limits.PPS, pps)
		}
		var gotBits uint64
		if d.Limits.BitsPerSecond != nil {
			gotBits = *d.Limits.BitsPerSecond
		}
		if gotBits != bits || d.Mode != api.Mode(mode) || d.Queue.DelayMS != delayMS {
			t.Fatalf("%s: %d bit/s, mode %s, delay %vms; want %d, %s, %v", stage, gotBits, d.Mode, d.Queue.DelayMS, bits, mode, delayMS)
		}
		// The kernel backstop follows each stage (issue 13): twice the
		// budget, at least intent.BackstopMinPPS for a blocking stage.
		want := math.Max(intent.BackstopFactor*math.Min(pps, float64(bits)/8/intent.MinFrame), intent.BackstopMinPPS)
		if pps == 0 {
			want = intent.BackstopMinPPS
		}
		if got := fb.Backstop("vm-1", steer.FromVM).Aggregate.PPS; got != want {
			t.Fatalf("%s: kernel backstop %v pps, want %v", stage, got, want)
		}
	}
	check("stage1", 10000, 20_000_000, 200, "shape")
	if q.NextTransition == nil || !q.NextTransition.Equal(since.Add(5*time.Minute)) {
		t.Fatalf("next_transition %v; want since+5m", q.NextTransition)
	}
	l.run(5 * time.Minute)
	check("stage2", 2500, 5_000_000, 400, "shape")

	// kill -9 in stage 2, two minutes in: the new daemon resumes there.
	l.run(2 * time.Minute)
	before := mustStatus(t, m, "vm-1")
	l.now = l.now.Add(5 * time.Second) // the daemon was down for 5 s
	m = newTestManager(t, dir, fb)
	testHost(m).Clock = func() time.Time { return l.now }
	configure(t, m, profile.Set{profile.Quarantine: p}, watchVMs())
	testHost(m).Hook = runner
	if err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	l.m = m
	after := mustStatus(t, m, "vm-1")
	if after.Stage != "stage2" || after.NextTransition == nil || after.NextTransition.Sub(*before.NextTransition).Abs() > 16*time.Second {
		t.Fatalf("after restart: stage %s next %v; want stage2 next about %v", after.Stage, after.NextTransition, before.NextTransition)
	}
	check("stage2", 2500, 5_000_000, 400, "shape")

	l.run(3*time.Minute + 15*time.Second)
	check("stage3", 0, 0, 0, "police")
	nHooks := func() int { hookMu.Lock(); defer hookMu.Unlock(); return len(hooks) }
	for i := 0; i < 100 && nHooks() == 0; i++ {
		time.Sleep(10 * time.Millisecond) // the hook runs on its own goroutine
	}
	hookMu.Lock()
	defer hookMu.Unlock()
	if len(hooks) != 1 || !slices.Equal(hooks[0], []string{"/bin/true", "--stop", "vm-1"}) {
		t.Fatalf("on-block hook runs %v; want one with the port appended", hooks)
	}
	l.run(20 * time.Minute)
	check("stage3", 0, 0, 0, "police")

	// The flood stops: probation after clear_after, one rung per clear_after.
	l.pps["vm-1"] = 100
	l.run(10*time.Minute + time.Second)
	check("probation", 2500, 5_000_000, 400, "shape")
	l.run(10 * time.Minute)
	check("probation", 10000, 20_000_000, 200, "shape")
	l.run(10 * time.Minute)
	if fb.Spliced("vm-1") {
		t.Fatal("still spliced after the ladder's release")
	}
	if st, _ := m.Status(""); len(st.Quarantines) != 0 {
		t.Fatalf("quarantines after release: %+v", st.Quarantines)
	}
	ev := m.Events()
	for _, k := range []string{"stage2>stage3", "stage3>probation", "probation>probation", "probation>released"} {
		if ev.Transitions[k] != 1 {
			t.Errorf("transition %s counted %d times; want 1 (all: %v)", k, ev.Transitions[k], ev.Transitions)
		}
	}
}

// Limits set by hand take the port off its ladder; a profile with a ladder
// refuses aggregate flags at quarantine time.
func TestSetLeavesTheLadder(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	configure(t, m, nil, watchVMs())
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"profile": "quarantine", "pps": "5"}, false); !errors.Is(err, ErrUsage) {
		t.Fatalf("--profile with --pps: %v", err)
	}
	if fb.Spliced("vm-1") {
		t.Fatal("refused request spliced")
	}
	if _, err := m.Quarantine("vm-1", api.LimitRequest{}, false); err != nil {
		t.Fatal(err)
	}
	q, err := setFlags(m, "vm-1", api.LimitFlags{"to-vm-pps": "50"})
	if err != nil || q.Stage != "stage1" {
		t.Fatalf("set on the other direction: stage %s, %v; want stage1", q.Stage, err)
	}
	q, err = setFlags(m, "vm-1", api.LimitFlags{"pps": "50"})
	if err != nil || q.Stage != "manual" || q.NextTransition != nil || *q.Directions.FromVM.Limits.PPS != 50 {
		t.Fatalf("set --pps: %+v, %v; want stage manual at 50 pps", q, err)
	}
}

func TestAlerts(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	configure(t, m, nil, DefaultWatchConfig())
	if what, err := m.Alert("vm-1", true); err != nil || what != "quarantined" || !fb.Spliced("vm-1") {
		t.Fatalf("firing: %s, %v", what, err)
	}
	if what, err := m.Alert("vm-1", true); err != nil || what != "already_quarantined" {
		t.Fatalf("repeated firing: %s, %v", what, err)
	}
	if _, err := m.Alert("vm-9", true); !errors.Is(err, ErrUnknownPort) {
		t.Fatalf("unknown port: %v", err)
	}
	q := mustStatus(t, m, "vm-1")
	if q.Origin != OriginAlert || q.Stage != "stage1" {
		t.Fatalf("origin/stage %s/%s", q.Origin, q.Stage)
	}
	if what, err := m.Alert("vm-1", false); err != nil || what != "probation" {
		t.Fatalf("resolved: %s, %v", what, err)
	}
	if q := mustStatus(t, m, "vm-1"); q.Stage != api.Stage(ladder.Probation) {
		t.Fatalf("stage after resolved: %s", q.Stage)
	}
	if what, _ := m.Alert("vm-1", false); what != "resolved_already_probation" {
		t.Fatalf("repeated resolved: %s", what)
	}
}

func TestConfigureRejectsBadProfiles(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	bad := profile.Default()
	bad.Limits = api.LimitRequest{FromVM: api.DirChange{Burst: api.Some(10)}} // --burst without --pps
	if err := m.Configure(profile.Set{profile.Quarantine: bad}, DefaultWatchConfig()); err == nil {
		t.Fatal("bad limits accepted")
	}
	w := DefaultWatchConfig()
	w.Watch = []string{"[unclosed"}
	if err := m.Configure(nil, w); err == nil {
		t.Fatal("bad pattern accepted")
	}
	// Nothing changed: the default profile still quarantines.
	if _, err := m.Quarantine("vm-1", api.LimitRequest{}, false); err != nil {
		t.Fatal(err)
	}
}

// A member of a group floods through its router: the member is quarantined
// by the watch, and the traffic to the router port is limited too, with
// the ladder on the router port's to_vm direction.
func TestCorrelationLimitsTheRouterPort(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2", "rtr-1")
	m := newTestManager(t, t.TempDir(), fb)
	p := profile.Default()
	p.Correlate = true
	w := watchVMs()
	w.Groups = []Group{{Name: "tenant-a", Router: "rtr-1", Members: []string{"vm-1", "vm-3"}}}
	configure(t, m, profile.Set{profile.Quarantine: p}, w)
	l := newLoad(t, m, "vm-1", "vm-2", "rtr-1")
	l.run(time.Second)
	// vm-2 floods but is in no group; the router sees little.
	l.pps["vm-2"] = 400_000
	l.run(3 * time.Second)
	if !fb.Spliced("vm-2") || fb.Spliced("rtr-1") {
		t.Fatalf("vm-2 spliced %v, rtr-1 spliced %v; want vm-2 only", fb.Spliced("vm-2"), fb.Spliced("rtr-1"))
	}
	// vm-1's flood shows on the router port.
	l.pps["vm-1"], l.tx["rtr-1"] = 400_000, 390_000
	l.run(3 * time.Second)
	if !fb.Spliced("vm-1") || !fb.Spliced("rtr-1") {
		t.Fatalf("vm-1 spliced %v, rtr-1 spliced %v; want both", fb.Spliced("vm-1"), fb.Spliced("rtr-1"))
	}
	q := mustStatus(t, m, "rtr-1")
	if q.Origin != OriginCorrelation || q.Stage != "stage1" || q.Directions.FromVM.Limits.PPS != nil ||
		q.Directions.ToVM.Limits.PPS == nil || *q.Directions.ToVM.Limits.PPS != 10000 {
		t.Fatalf("router quarantine: origin %s stage %s from %+v to %+v", q.Origin, q.Stage, q.Directions.FromVM.Limits, q.Directions.ToVM.Limits)
	}
	// Without correlate in the profile nothing happens to the router.
	fb2 := fakesplice.New("vm-1", "rtr-1")
	m2 := newTestManager(t, t.TempDir(), fb2)
	configure(t, m2, nil, w)
	l2 := newLoad(t, m2, "vm-1", "rtr-1")
	l2.run(time.Second)
	l2.pps["vm-1"], l2.tx["rtr-1"] = 400_000, 390_000
	l2.run(3 * time.Second)
	if !fb2.Spliced("vm-1") || fb2.Spliced("rtr-1") {
		t.Fatalf("without correlate: vm-1 %v rtr-1 %v", fb2.Spliced("vm-1"), fb2.Spliced("rtr-1"))
	}
}
