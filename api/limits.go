package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/rules"
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

// Rules are rule classes (package rules), in order: the rules in their
// canonical words, one per entry, and the set they compile to. In JSON, the
// list of rules. A nil *Rules is no rule class. Rules are immutable.
type Rules struct {
	set *rules.Set
	// err is why rules read from JSON do not compile; see Err.
	lines []string
	err   error
}

// ParseRules compiles rules, one per line (as --class flags, joined by
// newlines, give them). flag names the flag in errors ("--class").
func ParseRules(text, flag string) (*Rules, error) {
	for i, line := range strings.Split(text, "\n") {
		if _, err := rules.ParseRule(line); err != nil {
			return nil, Usagef("%s (rule %d) %q: %v", flag, i+1, line, err)
		}
	}
	s, err := rules.Parse(text)
	if err != nil {
		return nil, Usagef("%s: %v", flag, err)
	}
	return &Rules{set: s, lines: s.Strings()}, nil
}

// Set is the compiled set; nil for no rules, or rules that do not compile.
func (r *Rules) Set() *rules.Set {
	if r == nil {
		return nil
	}
	return r.set
}

// Lines are the rules in their canonical words, one per entry.
func (r *Rules) Lines() []string {
	if r == nil {
		return nil
	}
	return slices.Clone(r.lines)
}

// Len is the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.lines)
}

// Err is why rules read from JSON do not compile; nil for rules that do
// (ParseRules never returns rules that do not).
func (r *Rules) Err() error {
	if r == nil {
		return nil
	}
	return r.err
}

// MarshalJSON writes the rules as a list of strings.
func (r Rules) MarshalJSON() ([]byte, error) { return json.Marshal(r.lines) }

