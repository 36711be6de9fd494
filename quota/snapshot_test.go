package quota

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// drive offers a varied load: each second s, 400 to 3000 bytes.
func drive(a *Account, from, to int, rnd *Rand) {
	for s := from; s < to; s++ {
		offerConst(a, ToVM, 400+(s*7919)%2600, float64(s), float64(s+1), rnd)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	c := small()
	c.BurstCeiling = 0
	a := mustNew(t, c, t0)
	rnd := NewRand(9)
	drive(a, 0, 250, &rnd) // into the third period: history spans periods
	// Taken at an interval boundary, nothing of the open interval is lost.
	s := a.Snapshot(at(250))
	b := mustNew(t, c, at(250))
	if err := b.Restore(s, at(250)); err != nil {
		t.Fatal(err)
	}
	s2 := b.Snapshot(at(250))
	// The open interval counts as at its quota in the restored Account.
	if s2.Lanes[0].Normal != 1000 {
		t.Errorf("restored open interval: %d bytes, want the quota 1000", s2.Lanes[0].Normal)
	}
	s2.Lanes[0].Normal, s2.Lanes[0].Offered = s.Lanes[0].Normal, s.Lanes[0].Offered
	if !reflect.DeepEqual(s, s2) {
		t.Errorf("snapshot changed across Restore:\n%+v\n%+v", s, s2)
	}
	if len(s.Lanes[0].Samples) != 50 || len(s.Lanes[0].History) != 100 {
		t.Errorf("%d samples, %d history", len(s.Lanes[0].Samples), len(s.Lanes[0].History))
	}
	// Through JSON, too.
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, back) {
		t.Errorf("JSON round trip changed the snapshot")
	}
	// The burst thresholds follow the history: both Accounts decide alike.
	if la, lb := a.route[ToVM], b.route[ToVM]; la.theta != lb.theta {
		t.Errorf("threshold %v, restored %v", la.theta, lb.theta)
	}
}

