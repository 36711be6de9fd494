package daemon

import (
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/baseline"
	"github.com/shaperd/shaperd/daemon/store"
	"github.com/shaperd/shaperd/splice"
)

// Baseliner keeps the kernel's baseline equal to a desired set of port
// limits: *baseline.Manager, or a fake in tests. Apply and Stats do
// netlink work; the daemon never calls them under Manager.mu.
type Baseliner interface {
	Apply(desired map[string]baseline.Limits) error
	Stats() (map[string]map[baseline.Reason]baseline.Counter, error)
}

// BaselineRule is one entry of the config's baselines: the limits of every
// port whose name matches Pattern (path.Match syntax, as watch).
type BaselineRule struct {
	Pattern string
	Limits  api.BaselineLimits
}

// baselineEntry is a baseline with its parsed limits.
type baselineEntry struct {
	spec   api.BaselineLimits
	limits baseline.Limits
}

// baselines is the daemon's desired baseline: the config's rules, the
// command line's exact ports, and the ports that exist and match a rule.
// Guarded by Manager.mu.
type baselines struct {
	rules   []BaselineRule
	parsed  []baseline.Limits // rules' limits, same order
	cli     map[string]baselineEntry
	present map[string]bool // existing ports that match a rule
}

// ErrNoBaseline means the daemon runs without a baseline engine.
var ErrNoBaseline = errors.New("baseline: not available in this daemon")

// CheckBaselineRules validates the config's baselines; errors start with
// the key's path (baselines.N.port, baselines.N).
func CheckBaselineRules(rules []BaselineRule) error {
	var errs []error
	for i, r := range rules {
		if r.Pattern == "" {
			errs = append(errs, fmt.Errorf("baselines.%d.port: empty; use a glob such as vm-*", i))
		} else if _, err := path.Match(r.Pattern, ""); err != nil {
			errs = append(errs, fmt.Errorf("baselines.%d.port: %q: malformed pattern (%v); use a glob such as vm-*", i, r.Pattern, err))
		}
		if _, err := baseline.ParseLimits(r.Limits); err != nil {
			errs = append(errs, fmt.Errorf("baselines.%d: %v", i, err))
		}
	}
	return errors.Join(errs...)
}

// ruleFor is the first rule whose pattern matches port, or -1. A splice's
// own links (shq...) match no pattern: they carry their port's baseline.
func (b *baselines) ruleFor(port string) int {
	if strings.HasPrefix(port, splice.TapPrefix) {
		return -1
	}
	for i, r := range b.rules {
		if ok, _ := path.Match(r.Pattern, port); ok {
			return i
		}
	}
	return -1
}

// ConfigureBaselines replaces the config's baseline rules and applies the
// result to the ports that exist now. Invalid rules change nothing.
func (m *Manager) ConfigureBaselines(rules []BaselineRule) error {
	if err := m.setBaselineRules(rules); err != nil {
		return err
	}
	return m.applyBaselines()
}

// setBaselineRules is ConfigureBaselines without the apply.
func (m *Manager) setBaselineRules(rules []BaselineRule) error {
	if err := CheckBaselineRules(rules); err != nil {
		return err
	}
	if len(rules) > 0 && m.opt.Baseline == nil {
		return fmt.Errorf("baselines: %w", ErrNoBaseline)
	}
	parsed := make([]baseline.Limits, len(rules))
	for i, r := range rules {
		parsed[i], _ = baseline.ParseLimits(r.Limits)
	}
	names, err := m.host.Links()
	if err != nil {
		return fmt.Errorf("baselines: list links: %w", err)
	}
	m.mu.Lock()
	m.bl.rules, m.bl.parsed = rules, parsed
	m.bl.present = map[string]bool{}
	for _, n := range names {
		if m.bl.ruleFor(n) >= 0 {
			m.bl.present[n] = true
		}
	}
	m.mu.Unlock()
	return nil
}

// baselineDesiredLocked is the set to apply: each port's limits, under
// its own name and, so that a quarantine leaves its baseline in force,
// under the names of its splice's bridge side (the net tap and, with fail
// open on a Linux bridge, the fallback veth), which take the port's place
// in the bridge while it is spliced. The command line's exact name wins
// over a pattern.
func (m *Manager) baselineDesiredLocked() map[string]baseline.Limits {
	out := map[string]baseline.Limits{}
	add := func(port string, l baseline.Limits) {
		for _, n := range bridgeSides(port) {
			out[n] = l
		}
	}
	for p := range m.bl.present {
		if i := m.bl.ruleFor(p); i >= 0 {
			add(p, m.bl.parsed[i])
		}
	}
	for p, e := range m.bl.cli {
		add(p, e.limits)
	}
	return out
}

