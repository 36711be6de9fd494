package daemon

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/forward/fakedev"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// quotaLab is a Manager on a fake backend whose taps are fake devices the
// test can reach, with a clock the test moves.
type quotaLab struct {
	t  *testing.T
	m  *Manager
	fb *fakesplice.Backend

	mu       sync.Mutex
	devs     map[string]*fakedev.Device
	failOpen map[string]bool // tap names whose opening fails
	now      time.Time
}

// t0 is in the middle of a 1 h period (10:00 to 11:00), 5 s into a minute.
var quotaT0 = time.Date(2030, 1, 1, 10, 10, 5, 0, time.UTC)

func newQuotaLab(t *testing.T, dir string, fb *fakesplice.Backend, now time.Time) *quotaLab {
	t.Helper()
	l := &quotaLab{t: t, fb: fb, devs: map[string]*fakedev.Device{}, failOpen: map[string]bool{}, now: now}
	h := &hosttest.Host{Exists: fb.Exists, Clock: l.clock, Tap: func(name string) (forward.Device, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.failOpen[name] {
			return nil, errors.New("fake: cannot open " + name)
		}
		d := fakedev.New(256)
		l.devs[name] = d
		return d, nil
	}}
	l.m = NewWithOptions(nil, Options{StateDir: dir, PendingTTL: time.Hour, Host: h}, fb)
	t.Cleanup(func() { l.m.Close() })
	return l
}

func (l *quotaLab) clock() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.now
}

func (l *quotaLab) set(now time.Time) {
	l.mu.Lock()
	l.now = now
	l.mu.Unlock()
}

func (l *quotaLab) dev(name string) *fakedev.Device {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.devs[name]
}

// settings are a tenant's settings for tests: a 1 h period of 1 min
// intervals, 8 kbit/s (60000 bytes an interval), no bursting.
func settings(ports string, extra ...string) map[string]string {
	s := map[string]string{"ports": ports, "commit": "8kbit", "interval": "1m", "period": "1h", "burst-ceiling": "8kbit"}
	for i := 0; i+1 < len(extra); i += 2 {
		s[extra[i]] = extra[i+1]
	}
	return s
}

func (l *quotaLab) add(name string, s map[string]string) api.QuotaTenant {
	l.t.Helper()
	tn, err := l.m.AddTenant(name, s)
	if err != nil {
		l.t.Fatalf("add %s: %v", name, err)
	}
	return tn
}

func (l *quotaLab) portState(tenant, port string) string {
	l.t.Helper()
	for _, tn := range l.m.QuotaList().Tenants {
		if tn.Tenant != tenant {
			continue
		}
		for _, p := range tn.Ports {
			if p.Port == port {
				return p.State
			}
		}
	}
	l.t.Fatalf("no port %s in tenant %s", port, tenant)
	return ""
}

// quotaHooked reports whether port's quarantine forwarder carries a quota
// hook in both directions (and fails the test if only one does).
func quotaHooked(t *testing.T, m *Manager, port string) bool {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.q[port]
	var fwd *forward.Forwarder
	if q != nil {
		_, fwd = m.qSpliceLocked(q)
	}
	if fwd == nil {
		t.Fatalf("%s has no running quarantine", port)
	}
	from, to := fwd.FromVM.Policy().Quota != nil, fwd.ToVM.Policy().Quota != nil
	if from != to {
		t.Fatalf("%s: quota hook from_vm %v, to_vm %v", port, from, to)
	}
	return from
}