// TestCrashRule: the interval cut short by a crash counts as at its quota;
// so does every interval the daemon did not see.
func TestCrashRule(t *testing.T) {
	t.Run("normal interval", func(t *testing.T) {
		c := small()
		c.BypassReserve = 0.05
		a := mustNew(t, c, t0)
		a.Admit(ToVM, 300, false, at(10.2), 0) // 300 bytes known, then a crash
		s := a.Snapshot(at(10.3))
		b := mustNew(t, c, at(10.6))
		if err := b.Restore(s, at(10.6)); err != nil {
			t.Fatal(err)
		}
		if v := b.Admit(ToVM, 1, false, at(10.7), math.MaxUint32); v != DropCap {
			t.Errorf("normal frame after a restart mid-interval: %v, want quota_cap", v)
		}
		// Bypass still passes: it is never starved.
		if v := b.Admit(ToVM, 100, true, at(10.8), 0); v != Pass {
			t.Errorf("bypass frame after a restart: %v", v)
		}
		r := b.Report(at(11.5))
		// At the quota: 1000 bytes, bypass reserve (50) taken as used, so
		// all 100 bypass bytes after the restart are beyond it.
		if got := r.Samples[10].BPS; got != (1000+100)*8 {
			t.Errorf("cut interval billed %d, want %d", got, 1100*8)
		}
		if v := b.Admit(ToVM, 500, false, at(11.6), 0); v != Pass {
			t.Errorf("next interval: %v", v)
		}
	})
	t.Run("burst interval with a ceiling", func(t *testing.T) {
		c := small()
		c.BurstCeiling = 24000 // 3000 bytes
		a := mustNew(t, c, t0)
		rnd := NewRand(1)
		offerConst(a, ToVM, 5000, 0, 0.5, &rnd) // 1500 bytes: a burst, above the commit
		s := a.Snapshot(at(0.5))
		if !s.Lanes[0].Burst {
			t.Fatal("the interval was not raised to a burst")
		}
		b := mustNew(t, c, at(0.6))
		if err := b.Restore(s, at(0.6)); err != nil {
			t.Fatal(err)
		}
		if v := b.Admit(ToVM, 1, false, at(0.7), math.MaxUint32); v != DropCap {
			t.Errorf("after the restart: %v, want quota_cap", v)
		}
		r := b.Report(at(1))
		if r.Samples[0].BPS != 24000 || r.BurstIntervalsUsed != 1 {
			t.Errorf("cut burst interval: %d bit/s, used %d; want the ceiling, 1", r.Samples[0].BPS, r.BurstIntervalsUsed)
		}
	})
	t.Run("burst interval without a ceiling", func(t *testing.T) {
		c := small()
		c.BurstCeiling = 0
		a := mustNew(t, c, t0)
		rnd := NewRand(1)
		offerConst(a, ToVM, 1800, 0, 0.5, &rnd) // 900 bytes so far: raised, not yet above
		s := a.Snapshot(at(0.5))
		if !s.Lanes[0].Burst {
			t.Fatal("the interval was not raised to a burst")
		}
		b := mustNew(t, c, at(0.6))
		if err := b.Restore(s, at(0.6)); err != nil {
			t.Fatal(err)
		}
		// No ceiling: traffic goes on, and the interval counts as a burst.
		if v := b.Admit(ToVM, 700, false, at(0.7), 0); v != Pass {
			t.Errorf("after the restart: %v", v)
		}
		if r := b.Report(at(1)); r.BurstIntervalsUsed != 1 || r.Samples[0].BPS <= 8000 {
			t.Errorf("used %d, sample %d", r.BurstIntervalsUsed, r.Samples[0].BPS)
		}
	})
	t.Run("down for several intervals and into the next period", func(t *testing.T) {
		c := small()
		a := mustNew(t, c, t0)
		a.Admit(ToVM, 200, false, at(95.5), 0)
		s := a.Snapshot(at(95.5))
		b := mustNew(t, c, at(103.4))
		if err := b.Restore(s, at(103.4)); err != nil {
			t.Fatal(err)
		}
		if v := b.Admit(ToVM, 1, false, at(103.5), math.MaxUint32); v != DropCap {
			t.Errorf("interval of the restart: %v, want quota_cap", v)
		}
		r := b.Report(at(104))
		if len(r.Samples) != 4 {
			t.Fatalf("new period: %d samples", len(r.Samples))
		}
		for i, sm := range r.Samples {
			if sm.BPS != 8000 {
				t.Errorf("interval %d of the new period, not seen: %d bit/s, want the commit", i, sm.BPS)
			}
		}
		if r.BurstIntervalsUsed != 0 {
			t.Errorf("unseen intervals used %d burst intervals", r.BurstIntervalsUsed)
		}
	})
	t.Run("down for years", func(t *testing.T) {
		c := small()
		a := mustNew(t, c, t0)
		s := a.Snapshot(at(5))
		later := t0.AddDate(2, 0, 0).Add(30500 * time.Millisecond)
		b := mustNew(t, c, later)
		if err := b.Restore(s, later); err != nil {
			t.Fatal(err)
		}
		r := b.Report(later)
		for _, sm := range r.Samples {
			if sm.BPS != 8000 {
				t.Fatalf("unseen interval at %d bit/s", sm.BPS)
			}
		}
		if v := b.Admit(ToVM, 1, false, later, math.MaxUint32); v != DropCap {
			t.Errorf("interval of the restart: %v", v)
		}
	})
}

