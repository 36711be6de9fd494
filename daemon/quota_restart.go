package daemon

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/daemon/tenants"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/splice"
)

// Quota tenants across a restart: the tenants file, the samples restored at
// the start (with the crash rule, or after a clean stop), the splices
// adopted, and the counters read at a clean stop.

// closeQuotas saves every tenant's snapshot at Close (the forwarders are
// stopped by then, the splices left for the next daemon to adopt), marked
// as taken at a clean stop with its ports' counters from meters (read
// before any forwarder stopped; see quotaMeters). A tenant whose counters
// could not be read gets no mark: the next start applies the crash rule
// to it.
func (m *Manager) closeQuotas(now time.Time, meters map[string][]quota.PortMeter) {
	m.mu.Lock()
	for _, name := range m.tenantNamesLocked() {
		t, _ := m.quotas.Tenant(name)
		s := t.Acct.Snapshot(now)
		if pm, ok := meters[name]; ok {
			s.Clean = &quota.CleanStop{Ports: pm}
		}
		m.saveSnapshotLocked(t, s)
	}
	m.mu.Unlock()
	m.flushSnapshots()
}

// quotaMeters reads the counters of every tenant's ports, by tenant; a
// tenant whose counters cannot be read is left out (and logged).
func (m *Manager) quotaMeters() map[string][]quota.PortMeter {
	m.mu.Lock()
	ports := map[string][]string{}
	for _, t := range m.quotas.All() {
		ports[t.Cfg.Tenant] = t.Cfg.Ports
	}
	m.mu.Unlock()
	out := map[string][]quota.PortMeter{}
	for name, pp := range ports {
		pm, err := m.host.PortMeters(pp)
		if err != nil {
			m.log.Warn("cannot read a tenant's port counters at the stop: its next start applies the crash rule", "tenant", name, "err", err)
			continue
		}
		out[name] = pm
	}
	return out
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
// (adoptQuotaSpliceLocked) and has the owners splice the rest.
func (m *Manager) loadQuotasLocked(now time.Time) {
	st, ok := m.quotaStore()
	if !ok {
		return
	}
	saved, err := store.LoadTenants(m.opt.StateDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return
	case err != nil:
		m.log.Error("tenants file unusable: quota tenants are not restored; add them again", "dir", m.opt.StateDir, "err", err)
		if errors.Is(err, store.ErrCorrupt) {
			from := filepath.Join(m.opt.StateDir, store.TenantsFile)
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
		if _, dup := m.quotas.Tenant(cfg.Tenant); dup {
			continue
		}
		if p := slices.IndexFunc(cfg.Ports, func(p string) bool { _, taken := m.quotas.Port(p); return taken }); p >= 0 {
			m.log.Error("tenant in the tenants file shares a port with another; skipped", "tenant", e.Tenant, "port", cfg.Ports[p])
			continue
		}
		acct, err := quota.New(cfg, now)
		if err != nil {
			m.log.Error("tenant in the tenants file has unusable settings; skipped", "tenant", e.Tenant, "err", err)
			continue
		}
		how := "snapshot, with the crash rule"
		startMeters, merr := m.host.PortMeters(cfg.Ports)
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
		t := &tenants.Tenant{Cfg: cfg, Acct: acct, Since: e.Since, StartMeters: startMeters}
		for _, p := range cfg.Ports {
			t.Ports = append(t.Ports, &tenants.Port{Tenant: t, Name: p})
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
		t, _ := m.quotas.Tenant(name)
		if t.StartMeters == nil {
			continue
		}
		pm, err := m.host.PortMeters(t.Cfg.Ports)
		if err != nil {
			m.log.Warn("cannot read a tenant's port counters after the start; what passed unmetered during it is not counted", "tenant", name, "err", err)
			t.StartMeters = nil
			continue
		}
		u, why := unmeteredSince(t.StartMeters, pm)
		t.StartMeters = nil
		if u == nil {
			m.log.Warn("what a tenant's ports passed during the start is unknown; not counted", "tenant", name, "why", why)
			continue
		}
		t.Acct.AddUnmetered(now, *u)
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
	tp, ok := m.quotas.Port(port)
	if !ok {
		return false
	}
	sp, err := a.Adopt(port)
	if err != nil {
		m.log.Error("cannot adopt a tenant's splice found on the host; leaving it untouched", "port", port, "err", err)
		return true
	}
	if !m.host.PortExists(port) {
		if err := sp.Release(); err != nil {
			m.log.Error("removing the splice of a vanished tenant port", "port", port, "err", err)
		}
		return true
	}
	w, _, _ := m.wantLocked(port)
	if err := m.ownerLocked(port).Adopt(sp, w); err != nil {
		// The owner keeps the splice: reverted and made again by the
		// next retry.
		m.log.Error("cannot restart the forwarder of an adopted tenant splice", "port", port, "err", err)
		return true
	}
	m.log.Info("adopted tenant splice", "port", port, "tenant", tp.Tenant.Cfg.Tenant, "backend", sp.Backend())
	return true
}

// unsplicedQuotaPortsLocked lists, at the end of Restore, the tenant ports
// that no adopted splice or quarantine covers, for their owners to splice.
func (m *Manager) unsplicedQuotaPortsLocked() []string {
	var out []string
	for _, t := range m.quotas.All() {
		for _, tp := range t.Ports {
			if m.quotaPortUnsplicedLocked(tp) {
				out = append(out, tp.Name)
			}
		}
	}
	return out
}

// saveTenants writes the tenants file with the tenants as they are now.
// The caller holds no lock.
func (m *Manager) saveTenants() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	var entries []store.Tenant
	for _, name := range m.tenantNamesLocked() {
		t, _ := m.quotas.Tenant(name)
		entries = append(entries, store.Tenant{Tenant: name, Settings: t.Cfg.Settings(), Since: t.Since})
	}
	m.mu.Unlock()
	return store.SaveTenants(m.opt.StateDir, entries, time.Now())
}