func TestQuotaAddRefusesBadRequestsWithNoSideEffect(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1", "vm-2")
	fb.Ports["routed-0"] = false
	l := newQuotaLab(t, dir, fb, quotaT0)
	l.add("other", settings("vm-2"))
	splices, released := fb.Splices(), fb.Released()
	tenantsBefore, _ := os.ReadFile(filepath.Join(dir, store.TenantsFile))
	for _, tc := range []struct {
		name, tenant string
		settings     map[string]string
		usage        bool
		want         string
	}{
		{"bad name", "-x", settings("vm-1"), true, "tenant \"-x\""},
		{"no commit", "acme", map[string]string{"ports": "vm-1"}, true, "--commit is required"},
		{"no ports", "acme", map[string]string{"commit": "8kbit"}, true, "--ports is required"},
		{"bad rate", "acme", settings("vm-1", "commit", "fast"), true, "--commit"},
		{"interval does not divide", "acme", settings("vm-1", "interval", "7m"), true, "--interval 7m0s does not divide"},
		{"unknown setting", "acme", settings("vm-1", "colour", "red"), true, "unknown setting \"colour\""},
		{"port twice", "acme", settings("vm-1,vm-1"), true, "listed twice"},
		{"no such port", "acme", settings("vm-1,vm-9"), true, "vm-9: no such port"},
		{"port of another tenant", "acme", settings("vm-1,vm-2"), true, "vm-2 belongs to tenant other"},
		{"tenant exists", "other", settings("vm-1"), true, "tenant other exists"},
		// vm-1 is spliced first, then routed-0 cannot be: vm-1 is
		// released again.
		{"second port on no bridge", "acme", settings("vm-1,routed-0"), true, "routed-0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.m.AddTenant(tc.tenant, tc.settings)
			if err == nil || errors.Is(err, ErrUsage) != tc.usage || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want a usage error (%v) containing %q", err, tc.usage, tc.want)
			}
			if fb.Spliced("vm-1") {
				t.Errorf("vm-1 left spliced")
			}
			if got := l.m.QuotaList().Tenants; len(got) != 1 || got[0].Tenant != "other" {
				t.Errorf("tenants after a refused add: %+v", got)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, store.TenantsFile)); string(b) != string(tenantsBefore) {
				t.Errorf("tenants file changed:\n%s", b)
			}
			if _, err := os.Stat(quota.Store{Dir: dir}.Path("acme")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("samples file of a refused tenant: %v", err)
			}
		})
	}
	// Only the rolled-back splice of vm-1 happened.
	if fb.Splices()-splices != 1 || fb.Released()-released != 1 {
		t.Errorf("splices %d, releases %d during refused adds; want 1 and 1 (the rollback)", fb.Splices()-splices, fb.Released()-released)
	}

	// A runtime failure (the second port's taps cannot be opened) is not
	// a usage error, and is rolled back too.
	vmTap, _ := splice.TapNames("vm-2")
	l.m.RemoveTenant("other")
	l.mu.Lock()
	l.failOpen[vmTap] = true
	l.mu.Unlock()
	_, err := l.m.AddTenant("acme", settings("vm-1,vm-2"))
	if err == nil || errors.Is(err, ErrUsage) {
		t.Fatalf("tap failure: %v, want a runtime error", err)
	}
	if fb.Spliced("vm-1") || fb.Spliced("vm-2") || len(l.m.QuotaList().Tenants) != 0 {
		t.Errorf("after a failed add: vm-1 spliced %v, vm-2 spliced %v, tenants %+v", fb.Spliced("vm-1"), fb.Spliced("vm-2"), l.m.QuotaList().Tenants)
	}
}

