// Package store reads and writes the daemon's files in its state
// directory: the quarantines (StateFile) and the quota tenants' settings
// (TenantsFile), each checksummed and replaced atomically (package
// statefile). It knows the files' shapes, not what the daemon does with
// them; it holds no lock.
package store

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

// Releasing is a quarantine's state in the state file while its release
// runs; a restart finishes the release.
const Releasing = api.State("releasing")

// StateFile is the name of the daemon's intent file in its state directory.
const StateFile = "state.json"

// The state file holds the daemon's own intent: which ports are
// quarantined, with what, since when, and which are pending. It is small,
// checksummed, and replaced atomically (write, fsync, rename, fsync the
// directory), so a kill -9 at any instant leaves either the old or the new
// file. The switch and the kernel stay the ground truth for what is spliced.
type quarantinesBody struct {
	Version     int          `json:"version"`
	Written     time.Time    `json:"written"`
	Quarantines []Quarantine `json:"quarantines"`
}

// Quarantine is one quarantine as the state file keeps it.
type Quarantine struct {
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

// ErrCorrupt means the state file exists but cannot be trusted; the
// daemon rebuilds from the plumbing.
var ErrCorrupt = errors.New("state file is corrupt")

// ErrNoState means there is no state file (a first start, or it was
// deleted); the daemon rebuilds from the plumbing.
var ErrNoState = errors.New("no state file")

// LoadQuarantines reads the state file in dir. An entry that cannot be right (a
// bad port name, an unknown state, a spec that does not validate, a port
// named twice) is left out and named in bad, port → why; the others are
// kept.
func LoadQuarantines(dir string) (out map[string]Quarantine, bad map[string]string, err error) {
	defer func() {
		if err != nil {
			out, bad = map[string]Quarantine{}, nil
		}
	}()
	out = map[string]Quarantine{}
	var body quarantinesBody
	err = statefile.Read(filepath.Join(dir, StateFile), &body)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return out, nil, ErrNoState
	case errors.Is(err, statefile.ErrCorrupt):
		return out, nil, fmt.Errorf("%w: %s", ErrCorrupt, statefile.Reason(err))
	case err != nil:
		return out, nil, err
	}
	if body.Version != 1 {
		return out, nil, fmt.Errorf("%w: version %d, want 1", ErrCorrupt, body.Version)
	}
	bad = map[string]string{}
	seen := map[string]int{}
	for _, e := range body.Quarantines {
		seen[e.Port]++
	}
	for _, e := range body.Quarantines {
		why := ""
		switch {
		case api.CheckPort(e.Port) != nil:
			why = api.CheckPort(e.Port).Error()
		case seen[e.Port] > 1:
			why = fmt.Sprintf("the port has %d entries", seen[e.Port])
		case e.State != api.StateActive && e.State != api.StatePending && e.State != Releasing:
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

// SaveQuarantines replaces the state file in dir atomically.
func SaveQuarantines(dir string, entries []Quarantine, now time.Time) error {
	slices.SortFunc(entries, func(a, b Quarantine) int { return strings.Compare(a.Port, b.Port) })
	return statefile.Write(filepath.Join(dir, StateFile), quarantinesBody{Version: 1, Written: now.UTC(), Quarantines: entries}, true)
}

// SetAside renames an untrusted state file so it can be inspected later and
// is not read again.
func SetAside(dir string, now time.Time) (string, error) {
	to := filepath.Join(dir, fmt.Sprintf("%s.corrupt-%s", StateFile, now.UTC().Format("20060102T150405Z")))
	return to, os.Rename(filepath.Join(dir, StateFile), to)
}

// TenantsFile is the name of the tenants' settings file in the state
// directory.
const TenantsFile = "tenants.json"

// The tenants file: the tenants' settings, in the command line's words,
// checksummed and replaced atomically like the state file.
type tenantsBody struct {
	Version int       `json:"version"`
	Written time.Time `json:"written"`
	Tenants []Tenant  `json:"tenants"`
}

// Tenant is one quota tenant as the tenants file keeps it: its settings in
// the command line's words.
type Tenant struct {
	Tenant   string            `json:"tenant"`
	Settings map[string]string `json:"settings"`
	Since    time.Time         `json:"since"`
}

// SaveTenants replaces the tenants file in dir atomically.
func SaveTenants(dir string, entries []Tenant, now time.Time) error {
	if entries == nil {
		entries = []Tenant{}
	}
	return statefile.Write(filepath.Join(dir, TenantsFile), tenantsBody{Version: 1, Written: now.UTC(), Tenants: entries}, false)
}

// LoadTenants reads the tenants file in dir: os.ErrNotExist if there is
// none, ErrCorrupt if it cannot be trusted.
func LoadTenants(dir string) ([]Tenant, error) {
	var body tenantsBody
	if err := readVersion1(dir, TenantsFile, &body, &body.Version); err != nil {
		return nil, err
	}
	return body.Tenants, nil
}

// BaselinesFile is the name of the command line's baselines file in the
// state directory.
const BaselinesFile = "baselines.json"

type baselinesBody struct {
	Version   int        `json:"version"`
	Written   time.Time  `json:"written"`
	Baselines []Baseline `json:"baselines"`
}

// Baseline is one baseline set by the command line (shaperd baseline
// PORT), in the command line's words.
type Baseline struct {
	Port   string             `json:"port"`
	Limits api.BaselineLimits `json:"limits"`
}

// SaveBaselines replaces the baselines file in dir atomically.
func SaveBaselines(dir string, entries []Baseline, now time.Time) error {
	if entries == nil {
		entries = []Baseline{}
	}
	return statefile.Write(filepath.Join(dir, BaselinesFile), baselinesBody{Version: 1, Written: now.UTC(), Baselines: entries}, false)
}

// LoadBaselines reads the baselines file in dir: os.ErrNotExist if there
// is none, ErrCorrupt if it cannot be trusted.
func LoadBaselines(dir string) ([]Baseline, error) {
	var body baselinesBody
	if err := readVersion1(dir, BaselinesFile, &body, &body.Version); err != nil {
		return nil, err
	}
	return body.Baselines, nil
}

// PortPoliciesFile is the name of the guards' and isolations' file in the
// state directory.
const PortPoliciesFile = "portpolicies.json"

type portPoliciesBody struct {
	Version  int          `json:"version"`
	Written  time.Time    `json:"written"`
	Policies []PortPolicy `json:"policies"`
}

// PortPolicy is one port's guard and/or isolation (shaperd guard, shaperd
// isolate), in the command line's words, with the addresses a guard
// learned.
type PortPolicy struct {
	Port      string     `json:"port"`
	Guard     *GuardAddr `json:"guard,omitempty"`
	AllowFrom string     `json:"allow_from,omitempty"`
}

// GuardAddr is a guard's addresses and where they were learned (empty:
// given).
type GuardAddr struct {
	MAC         string   `json:"mac"`
	IP          string   `json:"ip"`
	IPv6        string   `json:"ipv6,omitempty"`
	LearnedFrom []string `json:"learned_from,omitempty"`
}

// SavePortPolicies replaces the port policies file in dir atomically.
func SavePortPolicies(dir string, entries []PortPolicy, now time.Time) error {
	if entries == nil {
		entries = []PortPolicy{}
	}
	return statefile.Write(filepath.Join(dir, PortPoliciesFile), portPoliciesBody{Version: 1, Written: now.UTC(), Policies: entries}, false)
}

// LoadPortPolicies reads the port policies file in dir: os.ErrNotExist if
// there is none, ErrCorrupt if it cannot be trusted.
func LoadPortPolicies(dir string) ([]PortPolicy, error) {
	var body portPoliciesBody
	if err := readVersion1(dir, PortPoliciesFile, &body, &body.Version); err != nil {
		return nil, err
	}
	return body.Policies, nil
}

// readVersion1 reads file in dir into body, whose version field is
// version: os.ErrNotExist if there is none, ErrCorrupt if it cannot be
// trusted or is not version 1.
func readVersion1(dir, file string, body any, version *int) error {
	if err := statefile.Read(filepath.Join(dir, file), body); err != nil {
		if errors.Is(err, statefile.ErrCorrupt) {
			return fmt.Errorf("%w: %s: %s", ErrCorrupt, file, statefile.Reason(err))
		}
		return err
	}
	if *version != 1 {
		return fmt.Errorf("%w: %s: version %d, want 1", ErrCorrupt, file, *version)
	}
	return nil
}
