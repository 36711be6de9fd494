package daemon

// Percentile-quota tenants (issue 8).
//
// A tenant is one or more ports billed together at a percentile of their
// interval samples (package quota). Its quota.Account is shared by the
// forwarders of all its ports; each pipe gets its own quota.Hook, and the
// forwarder asks it about every frame after the port's own budgets (step 6
// of forward.Policy).
//
// Who splices a tenant's port: its quarantine if it has one, otherwise the
// tenant. A tenant's own splice has the default bypass and control budgets
// and no other limit: only the quota drops. A quarantine's forwarder
// carries the tenant's hooks too, so a quarantined tenant port gets the
// quarantine's limits and then the quota. When a tenant port is
// quarantined, the tenant's splice is released and the quarantine splices
// the port with its own options (a few milliseconds of unmetered traffic);
// when the quarantine is released (by hand, by its ladder, or because its
// pending wait expired), the tenant splices the port again. So the port
// stays spliced while either wants it. Quota drops never feed the watch
// loop or a ladder: quota enforcement never escalates.
//
// Persistence: the tenants' settings are in TenantsFile in the state
// directory (checksummed, replaced atomically), their samples in one
// quota.Store file each (quota-TENANT.json). Tick closes intervals and saves
// a tenant's snapshot when its Account asks (an interval closed, or a burst
// raised). After a crash the snapshot is restored with the crash rule:
// the interval that was cut short, and every interval the daemon did not
// see, count as having reached their quota (see quota.Account.Restore). A
// clean stop (Close) marks each snapshot with its ports' byte counters; a
// start within the same interval keeps the interval's counts and adds what
// the counters show passed meanwhile (quota.Account.RestoreAfterCleanStop),
// so an upgrade does not cost a tenant the rest of the interval. A
// missing or unreadable snapshot is replaced by the most careful guess:
// every interval of the period so far at the commit.
//
// Everything here runs under the Manager's mutex.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/units"
)

// TenantsFile is the name of the tenants' settings file in the state
// directory.
const TenantsFile = "tenants.json"

// QuotaRetry is how often a tenant port that could not be spliced is tried
// again (a link event for the port tries at once).
const QuotaRetry = 5 * time.Second

// ErrNoTenant means the tenant named does not exist; see `quota list`.
var ErrNoTenant = errors.New("no such tenant")

// quotaSet is the Manager's tenants. The zero value is empty and usable.
type quotaSet struct {
	tenants map[string]*tenant     // by name
	byPort  map[string]*tenantPort // by port
	seeds   uint64                 // hooks handed out, for their seeds
}

func (qs *quotaSet) init() {
	if qs.tenants == nil {
		qs.tenants = map[string]*tenant{}
		qs.byPort = map[string]*tenantPort{}
	}
}

// tenant is one quota tenant.
type tenant struct {
	cfg   quota.Config
	acct  *quota.Account
	since time.Time
	ports []*tenantPort // in cfg.Ports order

	// saved is what the last snapshot written holds, so that a snapshot
	// taken for another reason (metrics) is saved if it holds more.
	saved []laneKey
	// saveErr is the last save's error; the next tick tries again.
	saveErr error
	// startMeters are the ports' counters when the samples were restored
	// at a start, until the forwarders run (see countStartGapLocked).
	startMeters []quota.PortMeter
}

// laneKey is what a lane snapshot holds that a restart must not lose: its
// period, how many intervals it closed, and whether the open one bursts.
type laneKey struct {
	period int64
	closed int
	burst  bool
}

func keyOf(s quota.Snapshot) []laneKey {
	out := make([]laneKey, len(s.Lanes))
	for i, l := range s.Lanes {
		out[i] = laneKey{l.PeriodStart.UnixNano(), len(l.Samples), l.Burst}
	}
	return out
}

// tenantPort is one port of a tenant. sp and fwd are set while the tenant
// itself splices the port.
type tenantPort struct {
	t    *tenant
	port string
	sp   splice.Splice
	fwd  *forward.Forwarder
	// retryAt is when a port that could not be spliced is tried again;
	// lastErr is why, logged once per distinct error.
	retryAt time.Time
	lastErr string
}

func (m *Manager) quotaStore() (quota.Store, bool) {
	return quota.Store{Dir: m.opt.StateDir}, m.opt.StateDir != ""
}