// TestQuotaEnforcesAcrossPorts: two ports share one account; frames from
// both are counted together, and the interval's quota caps them.
func TestQuotaEnforcesAcrossPorts(t *testing.T) {
	// The forwarders decide with the real clock: stay clear of an hour
	// boundary so that every frame falls in one interval.
	if left := time.Until(time.Now().Truncate(time.Hour).Add(time.Hour)); left < 5*time.Second {
		time.Sleep(left + 100*time.Millisecond)
	}
	fb := fakesplice.New("vm-1", "vm-2")
	l := newQuotaLab(t, t.TempDir(), fb, time.Now())
	// 2 bit/s: 900 bytes an hour, 9 of them kept for bypass frames.
	tn := l.add("acme", settings("vm-1,vm-2", "commit", "2bit", "burst-ceiling", "2bit", "interval", "1h", "period", "1d"))
	if len(tn.Ports) != 2 || tn.Ports[0].State != api.QuotaPortSpliced || tn.Ports[1].State != api.QuotaPortSpliced {
		t.Fatalf("ports: %+v", tn.Ports)
	}
	if !fb.Spliced("vm-1") || !fb.Spliced("vm-2") || fb.Intent("vm-1") != "tenant=acme" {
		t.Fatalf("spliced: vm-1 %v (intent %q), vm-2 %v", fb.Spliced("vm-1"), fb.Intent("vm-1"), fb.Spliced("vm-2"))
	}
	fr := make([]byte, 60)
	fr[12], fr[13] = 0x88, 0xb5 // local experimental ethertype: class other
	const each = 20
	var nets []*fakedev.Device
	for _, p := range []string{"vm-1", "vm-2"} {
		vmTap, netTap := splice.TapNames(p)
		for range each {
			if !l.dev(vmTap).Inject(fr) {
				t.Fatal("inject: queue full")
			}
		}
		nets = append(nets, l.dev(netTap))
	}
	var c quota.Counters
	deadline := time.Now().Add(5 * time.Second)
	for {
		qm := l.m.QuotaMetrics(time.Now())
		c = qm[0].FromVM
		if c.PassedPackets+c.SoftDropPackets+c.CapDropPackets == 2*each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("frames not all decided: %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}
	written := len(nets[0].Written()) + len(nets[1].Written())
	t.Logf("passed %d, soft drops %d, cap drops %d; written %d", c.PassedPackets, c.SoftDropPackets, c.CapDropPackets, written)
	if c.PassedBytes > 900-9 || c.PassedPackets < 10 {
		t.Errorf("passed %d bytes (%d frames), want between 10 frames and the quota less the reserve, 891 bytes", c.PassedBytes, c.PassedPackets)
	}
	if c.CapDropPackets == 0 {
		t.Errorf("no frame capped: %+v", c)
	}
	if uint64(written) != c.PassedPackets {
		t.Errorf("%d frames written, %d passed", written, c.PassedPackets)
	}
	qm := l.m.QuotaMetrics(time.Now())[0]
	if len(qm.Lanes) != 2 || qm.Lanes[0].Name != "from_vm" || qm.Lanes[0].QuotaBytes != 900 || qm.Lanes[0].UsedBytes != int64(c.PassedBytes) {
		t.Errorf("lanes: %+v, want from_vm with quota 900 and %d bytes used", qm.Lanes, c.PassedBytes)
	}
}

// TestQuotaStatusJSON: status lists tenants under quotas, with exactly the
// report's keys plus ports, and not under quarantines.
func TestQuotaStatusJSON(t *testing.T) {
	l := newQuotaLab(t, t.TempDir(), fakesplice.New("vm-1", "vm-2"), quotaT0)
	l.add("acme", settings("vm-1,vm-2"))
	st, err := l.m.Status("")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Quarantines) != 0 || len(st.Quotas) != 1 {
		t.Fatalf("quarantines %d, quotas %d", len(st.Quarantines), len(st.Quotas))
	}
	keys := func(v any) []string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var mp map[string]json.RawMessage
		json.Unmarshal(b, &mp)
		var ks []string
		for k := range mp {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	report := []string{"burst_intervals_left", "burst_intervals_used", "commit_bps", "percentile_bps", "projected_bps", "samples", "tenant"}
	if got := keys(quota.Report{}); !slices.Equal(got, report) {
		t.Fatalf("quota.Report keys %v, want %v", got, report)
	}
	r, err := l.m.QuotaReport("acme")
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(r); !slices.Equal(got, report) {
		t.Errorf("report keys %v, want %v", got, report)
	}
	if got, want := keys(st.Quotas[0]), append(slices.Clone(report), "ports"); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("status quota keys %v", got)
	}
	q := st.Quotas[0]
	// 10 intervals of the period passed before the tenant was added.
	if q.Tenant != "acme" || q.CommitBPS != 8000 || len(q.Samples) != 10 || q.BurstIntervalsLeft != 3 {
		t.Errorf("status quota: %+v", q)
	}
	if _, err := l.m.QuotaReport("nobody"); !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrNoTenant) {
		t.Errorf("report of an unknown tenant: %v", err)
	}
}

