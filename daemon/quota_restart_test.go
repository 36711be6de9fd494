package daemon

// The tenants across a restart: samples kept, a clean stop's counters,
// lost samples, and when the files are written.

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

func restartQuota(t *testing.T, dir string, fb *fakesplice.Backend, now time.Time) *quotaLab {
	t.Helper()
	l := newQuotaLab(t, dir, fb, now)
	if err := l.m.Restore(); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestQuotaRestartKeepsSamples: samples survive a kill -9; the interval cut
// short and those the daemon did not see count at the quota; the tenant's
// splices are adopted, not made again.
func TestQuotaRestartKeepsSamples(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state func(dir string)
	}{
		{"state files", func(string) {}},
		// Without the quarantines' state file every splice found would be
		// adopted as a quarantine: the tenants file claims its own.
		{"quarantine state file deleted", func(dir string) { os.Remove(filepath.Join(dir, store.StateFile)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fb := fakesplice.New("vm-1", "vm-2")
			l := newQuotaLab(t, dir, fb, quotaT0)
			l.m.Restore() // as the daemon starts: writes the state file
			l.add("acme", settings("vm-1,vm-2"))
			acct := acctOf(l.m, "acme")
			admit := func(n int, at time.Time) { acct.Admit(quota.FromVM, n, false, at, 0) }
			admit(30000, quotaT0)
			l.m.Tick(quotaT0.Add(56 * time.Second)) // 10:11:01: closes 10:10, saves
			admit(15000, quotaT0.Add(85*time.Second))
			l.m.Tick(quotaT0.Add(116 * time.Second)) // 10:12:01
			admit(5000, quotaT0.Add(2*time.Minute))
			l.m.Tick(quotaT0.Add(2*time.Minute + time.Second))
			l.set(quotaT0.Add(2*time.Minute + 2*time.Second))
			before, _ := l.m.QuotaReport("acme")
			if len(before.Samples) != 12 || before.Samples[10].BPS != 4000 || before.Samples[11].BPS != 2000 {
				t.Fatalf("before: %+v", before.Samples)
			}
			splices := fb.Splices()

			tc.state(dir)
			t1 := quotaT0.Add(5*time.Minute + 25*time.Second) // 10:15:30
			l2 := restartQuota(t, dir, fb, t1)
			after, _ := l2.m.QuotaReport("acme")
			if len(after.Samples) != 15 || !slices.Equal(after.Samples[:12], before.Samples) {
				t.Fatalf("samples after the restart are not those before plus three:\nbefore %+v\nafter  %+v", before.Samples, after.Samples)
			}
			for i := 12; i < 15; i++ { // 10:12 cut short, 10:13 and 10:14 unseen
				if after.Samples[i].BPS != 8000 {
					t.Errorf("interval %d after the restart: %d bit/s, want the commit 8000", i, after.Samples[i].BPS)
				}
			}
			st, _ := l2.m.Status("")
			if len(st.Quarantines) != 0 || len(st.Quotas) != 1 {
				t.Errorf("after the restart: %d quarantines, %d quotas", len(st.Quarantines), len(st.Quotas))
			}
			if fb.Splices() != splices || l2.portState("acme", "vm-1") != api.QuotaPortSpliced || l2.portState("acme", "vm-2") != api.QuotaPortSpliced {
				t.Errorf("after the restart: %d new splices, states %s %s", fb.Splices()-splices, l2.portState("acme", "vm-1"), l2.portState("acme", "vm-2"))
			}
			// The restored open interval (10:15) is at its quota: a frame
			// is capped.
			qm := l2.m.QuotaMetrics(t1)[0]
			if qm.Lanes[0].UsedBytes != 60000 {
				t.Errorf("open interval after the restart: %+v", qm.Lanes)
			}
		})
	}
}

// fakeMeters stands in for the ports' counters: every reading returns the
// current values, and the test moves them.
type fakeMeters struct {
	mu     sync.Mutex
	from   map[string]uint64
	ifx    map[string]int
	reads  int
	failed bool
}

func (f *fakeMeters) read(ports []string) ([]quota.PortMeter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.failed {
		return nil, errors.New("fake: cannot read counters")
	}
	var out []quota.PortMeter
	for _, p := range ports {
		out = append(out, quota.PortMeter{Name: p, Ifindex: f.ifx[p], FromVMBytes: f.from[p]})
	}
	return out, nil
}

func (f *fakeMeters) add(port string, n uint64) {
	f.mu.Lock()
	f.from[port] += n
	f.mu.Unlock()
}

// TestQuotaCleanStop: after a clean stop, a start within the same interval
// keeps the interval's count, plus what the ports' counters show passed
// while nothing metered them (stopped, and starting); after a crash, or
// when the counters cannot tell (a port recreated), the crash rule holds.
func TestQuotaCleanStop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		clean  bool                // Close the first manager
		meddle func(f *fakeMeters) // between the stop and the start
		want   int64               // the open interval's bytes after the start
	}{
		{"clean stop", true, func(*fakeMeters) {}, 30000 + 1000 + 500},
		{"crash", false, func(*fakeMeters) {}, 60000 + 500},
		{"port recreated", true, func(f *fakeMeters) { f.ifx["vm-1"] = 99 }, 60000 + 500},
		{"counters unreadable at the start", true, func(f *fakeMeters) { f.failed = true }, 60000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fb := fakesplice.New("vm-1", "vm-2")
			fm := &fakeMeters{from: map[string]uint64{"vm-1": 1e6, "vm-2": 5e5}, ifx: map[string]int{"vm-1": 7, "vm-2": 8}}
			l := newQuotaLab(t, dir, fb, quotaT0)
			testHost(l.m).Meters = fm.read
			l.m.Restore()
			l.add("acme", settings("vm-1,vm-2"))
			stop := quotaT0.Add(10 * time.Second) // 10:10:15, in the 10:10 interval
			acctOf(l.m, "acme").Admit(quota.FromVM, 30000, false, stop, 0)
			l.set(stop)
			if tc.clean {
				if err := l.m.Close(); err != nil {
					t.Fatal(err)
				}
			}
			fm.add("vm-1", 600) // while stopped: unmetered
			fm.add("vm-2", 400)
			tc.meddle(fm)

			start := quotaT0.Add(20 * time.Second)
			l2 := newQuotaLab(t, dir, fb, start)
			testHost(l2.m).Meters = func(ports []string) ([]quota.PortMeter, error) {
				pm, err := fm.read(ports)
				fm.add("vm-1", 500) // while the forwarders start
				return pm, err
			}
			if err := l2.m.Restore(); err != nil {
				t.Fatal(err)
			}
			qm := l2.m.QuotaMetrics(start)[0]
			var used int64
			for _, ln := range qm.Lanes {
				if ln.Name == "from_vm" {
					used = ln.UsedBytes
				}
			}
			if used != tc.want {
				t.Errorf("open interval after the start: %d bytes from the VM, want %d (lanes %+v)", used, tc.want, qm.Lanes)
			}
			// The next save carries no clean mark: a crash now applies
			// the crash rule again.
			s, err := quota.Store{Dir: dir}.Load("acme")
			if err != nil || s.Clean != nil {
				t.Errorf("snapshot saved after the start: clean %+v, %v", s.Clean, err)
			}
		})
	}
}