// AddTenant adds a percentile-quota tenant with settings in the command
// line's words (see api.QuotaAddRequest; "ports" and "commit" are
// required). It validates everything before touching the host; then it
// splices every port of the tenant that is not quarantined (a quarantined
// port's forwarder gets the quota instead), persists the tenant, and
// returns it. It is all or nothing: if a port cannot be spliced or the
// tenant cannot be saved, everything done is undone.
func (m *Manager) AddTenant(name string, settings map[string]string) (api.QuotaTenant, error) {
	if err := quota.ValidTenant(name); err != nil {
		return api.QuotaTenant{}, usagef("%v", err)
	}
	cfg, err := quota.Parse(name, settings)
	if err != nil {
		return api.QuotaTenant{}, usagef("%v", err)
	}
	if len(cfg.Ports) == 0 {
		return api.QuotaTenant{}, usagef("quota add %s: --ports is required: the tenant's switch ports, e.g. --ports vm-1,vm-2", name)
	}
	for _, p := range cfg.Ports {
		if err := checkPortName(p); err != nil {
			return api.QuotaTenant{}, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return api.QuotaTenant{}, ErrClosed
	}
	m.quotas.init()
	if _, ok := m.quotas.tenants[name]; ok {
		return api.QuotaTenant{}, usagef("tenant %s exists: remove it first (shaperd quota remove %s)", name, name)
	}
	for _, p := range cfg.Ports {
		if tp, ok := m.quotas.byPort[p]; ok {
			return api.QuotaTenant{}, usagef("%s belongs to tenant %s: a port is billed to one tenant", p, tp.t.cfg.Tenant)
		}
		if !m.portExists(p) {
			return api.QuotaTenant{}, usagef("%s: no such port", p)
		}
	}
	now := m.clock()
	acct, err := quota.New(cfg, now)
	if err != nil {
		return api.QuotaTenant{}, usagef("%v", err)
	}
	t := &tenant{cfg: cfg, acct: acct, since: now.UTC()}
	for _, p := range cfg.Ports {
		t.ports = append(t.ports, &tenantPort{t: t, port: p})
	}
	m.registerTenantLocked(t)
	for _, tp := range t.ports {
		if err := m.attachQuotaPortLocked(tp); err != nil {
			if rerr := m.detachTenantLocked(t); rerr != nil {
				m.log.Error("rollback of a failed quota add failed", "tenant", name, "err", rerr)
				err = errors.Join(err, rerr)
			}
			return api.QuotaTenant{}, err
		}
	}
	if st, ok := m.quotaStore(); ok {
		// The snapshot first: a tenant in the tenants file always has
		// one, and a crash in between leaves an orphan snapshot that
		// the next add of the name overwrites.
		err := st.Save(acct.Snapshot(now))
		if err == nil {
			err = m.saveTenantsLocked()
		}
		if err != nil {
			if rerr := m.detachTenantLocked(t); rerr != nil {
				err = errors.Join(err, rerr)
			}
			st.Remove(name)
			return api.QuotaTenant{}, fmt.Errorf("quota add %s: %w", name, err)
		}
		t.saved = keyOf(acct.Snapshot(now))
	}
	m.log.Info("quota tenant added", "tenant", name, "settings", settingsLine(cfg))
	return m.tenantInfoLocked(t, now), nil
}

// RemoveTenant removes a tenant: its own splices are reverted, the
// forwarders of its quarantined ports stop applying the quota, and its
// settings and samples are deleted. If a splice cannot be reverted, the
// tenant stays (its other ports are spliced again at the next tick) and
// the error says why; try again.
func (m *Manager) RemoveTenant(name string) error {
	if err := quota.ValidTenant(name); err != nil {
		return usagef("%v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	t, ok := m.quotas.tenants[name]
	if !ok {
		return fmt.Errorf("%w: %w %s (see shaperd quota list)", ErrUsage, ErrNoTenant, name)
	}
	if err := m.detachTenantLocked(t); err != nil {
		m.registerTenantLocked(t)
		return fmt.Errorf("quota remove %s: %w", name, err)
	}
	if st, ok := m.quotaStore(); ok {
		if err := m.saveTenantsLocked(); err != nil {
			m.log.Error("cannot write the tenants file; the tenant comes back after a restart", "tenant", name, "err", err)
		}
		if err := st.Remove(name); err != nil {
			m.log.Error("cannot delete the tenant's samples", "tenant", name, "err", err)
		}
	}
	m.log.Info("quota tenant removed", "tenant", name)
	return nil
}

func (m *Manager) registerTenantLocked(t *tenant) {
	m.quotas.init()
	m.quotas.tenants[t.cfg.Tenant] = t
	for _, tp := range t.ports {
		m.quotas.byPort[tp.port] = tp
	}
}

// detachTenantLocked unregisters t, reverts its own splices and takes its
// hooks out of the forwarders of its quarantined ports. It carries on
// past errors and returns them all.
func (m *Manager) detachTenantLocked(t *tenant) error {
	delete(m.quotas.tenants, t.cfg.Tenant)
	for _, tp := range t.ports {
		if m.quotas.byPort[tp.port] == tp {
			delete(m.quotas.byPort, tp.port)
		}
	}
	var errs []error
	for _, tp := range t.ports {
		if tp.sp != nil || tp.fwd != nil {
			if err := m.teardownQuotaPortLocked(tp); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if q, ok := m.q[tp.port]; ok && q.fwd != nil {
			if err := m.setSpecLocked(q, q.spec); err != nil {
				errs = append(errs, fmt.Errorf("%s: take the quota out of the quarantine's forwarder: %w", tp.port, err))
			}
		}
	}
	return errors.Join(errs...)
}

// attachQuotaPortLocked makes tp's traffic go through the quota: through
// its quarantine's forwarder if it has one, else through a splice of the
// tenant's own.
func (m *Manager) attachQuotaPortLocked(tp *tenantPort) error {
	if q, ok := m.q[tp.port]; ok {
		if q.fwd == nil {
			return nil // pending: its forwarder gets the hooks when it starts
		}
		if err := m.setSpecLocked(q, q.spec); err != nil {
			return fmt.Errorf("%s: put the quota into the quarantine's forwarder: %w", tp.port, err)
		}
		return nil
	}
	return m.spliceQuotaPortLocked(tp)
}

// quotaPoliciesLocked returns from and to with the hooks of port's tenant,
// one per pipe, or unchanged if port belongs to no tenant.
func (m *Manager) quotaPoliciesLocked(port string, from, to forward.Policy) (forward.Policy, forward.Policy) {
	tp, ok := m.quotas.byPort[port]
	if !ok {
		return from, to
	}
	from.Quota = tp.t.acct.Hook(m.nextQuotaSeed())
	to.Quota = tp.t.acct.Hook(m.nextQuotaSeed())
	return from, to
}

// nextQuotaSeed seeds a hook's random source: distinct per pipe, and per
// daemon start.
func (m *Manager) nextQuotaSeed() uint64 {
	m.quotas.seeds++
	return uint64(m.started.UnixNano()) ^ m.quotas.seeds*0x9E3779B97F4A7C15
}

// spliceQuotaPortLocked splices tp's port for the tenant: default bypass
// and control budgets, no other limit, the quota hooks; fail open where
// the backend can (a dead forwarder should not cut a paying tenant off).
func (m *Manager) spliceQuotaPortLocked(tp *tenantPort) error {
	b, err := m.backendFor(tp.port)
	if err != nil {
		return err
	}
	spec := NewSpec()
	opt := splice.Options{BypassPorts: spec.BypassPorts, FailOpen: true, Queues: m.opt.TapQueues}
	sp, err := b.Splice(tp.port, opt)
	if err != nil && errors.Is(err, splice.ErrFailOpen) {
		opt.FailOpen = false
		sp, err = b.Splice(tp.port, opt)
	}
	if err != nil {
		if errors.Is(err, splice.ErrSpliced) {
			return usagef("%v", err)
		}
		return fmt.Errorf("splice %s: %w", tp.port, err)
	}
	fwd, err := m.startForwarder(sp, spec)
	if err != nil {
		if rerr := sp.Release(); rerr != nil {
			m.log.Error("rollback of a failed tenant splice failed", "port", tp.port, "err", rerr)
			err = errors.Join(err, rerr)
		}
		return err
	}
	tp.sp, tp.fwd, tp.lastErr = sp, fwd, ""
	if r, ok := sp.(splice.IntentRecorder); ok {
		// Says on the plumbing who made the splice; the limits are the
		// tenants file's.
		if err := r.SetIntent("tenant=" + tp.t.cfg.Tenant); err != nil {
			m.log.Warn("cannot record the tenant on the plumbing", "port", tp.port, "err", err)
		}
	}
	for _, w := range sp.Warnings() {
		m.log.Warn("tenant splice warning", "port", tp.port, "warning", w)
	}
	go m.watchQuotaForwarder(tp, fwd)
	m.log.Info("spliced for its quota tenant", "port", tp.port, "tenant", tp.t.cfg.Tenant, "backend", sp.Backend(), "vm_tap", sp.VMTap(), "net_tap", sp.NetTap())
	return nil
}

// teardownQuotaPortLocked stops tp's forwarder, then reverts its splice.
func (m *Manager) teardownQuotaPortLocked(tp *tenantPort) error {
	if tp.fwd != nil {
		if err := tp.fwd.Close(); err != nil {
			m.log.Warn("closing a tenant port's forwarder", "port", tp.port, "err", err)
		}
		tp.fwd = nil
	}
	if tp.sp != nil {
		if err := tp.sp.Release(); err != nil {
			return fmt.Errorf("release %s: %w", tp.port, err)
		}
		tp.sp = nil
	}
	return nil
}

// watchQuotaForwarder logs a tenant port's forwarder that stops while the
// tenant still wants it (Alive then reports false).
func (m *Manager) watchQuotaForwarder(tp *tenantPort, fwd *forward.Forwarder) {
	<-fwd.Done()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.quotas.byPort[tp.port] == tp && tp.fwd == fwd && !m.closed {
		m.log.Error("forwarder stopped while the port's quota tenant wants it", "port", tp.port, "tenant", tp.t.cfg.Tenant)
	}
}

// yieldQuotaSpliceLocked hands a tenant port over to a quarantine about to
// splice it: the tenant's splice is reverted. Called by applyLocked.
func (m *Manager) yieldQuotaSpliceLocked(port string) error {
	tp, ok := m.quotas.byPort[port]
	if !ok || (tp.sp == nil && tp.fwd == nil) {
		return nil
	}
	if err := m.teardownQuotaPortLocked(tp); err != nil {
		return fmt.Errorf("hand %s over from tenant %s to its quarantine: %w", port, tp.t.cfg.Tenant, err)
	}
	m.log.Info("tenant port handed over to its quarantine; the quarantine's forwarder applies the quota", "port", port, "tenant", tp.t.cfg.Tenant)
	return nil
}

// quotaPortFreeLocked splices a tenant port that nothing splices: after
// its quarantine ended or failed to start, or when the port appears.
func (m *Manager) quotaPortFreeLocked(port string) {
	tp, ok := m.quotas.byPort[port]
	if !ok || m.closed || !m.quotaPortUnsplicedLocked(tp) {
		return
	}
	m.retryQuotaPortLocked(tp, m.clock())
}

// quotaPortUnsplicedLocked reports whether tp wants a splice of the
// tenant's own and has none.
func (m *Manager) quotaPortUnsplicedLocked(tp *tenantPort) bool {
	_, quarantined := m.q[tp.port]
	return tp.fwd == nil && !quarantined
}

// retryQuotaPortLocked tries to splice tp now; on failure it waits
// QuotaRetry before the next try by Tick.
func (m *Manager) retryQuotaPortLocked(tp *tenantPort, now time.Time) {
	if tp.sp != nil {
		// A splice whose release failed earlier: finish it first.
		if err := tp.sp.Release(); err != nil {
			m.quotaRetryLaterLocked(tp, now, fmt.Errorf("release %s: %w", tp.port, err))
			return
		}
		tp.sp = nil
	}
	if !m.portExists(tp.port) {
		return
	}
	if err := m.spliceQuotaPortLocked(tp); err != nil {
		m.quotaRetryLaterLocked(tp, now, err)
	}
}

func (m *Manager) quotaRetryLaterLocked(tp *tenantPort, now time.Time, err error) {
	tp.retryAt = now.Add(QuotaRetry)
	if msg := err.Error(); msg != tp.lastErr {
		tp.lastErr = msg
		m.log.Warn("tenant port not spliced yet; its traffic is not metered; retrying", "port", tp.port, "tenant", tp.t.cfg.Tenant, "err", err)
	}
}

// quotaPortGoneLocked reverts the tenant's splice of a port that
// disappeared; the port waits for its return.
func (m *Manager) quotaPortGoneLocked(port string) {
	tp, ok := m.quotas.byPort[port]
	if !ok || m.closed || (tp.sp == nil && tp.fwd == nil) {
		return
	}
	m.log.Warn("tenant port disappeared: removing its splice until it returns", "port", port, "tenant", tp.t.cfg.Tenant)
	if err := m.teardownQuotaPortLocked(tp); err != nil {
		m.log.Error("cleaning up after a vanished tenant port", "port", port, "err", err)
	}
}

// tickQuotasLocked closes the tenants' intervals, saves the snapshots that
// hold something new (or whose last save failed), and retries ports that
// are not spliced. Called by Tick.
func (m *Manager) tickQuotasLocked(now time.Time) {
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		if _, save := t.acct.Tick(now); save || t.saveErr != nil {
			m.saveSnapshotLocked(t, t.acct.Snapshot(now))
		}
		for _, tp := range t.ports {
			if m.quotaPortUnsplicedLocked(tp) && !now.Before(tp.retryAt) {
				m.retryQuotaPortLocked(tp, now)
			}
		}
	}
}

// saveSnapshotLocked persists s, t's snapshot; a failure is logged once and
// retried at every tick.
func (m *Manager) saveSnapshotLocked(t *tenant, s quota.Snapshot) {
	st, ok := m.quotaStore()
	if !ok {
		return
	}
	if err := st.Save(s); err != nil {
		if t.saveErr == nil {
			m.log.Error("cannot save a tenant's samples; retrying at every tick", "tenant", t.cfg.Tenant, "err", err)
		}
		t.saveErr = err
		return
	}
	if t.saveErr != nil {
		m.log.Info("tenant's samples saved again", "tenant", t.cfg.Tenant)
	}
	t.saveErr = nil
	t.saved = keyOf(s)
}

// snapshotLocked returns t's snapshot at now for reading (metrics). Taking
// a snapshot clears the Account's note that something needs saving, so a
// snapshot that holds more than the last one saved is saved here.
func (m *Manager) snapshotLocked(t *tenant, now time.Time) quota.Snapshot {
	s := t.acct.Snapshot(now)
	if !slices.Equal(keyOf(s), t.saved) {
		m.saveSnapshotLocked(t, s)
	}
	return s
}

func (m *Manager) tenantNamesLocked() []string {
	names := make([]string, 0, len(m.quotas.tenants))
	for n := range m.quotas.tenants {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// quotasAliveLocked reports whether every forwarder of a tenant splice runs.
func (m *Manager) quotasAliveLocked() bool {
	for _, tp := range m.quotas.byPort {
		if tp.fwd != nil && !tp.fwd.Alive() {
			return false
		}
	}
	return true
}

// closeQuotasLocked stops the tenants' forwarders, leaving their splices
// for the next daemon to adopt, and saves every tenant's snapshot, marked
// as taken at a clean stop with its ports' counters from meters (read
// before any forwarder stopped; see quotaMetersLocked). A tenant whose
// counters could not be read gets no mark: the next start applies the
// crash rule to it.
func (m *Manager) closeQuotasLocked(now time.Time, meters map[string][]quota.PortMeter) error {
	var errs []error
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		for _, tp := range t.ports {
			if tp.fwd != nil {
				if err := tp.fwd.Close(); err != nil {
					errs = append(errs, err)
				}
				tp.fwd = nil
			}
		}
		s := t.acct.Snapshot(now)
		if pm, ok := meters[name]; ok {
			s.Clean = &quota.CleanStop{Ports: pm}
		}
		m.saveSnapshotLocked(t, s)
	}
	return errors.Join(errs...)
}

// quotaMetersLocked reads the counters of every tenant's ports, by tenant;
// a tenant whose counters cannot be read is left out (and logged).
func (m *Manager) quotaMetersLocked() map[string][]quota.PortMeter {
	out := map[string][]quota.PortMeter{}
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		pm, err := m.portMeters(t.cfg.Ports)
		if err != nil {
			m.log.Warn("cannot read a tenant's port counters at the stop: its next start applies the crash rule", "tenant", name, "err", err)
			continue
		}
		out[name] = pm
	}
	return out
}

// readPortMeters reads each port's ifindex and byte counters from sysfs;
// a port that does not exist gets ifindex 0.
func readPortMeters(ports []string) ([]quota.PortMeter, error) {
	counters, err := detect.ReadCounters(ports)
	if err != nil {
		return nil, err
	}
	out := make([]quota.PortMeter, 0, len(ports))
	for _, p := range ports {
		pm := quota.PortMeter{Name: p}
		if c, ok := counters[p]; ok {
			ifx, err := detect.ReadAttr(p, "ifindex")
			if err != nil {
				return nil, fmt.Errorf("ifindex of %s: %w", p, err)
			}
			pm.Ifindex, pm.FromVMBytes, pm.ToVMBytes = int(ifx), c.RxBytes, c.TxBytes
		}
		out = append(out, pm)
	}
	return out, nil
}

// unmeteredSince returns what passed the ports between a clean stop's
// counters and now's, or nil and why that is unknown: a port appeared,
// disappeared or was recreated (its ifindex changed, so its counters
// restarted), or a counter went back. A port that was gone then and is
// gone now passed nothing. Frames the port took in while no forwarder ran
// count even if the splice then dropped them (tc, fail closed): the bill
// is never under-counted.
func unmeteredSince(stop, now []quota.PortMeter) (*quota.Unmetered, string) {
	at := map[string]quota.PortMeter{}
	for _, pm := range now {
		at[pm.Name] = pm
	}
	var u quota.Unmetered
	for _, s := range stop {
		n, ok := at[s.Name]
		switch {
		case !ok:
			return nil, s.Name + " was not read now"
		case s.Ifindex != n.Ifindex:
			return nil, fmt.Sprintf("%s has ifindex %d, had %d at the stop", s.Name, n.Ifindex, s.Ifindex)
		case n.FromVMBytes < s.FromVMBytes || n.ToVMBytes < s.ToVMBytes:
			return nil, s.Name + "'s counters went back"
		}
		u.FromVM += int64(min(n.FromVMBytes-s.FromVMBytes, math.MaxInt64/4))
		u.ToVM += int64(min(n.ToVMBytes-s.ToVMBytes, math.MaxInt64/4))
	}
	if len(stop) != len(now) {
		return nil, "the tenant's ports changed"
	}
	return &u, ""
}

// loadQuotasLocked reads the tenants file and restores every tenant's
// samples at the start of Restore: with the crash rule, or without it
// after a clean stop in the same interval (see unmeteredSince). Nothing is
// spliced yet: Restore adopts the tenants' splices it finds
// (adoptQuotaSpliceLocked) and splices the rest (spliceQuotaPortsLocked).
func (m *Manager) loadQuotasLocked(now time.Time) {
	st, ok := m.quotaStore()
	if !ok {
		return
	}
	m.quotas.init()
	saved, err := loadTenants(m.opt.StateDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return
	case err != nil:
		m.log.Error("tenants file unusable: quota tenants are not restored; add them again", "dir", m.opt.StateDir, "err", err)
		if errors.Is(err, ErrCorruptState) {
			from := filepath.Join(m.opt.StateDir, TenantsFile)
			to := fmt.Sprintf("%s.corrupt-%s", from, now.UTC().Format("20060102T150405Z"))
			if os.Rename(from, to) == nil {
				m.log.Warn("corrupt tenants file set aside", "path", to)
			}
		}
		return
	}
	for _, e := range saved {
		cfg, err := quota.Parse(e.Tenant, e.Settings)
		if err != nil {
			m.log.Error("tenant in the tenants file has unusable settings; skipped", "tenant", e.Tenant, "err", err)
			continue
		}
		if _, dup := m.quotas.tenants[cfg.Tenant]; dup {
			continue
		}
		if p := slices.IndexFunc(cfg.Ports, func(p string) bool { _, taken := m.quotas.byPort[p]; return taken }); p >= 0 {
			m.log.Error("tenant in the tenants file shares a port with another; skipped", "tenant", e.Tenant, "port", cfg.Ports[p])
			continue
		}
		acct, err := quota.New(cfg, now)
		if err != nil {
			m.log.Error("tenant in the tenants file has unusable settings; skipped", "tenant", e.Tenant, "err", err)
			continue
		}
		how := "snapshot, with the crash rule"
		startMeters, merr := m.portMeters(cfg.Ports)
		if merr != nil {
			m.log.Warn("cannot read a tenant's port counters at the start", "tenant", cfg.Tenant, "err", merr)
		}
		snap, err := st.Load(cfg.Tenant)
		if err == nil {
			var u *quota.Unmetered
			why := ""
			if snap.Clean != nil {
				if merr != nil {
					why = merr.Error()
				} else {
					u, why = unmeteredSince(snap.Clean.Ports, startMeters)
				}
			}
			var clean bool
			clean, err = acct.RestoreAfterCleanStop(snap, now, u)
			switch {
			case clean:
				how = fmt.Sprintf("snapshot of a clean stop, %d bytes from and %d to the VM unmetered meanwhile", u.FromVM, u.ToVM)
			case snap.Clean != nil && why != "":
				how += " (clean stop, but what passed since is unknown: " + why + ")"
			case snap.Clean != nil:
				how += " (clean stop, but in an earlier interval)"
			}
		}
		if err != nil {
			how = "every interval at the commit"
			m.log.Error("event: a tenant's samples could not be restored; counting every interval of the period so far at the commit",
				"event", "quota_samples_lost", "tenant", cfg.Tenant, "err", err)
			if errors.Is(err, quota.ErrCorruptSnapshot) {
				to := fmt.Sprintf("%s.corrupt-%s", st.Path(cfg.Tenant), now.UTC().Format("20060102T150405Z"))
				os.Rename(st.Path(cfg.Tenant), to)
			}
			if err := restoreAtCommit(acct, now); err != nil {
				m.log.Error("cannot apply the careful default; the tenant starts afresh", "tenant", cfg.Tenant, "err", err)
			}
		}
		t := &tenant{cfg: cfg, acct: acct, since: e.Since, startMeters: startMeters}
		for _, p := range cfg.Ports {
			t.ports = append(t.ports, &tenantPort{t: t, port: p})
		}
		m.registerTenantLocked(t)
		m.saveSnapshotLocked(t, acct.Snapshot(now))
		m.log.Info("restored quota tenant", "tenant", cfg.Tenant, "samples_from", how, "settings", settingsLine(cfg))
	}
}

// countStartGapLocked adds to each restored tenant what its ports passed
// between the restore of its samples and now, once Restore has started the
// forwarders: on a fail-open splice that traffic went unmetered. (What
// passed after a forwarder started is counted twice, which never lowers
// the bill.)
func (m *Manager) countStartGapLocked(now time.Time) {
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		if t.startMeters == nil {
			continue
		}
		pm, err := m.portMeters(t.cfg.Ports)
		if err != nil {
			m.log.Warn("cannot read a tenant's port counters after the start; what passed unmetered during it is not counted", "tenant", name, "err", err)
			t.startMeters = nil
			continue
		}
		u, why := unmeteredSince(t.startMeters, pm)
		t.startMeters = nil
		if u == nil {
			m.log.Warn("what a tenant's ports passed during the start is unknown; not counted", "tenant", name, "why", why)
			continue
		}
		t.acct.AddUnmetered(now, *u)
		m.log.Debug("counted what passed while the tenant's forwarders started", "tenant", name, "from_vm_bytes", u.FromVM, "to_vm_bytes", u.ToVM)
	}
}

// restoreAtCommit restores a into the careful guess used when its samples
// are lost: the period so far, up to and including the interval containing
// now, entirely at the commit quota. That spends no burst interval and
// cannot push the bill over the commit.
func restoreAtCommit(a *quota.Account, now time.Time) error {
	ps, _ := a.Config().Period.Bounds(now)
	empty, err := quota.New(a.Config(), ps)
	if err != nil {
		return err
	}
	return a.Restore(empty.Snapshot(ps), now)
}

// adoptQuotaSpliceLocked adopts a splice found on the host at Restore if
// its port is a tenant's and not in the quarantine state file; it reports
// whether the port was a tenant's (and so is dealt with).
func (m *Manager) adoptQuotaSpliceLocked(port string, a splice.Adopter) bool {
	tp, ok := m.quotas.byPort[port]
	if !ok {
		return false
	}
	sp, err := a.Adopt(port)
	if err != nil {
		m.log.Error("cannot adopt a tenant's splice found on the host; leaving it untouched", "port", port, "err", err)
		return true
	}
	if !m.portExists(port) {
		if err := sp.Release(); err != nil {
			m.log.Error("removing the splice of a vanished tenant port", "port", port, "err", err)
		}
		return true
	}
	fwd, err := m.startForwarder(sp, NewSpec())
	if err != nil {
		m.log.Error("cannot restart the forwarder of an adopted tenant splice", "port", port, "err", err)
		tp.sp = sp // released and spliced again by the next retry
		return true
	}
	tp.sp, tp.fwd = sp, fwd
	go m.watchQuotaForwarder(tp, fwd)
	m.log.Info("adopted tenant splice", "port", port, "tenant", tp.t.cfg.Tenant, "backend", sp.Backend())
	return true
}

// spliceQuotaPortsLocked splices, at the end of Restore, the tenant ports
// that no adopted splice or quarantine covers.
func (m *Manager) spliceQuotaPortsLocked(now time.Time) {
	for _, name := range m.tenantNamesLocked() {
		for _, tp := range m.quotas.tenants[name].ports {
			if m.quotaPortUnsplicedLocked(tp) {
				m.retryQuotaPortLocked(tp, now)
			}
		}
	}
}

// quotaPortStateLocked is a tenant port's api.QuotaPort state.
func (m *Manager) quotaPortStateLocked(tp *tenantPort) string {
	if q, ok := m.q[tp.port]; ok {
		if q.fwd != nil {
			return api.QuotaPortQuarantined
		}
		return api.QuotaPortWaiting
	}
	if tp.fwd != nil {
		return api.QuotaPortSpliced
	}
	return api.QuotaPortWaiting
}

func (m *Manager) quotaPortsLocked(t *tenant) []api.QuotaPort {
	out := make([]api.QuotaPort, 0, len(t.ports))
	for _, tp := range t.ports {
		out = append(out, api.QuotaPort{Port: tp.port, State: m.quotaPortStateLocked(tp)})
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
	out := make([]api.QuotaStatus, 0, len(m.quotas.tenants))
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		out = append(out, api.QuotaStatus{QuotaReport: apiReport(t.acct.Report(now)), Ports: m.quotaPortsLocked(t)})
	}
	return out
}

// QuotaReport returns tenant name's billing period so far.
func (m *Manager) QuotaReport(name string) (api.QuotaReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.quotas.tenants[name]
	if !ok {
		return api.QuotaReport{}, fmt.Errorf("%w: %w %s (see shaperd quota list)", ErrUsage, ErrNoTenant, name)
	}
	return apiReport(t.acct.Report(m.clock())), nil
}

// QuotaList returns every tenant, sorted by name.
func (m *Manager) QuotaList() api.QuotaList {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock()
	out := api.QuotaList{Tenants: []api.QuotaTenant{}}
	for _, name := range m.tenantNamesLocked() {
		out.Tenants = append(out.Tenants, m.tenantInfoLocked(m.quotas.tenants[name], now))
	}
	return out
}

func (m *Manager) tenantInfoLocked(t *tenant, now time.Time) api.QuotaTenant {
	r := t.acct.Report(now)
	ps, pe := t.cfg.Period.Bounds(now)
	return api.QuotaTenant{
		Tenant:             t.cfg.Tenant,
		Settings:           t.cfg.Settings(),
		Ports:              m.quotaPortsLocked(t),
		Since:              t.since,
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
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]QuotaMetrics, 0, len(m.quotas.tenants))
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		s := m.snapshotLocked(t, now)
		r := apiReport(t.acct.Report(now))
		r.Samples = nil
		qm := QuotaMetrics{Report: r, Ports: m.quotaPortsLocked(t),
			FromVM: t.acct.Counters(quota.FromVM), ToVM: t.acct.Counters(quota.ToVM)}
		qc := rateBytes(t.cfg.Commit, t.cfg.Interval)
		qb := int64(-1)
		if t.cfg.BurstCeiling != 0 {
			qb = rateBytes(t.cfg.BurstCeiling, t.cfg.Interval)
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

// The tenants file: the tenants' settings, in the command line's words,
// checksummed and replaced atomically like the state file.
type tenantsBody struct {
	Version int           `json:"version"`
	Written time.Time     `json:"written"`
	Tenants []savedTenant `json:"tenants"`
}

type tenantsEnvelope struct {
	SHA256 string          `json:"sha256"`
	Body   json.RawMessage `json:"body"`
}

type savedTenant struct {
	Tenant   string            `json:"tenant"`
	Settings map[string]string `json:"settings"`
	Since    time.Time         `json:"since"`
}

func (m *Manager) saveTenantsLocked() error {
	var entries []savedTenant
	for _, name := range m.tenantNamesLocked() {
		t := m.quotas.tenants[name]
		entries = append(entries, savedTenant{Tenant: name, Settings: t.cfg.Settings(), Since: t.since})
	}
	return saveTenants(m.opt.StateDir, entries, time.Now())
}

func saveTenants(dir string, entries []savedTenant, now time.Time) error {
	if entries == nil {
		entries = []savedTenant{}
	}
	body, err := json.Marshal(tenantsBody{Version: 1, Written: now.UTC(), Tenants: entries})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	data, err := json.Marshal(tenantsEnvelope{SHA256: hex.EncodeToString(sum[:]), Body: body})
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, TenantsFile), append(data, '\n'))
}

// loadTenants reads the tenants file in dir: os.ErrNotExist if there is
// none, ErrCorruptState if it cannot be trusted.
func loadTenants(dir string) ([]savedTenant, error) {
	data, err := os.ReadFile(filepath.Join(dir, TenantsFile))
	if err != nil {
		return nil, err
	}
	var env tenantsEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorruptState, TenantsFile, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Body); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorruptState, TenantsFile, err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return nil, fmt.Errorf("%w: %s: checksum mismatch", ErrCorruptState, TenantsFile)
	}
	var body tenantsBody
	if err := json.Unmarshal(env.Body, &body); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorruptState, TenantsFile, err)
	}
	if body.Version != 1 {
		return nil, fmt.Errorf("%w: %s: version %d, want 1", ErrCorruptState, TenantsFile, body.Version)
	}
	return body.Tenants, nil
}
