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
// Persistence: the tenants' settings are in store.TenantsFile in the state
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
// Tenant ports are spliced by their owner (owner.go), like quarantined
// ports. The functions named ...Locked run under the Manager's mutex and do
// no I/O; the others take it themselves.

import (
	"errors"
	"fmt"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/tenants"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/quota"
)

// QuotaRetry is how often a tenant port that could not be spliced is tried
// again (a link event for the port tries at once).
const QuotaRetry = 5 * time.Second

// ErrNoTenant means the tenant named does not exist; see `quota list`.
var ErrNoTenant = errors.New("no such tenant")

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
	exists := map[string]bool{}
	for _, p := range cfg.Ports {
		if err := api.CheckPort(p); err != nil {
			return api.QuotaTenant{}, err
		}
		exists[p] = m.host.PortExists(p)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return api.QuotaTenant{}, ErrClosed
	}
	if _, ok := m.quotas.Tenant(name); ok {
		m.mu.Unlock()
		return api.QuotaTenant{}, usagef("tenant %s exists: remove it first (shaperd quota remove %s)", name, name)
	}
	for _, p := range cfg.Ports {
		if tp, ok := m.quotas.Port(p); ok {
			m.mu.Unlock()
			return api.QuotaTenant{}, usagef("%s belongs to tenant %s: a port is billed to one tenant", p, tp.Tenant.Cfg.Tenant)
		}
		if !exists[p] {
			m.mu.Unlock()
			return api.QuotaTenant{}, usagef("%s: no such port", p)
		}
	}
	now := m.host.Now()
	acct, err := quota.New(cfg, now)
	if err != nil {
		m.mu.Unlock()
		return api.QuotaTenant{}, usagef("%v", err)
	}
	t := &tenants.Tenant{Cfg: cfg, Acct: acct, Since: now.UTC()}
	for _, p := range cfg.Ports {
		t.Ports = append(t.Ports, &tenants.Port{Tenant: t, Name: p})
	}
	m.registerTenantLocked(t)
	m.mu.Unlock()
	// Each port's owner splices it for the tenant, or puts the quota
	// into its quarantine's forwarder.
	for _, p := range cfg.Ports {
		if err := m.reconcileOne(p); err != nil {
			if rerr := m.detachTenant(t); rerr != nil {
				m.log.Error("rollback of a failed quota add failed", "tenant", name, "err", rerr)
				err = errors.Join(err, rerr)
			}
			return api.QuotaTenant{}, fmt.Errorf("%s: %w", p, err)
		}
	}
	if st, ok := m.quotaStore(); ok {
		// The snapshot first: a tenant in the tenants file always has
		// one, and a crash in between leaves an orphan snapshot that
		// the next add of the name overwrites.
		m.snapMu.Lock()
		err := st.Save(acct.Snapshot(now))
		m.snapMu.Unlock()
		if err == nil {
			err = m.saveTenants()
		}
		if err != nil {
			if rerr := m.detachTenant(t); rerr != nil {
				err = errors.Join(err, rerr)
			}
			st.Remove(name)
			return api.QuotaTenant{}, fmt.Errorf("quota add %s: %w", name, err)
		}
		m.mu.Lock()
		t.Saved(acct.Snapshot(now))
		m.mu.Unlock()
	}
	m.log.Info("quota tenant added", "tenant", name, "settings", settingsLine(cfg))
	m.mu.Lock()
	defer m.mu.Unlock()
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
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	t, ok := m.quotas.Tenant(name)
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %w %s (see shaperd quota list)", ErrNotFound, ErrNoTenant, name)
	}
	if err := m.detachTenant(t); err != nil {
		m.mu.Lock()
		m.registerTenantLocked(t)
		m.mu.Unlock()
		return fmt.Errorf("quota remove %s: %w", name, err)
	}
	if st, ok := m.quotaStore(); ok {
		if err := m.saveTenants(); err != nil {
			m.log.Error("cannot write the tenants file; the tenant comes back after a restart", "tenant", name, "err", err)
		}
		m.snapMu.Lock()
		err := st.Remove(name)
		m.snapMu.Unlock()
		if err != nil {
			m.log.Error("cannot delete the tenant's samples", "tenant", name, "err", err)
		}
	}
	m.log.Info("quota tenant removed", "tenant", name)
	return nil
}

func (m *Manager) registerTenantLocked(t *tenants.Tenant) {
	m.quotas.Add(t)
}