// TestRestoreAfterCleanStop: after a clean stop, a restart within the same
// interval keeps the interval's counts and adds what passed unmetered;
// anything less certain falls back to the crash rule.
func TestRestoreAfterCleanStop(t *testing.T) {
	stopped := func(t *testing.T, clean bool) Snapshot {
		t.Helper()
		a := mustNew(t, small(), t0)
		if v := a.Admit(ToVM, 300, false, at(10.2), 0); v != Pass {
			t.Fatalf("first frame: %v", v)
		}
		s := a.Snapshot(at(10.3))
		if clean {
			s.Clean = &CleanStop{}
		}
		return s
	}
	for _, tt := range []struct {
		name      string
		clean     bool
		restart   float64
		u         *Unmetered
		wantClean bool
		sample    uint64 // interval 10's bit/s, read at 11.5
	}{
		{"same interval", true, 10.6, &Unmetered{ToVM: 200}, true, (300 + 200 + 200) * 8},
		{"the other direction is not billed", true, 10.6, &Unmetered{FromVM: 5000}, true, (300 + 200) * 8},
		{"unmetered beyond the quota", true, 10.6, &Unmetered{ToVM: 2000}, true, (300 + 2000) * 8},
		{"not a clean stop", false, 10.6, &Unmetered{}, false, 8000},
		{"unmetered bytes unknown", true, 10.6, nil, false, 8000},
		{"negative unmetered bytes", true, 10.6, &Unmetered{ToVM: -1}, false, 8000},
		{"restarted in the next interval", true, 11.2, &Unmetered{}, false, 8000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := stopped(t, tt.clean)
			b := mustNew(t, small(), at(tt.restart))
			clean, err := b.RestoreAfterCleanStop(s, at(tt.restart), tt.u)
			if err != nil {
				t.Fatal(err)
			}
			if clean != tt.wantClean {
				t.Errorf("restored without the crash rule: %v, want %v", clean, tt.wantClean)
			}
			if tt.restart < 11 {
				v := b.Admit(ToVM, 200, false, at(10.7), 0)
				want := Pass
				if !tt.wantClean || tt.u.ToVM >= 1000 {
					want = DropCap
				}
				if v != want {
					t.Errorf("frame after the restart: %v, want %v", v, want)
				}
			}
			r := b.Report(at(11.5))
			if got := r.Samples[10].BPS; got != tt.sample {
				t.Errorf("interval of the stop billed %d bit/s, want %d", got, tt.sample)
			}
		})
	}
	// What passed between the restore and the forwarders' start is
	// added to the open interval, in the billed direction only.
	b := mustNew(t, small(), at(10.6))
	if _, err := b.RestoreAfterCleanStop(stopped(t, true), at(10.6), &Unmetered{}); err != nil {
		t.Fatal(err)
	}
	b.AddUnmetered(at(10.65), Unmetered{FromVM: 999, ToVM: 100})
	if got := b.Report(at(11.5)).Samples[10].BPS; got != (300+100)*8 {
		t.Errorf("after AddUnmetered the interval is billed %d bit/s, want %d", got, (300+100)*8)
	}
	// A clean marker survives JSON; a plain snapshot has none.
	s := stopped(t, true)
	s.Clean.Ports = []PortMeter{{Name: "vm-1", Ifindex: 7, FromVMBytes: 1, ToVMBytes: 2}}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(data, &back); err != nil || !reflect.DeepEqual(s, back) {
		t.Errorf("JSON round trip: %v, %+v", err, back.Clean)
	}
	if plain, _ := json.Marshal(stopped(t, false)); bytes.Contains(plain, []byte(`"clean"`)) {
		t.Errorf("a snapshot without a clean stop carries the key: %s", plain)
	}
}

func TestRestoreMismatch(t *testing.T) {
	c := small()
	a := mustNew(t, c, t0)
	a.Admit(ToVM, 500, false, at(0.5), 0)
	good := a.Snapshot(at(3.5))
	cases := []struct {
		name string
		edit func(s *Snapshot, c *Config)
		want string
	}{
		{"version", func(s *Snapshot, c *Config) { s.Version = 7 }, "version 7"},
		{"tenant", func(s *Snapshot, c *Config) { s.Tenant = "other" }, `tenant "other"`},
		{"interval", func(s *Snapshot, c *Config) { c.Interval = 2 * time.Second }, "interval 1s, now 2s"},
		{"direction", func(s *Snapshot, c *Config) { c.Direction = BillMax }, "billed directions"},
		{"direction name", func(s *Snapshot, c *Config) { c.Direction = BillFromVM }, `direction "to_vm" where "from_vm"`},
		{"period alignment", func(s *Snapshot, c *Config) { s.Lanes[0].PeriodStart = s.Lanes[0].PeriodStart.Add(time.Second) }, "is not the start of a period"},
		{"too many samples", func(s *Snapshot, c *Config) { s.Lanes[0].Samples = make([]int64, 100) }, "100 closed samples"},
		{"negative", func(s *Snapshot, c *Config) { s.Lanes[0].Samples[1] = -5 }, "byte count -5 is out of range"},
		{"long history", func(s *Snapshot, c *Config) { s.Lanes[0].History = make([]int64, 101) }, "101 history entries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			s.Lanes = []LaneSnapshot{good.Lanes[0]}
			s.Lanes[0].Samples = slices.Clone(good.Lanes[0].Samples)
			cc := c
			tc.edit(&s, &cc)
			b := mustNew(t, cc, at(3.5))
			before := b.Snapshot(at(3.5))
			err := b.Restore(s, at(3.5))
			if !errors.Is(err, ErrSnapshotMismatch) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrSnapshotMismatch mentioning %q", err, tc.want)
			}
			if after := b.Snapshot(at(3.5)); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused Restore changed the Account")
			}
		})
	}
}