// TestQuotaLostSamples: with its samples file gone or damaged, a tenant
// restarts with every interval of the period so far at the commit.
func TestQuotaLostSamples(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(path string)
		asideTo bool
	}{
		{"deleted", func(p string) { os.Remove(p) }, false},
		{"corrupt", func(p string) { os.WriteFile(p, []byte(`{"sha256":"00","body":{}}`), 0o600) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fb := fakesplice.New("vm-1")
			l := newQuotaLab(t, dir, fb, quotaT0)
			l.add("acme", settings("vm-1"))
			tc.damage(quota.Store{Dir: dir}.Path("acme"))
			l2 := restartQuota(t, dir, fb, quotaT0.Add(time.Minute))
			r, _ := l2.m.QuotaReport("acme")
			if len(r.Samples) != 11 {
				t.Fatalf("%d samples, want 11", len(r.Samples))
			}
			for _, s := range r.Samples {
				if s.BPS != 8000 {
					t.Fatalf("samples: %+v, want all at the commit", r.Samples)
				}
			}
			aside, _ := filepath.Glob(quota.Store{Dir: dir}.Path("acme") + ".corrupt-*")
			if (len(aside) == 1) != tc.asideTo {
				t.Errorf("set aside: %v", aside)
			}
			if _, err := (quota.Store{Dir: dir}).Load("acme"); err != nil {
				t.Errorf("samples not saved again: %v", err)
			}
		})
	}
}

// TestQuotaSaves: a tick saves what an interval's close adds; so does a
// scrape that happens to see it first (taking a snapshot clears the
// account's note that it needs saving).
func TestQuotaSaves(t *testing.T) {
	dir := t.TempDir()
	l := newQuotaLab(t, dir, fakesplice.New("vm-1"), quotaT0)
	l.add("acme", settings("vm-1", "direction", "sum"))
	acct := acctOf(l.m, "acme")
	st := quota.Store{Dir: dir}
	closed := func() int {
		s, err := st.Load("acme")
		if err != nil {
			t.Fatal(err)
		}
		return len(s.Lanes[0].Samples)
	}
	if closed() != 10 {
		t.Fatalf("initial snapshot: %d samples", closed())
	}
	acct.Admit(quota.ToVM, 1000, false, quotaT0, 0)
	l.m.Tick(quotaT0.Add(time.Minute))
	if closed() != 11 {
		t.Errorf("tick after a close: %d samples saved, want 11", closed())
	}
	// A frame closes 10:11 lazily; the scrape sees it first.
	acct.Admit(quota.ToVM, 1000, false, quotaT0.Add(2*time.Minute), 0)
	qm := l.m.QuotaMetrics(quotaT0.Add(2*time.Minute + time.Second))
	if closed() != 12 {
		t.Errorf("scrape after a lazy close: %d samples saved, want 12", closed())
	}
	if len(qm) != 1 || len(qm[0].Lanes) != 1 || qm[0].Lanes[0].Name != "sum" || qm[0].Lanes[0].UsedBytes != 1000 {
		t.Errorf("metrics: %+v", qm)
	}
	// A tick with nothing new writes nothing.
	p := st.Path("acme")
	fi, _ := os.Stat(p)
	os.Chtimes(p, fi.ModTime().Add(-time.Hour), fi.ModTime().Add(-time.Hour))
	l.m.Tick(quotaT0.Add(2*time.Minute + 2*time.Second))
	if fi2, _ := os.Stat(p); !fi2.ModTime().Equal(fi.ModTime().Add(-time.Hour)) {
		t.Errorf("a tick with nothing new rewrote the samples")
	}
}

func acctOf(m *Manager, tenant string) *quota.Account {
	t, _ := m.quotas.Tenant(tenant)
	return t.Acct
}