// UnmarshalJSON reads a list of rules. Rules that do not compile are kept
// with their error (see Err), so that one bad entry of a state file does
// not make the whole file unreadable: Validate refuses them.
func (r *Rules) UnmarshalJSON(b []byte) error {
	var lines []string
	if err := json.Unmarshal(b, &lines); err != nil {
		return err
	}
	r.lines, r.set, r.err = lines, nil, nil
	s, err := rules.Parse(strings.Join(lines, "\n"))
	if err != nil {
		r.err = err
		return nil
	}
	r.set = s
	return nil
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

// LimitFlags names limits by their command-line flag without the leading
// dashes ("pps", "to-vm-bps", "bypass-pps", ...) and gives each its value as
// typed on the command line ("10000", "16mbit", "none"). It is the control
// socket's JSON for limits and a profile's limits:; parse it with
// ParseRequest or ParseLimits.
type LimitFlags map[string]string

// LimitFlagNames lists every per-direction limit flag, both directions,
// and the guard's flags, for the command line.
func LimitFlagNames() []string {
	var out []string
	for _, f := range dirFlags {
		out = append(out, f, "to-vm-"+f)
	}
	return append(out, "guard", "guard-mac", "guard-ip")
}

// dirFlags are the per-direction flags; each has a "to-vm-" twin.
var dirFlags = []string{"pps", "bps", "burst", "burst-bytes", "bypass-pps", "bypass-bps", "control-pps", "mode", "delay", "queue-bytes", "queue-time",
	"syn-pps", "udp-pps", "icmp-bps", "max-frame", "bypass-conn-per-source", "class", "block", "backstop"}

// ParseRequest parses the limits of a quarantine or set request, as the
// command line and the control socket take them. It refuses a zero rate
// (blocking is spelled --block) and accepts "profile".
func ParseRequest(f LimitFlags) (LimitRequest, error) {
	if err := refuseZeroRates(f); err != nil {
		return LimitRequest{}, err
	}
	return parse(f, true)
}

// ParseLimits parses limits that a profile or shaperd itself wrote down (a
// profile's limits:, an intent on the plumbing): a zero rate is a block, and
// no profile is named.
func ParseLimits(f LimitFlags) (LimitRequest, error) { return parse(f, false) }

func parse(f LimitFlags, request bool) (LimitRequest, error) {
	var r LimitRequest
	for _, k := range slices.Sorted(maps.Keys(f)) {
		v := strings.TrimSpace(f[k])
		var err error
		switch k {
		case "profile":
			if !request {
				return LimitRequest{}, Usagef("unknown limit --profile")
			}
			r.Profile = &v
		case "bypass":
			var ports []uint16
			if ports, err = parsePorts(v); err == nil {
				r.Bypass = &ports
			}
		case "fail":
			if v != "open" && v != "closed" {
				return LimitRequest{}, Usagef("--fail %q: want open or closed", v)
			}
			fm := FailMode(v)
			r.Fail = &fm
		case "guard", "bypass-outbound":
			b, perr := strconv.ParseBool(v)
			if perr != nil {
				return LimitRequest{}, Usagef("--%s %q: want true or false", k, v)
			}
			if k == "guard" {
				r.Guard = &b
			} else {
				r.BypassOutbound = &b
			}
		case "guard-mac":
			if _, perr := guard.ParseMACs(v); perr != nil && v != "" {
				return LimitRequest{}, Usagef("%v", perr)
			}
			r.GuardMAC = &v
		case "guard-ip":
			if _, perr := guard.ParseIPs(v); perr != nil && v != "" {
				return LimitRequest{}, Usagef("%v", perr)
			}
			r.GuardIP = &v
		default:
			d, name := &r.FromVM, k
			if rest, ok := strings.CutPrefix(k, "to-vm-"); ok {
				d, name = &r.ToVM, rest
			}
			err = d.parse(name, v, "--"+k)
		}
		if err != nil {
			return LimitRequest{}, err
		}
	}
	return r, nil
}

// parse sets the field of flag name (without "to-vm-") from v; flag is the
// flag as given, for errors.
func (d *DirChange) parse(name, v, flag string) error {
	none := strings.EqualFold(v, "none")
	var err error
	switch name {
	case "pps", "bypass-pps", "control-pps", "syn-pps", "udp-pps":
		dst := map[string]*Opt[float64]{"pps": &d.PPS, "bypass-pps": &d.BypassPPS, "control-pps": &d.ControlPPS,
			"syn-pps": &d.SynPPS, "udp-pps": &d.UDPPPS}[name]
		*dst, err = optPPS(v, none, flag)
	case "bps", "bypass-bps", "icmp-bps":
		dst := map[string]*Opt[units.Rate]{"bps": &d.BPS, "bypass-bps": &d.BypassBPS, "icmp-bps": &d.ICMPBPS}[name]
		*dst, err = optRate(v, none, flag)
	case "burst":
		d.Burst, err = optCount(v, none, flag, "packets, at least 1, or none for the default (10 ms of --pps)")
	case "bypass-conn-per-source":
		d.BypassConnPerSource, err = optCount(v, none, flag, "new connections per source per minute, at least 1, or none")
	case "burst-bytes":
		d.BurstBytes, err = optSize(v, none, flag)
	case "max-frame":
		d.MaxFrame, err = optSize(v, none, flag)
	case "queue-bytes":
		d.QueueBytes, err = optSize(v, none, flag)
	case "delay":
		d.Delay, err = optDuration(v, none, flag)
	case "queue-time":
		d.QueueTime, err = optDuration(v, none, flag)
	case "mode":
		var m Mode
		switch {
		case v == "police" || none:
			m = ModePolice
		case v == "shape":
			m = ModeShape
		default:
			return Usagef("%s %q: want police or shape", flag, v)
		}
		d.Mode = &m
	case "block":
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			return Usagef("%s %q: want true or false", flag, v)
		}
		d.Block = &b
	case "class":
		// One rule per line; several --class flags arrive joined by
		// newlines. none clears them.
		if none || v == "" {
			d.Classes = None[Rules]()
			break
		}
		var rs *Rules
		if rs, err = ParseRules(v, flag); err == nil {
			d.Classes = Opt[Rules]{Set: true, Value: rs}
		}
	case "backstop":
		// none turns the backstop off; auto brings back the default.
		switch {
		case none:
			d.Backstop = &BackstopSetting{Off: true}
		case strings.EqualFold(v, "auto"):
			d.Backstop = &BackstopSetting{}
		default:
			f, perr := strconv.ParseFloat(v, 64)
			if perr != nil || f < 1 || math.IsNaN(f) || math.IsInf(f, 0) {
				return Usagef("%s %q: want a ceiling in packets per second (at least 1), none (no backstop) or auto (the default, from the budgets)", flag, v)
			}
			d.Backstop = &BackstopSetting{PPS: &f}
		}
	default:
		return Usagef("unknown limit --%s", strings.TrimPrefix(flag, "--"))
	}
	return err
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

func optPPS(v string, none bool, flag string) (Opt[float64], error) {
	if none {
		return None[float64](), nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return Opt[float64]{}, Usagef("%s %q: want a number of packets per second, or none", flag, v)
	}
	if f > MaxPPS {
		return Opt[float64]{}, Usagef("%s %q: at most %s packets per second", flag, v, maxPPSText)
	}
	return Some(f), nil
}

func optRate(v string, none bool, flag string) (Opt[units.Rate], error) {
	if none {
		return None[units.Rate](), nil
	}
	r, err := units.ParseRate(v)
	if err != nil {
		return Opt[units.Rate]{}, Usagef("%s: %v", flag, err)
	}
	if r > MaxRate {
		return Opt[units.Rate]{}, Usagef("%s %q: at most 100gbit", flag, v)
	}
	return Some(r), nil
}

// optCount parses a whole-number flag's value, at least 1; "none" clears.
// what completes "want a whole number of ...".
func optCount(v string, none bool, flag, what string) (Opt[int], error) {
	if none {
		return None[int](), nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return Opt[int]{}, Usagef("%s %q: want a whole number of %s", flag, v, what)
	}
	if n > MaxBurst {
		return Opt[int]{}, Usagef("%s %q: at most %d", flag, v, MaxBurst)
	}
	return Some(n), nil
}

// optSize parses a size flag's value; "none" clears.
func optSize(v string, none bool, flag string) (Opt[units.Size], error) {
	if none {
		return None[units.Size](), nil
	}
	z, err := units.ParseSize(v)
	if err != nil {
		return Opt[units.Size]{}, Usagef("%s: %v", flag, err)
	}
	if z > MaxBytes {
		return Opt[units.Size]{}, Usagef("%s %q: at most 1gb", flag, v)
	}
	return Some(z), nil
}

func optDuration(v string, none bool, flag string) (Opt[Duration], error) {
	if none {
		return None[Duration](), nil
	}
	t, err := time.ParseDuration(v)
	if err != nil || t < 0 {
		return Opt[Duration]{}, Usagef("%s %q: want a duration such as 200ms, or none", flag, v)
	}
	return Some(Duration(t)), nil
}

func parsePorts(v string) ([]uint16, error) {
	if v == "" || strings.EqualFold(v, "none") {
		return []uint16{}, nil
	}
	var ports []uint16
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return nil, Usagef("--bypass %q: want TCP port numbers 1-65535 separated by commas, or none", v)
		}
		if slices.Contains(ports, uint16(n)) {
			return nil, Usagef("--bypass %q: port %d given twice", v, n)
		}
		ports = append(ports, uint16(n))
	}
	return ports, nil
}

// refuseZeroRates refuses a request that would block a direction by
// giving it a zero rate: blocking is spelled --block (--to-vm-block).
// Internally a block is a zero packet budget; the profiles' limits and the
// intents on the plumbing keep that spelling.
func refuseZeroRates(f LimitFlags) error {
	for _, pre := range []string{"", "to-vm-"} {
		for _, name := range []string{"pps", "bps"} {
			v, ok := f[pre+name]
			if !ok {
				continue
			}
			zero := false
			if name == "pps" {
				n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				zero = err == nil && n == 0
			} else {
				r, err := units.ParseRate(v)
				zero = err == nil && r == 0
			}
			if zero {
				return Usagef("--%s%s %s would drop everything but the bypass and control classes: say so with --%sblock", pre, name, v, pre)
			}
		}
	}
	return nil
}

// IsZero reports whether o leaves its limit as it is.
func (o Opt[T]) IsZero() bool { return !o.Set }
