package auto

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/profile"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

var errClosed = errors.New("fake: closed")

// fake is a Manager that keeps its quarantines in a map and records every
// change the Engine asks of it, and whether it came under its lock.
type fake struct {
	t      *testing.T
	mu     sync.Mutex // the manager's lock
	locked atomic.Bool
	closed bool
	now    time.Time
	q      map[string]*fakeQ
	ports  map[string]bool // links that exist
	notVM  map[string]bool // links VMPort refuses

	callMu sync.Mutex
	calls  []string
	saves  int
	lists  atomic.Int32 // Links calls
}

type fakeQ struct {
	port   string
	active bool
	spec   intent.Spec
	esc    *Escalation
	fwd    [2]uint64 // frames, bytes offered from the VM
}

func (q *fakeQ) Port() string            { return q.port }
func (q *fakeQ) Active() bool            { return q.active }
func (q *fakeQ) Origin() api.Origin      { return q.spec.Origin }
func (q *fakeQ) Spec() intent.Spec       { return q.spec }
func (q *fakeQ) SetSpec(s intent.Spec)   { q.spec = s }
func (q *fakeQ) Escalation() *Escalation { return q.esc }

func newFake(t *testing.T, ports ...string) *fake {
	f := &fake{t: t, now: t0, q: map[string]*fakeQ{}, ports: map[string]bool{}, notVM: map[string]bool{}}
	for _, p := range ports {
		f.ports[p] = true
	}
	return f
}

// call records a change; one made under the manager's lock fails the
// test: the Engine must carry out its decisions after it.
func (f *fake) call(s string) {
	if f.locked.Load() {
		f.t.Errorf("%s called under the manager's lock", s)
	}
	f.callMu.Lock()
	defer f.callMu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fake) Calls() []string {
	f.callMu.Lock()
	defer f.callMu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fake) Update(fn func(Txn)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errClosed
	}
	f.locked.Store(true)
	defer f.locked.Store(false)
	fn(fakeTxn{f})
	return nil
}

func (f *fake) View(fn func(Txn)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.locked.Store(true)
	defer f.locked.Store(false)
	fn(fakeTxn{f})
}

func (f *fake) Now() time.Time              { return f.now }
func (f *fake) Links() ([]string, error)    { f.lists.Add(1); return nil, nil }
func (f *fake) PortExists(port string) bool { return f.ports[port] }

func (f *fake) VMPort(port string) error {
	if f.notVM[port] {
		return ErrNotVMPort
	}
	return nil
}

func (f *fake) Quarantine(port string, req api.LimitRequest, origin api.Origin, now time.Time) error {
	f.call("quarantine " + port + " " + string(origin))
	f.mu.Lock()
	defer f.mu.Unlock()
	spec := intent.New()
	spec.Origin = origin
	f.q[port] = &fakeQ{port: port, active: true, spec: spec}
	return nil
}

func (f *fake) Apply(q Quarantine, prev intent.Spec) error {
	f.call("apply " + q.Port() + " " + string(prev.Stage) + ">" + string(q.Spec().Stage))
	return nil
}

func (f *fake) Release(q Quarantine) error {
	f.call("release " + q.Port())
	return nil
}

func (f *fake) RunHook(ctx context.Context, argv []string) ([]byte, error) {
	f.call("hook")
	return nil, nil
}

func (f *fake) Save() {
	f.call("save")
}

type fakeTxn struct{ f *fake }

