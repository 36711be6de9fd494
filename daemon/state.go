package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/statefile"
)

// StateFile is the name of the daemon's intent file in its state directory.
const StateFile = "state.json"

// The state file holds the daemon's own intent: which ports are
// quarantined, with what, since when, and which are pending. It is small,
// checksummed, and replaced atomically (write, fsync, rename, fsync the
// directory), so a kill -9 at any instant leaves either the old or the new
// file. The switch and the kernel stay the ground truth for what is spliced.
type stateBody struct {
	Version     int          `json:"version"`
	Written     time.Time    `json:"written"`
	Quarantines []savedEntry `json:"quarantines"`
}

type savedEntry struct {
	Port    string      `json:"port"`
	State   api.State   `json:"state"` // active, pending, releasing
	Backend string      `json:"backend,omitempty"`
	Spec    intent.Spec `json:"spec"`
	Since   time.Time   `json:"since"`
	// Expires is when a pending quarantine is dropped.
	Expires time.Time `json:"expires,omitzero"`
	// Ladder is the position of the quarantine's ladder, if it has one.
	Ladder *ladder.State `json:"ladder,omitempty"`
}

// ErrCorruptState means the state file exists but cannot be trusted; the
// daemon rebuilds from the plumbing.
var ErrCorruptState = errors.New("state file is corrupt")

// ErrNoState means there is no state file (a first start, or it was
// deleted); the daemon rebuilds from the plumbing.
var ErrNoState = errors.New("no state file")

// loadState reads the state file in dir. An entry that cannot be right (a
// bad port name, an unknown state, a spec that does not validate, a port
// named twice) is left out and named in bad, port → why; the others are
// kept.
func loadState(dir string) (out map[string]savedEntry, bad map[string]string, err error) {
	defer func() {
		if err != nil {
			out, bad = map[string]savedEntry{}, nil
		}
	}()
	out = map[string]savedEntry{}
	var body stateBody
	err = statefile.Read(filepath.Join(dir, StateFile), &body)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return out, nil, ErrNoState
	case errors.Is(err, statefile.ErrCorrupt):
		return out, nil, fmt.Errorf("%w: %s", ErrCorruptState, statefile.Reason(err))
	case err != nil:
		return out, nil, err
	}
	if body.Version != 1 {
		return out, nil, fmt.Errorf("%w: version %d, want 1", ErrCorruptState, body.Version)
	}
	bad = map[string]string{}
	seen := map[string]int{}
	for _, e := range body.Quarantines {
		seen[e.Port]++
	}
	for _, e := range body.Quarantines {
		why := ""
		switch {
		case checkPortName(e.Port) != nil:
			why = checkPortName(e.Port).Error()
		case seen[e.Port] > 1:
			why = fmt.Sprintf("the port has %d entries", seen[e.Port])
		case e.State != StateActive && e.State != StatePending && e.State != stateReleasing:
			why = fmt.Sprintf("unknown state %q", e.State)
		default:
			if err := e.Spec.Validate(); err != nil {
				why = err.Error()
			}
		}
		if why != "" {
			bad[e.Port] = why
			continue
		}
		out[e.Port] = e
	}
	return out, bad, nil
}

// saveState replaces the state file in dir atomically.
func saveState(dir string, entries []savedEntry, now time.Time) error {
	slices.SortFunc(entries, func(a, b savedEntry) int { return strings.Compare(a.Port, b.Port) })
	return statefile.Write(filepath.Join(dir, StateFile), stateBody{Version: 1, Written: now.UTC(), Quarantines: entries}, true)
}

// setAside renames an untrusted state file so it can be inspected later and
// is not read again.
func setAside(dir string, now time.Time) (string, error) {
	to := filepath.Join(dir, fmt.Sprintf("%s.corrupt-%s", StateFile, now.UTC().Format("20060102T150405Z")))
	return to, os.Rename(filepath.Join(dir, StateFile), to)
}

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
	if err := saveState(m.opt.StateDir, entries, time.Now()); err != nil {
		m.log.Error("cannot write the state file", "dir", m.opt.StateDir, "err", err)
		return fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	return nil
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
func (m *Manager) stateEntriesLocked() []savedEntry {
	entries := make([]savedEntry, 0, len(m.q))
	for _, q := range m.q {
		if q.starting {
			continue
		}
		e := savedEntry{Port: q.port, State: q.state, Spec: q.spec, Since: q.since, Expires: q.expires}
		if q.lad != nil {
			st := q.lad.State()
			e.Ladder = &st
		}
		if sp, _ := m.qSpliceLocked(q); sp != nil {
			e.Backend = sp.Backend()
		}
		entries = append(entries, e)
	}
	return entries
}