// applyBaselines makes the kernel's baseline equal to the desired set as
// it is when it runs; calls are serialised by blMu, and Apply runs without
// Manager.mu (it is netlink work). Apply diffs against the kernel, so a
// call that changes nothing sends nothing.
func (m *Manager) applyBaselines() error {
	if m.opt.Baseline == nil {
		return nil
	}
	m.blMu.Lock()
	defer m.blMu.Unlock()
	m.mu.Lock()
	desired := m.baselineDesiredLocked()
	m.mu.Unlock()
	if err := m.opt.Baseline.Apply(desired); err != nil {
		m.log.Error("baseline: cannot apply", "err", err)
		return err
	}
	return nil
}

// SetBaseline sets the baseline of the exact port name (which need not
// exist yet: it applies when it appears), replacing a pattern's for that
// port, and persists it.
func (m *Manager) SetBaseline(port string, spec api.BaselineLimits) (api.Baseline, error) {
	if m.opt.Baseline == nil {
		return api.Baseline{}, ErrNoBaseline
	}
	l, err := baseline.ParseLimits(spec)
	if err == nil {
		err = baseline.Validate(map[string]baseline.Limits{port: l})
	}
	if err != nil {
		return api.Baseline{}, usagef("baseline %s: %v", port, err)
	}
	if m.onOVS(port) {
		return api.Baseline{}, usagef("baseline %s: an Open vSwitch port: the baseline is nftables bridge rules, which do not see OVS ports (docs/baseline.md); nothing changed", port)
	}
	m.mu.Lock()
	old, had := m.bl.cli[port]
	m.bl.cli[port] = baselineEntry{spec: spec, limits: l}
	m.mu.Unlock()
	if err := m.applyBaselines(); err != nil {
		m.mu.Lock()
		if had {
			m.bl.cli[port] = old
		} else {
			delete(m.bl.cli, port)
		}
		m.mu.Unlock()
		m.applyBaselines()
		return api.Baseline{}, err
	}
	m.log.Info("baseline set", "port", port, "limits", l.String())
	b := api.Baseline{Port: port, Limits: spec, Origin: api.BaselineFromCLI, Drops: zeroDrops()}
	if err := m.saveBaselines(); err != nil {
		return b, fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	return b, nil
}

// RemoveBaseline removes the command line's baseline of port; a pattern of
// the config that matches it applies again. A port without one is
// ErrNotFound.
func (m *Manager) RemoveBaseline(port string) error {
	if m.opt.Baseline == nil {
		return ErrNoBaseline
	}
	m.mu.Lock()
	old, ok := m.bl.cli[port]
	if !ok {
		why := ""
		if i := m.bl.ruleFor(port); i >= 0 && m.bl.present[port] {
			why = fmt.Sprintf(" (its baseline comes from the config's pattern %q: edit the config)", m.bl.rules[i].Pattern)
		}
		m.mu.Unlock()
		return notFoundf("%s has no baseline set by the command line%s", port, why)
	}
	delete(m.bl.cli, port)
	m.mu.Unlock()
	if err := m.applyBaselines(); err != nil {
		m.mu.Lock()
		if _, again := m.bl.cli[port]; !again {
			m.bl.cli[port] = old
		}
		m.mu.Unlock()
		return err
	}
	m.log.Info("baseline removed", "port", port)
	if err := m.saveBaselines(); err != nil {
		return fmt.Errorf("%w: %v", ErrNotSaved, err)
	}
	return nil
}

// saveBaselines writes the command line's baselines to the state dir.
func (m *Manager) saveBaselines() error {
	if m.opt.StateDir == "" {
		return nil
	}
	m.blSaveMu.Lock()
	defer m.blSaveMu.Unlock()
	m.mu.Lock()
	entries := make([]store.Baseline, 0, len(m.bl.cli))
	for p, e := range m.bl.cli {
		entries = append(entries, store.Baseline{Port: p, Limits: e.spec})
	}
	m.mu.Unlock()
	sort.Slice(entries, func(i, j int) bool { return entries[i].Port < entries[j].Port })
	if err := store.SaveBaselines(m.opt.StateDir, entries, m.host.Now()); err != nil {
		m.health.add(EventStateNotSaved)
		m.log.Error("event: cannot write the baselines file; the baseline is in force, but a restart may not keep it", "event", EventStateNotSaved, "err", err)
		return err
	}
	return nil
}

// RestoreBaselines sets the config's rules (as ConfigureBaselines), reads
// the command line's baselines from the state dir, and applies both at
// once (one Apply, so no port's counters are lost in between): the kernel's table, if the last
// daemon left one, is adopted (Apply changes only the difference). An
// unreadable file or entry is logged and skipped, never fatal.
func (m *Manager) RestoreBaselines(rules []BaselineRule) error {
	if err := m.setBaselineRules(rules); err != nil {
		return err
	}
	if m.opt.Baseline == nil {
		return nil
	}
	if m.opt.StateDir != "" {
		entries, err := store.LoadBaselines(m.opt.StateDir)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			m.log.Error("baselines file unreadable: the command line's baselines are not restored", "err", err)
		default:
			m.mu.Lock()
			for _, e := range entries {
				l, err := baseline.ParseLimits(e.Limits)
				if err == nil {
					err = baseline.Validate(map[string]baseline.Limits{e.Port: l})
				}
				if err != nil {
					m.log.Error("baselines file: entry skipped", "port", e.Port, "err", err)
					continue
				}
				m.bl.cli[e.Port] = baselineEntry{spec: e.Limits, limits: l}
			}
			m.mu.Unlock()
		}
	}
	return m.applyBaselines()
}

