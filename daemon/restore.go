package daemon

import (
	"errors"
	"fmt"
	"time"

	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/statefile"
)

// Restore rebuilds the daemon's quarantines at start, from the state file
// and from the plumbing, which is the ground truth:
//
//  1. Splices found on the host are adopted (their taps reopened, their
//     filters or flows kept) with the limits of the state file, else the
//     intent recorded on the plumbing, else ConservativeSpec and an event.
//  2. Quarantines of the state file with no splice are re-applied if their
//     port is there, and left pending otherwise.
//  3. Only after that full sync, splices the state file says were released
//     (or half released) are removed. With no trustworthy state file
//     nothing is removed: everything found is adopted.
//
// A missing or corrupt state file never stops the daemon: it logs what it
// found and rebuilds from the plumbing. Restore touches nothing it did not
// create: it only adopts splices its backends recognise as theirs.
//
// Restore runs before the daemon serves requests; it does its adoption
// under Manager.mu, and has the owners splice what is left to splice.
func (m *Manager) Restore() error {
	// What the state directory says can cut a VM off: trust it only if
	// no one else could have written it.
	if m.opt.StateDir != "" {
		if err := statefile.CheckDir(m.opt.StateDir); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	m.mu.Lock()
	retry, err := m.restoreLocked()
	m.mu.Unlock()
	if err != nil {
		return err
	}
	now := m.host.Now()
	for _, p := range retry {
		m.tryPort(p, now)
	}
	m.mu.Lock()
	m.countStartGapLocked(m.host.Now())
	// Only after the full sync: pieces no recorded splice names.
	m.removeOrphanPiecesLocked()
	m.mu.Unlock()
	m.flushSnapshots()
	m.save()
	return nil
}

// restoreLocked adopts what it finds and returns the ports left to splice:
// pending quarantines and tenant ports.
func (m *Manager) restoreLocked() ([]string, error) {
	now := m.host.Now()
	trusted := m.opt.StateDir != "" // without a state file, adopt everything found
	saved := map[string]store.Quarantine{}
	suspect := map[string]bool{}
	if m.opt.StateDir != "" {
		var err error
		var bad map[string]string
		saved, bad, err = store.LoadQuarantines(m.opt.StateDir)
		for port, why := range bad {
			// Its splice, if any, is adopted from the plumbing, not
			// removed as an orphan.
			suspect[port] = true
			m.log.Error("event: a state file entry cannot be right; ignored", "event", "state_entry_refused", "port", port, "why", why)
		}
		switch {
		case errors.Is(err, store.ErrNoState):
			trusted = false
			m.log.Info("no state file: adopting whatever splices are found", "dir", m.opt.StateDir)
		case err != nil:
			trusted = false
			m.log.Error("state file unusable: rebuilding from the plumbing", "dir", m.opt.StateDir, "err", err)
			if errors.Is(err, store.ErrCorrupt) {
				if to, err := store.SetAside(m.opt.StateDir, now); err == nil {
					m.log.Warn("corrupt state file set aside", "path", to)
				}
			}
		}
	}

	// Quota tenants first: the forwarders started below carry their hooks.
	m.loadQuotasLocked(now)

	type foundSplice struct {
		b      splice.Adopter
		intent string
	}
	found := map[string]foundSplice{}
	for _, b := range m.backends {
		a, ok := b.(splice.Adopter)
		if !ok {
			continue
		}
		fs, err := a.Found()
		if err != nil {
			return nil, fmt.Errorf("restore: list %s splices: %w", b.Name(), err)
		}
		for _, f := range fs {
			if _, dup := found[f.Port]; !dup {
				found[f.Port] = foundSplice{a, f.Intent}
			}
		}
	}

	var orphans, retry []string
	for port, f := range found {
		e, inState := saved[port]
		if !inState && m.adoptQuotaSpliceLocked(port, f.b) {
			continue // a quota tenant's own splice
		}
		if trusted && !suspect[port] && (!inState || e.State == stateReleasing) {
			orphans = append(orphans, port)
			continue
		}
		spec, how := e.Spec, "state file"
		since := e.Since
		if !inState {
			since = now.UTC()
			var err error
			if spec, err = intent.Parse(f.intent); err == nil {
				how = "plumbing"
			} else {
				spec, how = intent.Conservative(), "conservative default"
				m.health.add(EventLimitsUnrecovered)
				m.log.Warn("event: limits of an adopted splice could not be recovered; applying a conservative default",
					"event", EventLimitsUnrecovered, "port", port, "intent", f.intent, "err", err, "limits", spec.Intent())
			}
		}
		q := &quarantine{port: port, spec: spec, since: since}
		q.spec, q.esc = m.auto.ResumeLadder(port, q.spec, e.Ladder, now)
		sp, err := f.b.Adopt(port)
		if err != nil {
			m.log.Error("cannot adopt a splice found on the host; leaving it untouched", "port", port, "err", err)
			continue
		}
		if !m.host.PortExists(port) {
			// The VM went away while no daemon ran.
			if err := sp.Release(); err != nil {
				m.log.Error("removing the splice of a vanished port", "port", port, "err", err)
			}
			m.makePendingLocked(q, now)
			m.q[port] = q
			m.log.Warn("adopted splice's port is gone: quarantine pending", "port", port)
			continue
		}
		q.state = StateActive
		m.q[port] = q
		w, _, _ := m.wantLocked(port)
		if err := m.ownerLocked(port).Adopt(sp, w); err != nil {
			delete(m.q, port)
			m.log.Error("cannot restart the forwarder of an adopted splice", "port", port, "err", err)
			continue
		}
		if q.esc != nil && q.esc.Ladder.AvgFrame() == 0 {
			q.esc.AvgFrom = m.host.Now()
		}
		m.log.Info("adopted splice", "port", port, "backend", sp.Backend(), "limits_from", how, "intent", spec.Intent())
	}

	for port, e := range saved {
		if _, ok := found[port]; ok || e.State == stateReleasing {
			continue
		}
		q := &quarantine{port: port, spec: e.Spec, since: e.Since}
		q.spec, q.esc = m.auto.ResumeLadder(port, q.spec, e.Ladder, now)
		m.makePendingLocked(q, now)
		if e.State == StatePending && !e.Expires.IsZero() {
			q.expires = e.Expires
		}
		m.q[port] = q
		retry = append(retry, port)
		m.log.Info("restored quarantine from the state file", "port", port, "state", q.state)
	}

	for _, port := range orphans {
		sp, err := found[port].b.Adopt(port)
		if err != nil {
			m.log.Error("orphan splice cannot be adopted for removal; leaving it", "port", port, "err", err)
			continue
		}
		if err := sp.Release(); err != nil {
			m.log.Error("removing an orphan splice", "port", port, "err", err)
			continue
		}
		m.log.Warn("removed an orphan splice (released, or half released, by an earlier daemon)", "port", port)
	}
	return append(retry, m.unsplicedQuotaPortsLocked()...), nil
}

// removeOrphanPiecesLocked asks each backend to remove its unrecorded
// pieces. A failure is logged and does not stop the start.
func (m *Manager) removeOrphanPiecesLocked() {
	for _, b := range m.backends {
		r, ok := b.(splice.OrphanRemover)
		if !ok {
			continue
		}
		removed, err := r.RemoveOrphans()
		if err != nil {
			m.log.Error("removing orphan pieces", "backend", b.Name(), "err", err)
		}
		if len(removed) > 0 {
			m.log.Warn("removed orphan pieces no splice records", "backend", b.Name(), "removed", removed)
		}
	}
}

// ReleaseOffline reverts splices with no daemon running, from the plumbing
// and the state file in stateDir: the ports named, or every one with all. It
// is for a service manager's OnFailure= unit once restarts are exhausted.
// Pending quarantines named (or all) are dropped from the state file.
func ReleaseOffline(log interface {
	Info(string, ...any)
	Error(string, ...any)
}, stateDir string, ports []string, all bool, backends ...splice.Backend) ([]string, error) {
	want := map[string]bool{}
	for _, p := range ports {
		want[p] = true
	}
	if stateDir != "" {
		if err := statefile.CheckDir(stateDir); err != nil {
			return nil, err
		}
	}
	var released []string
	var errs []error
	for _, b := range backends {
		a, ok := b.(splice.Adopter)
		if !ok {
			continue
		}
		fs, err := a.Found()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range fs {
			if !all && !want[f.Port] {
				continue
			}
			sp, err := a.Adopt(f.Port)
			if err == nil {
				err = sp.Release()
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("release %s: %w", f.Port, err))
				continue
			}
			released = append(released, f.Port)
			delete(want, f.Port)
			log.Info("released offline", "port", f.Port, "backend", b.Name())
		}
	}
	if stateDir != "" {
		saved, bad, err := store.LoadQuarantines(stateDir)
		for port, why := range bad {
			log.Error("a state file entry cannot be right; dropped", "port", port, "why", why)
		}
		if err == nil {
			var keep []store.Quarantine
			for p, e := range saved {
				if all || (len(ports) > 0 && contains(ports, p)) {
					if e.State == StatePending {
						released = append(released, p)
						delete(want, p)
					}
					continue
				}
				keep = append(keep, e)
			}
			if err := store.SaveQuarantines(stateDir, keep, time.Now()); err != nil {
				errs = append(errs, fmt.Errorf("update state file: %w", err))
			}
		}
	}
	for p := range want {
		errs = append(errs, notFoundf("%s is not quarantined (no splice found, nothing pending)", p))
	}
	return released, errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
