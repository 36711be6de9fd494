package daemon

import (
	"errors"
	"fmt"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/store"
)

// save writes the state file with the intent as it is now; a failure is
// logged, not returned: the plumbing keeps the intent too, and refusing
// the change would not undo it. The caller holds no lock.
func (m *Manager) save() error {
	if m.opt.StateDir == "" {
		return nil
	}
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	entries := m.stateEntriesLocked()
	m.mu.Unlock()
	now := time.Now()
	if err := store.SaveQuarantines(m.opt.StateDir, entries, now); err != nil {
		m.health.add(EventStateNotSaved)
		if p := m.notSaved.Load(); p == nil {
			why := fmt.Sprintf("since %s: %v", now.UTC().Format(time.RFC3339), err)
			m.notSaved.Store(&why)
		}
		m.log.Error("event: cannot write the state file; quarantines stay in force, but a restart may not keep them", "event", EventStateNotSaved, "dir", m.opt.StateDir, "err", err)
		return fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	if m.notSaved.Swap(nil) != nil {
		m.log.Info("the state file is written again", "dir", m.opt.StateDir)
	}
	return nil
}

// stateNotSaved is why the state file is not being written, "" if it is.
func (m *Manager) stateNotSaved() string {
	if p := m.notSaved.Load(); p != nil {
		return *p
	}
	return ""
}

// ErrNotSaved means a change is in force but the state file could not be
// written, so a restart may not keep it (the plumbing's intent may still
// bring it back). The caller should report it as a warning: the change
// was made. Quarantine and Set put it in the answer's warnings; Release
// returns it.
var ErrNotSaved = errors.New("the change is in force, but the state file could not be written; a restart may not keep it")

// withSaveWarning adds save's error, if any, to q's warnings.
func withSaveWarning(q api.Quarantine, err, saveErr error) (api.Quarantine, error) {
	if err == nil && saveErr != nil {
		q.Warnings = append(q.Warnings, saveErr.Error())
	}
	return q, err
}

// stateEntriesLocked is the state file's content: every quarantine but
// those still starting.
func (m *Manager) stateEntriesLocked() []store.Quarantine {
	entries := make([]store.Quarantine, 0, len(m.q))
	for _, q := range m.q {
		if q.starting {
			continue
		}
		e := store.Quarantine{Port: q.port, State: q.state, Spec: q.spec, Since: q.since, Expires: q.expires}
		if q.esc != nil {
			st := q.esc.Ladder.State()
			e.Ladder = &st
		}
		if sp, _ := m.qSpliceLocked(q); sp != nil {
			e.Backend = sp.Backend()
		}
		entries = append(entries, e)
	}
	return entries
}