func TestStore(t *testing.T) {
	st := Store{Dir: filepath.Join(t.TempDir(), "quotas")}
	c := small()
	a := mustNew(t, c, t0)
	rnd := NewRand(2)
	drive(a, 0, 30, &rnd)
	if _, err := st.Load("t"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("no file yet: %v", err)
	}
	s := a.Snapshot(at(30))
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	back, err := st.Load("t")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, back) {
		t.Errorf("store round trip changed the snapshot")
	}
	// Replacing leaves no temporary files behind.
	if err := st.Save(a.Snapshot(at(31))); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(st.Dir)
	if len(ents) != 1 || ents[0].Name() != "quota-t.json" {
		t.Errorf("directory holds %v", ents)
	}
	if _, err := st.Load("../etc"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("a path as tenant: %v", err)
	}
	if err := st.Remove("t"); err != nil {
		t.Fatal(err)
	}
	if err := st.Remove("t"); err != nil {
		t.Errorf("removing twice: %v", err)
	}
}

func TestStoreCorruption(t *testing.T) {
	dir := t.TempDir()
	st := Store{Dir: dir}
	a := mustNew(t, small(), t0)
	a.Admit(ToVM, 700, false, at(0.5), 0)
	if err := st.Save(a.Snapshot(at(2))); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(st.Path("t"))
	if err != nil {
		t.Fatal(err)
	}
	flip := bytes.Clone(good)
	i := bytes.Index(flip, []byte(`"samples":[`)) + len(`"samples":[`)
	flip[i] = '9' // a sample changed: still valid JSON, wrong checksum
	otherTenant := func() []byte {
		b := mustNew(t, func() Config { c := small(); c.Tenant = "u"; return c }(), t0)
		p := filepath.Join(t.TempDir(), "x.json")
		if err := WriteFile(p, b.Snapshot(at(2))); err != nil {
			t.Fatal(err)
		}
		d, _ := os.ReadFile(p)
		return d
	}()
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "EOF"},
		{"truncated", good[:len(good)/2], "unexpected EOF"},
		{"flipped sample", flip, "checksum mismatch"},
		{"garbage", []byte("\x00\x01binary"), "invalid character"},
		{"not an envelope", []byte(`{"version":1}`), "unknown field"},
		{"no body", []byte(`{"sha256":"00"}`), "no body"},
		{"trailing data", append(bytes.Clone(good), []byte("{}")...), "trailing data"},
		{"body not a snapshot", []byte(`{"sha256":"` + sha(`[1,2]`) + `","body":[1,2]}`), "cannot unmarshal"},
		{"wrong version", []byte(`{"sha256":"` + sha(`{"version":2}`) + `","body":{"version":2}}`), "version 2"},
		{"another tenant's file", otherTenant, `holds tenant "u"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(st.Path("t"), tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := st.Load("t")
			if !errors.Is(err, ErrCorruptSnapshot) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want ErrCorruptSnapshot mentioning %q", err, tc.want)
			}
		})
	}
}

func sha(body string) string {
	var b bytes.Buffer
	json.Compact(&b, []byte(body))
	return hexSHA(b.Bytes())
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