func (t fakeTxn) Ports() []string {
	var out []string
	for p := range t.f.q {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func (t fakeTxn) Get(port string) (Quarantine, bool) {
	if q, ok := t.f.q[port]; ok {
		return q, true
	}
	return nil, false
}

func (t fakeTxn) Each(fn func(Quarantine)) {
	for _, q := range t.f.q {
		fn(q)
	}
}

func (t fakeTxn) Offered(q Quarantine, fromVM bool) (pkts, bytes uint64, ok bool) {
	fq := q.(*fakeQ)
	if !fromVM {
		return 0, 0, true
	}
	return fq.fwd[0], fq.fwd[1], true
}

func newEngine(t *testing.T, c Config) *Engine {
	t.Helper()
	e := New(slog.New(slog.DiscardHandler))
	if err := e.Configure(profile.Set{profile.Quarantine: profile.Default()}, c); err != nil {
		t.Fatal(err)
	}
	return e
}

// flood observes every 500 ms for d, with port offering pps frames of 250
// bytes from the VM and the others nothing.
func flood(e *Engine, f *fake, d time.Duration, pps float64, port string, others ...string) {
	c := map[string]detect.Sample{}
	for end := f.now.Add(d); f.now.Before(end); {
		f.now = f.now.Add(500 * time.Millisecond)
		s := c[port]
		n := uint64(pps / 2)
		s.RxPackets += n
		s.RxBytes += n * 250
		c[port] = s
		for _, o := range others {
			c[o] = c[o]
		}
		e.Observe(f, f.now, c)
	}
}

// A flood on a watched port is quarantined, by the watch, after the lock;
// with --max-auto reached the next is refused, and a manual quarantine
// does not count toward it.
func TestObserveStartsAfterTheLockAndHonoursMaxAuto(t *testing.T) {
	f := newFake(t, "vm-1", "vm-2", "vm-3")
	c := DefaultConfig()
	c.Watch, c.MaxAuto = []string{"vm-*"}, 1
	e := newEngine(t, c)
	manual := intent.New()
	f.q["vm-3"] = &fakeQ{port: "vm-3", active: true, spec: manual}

	flood(e, f, 3*time.Second, 400_000, "vm-1")
	if got := f.Calls(); len(got) == 0 || got[0] != "quarantine vm-1 watch" {
		t.Fatalf("calls %q; want vm-1 quarantined by the watch", got)
	}
	n := len(f.Calls())
	flood(e, f, 3*time.Second, 400_000, "vm-2")
	for _, c := range f.Calls()[n:] {
		if c == "quarantine vm-2 watch" {
			t.Fatalf("vm-2 quarantined beyond --max-auto 1")
		}
	}
	ev := e.Events()
	if ev.AutoStarted != 1 || ev.AutoRefused == 0 {
		t.Errorf("events: %d started, %d refused; want 1, at least 1", ev.AutoStarted, ev.AutoRefused)
	}
}

// With --dry-run a flood is flagged and counted, and nothing changes.
func TestObserveDryRunChangesNothing(t *testing.T) {
	f := newFake(t, "vm-1")
	c := DefaultConfig()
	c.Watch, c.DryRun = []string{"vm-*"}, true
	e := newEngine(t, c)
	flood(e, f, 3*time.Second, 400_000, "vm-1")
	if got := f.Calls(); len(got) != 0 {
		t.Fatalf("calls %q with --dry-run; want none", got)
	}
	if e.Events().Flags == 0 {
		t.Error("no flag counted")
	}
}

// laddered returns a quarantine of port on the quarantine profile's
// ladder, started at t0.
func laddered(t *testing.T, e *Engine, port string, origin api.Origin) *fakeQ {
	t.Helper()
	spec := intent.New()
	spec.Origin, spec.Profile = origin, profile.Quarantine
	spec, esc, err := e.StartLadder(port, spec, profile.Default(), t0)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeQ{port: port, active: true, spec: spec, esc: esc}
}

// A resolved alert moves the ladder to probation: the new spec is in the
// quarantine when the manager applies it, after the lock, and saved.
func TestAlertResolvedStartsProbation(t *testing.T) {
	f := newFake(t, "vm-1")
	e := newEngine(t, DefaultConfig())
	f.q["vm-1"] = laddered(t, e, "vm-1", api.OriginAlert)
	if f.q["vm-1"].spec.Stage != api.Stage(ladder.Stage1) {
		t.Fatalf("stage %q after StartLadder; want stage1", f.q["vm-1"].spec.Stage)
	}
	f.now = t0.Add(time.Second)
	out, err := e.Alert(f, "vm-1", false)
	if err != nil || out != "probation" {
		t.Fatalf("Alert = %q, %v; want probation", out, err)
	}
	want := []string{"apply vm-1 stage1>probation", "save"}
	if got := f.Calls(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("calls %q; want %q", got, want)
	}
	if out, _ := e.Alert(f, "vm-1", false); out != "resolved_already_probation" {
		t.Errorf("second resolved alert: %q", out)
	}
	if got := e.Events().Alerts; got["probation"] != 1 || got["resolved_already_probation"] != 1 {
		t.Errorf("alerts counted %v", got)
	}
}

// A firing alert quarantines only what the safety settings allow, and
// nothing at all after the manager closed.
func TestAlertFiringRefusals(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  func(*Config)
		port string
		want string
		err  error
	}{
		{"quarantined", func(*Config) {}, "vm-1", "quarantined", nil},
		{"unknown port", func(*Config) {}, "vm-9", "unknown_port", ErrUnknownPort},
		{"excluded", func(c *Config) { c.Exclude = []string{"vm-*"} }, "vm-1", "excluded", ErrNotVMPort},
		{"not watched", func(c *Config) { c.Watch = []string{"tap*"} }, "vm-1", "not_watched", ErrNotVMPort},
		{"max_auto", func(c *Config) { c.MaxAuto = 0 }, "vm-1", "max_auto", ErrNotVMPort},
		{"not a VM port", func(*Config) {}, "eth0", "not_vm_port", ErrNotVMPort},
		{"dry run", func(c *Config) { c.DryRun = true }, "vm-1", "dry_run", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, "vm-1", "eth0")
			f.notVM["eth0"] = true
			c := DefaultConfig()
			tt.cfg(&c)
			e := newEngine(t, c)
			out, err := e.Alert(f, tt.port, true)
			if out != tt.want || !errors.Is(err, tt.err) {
				t.Fatalf("Alert = %q, %v; want %q, %v", out, err, tt.want, tt.err)
			}
			quarantined := len(f.Calls()) > 0
			if quarantined != (tt.want == "quarantined") {
				t.Errorf("calls %q", f.Calls())
			}
		})
	}
	f := newFake(t, "vm-1")
	f.closed = true
	if out, err := newEngine(t, DefaultConfig()).Alert(f, "vm-1", true); out != "" || !errors.Is(err, errClosed) {
		t.Errorf("Alert after Close = %q, %v; want the manager's error", out, err)
	}
}

