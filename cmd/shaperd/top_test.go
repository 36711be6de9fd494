package main

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gdamore/tcell/v2"

	"github.com/shaperd/shaperd/api"
)

func TestRenderTop(t *testing.T) {
	prev, cur := topFixture()
	want := []string{
		"shaperd top  3 quarantined ports  rates over 1.0s  daemon dev pid 42",
		"",
		"PORT            STATE   STAGE  DIR/CLASS    PASS pps  DROP pps  PASS bit/s  DROP bit/s  LIMIT / DROPS",
		"vm-1-00c9       active  manual from_vm         5.01k      395k       10.0M        790M  limit 5000 pps",
		"                                 bypass           10         0       5.28k           0",
		"                                 udp           5.00k      395k       10.0M        790M  aggregate_budget 395k",
		"                               to_vm              10         0       5.28k           0  limit none",
		"                                 control           0         0           0           0",
		"                                 bypass           10         0       5.28k           0",
		"",
		"vm-2-00c9       active  manual from_vm             0         0           0           0  limit 5000 pps",
		"                               to_vm               0         0           0           0  limit none",
		"",
		"vm-3-00c9       pending manual from_vm             0         0           0           0  pending until 2025-01-03 03:04:05Z",
		"                               to_vm               0         0           0           0  limit none",
	}
	compareLines(t, renderTop(&prev, &cur, time.Second), want)

	// Over 2 s the rates halve.
	got := renderTop(&prev, &cur, 2*time.Second)
	if want := "vm-1-00c9       active  manual from_vm         2.50k      198k       5.00M        395M  limit 5000 pps"; got[3] != want {
		t.Errorf("over 2 s:\n got %q\nwant %q", got[3], want)
	}
}

func TestRenderTopWithoutRates(t *testing.T) {
	_, cur := topFixture()
	// No earlier sample: every rate is "-", and ports are in name order.
	got := renderTop(nil, &cur, 0)
	if want := "vm-1-00c9       active  manual from_vm             -         -           -           -  limit 5000 pps"; got[3] != want {
		t.Errorf("first view:\n got %q\nwant %q", got[3], want)
	}
	// vm-1 was quarantined anew since the earlier sample: its counters
	// restarted, so it has no rates yet; the others still have theirs.
	prev, cur := topFixture()
	cur.Quarantines[2].Since = cur.Quarantines[2].Since.Add(time.Minute)
	got = renderTop(&prev, &cur, time.Second)
	if got[3] != "vm-1-00c9       active  manual from_vm             -         -           -           -  limit 5000 pps" ||
		got[10] != "vm-2-00c9       active  manual from_vm             0         0           0           0  limit 5000 pps" {
		t.Errorf("re-quarantined port:\n%s", strings.Join(got, "\n"))
	}
	// A counter that went back (a write failure moved a frame from passed
	// to dropped) reads as 0, never as a huge unsigned difference.
	prev, cur = topFixture()
	udp := cur.Quarantines[2].Directions.FromVM.Classes["udp"]
	udp.PassedPackets = prev.Quarantines[2].Directions.FromVM.Classes["udp"].PassedPackets - 1
	udp.PassedBytes = 0
	cur.Quarantines[2].Directions.FromVM.Classes["udp"] = udp
	got = renderTop(&prev, &cur, time.Second)
	if want := "                                 udp               0      395k           0        790M  aggregate_budget 395k"; got[5] != want {
		t.Errorf("counter went back:\n got %q\nwant %q", got[5], want)
	}
	// Nothing quarantined.
	compareLines(t, renderTop(&api.Status{}, &api.Status{Daemon: api.Daemon{PID: 7, Version: "v1"}}, time.Second), []string{
		"shaperd top  0 quarantined ports  rates over 1.0s  daemon v1 pid 7",
		"",
		"PORT            STATE   STAGE  DIR/CLASS    PASS pps  DROP pps  PASS bit/s  DROP bit/s  LIMIT / DROPS",
		"",
		"no quarantined ports",
	})
}

