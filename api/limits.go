package api

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/units"
)

// The limits of a quarantine, typed. Three forms meet here:
//
//   - LimitFlags, the outside form: the command line's flag names and values
//     as typed, which the control socket's JSON, a profile's limits: and
//     the intent kept on the plumbing all use.
//   - LimitRequest, what a request or a profile changes, parsed once from
//     LimitFlags by ParseRequest (a request) or ParseLimits (limits shaperd
//     or a profile wrote down) with the errors every client shows.
//   - DirLimits, one direction's limits in force (the state file's
//     from_vm and to_vm); DirLimits.Apply makes a LimitRequest's change.
//
// A new limit is a field of DirLimits and of DirChange, a case of
// DirChange.parse, a line of DirLimits.Apply and one of DirLimits.Flags,
// all in this file; what it does to frames is the daemon's (its policy).

// ErrUsage marks an error in a request: nothing was changed, and the caller
// should fix the request (the command line exits 2).
var ErrUsage = errors.New("usage")

// Usagef returns an ErrUsage error with the message given.
func Usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// The largest limits accepted: anything above is refused (exit 2), not
// taken for "no limit".
const (
	MaxPPS     = 10_000_000          // packets per second, any --*-pps
	MaxRate    = 100_000_000_000     // bits per second (100gbit), any --*-bps
	MaxBurst   = 10_000_000          // packets, --burst
	MaxBytes   = units.Size(1 << 30) // bytes (1gb): --burst-bytes, --queue-bytes, --max-frame
	maxPPSText = "10000000"
)

// Opt is one clearable limit of a request: Set says whether the request
// names it, Value is the value it gives, nil for none (no limit, or for a
// burst the default that follows its rate). The zero value leaves the limit
// as it is.
type Opt[T any] struct {
	Set   bool
	Value *T
}

// Some is an Opt that sets the limit to v.
func Some[T any](v T) Opt[T] { return Opt[T]{Set: true, Value: &v} }

// None is an Opt that clears the limit.
func None[T any]() Opt[T] { return Opt[T]{Set: true} }

// applyTo makes o's change to *dst.
func (o Opt[T]) applyTo(dst **T) {
	if o.Set {
		*dst = o.Value
	}
}

// Duration is a time.Duration that reads and writes as "200ms" in JSON.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	t, err := time.ParseDuration(string(b))
	*d = Duration(t)
	return err
}

// DirLimits are the limits in force in one direction. A nil field is unset:
// no limit, or for a burst, the default that follows its rate. The JSON is
// the state file's (from_vm, to_vm).
type DirLimits struct {
	PPS        *float64    `json:"pps,omitempty"` // packets per second
	BPS        *units.Rate `json:"bps,omitempty"` // bits per second
	Burst      *int        `json:"burst,omitempty"`
	BurstBytes *units.Size `json:"burst_bytes,omitempty"`

	// Shape mode: queue what the budgets refuse and release it at the
	// shaped rate after Delay. "" is police (drop at once).
	Mode       Mode        `json:"mode,omitempty"`
	Delay      *Duration   `json:"delay,omitempty"`
	QueueBytes *units.Size `json:"queue_bytes,omitempty"`
	QueueTime  *Duration   `json:"queue_time,omitempty"`

	BypassPPS  *float64    `json:"bypass_pps,omitempty"`  // packets per second
	BypassBPS  *units.Rate `json:"bypass_bps,omitempty"`  // bits per second
	ControlPPS *float64    `json:"control_pps,omitempty"` // packets per second

	// Flood classes (issue 7): budgets of the built-in classes, a frame
	// size limit, new bypass connections per source per minute, and rule
	// classes (--class).
	SynPPS              *float64    `json:"syn_pps,omitempty"`
	UDPPPS              *float64    `json:"udp_pps,omitempty"`
	ICMPBPS             *units.Rate `json:"icmp_bps,omitempty"`
	MaxFrame            *units.Size `json:"max_frame,omitempty"`
	BypassConnPerSource *int        `json:"bypass_conn_per_source,omitempty"` // per minute
	Classes             *Rules      `json:"classes,omitempty"`

	// Backstop (issue 13) sets the kernel backstop's aggregate ceiling,
	// packets per second (--backstop PPS); BackstopOff turns the backstop
	// off (--backstop none). Neither: the default, a function of the
	// budgets.
	Backstop    *float64 `json:"backstop,omitempty"`
	BackstopOff bool     `json:"backstop_off,omitempty"`
}