// A laddered quarantine without an average frame size takes the
// forwarder's after AvgFrameWindow: the byte budget follows, applied after
// the lock.
func TestLadderMeasuresTheAverageFrame(t *testing.T) {
	f := newFake(t, "vm-1")
	e := newEngine(t, DefaultConfig())
	q := laddered(t, e, "vm-1", api.OriginWatch)
	q.esc.Spliced(t0)
	q.fwd = [2]uint64{1000, 500_000}
	f.q["vm-1"] = q
	if q.spec.FromVM.BPS != nil {
		t.Fatalf("stage 1 without history has a byte budget %v", *q.spec.FromVM.BPS)
	}
	f.now = t0.Add(AvgFrameWindow - time.Second)
	e.Observe(f, f.now, nil)
	if q.esc.Ladder.AvgFrame() != 0 {
		t.Fatal("measured before the window ended")
	}
	f.now = t0.Add(AvgFrameWindow)
	e.Observe(f, f.now, nil)
	if got := q.esc.Ladder.AvgFrame(); got != 500 {
		t.Fatalf("average frame %v; want 500", got)
	}
	if q.spec.FromVM.BPS == nil {
		t.Fatal("no byte budget after the measurement")
	}
	found := false
	for _, c := range f.Calls() {
		found = found || c == "apply vm-1 stage1>stage1"
	}
	if !found {
		t.Errorf("calls %q; want the new spec applied", f.Calls())
	}
}

// RunWatch lists the host's links (a netlink dump of every link, splice
// taps included) only when a --watch pattern or a group needs the names:
// with none, the watch loop of a host with 100 idle quarantines cost 2.7%
// of a core, three quarters of it that dump.
func TestRunWatchListsLinksOnlyWhenNeeded(t *testing.T) {
	for _, tc := range []struct {
		name  string
		watch []string
		want  bool
	}{{"nothing watched", nil, false}, {"a pattern", []string{"vm-*"}, true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Interval = 5 * time.Millisecond
			c.Watch = tc.watch
			e := newEngine(t, c)
			f := newFake(t)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			e.RunWatch(ctx, f)
			if n := f.lists.Load(); (n > 0) != tc.want {
				t.Errorf("%d link listings in 100 ms of 5 ms ticks; want some: %v", n, tc.want)
			}
		})
	}
}
