package daemon

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
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
	Port    string    `json:"port"`
	State   api.State `json:"state"` // active, pending, releasing
	Backend string    `json:"backend,omitempty"`
	Spec    Spec      `json:"spec"`
	Since   time.Time `json:"since"`
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

// Intent is s in the command line's words, only what differs from a new
// spec: "pps=5000 bps=16mbit to-vm-pps=500 fail=open". It is kept on the
// plumbing (see splice.IntentRecorder) so a daemon without its state file
// recovers the limits; ParseIntent reverses it.
func (s Spec) Intent() string {
	def := NewSpec()
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	for _, d := range []struct {
		prefix   string
		got, def DirSpec
	}{{"", s.FromVM, def.FromVM}, {"to-vm-", s.ToVM, def.ToVM}} {
		g, p := d.got, d.prefix
		if g.PPS != nil {
			add(p+"pps", strconv.FormatFloat(*g.PPS, 'g', -1, 64))
		}
		if g.BPS != nil {
			add(p+"bps", g.BPS.String())
		}
		if g.Burst != nil {
			add(p+"burst", strconv.Itoa(*g.Burst))
		}
		if g.BurstBytes != nil {
			add(p+"burst-bytes", g.BurstBytes.String())
		}
		if g.Mode != "" {
			add(p+"mode", string(g.Mode))
		}
		if g.Delay != nil {
			add(p+"delay", g.Delay.String())
		}
		if g.QueueBytes != nil {
			add(p+"queue-bytes", g.QueueBytes.String())
		}
		if g.QueueTime != nil {
			add(p+"queue-time", g.QueueTime.String())
		}
		if !eqF(g.BypassPPS, d.def.BypassPPS) {
			add(p+"bypass-pps", fmtF(g.BypassPPS))
		}
		if !eqR(g.BypassBPS, d.def.BypassBPS) {
			v := "none"
			if g.BypassBPS != nil {
				v = g.BypassBPS.String()
			}
			add(p+"bypass-bps", v)
		}
		if !eqF(g.ControlPPS, d.def.ControlPPS) {
			add(p+"control-pps", fmtF(g.ControlPPS))
		}
		if g.SynPPS != nil {
			add(p+"syn-pps", fmtF(g.SynPPS))
		}
		if g.UDPPPS != nil {
			add(p+"udp-pps", fmtF(g.UDPPPS))
		}
		if g.ICMPBPS != nil {
			add(p+"icmp-bps", g.ICMPBPS.String())
		}
		if g.MaxFrame != nil {
			add(p+"max-frame", g.MaxFrame.String())
		}
		if g.BypassConnPerSource != nil {
			add(p+"bypass-conn-per-source", strconv.Itoa(*g.BypassConnPerSource))
		}
		if g.Backstop != nil {
			add(p+"backstop", fmtF(g.Backstop))
		}
		if g.BackstopOff {
			add(p+"backstop", "none")
		}
		if len(g.Classes) > 0 {
			// Rules have spaces: escaped, one rule per line.
			add(p+"class", url.QueryEscape(strings.Join(g.Classes, "\n")))
		}
	}
	if !slices.Equal(s.BypassPorts, def.BypassPorts) {
		var ps []string
		for _, p := range s.BypassPorts {
			ps = append(ps, strconv.Itoa(int(p)))
		}
		v := strings.Join(ps, ",")
		if v == "" {
			v = "none"
		}
		add("bypass", v)
	}
	if s.BypassOutbound {
		add("bypass-outbound", "true")
	}
	if s.Fail != "" {
		add("fail", string(s.Fail))
	}
	if s.Guard {
		add("guard", "true")
		if s.GuardMAC != "" {
			add("guard-mac", s.GuardMAC)
		}
		if s.GuardIP != "" {
			add("guard-ip", s.GuardIP)
		}
	}
	if s.Profile != "" {
		add("profile", s.Profile)
	}
	if s.Origin != "" {
		add("origin", string(s.Origin))
	}
	if s.Stage != "" {
		add("stage", s.Stage)
	}
	return strings.Join(parts, " ")
}

// ParseIntent turns an Intent back into a Spec.
func ParseIntent(intent string) (Spec, error) {
	req := api.LimitRequest{}
	for _, f := range strings.Fields(intent) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Spec{}, fmt.Errorf("intent %q: %q is not key=value", intent, f)
		}
		if k == "class" || k == "to-vm-class" {
			u, err := url.QueryUnescape(v)
			if err != nil {
				return Spec{}, fmt.Errorf("intent %q: %s: %v", intent, k, err)
			}
			v = u
		}
		req[k] = v
	}
	if !HasLimitFlag(req) {
		return Spec{}, fmt.Errorf("intent %q names no limit", intent)
	}
	meta := map[string]string{}
	for _, k := range []string{"profile", "origin", "stage"} {
		if v, ok := req[k]; ok {
			meta[k] = v
			delete(req, k)
		}
	}
	s, err := NewSpec().Apply(req, false)
	if err != nil {
		return s, err
	}
	s.Profile, s.Origin, s.Stage = meta["profile"], api.Origin(meta["origin"]), meta["stage"]
	return s, nil
}

func fmtF(p *float64) string {
	if p == nil {
		return "none"
	}
	return strconv.FormatFloat(*p, 'g', -1, 64)
}

func eqF(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func eqR[T comparable](a, b *T) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

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
	if err := saveState(m.opt.StateDir, entries, now); err != nil {
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