// BackstopSetting is --backstop's value: Off (none), a ceiling PPS in
// packets per second, or neither (auto: the default, from the budgets).
type BackstopSetting struct {
	Off bool
	PPS *float64
}

// DirChange is what a request changes in one direction; the zero value
// changes nothing. The flag of each field is its name in the command
// line's words (PPS is --pps, and --to-vm-pps in ToVM).
type DirChange struct {
	PPS        Opt[float64]
	BPS        Opt[units.Rate]
	Burst      Opt[int]
	BurstBytes Opt[units.Size]
	// Block (--block true) drops everything but the bypass and control
	// classes: a zero packet budget, no byte budget, no queue. It is
	// applied before the other fields, which may then set budgets again.
	Block *bool

	Mode       *Mode // police or shape
	Delay      Opt[Duration]
	QueueBytes Opt[units.Size]
	QueueTime  Opt[Duration]

	BypassPPS  Opt[float64]
	BypassBPS  Opt[units.Rate]
	ControlPPS Opt[float64]

	SynPPS              Opt[float64]
	UDPPPS              Opt[float64]
	ICMPBPS             Opt[units.Rate]
	MaxFrame            Opt[units.Size]
	BypassConnPerSource Opt[int]
	Classes             Opt[Rules]

	Backstop *BackstopSetting
}

// IsZero reports whether c changes nothing.
func (c DirChange) IsZero() bool { return c == DirChange{} }

// HasLimit reports whether c names a limit: any field but Backstop, which
// tunes the kernel half of whatever limits are in force.
func (c DirChange) HasLimit() bool {
	c.Backstop = nil
	return !c.IsZero()
}

// AggregateFlags are the aggregate limits, in the command line's words,
// in the order errors name them.
var AggregateFlags = []string{"pps", "bps", "burst", "burst-bytes", "block"}

// NamesAggregate reports whether c names the aggregate limit flag (one of
// AggregateFlags).
func (c DirChange) NamesAggregate(flag string) bool {
	switch flag {
	case "pps":
		return c.PPS.Set
	case "bps":
		return c.BPS.Set
	case "burst":
		return c.Burst.Set
	case "burst-bytes":
		return c.BurstBytes.Set
	case "block":
		return c.Block != nil
	}
	return false
}

// HasAggregate reports whether c names any aggregate limit.
func (c DirChange) HasAggregate() bool {
	return slices.ContainsFunc(AggregateFlags, c.NamesAggregate)
}

// LimitRequest is what a quarantine or set request, a profile's limits or a
// recorded intent changes. A nil pointer or unset Opt leaves a setting as
// it is. Parse one from the command line's words with ParseRequest or
// ParseLimits.
type LimitRequest struct {
	FromVM, ToVM DirChange

	Bypass         *[]uint16 // TCP ports kept working; empty for none
	BypassOutbound *bool
	Fail           *FailMode
	Guard          *bool
	GuardMAC       *string // as --guard-mac takes them
	GuardIP        *string // as --guard-ip takes them
	// Profile names the profile a quarantine starts with ("" is refused).
	// Requests only.
	Profile *string
}

// IsZero reports whether r changes nothing.
func (r LimitRequest) IsZero() bool { return r == LimitRequest{} }

// HasLimit reports whether r names a limit of either direction or --guard:
// a quarantine by hand rather than by profile. --backstop is not one: it
// tunes the kernel half of whatever limits are in force.
func (r LimitRequest) HasLimit() bool {
	return r.FromVM.HasLimit() || r.ToVM.HasLimit() || r.Guard != nil
}

