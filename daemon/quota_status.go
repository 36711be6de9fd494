package daemon

import (
	"fmt"
	"math"
	"math/bits"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/tenants"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/units"
)

// What status, quota report/list and the metrics say of the quota tenants.

// quotaPortStateLocked is a tenant port's api.QuotaPort state.
func (m *Manager) quotaPortStateLocked(tp *tenants.Port) string {
	if q, ok := m.q[tp.Name]; ok {
		if _, fwd := m.qSpliceLocked(q); fwd != nil {
			return api.QuotaPortQuarantined
		}
		return api.QuotaPortWaiting
	}
	if _, fwd := m.tSpliceLocked(tp); fwd != nil {
		return api.QuotaPortSpliced
	}
	return api.QuotaPortWaiting
}

func (m *Manager) quotaPortsLocked(t *tenants.Tenant) []api.QuotaPort {
	out := make([]api.QuotaPort, 0, len(t.Ports))
	for _, tp := range t.Ports {
		out = append(out, api.QuotaPort{Port: tp.Name, State: m.quotaPortStateLocked(tp)})
	}
	return out
}

// apiReport converts a quota.Report; the keys are the same.
func apiReport(r quota.Report) api.QuotaReport {
	out := api.QuotaReport{
		Tenant:             r.Tenant,
		CommitBPS:          r.CommitBPS,
		PercentileBPS:      r.PercentileBPS,
		BurstIntervalsUsed: r.BurstIntervalsUsed,
		BurstIntervalsLeft: r.BurstIntervalsLeft,
		ProjectedBPS:       r.ProjectedBPS,
		Samples:            make([]api.QuotaSample, len(r.Samples)),
	}
	for i, s := range r.Samples {
		out.Samples[i] = api.QuotaSample{Start: s.Start, BPS: s.BPS}
	}
	return out
}

// quotaStatusLocked is status's quotas array, sorted by tenant.
func (m *Manager) quotaStatusLocked(now time.Time) []api.QuotaStatus {
	out := make([]api.QuotaStatus, 0, m.quotas.Len())
	for _, name := range m.tenantNamesLocked() {
		t, _ := m.quotas.Tenant(name)
		out = append(out, api.QuotaStatus{QuotaReport: apiReport(t.Acct.Report(now)), Ports: m.quotaPortsLocked(t)})
	}
	return out
}

// TenantSplices lists the ports spliced for their quota tenant (and not
// quarantined), port → tenant: what release --all leaves in place.
func (m *Manager) TenantSplices() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, port := range m.quotas.PortNames() {
		tp, _ := m.quotas.Port(port)
		if sp, _ := m.tSpliceLocked(tp); sp != nil {
			out[port] = tp.Tenant.Cfg.Tenant
		}
	}
	return out
}

// QuotaReport returns tenant name's billing period so far.
func (m *Manager) QuotaReport(name string) (api.QuotaReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.quotas.Tenant(name)
	if !ok {
		return api.QuotaReport{}, fmt.Errorf("%w: %w %s (see shaperd quota list)", ErrNotFound, ErrNoTenant, name)
	}
	return apiReport(t.Acct.Report(m.host.Now())), nil
}

// QuotaList returns every tenant, sorted by name.
func (m *Manager) QuotaList() api.QuotaList {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.host.Now()
	out := api.QuotaList{Tenants: []api.QuotaTenant{}}
	for _, t := range m.quotas.All() {
		out.Tenants = append(out.Tenants, m.tenantInfoLocked(t, now))
	}
	return out
}

func (m *Manager) tenantInfoLocked(t *tenants.Tenant, now time.Time) api.QuotaTenant {
	r := t.Acct.Report(now)
	ps, pe := t.Cfg.Period.Bounds(now)
	return api.QuotaTenant{
		Tenant:             t.Cfg.Tenant,
		Settings:           t.Cfg.Settings(),
		Ports:              m.quotaPortsLocked(t),
		Since:              t.Since,
		PeriodStart:        ps,
		PeriodEnd:          pe,
		CommitBPS:          r.CommitBPS,
		PercentileBPS:      r.PercentileBPS,
		ProjectedBPS:       r.ProjectedBPS,
		BurstIntervalsUsed: r.BurstIntervalsUsed,
		BurstIntervalsLeft: r.BurstIntervalsLeft,
	}
}

// QuotaMetrics is one tenant as the metrics endpoint sees it at one
// instant.
type QuotaMetrics struct {
	// Report is the tenant's report without its samples.
	Report api.QuotaReport
	Ports  []api.QuotaPort
	// Lanes are the open interval of each billed direction (one for
	// sum, to_vm and from_vm, two for max).
	Lanes []QuotaLane
	// FromVM and ToVM count the frames the quota decided, by verdict.
	FromVM, ToVM quota.Counters
}

// QuotaLane is the open interval of one billed direction.
type QuotaLane struct {
	// Name is from_vm, to_vm or sum.
	Name string
	// UsedBytes is what the interval has passed so far, bypass and
	// control frames included (what the bill counts).
	UsedBytes int64
	// QuotaBytes is the interval's byte quota: the commit's, or the burst
	// ceiling's once the interval bursts; -1 for a burst interval without
	// a ceiling (no limit).
	QuotaBytes int64
	// Burst is true once the interval was raised to a burst interval.
	Burst bool
}

// QuotaMetrics returns every tenant's figures at now, sorted by tenant; for
// scrapes, not for anything per frame. Safe for concurrent use.
func (m *Manager) QuotaMetrics(now time.Time) []QuotaMetrics {
	// A snapshot that holds something new is written after the lock is
	// released: a scrape never waits for the disk under it.
	defer m.flushSnapshots()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]QuotaMetrics, 0, m.quotas.Len())
	for _, name := range m.tenantNamesLocked() {
		t, _ := m.quotas.Tenant(name)
		s := m.snapshotLocked(t, now)
		r := apiReport(t.Acct.Report(now))
		r.Samples = nil
		qm := QuotaMetrics{Report: r, Ports: m.quotaPortsLocked(t),
			FromVM: t.Acct.Counters(quota.FromVM), ToVM: t.Acct.Counters(quota.ToVM)}
		qc := rateBytes(t.Cfg.Commit, t.Cfg.Interval)
		qb := int64(-1)
		if t.Cfg.BurstCeiling != 0 {
			qb = rateBytes(t.Cfg.BurstCeiling, t.Cfg.Interval)
		}
		for _, l := range s.Lanes {
			ql := QuotaLane{Name: l.Name, UsedBytes: l.Normal + l.Bypass, QuotaBytes: qc, Burst: l.Burst}
			if l.Burst {
				ql.QuotaBytes = qb
			}
			qm.Lanes = append(qm.Lanes, ql)
		}
		out = append(out, qm)
	}
	return out
}

// rateBytes is how many whole bytes rate r passes in d, rounded down, as
// package quota computes an interval's quota.
func rateBytes(r units.Rate, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(r), uint64(d))
	const div = 8 * uint64(time.Second)
	if hi >= div {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, div)
	return int64(min(q, math.MaxInt64))
}

func settingsLine(c quota.Config) string {
	s := c.Settings()
	parts := make([]string, 0, len(quota.Keys))
	for _, k := range quota.Keys {
		parts = append(parts, k+"="+s[k])
	}
	return strings.Join(parts, " ")
}