// TestQuotaAndQuarantineShareTheSplice: a quarantine of a tenant port takes
// the splice over and applies the quota too; its release gives the port
// back to the tenant. A tenant added on a quarantined port uses the
// quarantine's forwarder, and leaves it alone when removed.
func TestQuotaAndQuarantineShareTheSplice(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2")
	l := newQuotaLab(t, t.TempDir(), fb, quotaT0)
	m := l.m
	l.add("acme", settings("vm-1"))
	splices, released := fb.Splices(), fb.Released()

	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100"}, false); err != nil {
		t.Fatal(err)
	}
	if fb.Splices() != splices+1 || fb.Released() != released+1 || !fb.Spliced("vm-1") {
		t.Errorf("hand-over: %d splices, %d releases; want one of each", fb.Splices()-splices, fb.Released()-released)
	}
	if s := l.portState("acme", "vm-1"); s != api.QuotaPortQuarantined || !quotaHooked(t, m, "vm-1") {
		t.Errorf("quarantined tenant port: state %s, hooked %v", s, quotaHooked(t, m, "vm-1"))
	}
	if fb.Intent("vm-1") == "tenant=acme" {
		t.Errorf("the quarantine's splice kept the tenant's intent")
	}
	st, _ := m.Status("")
	if len(st.Quarantines) != 1 || len(st.Quotas) != 1 {
		t.Errorf("status: %d quarantines, %d quotas", len(st.Quarantines), len(st.Quotas))
	}
	// A change in place keeps the quota.
	if _, err := setFlags(m, "vm-1", api.LimitFlags{"pps": "200"}); err != nil {
		t.Fatal(err)
	}
	if !quotaHooked(t, m, "vm-1") {
		t.Error("set dropped the quota hook")
	}
	// Release: the tenant splices the port again.
	if err := m.Release("vm-1"); err != nil {
		t.Fatal(err)
	}
	if s := l.portState("acme", "vm-1"); s != api.QuotaPortSpliced || !fb.Spliced("vm-1") || fb.Intent("vm-1") != "tenant=acme" {
		t.Errorf("after release: state %s, spliced %v, intent %q", s, fb.Spliced("vm-1"), fb.Intent("vm-1"))
	}
	// A quarantine that cannot start gives the port back at once.
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100", "fail": "open"}, false); err == nil {
		t.Fatal("fail open on a backend that cannot: accepted")
	}
	if s := l.portState("acme", "vm-1"); s != api.QuotaPortSpliced || !fb.Spliced("vm-1") {
		t.Errorf("after a failed quarantine: state %s, spliced %v", s, fb.Spliced("vm-1"))
	}

	// A tenant on an already quarantined port.
	if _, err := quarantineFlags(m, "vm-2", api.LimitFlags{"pps": "100"}, false); err != nil {
		t.Fatal(err)
	}
	splices = fb.Splices()
	l.add("beta", settings("vm-2"))
	if fb.Splices() != splices || !quotaHooked(t, m, "vm-2") || l.portState("beta", "vm-2") != api.QuotaPortQuarantined {
		t.Errorf("tenant on a quarantined port: %d new splices, hooked %v", fb.Splices()-splices, quotaHooked(t, m, "vm-2"))
	}
	if err := m.RemoveTenant("beta"); err != nil {
		t.Fatal(err)
	}
	if quotaHooked(t, m, "vm-2") || !fb.Spliced("vm-2") {
		t.Errorf("after removing the tenant: hooked %v, spliced %v", quotaHooked(t, m, "vm-2"), fb.Spliced("vm-2"))
	}
	// Releasing a port of no tenant leaves it unspliced.
	if err := m.Release("vm-2"); err != nil || fb.Spliced("vm-2") {
		t.Errorf("release of vm-2: %v, spliced %v", err, fb.Spliced("vm-2"))
	}
}