// CheckSet refuses, for a set request, the settings that cannot change in
// place.
func (r LimitRequest) CheckSet() error {
	for _, x := range []struct {
		flag  string
		named bool
	}{
		{"bypass", r.Bypass != nil}, {"bypass-outbound", r.BypassOutbound != nil}, {"fail", r.Fail != nil},
		{"guard", r.Guard != nil}, {"guard-ip", r.GuardIP != nil}, {"guard-mac", r.GuardMAC != nil},
	} {
		if x.named {
			return Usagef("--%s cannot change in place: release the port and quarantine it again", x.flag)
		}
	}
	return nil
}

// Apply returns d with c's changes made.
func (d DirLimits) Apply(c DirChange) DirLimits {
	if c.Block != nil && *c.Block {
		// A zero packet budget, and no byte budget or queue: only the
		// bypass and control classes pass.
		zero := 0.0
		d.PPS, d.BPS, d.Burst, d.BurstBytes = &zero, nil, nil, nil
		d.Mode, d.Delay, d.QueueBytes, d.QueueTime = "", nil, nil, nil
	}
	c.PPS.applyTo(&d.PPS)
	c.BPS.applyTo(&d.BPS)
	c.Burst.applyTo(&d.Burst)
	c.BurstBytes.applyTo(&d.BurstBytes)
	if c.Mode != nil {
		d.Mode = *c.Mode
		if d.Mode == ModePolice {
			d.Mode = ""
		}
	}
	c.Delay.applyTo(&d.Delay)
	c.QueueBytes.applyTo(&d.QueueBytes)
	c.QueueTime.applyTo(&d.QueueTime)
	c.BypassPPS.applyTo(&d.BypassPPS)
	c.BypassBPS.applyTo(&d.BypassBPS)
	c.ControlPPS.applyTo(&d.ControlPPS)
	c.SynPPS.applyTo(&d.SynPPS)
	c.UDPPPS.applyTo(&d.UDPPPS)
	c.ICMPBPS.applyTo(&d.ICMPBPS)
	c.MaxFrame.applyTo(&d.MaxFrame)
	c.BypassConnPerSource.applyTo(&d.BypassConnPerSource)
	c.Classes.applyTo(&d.Classes)
	if c.Backstop != nil {
		d.Backstop, d.BackstopOff = c.Backstop.PPS, c.Backstop.Off
	}
	return d
}

// HasLimit reports whether d limits anything beyond the bypass and control
// budgets every quarantine has: an aggregate, a flood class, a frame size or
// rule classes.
func (d DirLimits) HasLimit() bool {
	return d.PPS != nil || d.BPS != nil || d.SynPPS != nil || d.UDPPPS != nil || d.ICMPBPS != nil ||
		d.MaxFrame != nil || d.BypassConnPerSource != nil || d.Classes.Len() > 0
}

// Flag is one limit in the command line's words: its flag's name without
// the dashes, and its value ("pps", "5000").
type Flag struct {
	Name, Value string
}

// Flags returns d in the command line's words, only what differs from def
// (the limits of a new quarantine), in a fixed order, each name prefixed
// by prefix ("to-vm-" for the direction to the VM). ParseLimits of the
// flags, applied to def, gives d back.
func (d DirLimits) Flags(prefix string, def DirLimits) []Flag {
	var out []Flag
	add := func(k, v string) { out = append(out, Flag{k, v}) }
	g, p := d, prefix
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
	if !eqF(g.BypassPPS, def.BypassPPS) {
		add(p+"bypass-pps", fmtF(g.BypassPPS))
	}
	if !eqR(g.BypassBPS, def.BypassBPS) {
		v := "none"
		if g.BypassBPS != nil {
			v = g.BypassBPS.String()
		}
		add(p+"bypass-bps", v)
	}
	if !eqF(g.ControlPPS, def.ControlPPS) {
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
	if g.Classes.Len() > 0 {
		add(p+"class", strings.Join(g.Classes.Lines(), "\n"))
	}
	return out
}

func fmtF(p *float64) string {
	if p == nil {
		return "none"
	}
	return strconv.FormatFloat(*p, 'g', -1, 64)
}

func eqF(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func eqR[T comparable](a, b *T) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

// IsZero reports whether o leaves its limit as it is.
func (o Opt[T]) IsZero() bool { return !o.Set }
