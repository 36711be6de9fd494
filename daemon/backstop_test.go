package daemon

import (
	"errors"
	"math"
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/splice/fakesplice"
	"github.com/shaperd/shaperd/splice/steer"
)

func TestBackstopFor(t *testing.T) {
	spec := func(req api.LimitFlags) intent.DirSpec {
		t.Helper()
		s, err := applyFlags(intent.New(), req, false)
		if err != nil {
			t.Fatal(err)
		}
		return s.FromVM
	}
	tests := []struct {
		name    string
		req     api.LimitFlags
		agg     float64 // ceiling, pps; 0 none
		burst   float64
		classes map[steer.Class]float64
	}{
		{"no limits", api.LimitFlags{}, 0, 0, nil},
		// Police mode (the default): the aggregate a quarter above its
		// budget, plus what the class ceilings pass above theirs, at most
		// twice the budget.
		{"pps", api.LimitFlags{"pps": "5000"}, 6250, 313, nil},
		{"pps with a big burst", api.LimitFlags{"pps": "5000", "burst": "400"}, 6250, 800, nil},
		{"bytes only", api.LimitFlags{"bps": "16mbit"}, 1.25 * 2e6 / 60, math.Ceil(1.25 * 2e6 / 60 * 0.05), nil},
		{"pps and bytes: the lower", api.LimitFlags{"pps": "50000", "bps": "16mbit"}, 1.25 * 2e6 / 60, math.Ceil(1.25 * 2e6 / 60 * 0.05), nil},
		{"small pps: the floor", api.LimitFlags{"pps": "10"}, intent.BackstopMinPPS, intent.BackstopMinBurst, nil},
		{"blocked", api.LimitFlags{"pps": "0"}, intent.BackstopMinPPS, intent.BackstopMinBurst, nil},
		{"override", api.LimitFlags{"pps": "5000", "backstop": "7000"}, 7000, 350, nil},
		{"override without budgets", api.LimitFlags{"backstop": "7000"}, 7000, 350, nil},
		{"classes", api.LimitFlags{"pps": "5000", "syn-pps": "200", "udp-pps": "1000", "icmp-bps": "64kbit"},
			6250 + 200 + 1000 + math.Max(2*8000.0/60, intent.BackstopMinPPS) - 8000.0/60, math.Ceil((6250 + 1200 + math.Max(2*8000.0/60, intent.BackstopMinPPS) - 8000.0/60) * 0.05),
			map[steer.Class]float64{steer.ClassSyn: 400, steer.ClassUDP: 2000, steer.ClassICMP: math.Max(2*8000.0/60, intent.BackstopMinPPS)}},
		{"classes: at most twice the budget", api.LimitFlags{"pps": "5000", "udp-pps": "4000"}, 10000, 500,
			map[steer.Class]float64{steer.ClassUDP: 8000}},
		// Shape mode: twice the budget.
		{"shape", api.LimitFlags{"pps": "5000", "mode": "shape"}, 10000, 500, nil},
		{"shape, classes", api.LimitFlags{"pps": "5000", "syn-pps": "200", "mode": "shape"}, 10000, 500,
			map[steer.Class]float64{steer.ClassSyn: 400}},
		{"off", api.LimitFlags{"pps": "5000", "syn-pps": "200", "backstop": "none"}, 0, 0, nil},
	}
	for _, tt := range tests {
		d := spec(tt.req)
		b := intent.BackstopFor(d, intent.DirPolicy(d))
		if math.Abs(b.Aggregate.PPS-tt.agg) > 1e-6 || b.Aggregate.Burst != tt.burst {
			t.Errorf("%s: aggregate %+v, want %v pps burst %v", tt.name, b.Aggregate, tt.agg, tt.burst)
		}
		for c := steer.Class(1); c < steer.NumClasses; c++ {
			if got := b.Classes[c].PPS; got != tt.classes[c] {
				t.Errorf("%s: class %s ceiling %v, want %v", tt.name, c, got, tt.classes[c])
			}
		}
	}
}

func TestBackstopFlag(t *testing.T) {
	for _, bad := range []string{"0", "-5", "0.5", "x", "NaN", "Inf"} {
		_, err := applyFlags(intent.New(), api.LimitFlags{"backstop": bad}, false)
		if !errors.Is(err, ErrUsage) {
			t.Errorf("--backstop %s: %v, want a usage error", bad, err)
		}
	}
	// The intent keeps it, both ways, and brings it back.
	for _, req := range []api.LimitFlags{
		{"pps": "5000", "backstop": "none", "to-vm-backstop": "9000"},
		{"pps": "5000", "to-vm-backstop": "none"},
	} {
		s, err := applyFlags(intent.New(), req, false)
		if err != nil {
			t.Fatal(err)
		}
		back, err := intent.Parse(s.Intent())
		if err != nil {
			t.Fatalf("%q: %v", s.Intent(), err)
		}
		if back.Intent() != s.Intent() || back.FromVM.BackstopOff != s.FromVM.BackstopOff || !eqF(back.ToVM.Backstop, s.ToVM.Backstop) {
			t.Errorf("intent %q came back as %q", s.Intent(), back.Intent())
		}
	}
	// --backstop alone does not make a quarantine manual.
	if req, err := api.ParseRequest(api.LimitFlags{"backstop": "none"}); err != nil || req.HasLimit() {
		t.Error("--backstop counted as a limit flag")
	}
}

// TestBackstopFollowsSet: quarantine, set and --backstop move the kernel
// half's ceilings at once, in both directions.
func TestBackstopFollowsSet(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "5000", "to-vm-pps": "1000", "syn-pps": "200"}, false); err != nil {
		t.Fatal(err)
	}
	check := func(from, to, syn float64) {
		t.Helper()
		f, tv := fb.Backstop("vm-1", steer.FromVM), fb.Backstop("vm-1", steer.ToVM)
		if f.Aggregate.PPS != from || tv.Aggregate.PPS != to || f.Classes[steer.ClassSyn].PPS != syn {
			t.Errorf("backstop from %v (syn %v), to %v; want %v (%v), %v", f.Aggregate.PPS, f.Classes[steer.ClassSyn].PPS, tv.Aggregate.PPS, from, syn, to)
		}
		q := mustStatus(t, m, "vm-1")
		if b := q.Directions.FromVM.Backstop; (b == nil || b.PPS == nil) != (from == 0) || b != nil && b.PPS != nil && *b.PPS != from {
			t.Errorf("status shows backstop %+v, want %v", b, from)
		}
	}
	// Police mode: a quarter above the budget plus the SYN ceiling's 200
	// above its budget.
	check(6450, 1250, 400)
	for _, x := range []struct {
		req           api.LimitFlags
		from, to, syn float64
	}{
		{api.LimitFlags{"pps": "2000"}, 2700, 1250, 400},
		{api.LimitFlags{"backstop": "3000"}, 3000, 1250, 400},
		{api.LimitFlags{"backstop": "none", "to-vm-pps": "none"}, 0, 0, 0},
		{api.LimitFlags{"backstop": "auto"}, 2700, 0, 400},
		{api.LimitFlags{"mode": "shape"}, 4000, 0, 400},
	} {
		if _, err := setFlags(m, "vm-1", x.req); err != nil {
			t.Fatal(err)
		}
		check(x.from, x.to, x.syn)
	}
}