func TestQuotaRemove(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1", "vm-2")
	l := newQuotaLab(t, dir, fb, quotaT0)
	l.add("acme", settings("vm-1,vm-2"))
	samples := quota.Store{Dir: dir}.Path("acme")
	if _, err := os.Stat(samples); err != nil {
		t.Fatalf("samples file: %v", err)
	}
	if err := l.m.RemoveTenant("nobody"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove of an unknown tenant: %v", err)
	}
	if err := l.m.RemoveTenant("acme"); err != nil {
		t.Fatal(err)
	}
	if fb.Spliced("vm-1") || fb.Spliced("vm-2") || len(l.m.QuotaList().Tenants) != 0 {
		t.Errorf("after remove: spliced %v %v, tenants %+v", fb.Spliced("vm-1"), fb.Spliced("vm-2"), l.m.QuotaList().Tenants)
	}
	if _, err := os.Stat(samples); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("samples file after remove: %v", err)
	}
	saved, err := store.LoadTenants(dir)
	if err != nil || len(saved) != 0 {
		t.Errorf("tenants file after remove: %+v, %v", saved, err)
	}
	// The ports are free for another tenant.
	l.add("beta", settings("vm-2,vm-1"))
}

// restartQuota abandons the old manager as kill -9 would (its splices and
// files stay) and restores a new one from dir at now.
// TestQuotaPortGoneAndBack: a tenant port that disappears loses its splice
// and gets it back when it returns (by its link event, or by the tick).
func TestQuotaPortGoneAndBack(t *testing.T) {
	fb := fakesplice.New("vm-1")
	l := newQuotaLab(t, t.TempDir(), fb, quotaT0)
	l.add("acme", settings("vm-1"))
	delete(fb.Ports, "vm-1")
	l.m.PortGone("vm-1")
	if fb.Spliced("vm-1") || l.portState("acme", "vm-1") != api.QuotaPortWaiting {
		t.Fatalf("gone: spliced %v, state %s", fb.Spliced("vm-1"), l.portState("acme", "vm-1"))
	}
	// Back on no bridge: tried, still waiting.
	fb.Ports["vm-1"] = false
	l.m.PortAppeared("vm-1")
	if l.portState("acme", "vm-1") != api.QuotaPortWaiting {
		t.Fatal("spliced while on no bridge")
	}
	// On a bridge: the tick retries after QuotaRetry.
	fb.Ports["vm-1"] = true
	l.m.Tick(quotaT0.Add(time.Second))
	if l.portState("acme", "vm-1") != api.QuotaPortWaiting {
		t.Fatal("retried before QuotaRetry")
	}
	l.m.Tick(quotaT0.Add(QuotaRetry + time.Second))
	if !fb.Spliced("vm-1") || l.portState("acme", "vm-1") != api.QuotaPortSpliced {
		t.Fatalf("back: spliced %v, state %s", fb.Spliced("vm-1"), l.portState("acme", "vm-1"))
	}
	if !l.m.Alive() {
		t.Error("not alive")
	}
}

// TestQuotaRestartWithQuarantine: a quarantined tenant port is adopted by
// its quarantine after a restart, whose forwarder carries the quota again;
// the tenant's other port is adopted by the tenant.
func TestQuotaRestartWithQuarantine(t *testing.T) {
	dir := t.TempDir()
	fb := fakesplice.New("vm-1", "vm-2")
	l := newQuotaLab(t, dir, fb, quotaT0)
	l.m.Restore()
	l.add("acme", settings("vm-1,vm-2"))
	if _, err := quarantineFlags(l.m, "vm-1", api.LimitFlags{"pps": "100"}, false); err != nil {
		t.Fatal(err)
	}
	splices := fb.Splices()
	l2 := restartQuota(t, dir, fb, quotaT0.Add(time.Minute))
	if fb.Splices() != splices {
		t.Errorf("%d splices made at the restart, want none", fb.Splices()-splices)
	}
	if s := l2.portState("acme", "vm-1"); s != api.QuotaPortQuarantined || !quotaHooked(t, l2.m, "vm-1") {
		t.Errorf("quarantined tenant port after the restart: state %s, hooked %v", s, quotaHooked(t, l2.m, "vm-1"))
	}
	if s := l2.portState("acme", "vm-2"); s != api.QuotaPortSpliced {
		t.Errorf("tenant port after the restart: %s", s)
	}
	// Released after the restart: back to the tenant.
	if err := l2.m.Release("vm-1"); err != nil {
		t.Fatal(err)
	}
	if s := l2.portState("acme", "vm-1"); s != api.QuotaPortSpliced || !fb.Spliced("vm-1") {
		t.Errorf("after release: %s, spliced %v", s, fb.Spliced("vm-1"))
	}
}
