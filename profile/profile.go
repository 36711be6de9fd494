// Package profile turns the profiles of shaperd's config file into what the
// daemon runs: the threshold that flags a port, the limits a quarantine
// starts with, and the escalation ladder that changes them over time.
//
// A profile's keys, all optional (the defaults are issue 6's and seed 001's):
//
//	threshold_pps: 50000          # flag above 50000 pps ...
//	threshold_bps: 800mbit        # ... or above 800 Mbit/s (tc units)
//	threshold_direction: from_vm  # from_vm, to_vm or either
//	ladder: true                  # false: fixed limits, no escalation
//	mode: shape                   # the ladder's mode: shape or police
//	delay: 200ms                  # stage 1's delay queue (shape mode)
//	target_pps: 10000             # stage 1's packet budget
//	stage2_factor: 0.25           # stage 2's share of stage 1's budgets
//	stage2_delay_factor: 2        # stage 2's delay, as a multiple of delay
//	stage1_duration: 5m
//	stage2_duration: 5m
//	saturation_share: 0.5         # share of a period above budget to escalate
//	clear_after: 10m              # calm needed to step down
//	on_block: [/usr/local/sbin/vm-stop]  # run with the port appended, at stage 3
//	limits:                       # any quarantine flag, as on the command line
//	  to-vm-pps: 20000
//	correlate: true               # limit the tenant's router port too (groups)
//	guard: true                   # anti-spoofing guard (default true in quarantine)
//	guard_learn: true             # may find the VM's addresses in the bridge (default true)
//	classes:                      # traffic classes, in order (package rules)
//	  - "ssh-brute: tcp dport 22 syn per src pps 5"
//
// The ladder's limits apply to the threshold's direction (both for either);
// limits names everything else, and with ladder: false, everything.
package profile

import (
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/rules"
	"github.com/shaperd/shaperd/units"
)

// Quarantine is the name of the profile that automatic quarantines and
// alerts use, and `quarantine PORT` without limit flags.
const Quarantine = "quarantine"

// Raw is a profile as the config file writes it.
type Raw struct {
	ThresholdPPS       *float64          `yaml:"threshold_pps"`
	ThresholdBPS       string            `yaml:"threshold_bps"`
	ThresholdDirection string            `yaml:"threshold_direction"`
	Ladder             *bool             `yaml:"ladder"`
	Mode               string            `yaml:"mode"`
	Delay              string            `yaml:"delay"`
	TargetPPS          *float64          `yaml:"target_pps"`
	Stage2Factor       *float64          `yaml:"stage2_factor"`
	Stage2DelayFactor  *float64          `yaml:"stage2_delay_factor"`
	Stage1Duration     string            `yaml:"stage1_duration"`
	Stage2Duration     string            `yaml:"stage2_duration"`
	SaturationShare    *float64          `yaml:"saturation_share"`
	ClearAfter         string            `yaml:"clear_after"`
	OnBlock            []string          `yaml:"on_block"`
	Limits             map[string]string `yaml:"limits"`
	Correlate          bool              `yaml:"correlate"`
	Guard              *bool             `yaml:"guard"`
	GuardLearn         *bool             `yaml:"guard_learn"`
	Classes            []string          `yaml:"classes"`
}

// Profile is a validated profile.
type Profile struct {
	Name string
	// Threshold flags a port (the watch loop, for the quarantine profile)
	// and tells calm from not (the ladder's probation).
	Threshold detect.Threshold
	// UseLadder is false for a profile of fixed limits.
	UseLadder bool
	// Ladder configures the escalation; its Threshold is Threshold.
	Ladder ladder.Config
	// Shape is the ladder's mode: true for shape, false for police.
	Shape bool
	// OnBlock is the command run, with the port appended, when the ladder
	// reaches stage 3; empty for none.
	OnBlock []string
	// Limits are applied when the quarantine starts, before the ladder's
	// own limits (the config writes them as quarantine flags, see
	// api.ParseLimits).
	Limits api.LimitRequest
	// Correlate limits traffic to the group's router port when a member of
	// the group is flagged and the flood shows on the router port too.
	Correlate bool
	// GuardLearn lets a quarantine with this profile find the VM's
	// addresses for the guard in the bridge's and neighbour tables before
	// the splice. (guard: true sets Limits.Guard.)
	GuardLearn bool
}

// Default returns the built-in quarantine profile: the numbers of seed 001
// in shape mode.
func Default() Profile {
	cfg := ladder.DefaultConfig()
	return Profile{Name: Quarantine, Threshold: cfg.Threshold, UseLadder: true, Ladder: cfg, Shape: true,
		Limits: api.LimitRequest{Guard: yes()}, GuardLearn: true}
}

func yes() *bool { b := true; return &b }

// limitsError is err, an error of api.ParseLimits or api.ParseRules, as an
// error of the key profiles.NAME.limits.
func limitsError(name string, err error) error {
	return fmt.Errorf("profiles.%s.limits: %s", name, strings.TrimPrefix(err.Error(), api.ErrUsage.Error()+": "))
}