func compareLines(t *testing.T, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSI(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want string
	}{
		{0, "0"}, {-3, "0"}, {0.5, "0.5"}, {7, "7"}, {12.4, "12"}, {999.4, "999"}, {999.5, "1.00k"},
		{5012, "5.01k"}, {39_500, "39.5k"}, {395_000, "395k"}, {10e6, "10.0M"}, {790e6, "790M"}, {1.5e9, "1.50G"},
	} {
		if got := si(tt.v); got != tt.want {
			t.Errorf("si(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

// simScreen is a simulated screen whose shown contents the test can read:
// GetContents is not safe while runTop draws, so Show copies the rows under
// a lock, in runTop's goroutine.
type simScreen struct {
	tcell.SimulationScreen
	mu   sync.Mutex
	rows []string
}

func (s *simScreen) Show() {
	s.SimulationScreen.Show()
	cells, w, h := s.GetContents()
	rows := make([]string, h)
	for y := range h {
		var b strings.Builder
		for x := range w {
			b.Write(cells[y*w+x].Bytes)
		}
		rows[y] = strings.TrimRight(b.String(), " ")
	}
	s.mu.Lock()
	s.rows = rows
	s.mu.Unlock()
}

func (s *simScreen) text() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.rows)
}

// fakeDaemon answers status with the fixture's counters advancing by one
// second's worth per call, or with err.
type fakeDaemon struct {
	mu    sync.Mutex
	calls int
	err   error
}

func (f *fakeDaemon) fetch() (api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return api.Status{}, f.err
	}
	_, cur := topFixture()
	// Scale vm-1's udp counters by the call count.
	q := &cur.Quarantines[2]
	udp := q.Directions.FromVM.Classes["udp"]
	n := uint64(f.calls)
	udp.PassedPackets, udp.DroppedPackets = 500*n, 39500*n
	udp.Drops = drops("aggregate_budget", 39500*f.calls)
	q.Directions.FromVM.Classes["udp"] = udp
	return cur, nil
}

func (f *fakeDaemon) fail(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func waitScreen(t *testing.T, s *simScreen, what string, cond func(rows []string) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for rows := s.text(); len(rows) == 0 || !cond(rows); rows = s.text() {
		if time.Now().After(deadline) {
			t.Fatalf("screen never showed %s:\n%s", what, strings.Join(rows, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunTop(t *testing.T) {
	for _, tt := range []struct {
		name string
		key  func(s tcell.SimulationScreen)
	}{
		{"q", func(s tcell.SimulationScreen) { s.InjectKey(tcell.KeyRune, 'q', 0) }},
		{"ctrl-c", func(s tcell.SimulationScreen) { s.InjectKey(tcell.KeyCtrlC, 0, 0) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &simScreen{SimulationScreen: tcell.NewSimulationScreen("UTF-8")}
			if err := s.Init(); err != nil {
				t.Fatal(err)
			}
			s.SetSize(120, 30)
			f := &fakeDaemon{}
			first, _ := f.fetch()
			done := make(chan error, 1)
			go func() {
				done <- runTop(t.Context(), s, f.fetch, 100*time.Millisecond, topSample{st: first, at: time.Now()})
			}()

			// The flooding port comes first, with rates, once a second
			// sample is in.
			waitScreen(t, s, "vm-1-00c9 first with rates", func(rows []string) bool {
				return len(rows) > 3 && strings.HasPrefix(rows[3], "vm-1-00c9") && !strings.Contains(rows[3], " - ")
			})
			if rows := s.text(); !strings.HasPrefix(rows[0], "shaperd top  3 quarantined ports") || rows[29] != "q quit" {
				t.Errorf("title %q, last row %q", rows[0], rows[29])
			}
			// A failed refresh is shown, and the view stays.
			f.fail(errors.New("daemon not running"))
			waitScreen(t, s, "the error", func(rows []string) bool { return rows[29] == "status: daemon not running" })
			if rows := s.text(); !strings.HasPrefix(rows[3], "vm-1-00c9") {
				t.Errorf("view lost after an error: %q", rows[3])
			}
			tt.key(s)
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("top did not quit")
			}
		})
	}
}

// TestTopCommand runs `shaperd top --once` against a daemon with fake
// plumbing, and checks its errors.
func TestTopCommand(t *testing.T) {
	sock, _ := startFake(t)
	if code, out, errs := cli(t, sock, "top", "--once", "--interval", "100ms"); code != 0 || !strings.Contains(out, "no quarantined ports") {
		t.Errorf("top --once, nothing quarantined: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := cli(t, sock, "quarantine", "vm-1-00c9", "--pps", "100"); code != 0 {
		t.Fatalf("quarantine: %s", errs)
	}
	code, out, errs := cli(t, sock, "top", "--once", "--interval", "100ms")
	if code != 0 || !strings.Contains(out, "vm-1-00c9       active  manual from_vm             0") || !strings.Contains(out, "limit 100 pps") {
		t.Errorf("top --once: exit %d\n%s%s", code, out, errs)
	}
	for _, tt := range []struct {
		args []string
		code int
		has  string
	}{
		{[]string{"top", "--interval", "10ms"}, 2, "--interval"},
		{[]string{"top", "a", "b"}, 2, "at most one PORT"},
		{[]string{"top", "--once", "vm-2-00c9"}, 3, "not quarantined"},
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "top", "--once"}, 1, "not running"},
	} {
		code, _, errs := cli(t, sock, tt.args...)
		if code != tt.code || !strings.Contains(errs, tt.has) {
			t.Errorf("%v: exit %d, %q; want exit %d mentioning %q", tt.args, code, errs, tt.code, tt.has)
		}
	}
}

func classes(kv map[string]api.ClassStats) map[string]api.ClassStats {
	out := map[string]api.ClassStats{}
	for _, n := range []string{"control", "bypass", "tcp-syn", "tcp", "udp", "icmp", "other", "malformed"} {
		cs := kv[n]
		if cs.Drops == nil {
			cs.Drops = map[string]uint64{"class_budget": 0, "aggregate_budget": 0, "bypass_budget": 0, "control_budget": 0, "malformed": 0, "write_error": 0}
		}
		out[n] = cs
	}
	return out
}

func drops(kv ...any) map[string]uint64 {
	m := map[string]uint64{"class_budget": 0, "aggregate_budget": 0, "bypass_budget": 0, "control_budget": 0, "malformed": 0, "write_error": 0}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = uint64(kv[i+1].(int))
	}
	return m
}

// topFixture: vm-1-00c9 floods (udp from the VM: 5000 pps pass, 395000 pps
// dropped by the aggregate, 250-byte frames; ssh to the VM passes at 10
// pps); vm-2-00c9 is idle; vm-3-00c9 is pending.
func topFixture() (prev, cur api.Status) {
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	pps := 5000.0
	burst := 50
	mk := func(k uint64) api.Status {
		vm1 := api.Quarantine{Port: "vm-1-00c9", State: "active", Backend: "tc", Fail: "closed", Since: since}
		vm1.Directions.FromVM = api.Direction{
			Limits: api.Limits{PPS: &pps, BurstPackets: &burst},
			Classes: classes(map[string]api.ClassStats{
				"udp":    {PassedPackets: 5000 * k, PassedBytes: 250 * 5000 * k, DroppedPackets: 395000 * k, DroppedBytes: 250 * 395000 * k, Drops: drops("aggregate_budget", 395000*int(k))},
				"bypass": {PassedPackets: 10 * k, PassedBytes: 66 * 10 * k, Drops: drops()},
			}),
		}
		vm1.Directions.ToVM = api.Direction{Classes: classes(map[string]api.ClassStats{
			"bypass":  {PassedPackets: 10 * k, PassedBytes: 66 * 10 * k, Drops: drops()},
			"control": {PassedPackets: 1, PassedBytes: 42, Drops: drops()},
		})}
		vm2 := api.Quarantine{Port: "vm-2-00c9", State: "active", Backend: "tc", Fail: "closed", Since: since}
		vm2.Directions.FromVM = api.Direction{Limits: api.Limits{PPS: &pps, BurstPackets: &burst}, Classes: classes(nil)}
		vm2.Directions.ToVM = api.Direction{Classes: classes(nil)}
		exp := since.Add(24 * time.Hour)
		vm3 := api.Quarantine{Port: "vm-3-00c9", State: "pending", Fail: "closed", Since: since, Expires: &exp}
		vm3.Directions.FromVM = api.Direction{Limits: api.Limits{PPS: &pps, BurstPackets: &burst}, Classes: classes(nil)}
		vm3.Directions.ToVM = api.Direction{Classes: classes(nil)}
		return api.Status{Daemon: api.Daemon{PID: 42, Version: "dev"}, Quarantines: []api.Quarantine{vm2, vm3, vm1}}
	}
	return mk(3), mk(4)
}