// baselinePortEvent updates the set of present ports matching a rule when
// port appears (exists true), changes or goes, and applies if that changed
// the set or if port is named in it: the kernel's index maps follow a named
// port's ifindex (docs/baseline.md, "Design").
func (m *Manager) baselinePortEvent(port string, exists bool) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	changed := len(m.bl.rules) > 0 && m.bl.ruleFor(port) >= 0 && m.bl.present[port] != exists
	if changed {
		if exists {
			m.bl.present[port] = true
		} else {
			delete(m.bl.present, port)
		}
	}
	_, named := m.baselineDesiredLocked()[port]
	m.mu.Unlock()
	if changed || named {
		m.applyBaselines()
	}
}

// resyncBaselines recomputes the present ports from the links that exist.
func (m *Manager) resyncBaselines(names []string) {
	m.mu.Lock()
	if len(m.bl.rules) == 0 {
		m.mu.Unlock()
		return
	}
	present := map[string]bool{}
	for _, n := range names {
		if m.bl.ruleFor(n) >= 0 {
			present[n] = true
		}
	}
	m.bl.present = present
	m.mu.Unlock()
	m.applyBaselines()
}

func zeroDrops() map[string]uint64 {
	d := make(map[string]uint64, len(baseline.Reasons))
	for _, r := range baseline.Reasons {
		d[r.String()] = 0
	}
	return d
}

// BaselineStatus lists every port with a baseline, sorted, with its drops
// (the port's own and those of its splice's bridge side, summed); port
// "" means all. The counters are read from the kernel without Manager.mu.
func (m *Manager) BaselineStatus(port string) ([]api.Baseline, error) {
	out := []api.Baseline{}
	if m.opt.Baseline == nil {
		return out, nil
	}
	m.mu.Lock()
	for p, e := range m.bl.cli {
		out = append(out, api.Baseline{Port: p, Limits: e.spec, Origin: api.BaselineFromCLI})
	}
	for p := range m.bl.present {
		if _, ok := m.bl.cli[p]; ok {
			continue
		}
		if i := m.bl.ruleFor(p); i >= 0 {
			out = append(out, api.Baseline{Port: p, Limits: m.bl.rules[i].Limits, Origin: api.BaselineFromConfig, Pattern: m.bl.rules[i].Pattern})
		}
	}
	m.mu.Unlock()
	if port != "" {
		out = filterBaselines(out, port)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	if len(out) == 0 {
		return out, nil
	}
	stats, err := m.opt.Baseline.Stats()
	for i := range out {
		out[i].Drops = zeroDrops()
		if err != nil {
			continue
		}
		for _, name := range bridgeSides(out[i].Port) {
			for r, c := range stats[name] {
				out[i].Drops[r.String()] += c.Packets
			}
		}
	}
	return out, err
}

func filterBaselines(in []api.Baseline, port string) []api.Baseline {
	out := in[:0]
	for _, b := range in {
		if b.Port == port {
			out = append(out, b)
		}
	}
	return out
}