// Build validates r and returns the profile called name. Errors name the key
// as profiles.NAME.KEY.
func (r Raw) Build(name string) (Profile, error) {
	p := Default()
	p.Name = name
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("profiles.%s.%s: %s", name, key, fmt.Sprintf(format, args...))
	}
	if r.ThresholdPPS != nil {
		p.Threshold.PPS = *r.ThresholdPPS
	}
	if r.ThresholdBPS != "" {
		if strings.EqualFold(r.ThresholdBPS, "none") || r.ThresholdBPS == "0" {
			p.Threshold.BitsPerSecond = 0
		} else {
			v, err := units.ParseRate(r.ThresholdBPS)
			if err != nil {
				return p, bad("threshold_bps", "%v", err)
			}
			p.Threshold.BitsPerSecond = float64(v)
		}
	}
	if r.ThresholdDirection != "" {
		d, err := detect.ParseDirection(r.ThresholdDirection)
		if err != nil {
			return p, bad("threshold_direction", "%q: want from_vm, to_vm or either", r.ThresholdDirection)
		}
		p.Threshold.Direction = d
	}
	if r.Ladder != nil {
		p.UseLadder = *r.Ladder
	}
	switch r.Mode {
	case "", "shape":
	case "police":
		p.Shape = false
	default:
		return p, bad("mode", "%q: want shape or police", r.Mode)
	}
	dur := func(key, v string, dst *time.Duration, zeroOK bool) error {
		if v == "" {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || (d == 0 && !zeroOK) {
			return bad(key, "%q: want a positive duration such as 5m", v)
		}
		*dst = d
		return nil
	}
	c := &p.Ladder
	for _, x := range []struct {
		key    string
		v      string
		dst    *time.Duration
		zeroOK bool
	}{
		{"delay", r.Delay, &c.Delay1, true},
		{"stage1_duration", r.Stage1Duration, &c.Stage1Duration, false},
		{"stage2_duration", r.Stage2Duration, &c.Stage2Duration, false},
		{"clear_after", r.ClearAfter, &c.ClearAfter, false},
	} {
		if err := dur(x.key, x.v, x.dst, x.zeroOK); err != nil {
			return p, err
		}
	}
	if r.TargetPPS != nil {
		c.TargetPPS = *r.TargetPPS
	}
	if r.Stage2Factor != nil {
		c.Stage2Factor = *r.Stage2Factor
	}
	if r.Stage2DelayFactor != nil {
		c.DelayFactor2 = *r.Stage2DelayFactor
	}
	if r.SaturationShare != nil {
		c.SaturationShare = *r.SaturationShare
	}
	c.Threshold = p.Threshold
	if err := c.Validate(); err != nil {
		// The ladder's errors name the key already.
		return p, fmt.Errorf("profiles.%s: %s", name, strings.TrimPrefix(err.Error(), "ladder: "))
	}
	if len(r.OnBlock) > 0 {
		if _, err := exec.LookPath(r.OnBlock[0]); err != nil {
			return p, bad("on_block", "%q: %v", r.OnBlock[0], err)
		}
		p.OnBlock = slices.Clone(r.OnBlock)
	}
	guardOn := p.Limits.Guard != nil && *p.Limits.Guard
	lim, err := api.ParseLimits(r.Limits)
	if err != nil {
		return p, limitsError(name, err)
	}
	p.Limits = lim
	if r.Guard != nil {
		guardOn = *r.Guard
	}
	if p.Limits.Guard == nil && guardOn {
		p.Limits.Guard = yes()
	}
	if r.GuardLearn != nil {
		p.GuardLearn = *r.GuardLearn
	}
	if len(r.Classes) > 0 {
		for i, c := range r.Classes {
			if _, err := rules.ParseRule(c); err != nil {
				return p, bad(fmt.Sprintf("classes[%d]", i), "%q: %v", c, err)
			}
		}
		rs, err := api.ParseRules(strings.Join(r.Classes, "\n"), "--class")
		if err != nil {
			return p, limitsError(name, err)
		}
		p.Limits.FromVM.Classes = api.Opt[api.Rules]{Set: true, Value: rs}
	}
	named := p.Limits
	named.Guard = nil
	if !p.UseLadder && named.IsZero() {
		return p, bad("limits", "a profile with ladder: false needs limits (for example pps: 10000)")
	}
	p.Correlate = r.Correlate
	return p, nil
}

// Set is the profiles of a config file, by name; it always holds the
// quarantine profile (the built-in one unless the file defines its own).
type Set map[string]Profile

// BuildSet validates every profile of raw. The first error is returned, and
// no Set.
func BuildSet(raw map[string]Raw) (Set, error) {
	out := Set{Quarantine: Default()}
	names := slices.Sorted(maps.Keys(raw))
	var errs []error
	for _, n := range names {
		if err := checkName(n); err != nil {
			errs = append(errs, err)
			continue
		}
		p, err := raw[n].Build(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[n] = p
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func checkName(n string) error {
	if n == "" || len(n) > 64 {
		return fmt.Errorf("profiles: name %q: want 1 to 64 characters", n)
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("profiles: name %q: use letters, digits, '-', '_' and '.'", n)
		}
	}
	return nil
}