// detachTenant unregisters t, and has the owner of each of its ports
// revert the tenant's splice or take its hooks out of the quarantine's
// forwarder. It carries on past errors and returns them all.
func (m *Manager) detachTenant(t *tenants.Tenant) error {
	m.mu.Lock()
	m.quotas.Remove(t)
	m.mu.Unlock()
	var errs []error
	for _, tp := range t.Ports {
		if err := m.reconcileOne(tp.Name); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, fmt.Errorf("%s: %w", tp.Name, err))
		}
	}
	return errors.Join(errs...)
}

// quotaPoliciesLocked returns from and to with the hooks of port's tenant,
// one per pipe, or unchanged if port belongs to no tenant.
func (m *Manager) quotaPoliciesLocked(port string, from, to forward.Policy) (forward.Policy, forward.Policy) {
	tp, ok := m.quotas.Port(port)
	if !ok {
		return from, to
	}
	from.Quota = tp.Tenant.Acct.Hook(m.nextQuotaSeed())
	to.Quota = tp.Tenant.Acct.Hook(m.nextQuotaSeed())
	return from, to
}

// nextQuotaSeed seeds a hook's random source: distinct per pipe, and per
// daemon start.
func (m *Manager) nextQuotaSeed() uint64 {
	return m.quotas.NextSeed(m.started)
}

// quotaPortUnsplicedLocked reports whether tp wants a splice of the
// tenant's own and has none.
func (m *Manager) quotaPortUnsplicedLocked(tp *tenants.Port) bool {
	_, quarantined := m.q[tp.Name]
	_, fwd := m.tSpliceLocked(tp)
	return fwd == nil && !quarantined
}

func (m *Manager) quotaRetryLaterLocked(tp *tenants.Port, now time.Time, err error) {
	tp.RetryAt = now.Add(QuotaRetry)
	if msg := err.Error(); msg != tp.LastErr {
		tp.LastErr = msg
		m.log.Warn("tenant port not spliced yet; its traffic is not metered; retrying", "port", tp.Name, "tenant", tp.Tenant.Cfg.Tenant, "err", err)
	}
}

// tickQuotasLocked closes the tenants' intervals, queues the snapshots
// that hold something new (or whose last save failed), and returns the
// ports that are not spliced and due for a retry. Called by Tick.
func (m *Manager) tickQuotasLocked(now time.Time) []string {
	var retry []string
	for _, name := range m.tenantNamesLocked() {
		t, _ := m.quotas.Tenant(name)
		if _, save := t.Acct.Tick(now); save || t.SaveErr != nil {
			m.saveSnapshotLocked(t, t.Acct.Snapshot(now))
		}
		for _, tp := range t.Ports {
			if m.quotaPortUnsplicedLocked(tp) && !now.Before(tp.RetryAt) {
				retry = append(retry, tp.Name)
			}
		}
	}
	return retry
}

// saveSnapshotLocked queues s, t's snapshot, for flushSnapshots to write.
func (m *Manager) saveSnapshotLocked(t *tenants.Tenant, s quota.Snapshot) {
	if _, ok := m.quotaStore(); !ok {
		return
	}
	if m.snapDue == nil {
		m.snapDue = map[*tenants.Tenant]quota.Snapshot{}
	}
	m.snapDue[t] = s
}

// flushSnapshots writes the queued snapshots of tenants that still exist;
// a failure is logged once and retried at every tick. The caller holds no
// lock.
func (m *Manager) flushSnapshots() {
	st, ok := m.quotaStore()
	if !ok {
		return
	}
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	m.mu.Lock()
	due := m.snapDue
	m.snapDue = nil
	m.mu.Unlock()
	for t, s := range due {
		m.mu.Lock()
		cur, _ := m.quotas.Tenant(t.Cfg.Tenant)
		live := cur == t
		m.mu.Unlock()
		if !live {
			continue
		}
		err := st.Save(s)
		m.mu.Lock()
		switch {
		case err != nil:
			if t.SaveErr == nil {
				m.log.Error("cannot save a tenant's samples; retrying at every tick", "tenant", t.Cfg.Tenant, "err", err)
			}
			t.SaveErr = err
		default:
			if t.SaveErr != nil {
				m.log.Info("tenant's samples saved again", "tenant", t.Cfg.Tenant)
			}
			t.SaveErr = nil
			t.Saved(s)
		}
		m.mu.Unlock()
	}
}

// snapshotLocked returns t's snapshot at now for reading (metrics). Taking
// a snapshot clears the Account's note that something needs saving, so a
// snapshot that holds more than the last one saved is saved here.
func (m *Manager) snapshotLocked(t *tenants.Tenant, now time.Time) quota.Snapshot {
	s := t.Acct.Snapshot(now)
	if t.Unsaved(s) {
		m.saveSnapshotLocked(t, s)
	}
	return s
}

func (m *Manager) tenantNamesLocked() []string {
	return m.quotas.Names()
}
