package daemon

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/rules"
	"github.com/shaperd/shaperd/units"
)

// ErrUsage marks an error in a request: nothing was changed, and the caller
// should fix the request (the command line exits 2).
var ErrUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// ErrNotFound means the request names a port that is not quarantined, or a
// tenant that does not exist; nothing changed. See status or quota list.
var ErrNotFound = errors.New("not found")

func notFoundf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotFound, fmt.Sprintf(format, args...))
}

// Defaults of the bypass and control budgets, per direction.
const (
	DefaultBypassPPS  = 2000
	DefaultBypassBPS  = units.Rate(100_000_000) // 100mbit
	DefaultControlPPS = 200
	// ControlBurst is the least burst of the control budget, in packets.
	ControlBurst = 20
)

// DefaultBypassPorts are the TCP ports kept working: ssh and rdp.
var DefaultBypassPorts = []uint16{22, 3389}

// DirSpec is the intent for one direction. A nil field is unset: no limit, or
// for a burst, the default that follows its rate.
type DirSpec struct {
	PPS        *float64    `json:"pps,omitempty"`
	BPS        *units.Rate `json:"bps,omitempty"` // bits per second
	Burst      *int        `json:"burst,omitempty"`
	BurstBytes *units.Size `json:"burst_bytes,omitempty"`

	// Shape mode: queue what the budgets refuse and release it at the
	// shaped rate after Delay. "" is police (drop at once).
	Mode       api.Mode    `json:"mode,omitempty"`
	Delay      *Duration   `json:"delay,omitempty"`
	QueueBytes *units.Size `json:"queue_bytes,omitempty"`
	QueueTime  *Duration   `json:"queue_time,omitempty"`

	BypassPPS  *float64    `json:"bypass_pps,omitempty"`
	BypassBPS  *units.Rate `json:"bypass_bps,omitempty"`
	ControlPPS *float64    `json:"control_pps,omitempty"`

	// Flood classes (issue 7): budgets of the built-in classes, a frame
	// size limit, new bypass connections per source per minute, and rule
	// classes (--class, one rule per entry).
	SynPPS              *float64    `json:"syn_pps,omitempty"`
	UDPPPS              *float64    `json:"udp_pps,omitempty"`
	ICMPBPS             *units.Rate `json:"icmp_bps,omitempty"`
	MaxFrame            *units.Size `json:"max_frame,omitempty"`
	BypassConnPerSource *int        `json:"bypass_conn_per_source,omitempty"`
	Classes             []string    `json:"classes,omitempty"`

	// Backstop (issue 13) sets the kernel backstop's aggregate ceiling,
	// packets per second (--backstop PPS); BackstopOff turns the backstop
	// off (--backstop none). Neither: the default, a function of the
	// budgets (see backstopFor).
	Backstop    *float64 `json:"backstop,omitempty"`
	BackstopOff bool     `json:"backstop_off,omitempty"`
}

// Spec is the operator's intent for one quarantine: what the command line
// asked for, before defaults are resolved into budgets.
type Spec struct {
	FromVM         DirSpec  `json:"from_vm"`
	ToVM           DirSpec  `json:"to_vm"`
	BypassPorts    []uint16 `json:"bypass_ports"`
	BypassOutbound bool     `json:"bypass_outbound"`
	// Fail is "open" or "closed": what happens to the port's traffic if the
	// forwarder dies. "" means the backend's default: open where the
	// backend can fall back in the datapath (OVS), else closed.
	Fail api.FailMode `json:"fail,omitempty"`

	// Profile names the profile the quarantine started with; "" for limits
	// given by hand.
	Profile string `json:"profile,omitempty"`
	// Origin is OriginManual (""), OriginWatch or OriginAlert.
	Origin api.Origin `json:"origin,omitempty"`
	// Stage is the ladder's stage whose limits the spec holds; "" for a
	// quarantine with no ladder ("manual" in status).
	Stage string `json:"stage,omitempty"`

	// Guard turns on the anti-spoofing guard on frames from the VM, with
	// the VM's addresses in GuardMAC and GuardIP (as --guard-mac and
	// --guard-ip take them): given, or found before the splice.
	Guard    bool   `json:"guard,omitempty"`
	GuardMAC string `json:"guard_mac,omitempty"`
	GuardIP  string `json:"guard_ip,omitempty"`
	// GuardLearn lets the daemon find the VM's addresses before the splice
	// (libvirt, the bridge's forwarding table and the neighbour table)
	// when GuardMAC or GuardIP is not given; a profile's guard_learn.
	GuardLearn bool `json:"guard_learn,omitempty"`
}

// NewSpec returns a spec with the default bypass and control budgets and no
// limits.
func NewSpec() Spec {
	s := Spec{BypassPorts: slices.Clone(DefaultBypassPorts)}
	for _, d := range []*DirSpec{&s.FromVM, &s.ToVM} {
		bp, bb, cp := float64(DefaultBypassPPS), DefaultBypassBPS, float64(DefaultControlPPS)
		d.BypassPPS, d.BypassBPS, d.ControlPPS = &bp, &bb, &cp
	}
	return s
}

// limitFlags are the per-direction flags; each has a "to-vm-" twin.
var limitFlags = []string{"pps", "bps", "burst", "burst-bytes", "bypass-pps", "bypass-bps", "control-pps", "mode", "delay", "queue-bytes", "queue-time",
	"syn-pps", "udp-pps", "icmp-bps", "max-frame", "bypass-conn-per-source", "class", "block", "backstop"}

// guardFlags are the guard's flags; the guard watches frames from the VM
// only, so they have no --to-vm- twin.
var guardFlags = []string{"guard", "guard-mac", "guard-ip"}

// aggregateFlags are the flags that make a quarantine manual.
var aggregateFlags = []string{"pps", "bps", "burst", "burst-bytes", "block"}

// LimitFlagNames lists every limit flag, both directions, and the guard's
// flags, for the command line.
func LimitFlagNames() []string {
	var out []string
	for _, f := range limitFlags {
		out = append(out, f, "to-vm-"+f)
	}
	return append(out, guardFlags...)
}

// HasAggregateLimit reports whether req names any aggregate limit in either
// direction.
func HasAggregateLimit(req api.LimitRequest) bool {
	for _, f := range aggregateFlags {
		if _, ok := req[f]; ok {
			return true
		}
		if _, ok := req["to-vm-"+f]; ok {
			return true
		}
	}
	return false
}

// hasLimit reports whether s limits anything beyond the bypass and control
// budgets every quarantine has: an aggregate, a flood class, a frame size,
// rule classes, or the guard.
func (s Spec) hasLimit() bool {
	for _, d := range []DirSpec{s.FromVM, s.ToVM} {
		if d.PPS != nil || d.BPS != nil || d.SynPPS != nil || d.UDPPPS != nil || d.ICMPBPS != nil ||
			d.MaxFrame != nil || d.BypassConnPerSource != nil || len(d.Classes) > 0 {
			return true
		}
	}
	return s.Guard
}

// HasLimitFlag reports whether req names a limit flag of either direction
// or --guard: a quarantine by hand rather than by profile. --backstop is
// not one: it tunes the kernel half of whatever limits are in force.
func HasLimitFlag(req api.LimitRequest) bool {
	for _, f := range LimitFlagNames() {
		if _, ok := req[f]; ok && f != "guard-mac" && f != "guard-ip" && f != "backstop" && f != "to-vm-backstop" {
			return true
		}
	}
	return false
}

// Apply returns s changed by the limits req names. forSet refuses settings
// that cannot change in place. s is not modified.
func (s Spec) Apply(req api.LimitRequest, forSet bool) (Spec, error) {
	out := s
	out.BypassPorts = slices.Clone(s.BypassPorts)
	keys := make([]string, 0, len(req))
	for k := range req {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := strings.TrimSpace(req[k])
		switch k {
		case "bypass":
			if forSet {
				return s, usagef("--bypass cannot change in place: release the port and quarantine it again")
			}
			ports, err := parsePorts(v)
			if err != nil {
				return s, err
			}
			out.BypassPorts = ports
			continue
		case "fail":
			if forSet {
				return s, usagef("--fail cannot change in place: release the port and quarantine it again")
			}
			if v != "open" && v != "closed" {
				return s, usagef("--fail %q: want open or closed", v)
			}
			out.Fail = api.FailMode(v)
			continue
		case "guard", "guard-mac", "guard-ip":
			if forSet {
				return s, usagef("--%s cannot change in place: release the port and quarantine it again", k)
			}
		}
		switch k {
		case "guard":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return s, usagef("--guard %q: want true or false", v)
			}
			out.Guard = b
			continue
		case "guard-mac":
			if _, err := guard.ParseMACs(v); err != nil && v != "" {
				return s, usagef("%v", err)
			}
			out.GuardMAC = v
			continue
		case "guard-ip":
			if _, err := guard.ParseIPs(v); err != nil && v != "" {
				return s, usagef("%v", err)
			}
			out.GuardIP = v
			continue
		case "bypass-outbound":
			if forSet {
				return s, usagef("--bypass-outbound cannot change in place: release the port and quarantine it again")
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return s, usagef("--bypass-outbound %q: want true or false", v)
			}
			out.BypassOutbound = b
			continue
		}
		d, name := &out.FromVM, k
		if rest, ok := strings.CutPrefix(k, "to-vm-"); ok {
			d, name = &out.ToVM, rest
		}
		if err := d.set(name, v, "--"+k); err != nil {
			return s, err
		}
	}
	if err := out.Validate(); err != nil {
		return s, err
	}
	return out, nil
}

func (d *DirSpec) set(name, v, flag string) error {
	none := strings.EqualFold(v, "none")
	switch name {
	case "pps", "bypass-pps", "control-pps", "syn-pps", "udp-pps":
		var p *float64
		if !none {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
				return usagef("%s %q: want a number of packets per second, or none", flag, v)
			}
			if f > MaxPPS {
				return usagef("%s %q: at most %s packets per second", flag, v, maxPPSText)
			}
			p = &f
		}
		switch name {
		case "pps":
			d.PPS = p
		case "bypass-pps":
			d.BypassPPS = p
		case "syn-pps":
			d.SynPPS = p
		case "udp-pps":
			d.UDPPPS = p
		default:
			d.ControlPPS = p
		}
	case "bps", "bypass-bps", "icmp-bps":
		var p *units.Rate
		if !none {
			r, err := units.ParseRate(v)
			if err != nil {
				return usagef("%s: %v", flag, err)
			}
			if r > MaxRate {
				return usagef("%s %q: at most 100gbit", flag, v)
			}
			p = &r
		}
		switch name {
		case "bps":
			d.BPS = p
		case "bypass-bps":
			d.BypassBPS = p
		default:
			d.ICMPBPS = p
		}
	case "backstop":
		// none turns the backstop off; auto brings back the default.
		switch {
		case none:
			d.Backstop, d.BackstopOff = nil, true
		case strings.EqualFold(v, "auto"):
			d.Backstop, d.BackstopOff = nil, false
		default:
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 1 || math.IsNaN(f) || math.IsInf(f, 0) {
				return usagef("%s %q: want a ceiling in packets per second (at least 1), none (no backstop) or auto (the default, from the budgets)", flag, v)
			}
			d.Backstop, d.BackstopOff = &f, false
		}
	case "max-frame":
		p, err := optSize(v, none, flag)
		if err != nil {
			return err
		}
		d.MaxFrame = p
	case "bypass-conn-per-source":
		p, err := optCount(v, none, flag, "new connections per source per minute, at least 1, or none")
		if err != nil {
			return err
		}
		d.BypassConnPerSource = p
	case "class":
		// One rule per line; several --class flags arrive joined by
		// newlines. none clears them.
		if none || v == "" {
			d.Classes = nil
			break
		}
		var lines []string
		for i, line := range strings.Split(v, "\n") {
			c, err := rules.ParseRule(line)
			if err != nil {
				return usagef("%s (rule %d) %q: %v", flag, i+1, line, err)
			}
			lines = append(lines, c.String())
		}
		d.Classes = lines
	case "block":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return usagef("%s %q: want true or false", flag, v)
		}
		if b {
			// A zero packet budget, and no byte budget or queue: only
			// the bypass and control classes pass.
			zero := 0.0
			d.PPS, d.BPS, d.Burst, d.BurstBytes = &zero, nil, nil, nil
			d.Mode, d.Delay, d.QueueBytes, d.QueueTime = "", nil, nil, nil
		}
	case "burst":
		p, err := optCount(v, none, flag, "packets, at least 1, or none for the default (10 ms of --pps)")
		if err != nil {
			return err
		}
		d.Burst = p
	case "burst-bytes":
		p, err := optSize(v, none, flag)
		if err != nil {
			return err
		}
		d.BurstBytes = p
	case "mode":
		if v == "police" || none {
			d.Mode = ""
		} else if v == "shape" {
			d.Mode = api.Mode(v)
		} else {
			return usagef("%s %q: want police or shape", flag, v)
		}
	case "delay", "queue-time":
		var p *Duration
		if !none {
			t, err := time.ParseDuration(v)
			if err != nil || t < 0 {
				return usagef("%s %q: want a duration such as 200ms, or none", flag, v)
			}
			dd := Duration(t)
			p = &dd
		}
		if name == "delay" {
			d.Delay = p
		} else {
			d.QueueTime = p
		}
	case "queue-bytes":
		p, err := optSize(v, none, flag)
		if err != nil {
			return err
		}
		d.QueueBytes = p
	default:
		return usagef("unknown limit --%s", strings.TrimPrefix(flag, "--"))
	}
	return nil
}

func parsePorts(v string) ([]uint16, error) {
	if v == "" || strings.EqualFold(v, "none") {
		return []uint16{}, nil
	}
	var ports []uint16
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return nil, usagef("--bypass %q: want TCP port numbers 1-65535 separated by commas, or none", v)
		}
		if slices.Contains(ports, uint16(n)) {
			return nil, usagef("--bypass %q: port %d given twice", v, n)
		}
		ports = append(ports, uint16(n))
	}
	return ports, nil
}

// Validate checks the whole spec, naming the flag to fix.
func (s Spec) Validate() error {
	for _, x := range []struct {
		d      *DirSpec
		prefix string
	}{{&s.FromVM, "--"}, {&s.ToVM, "--to-vm-"}} {
		d := x.d
		if d.Burst != nil && d.PPS == nil {
			return usagef("%sburst needs %spps: a burst is the depth of a rate's bucket", x.prefix, x.prefix)
		}
		if d.BurstBytes != nil && d.BPS == nil {
			return usagef("%sburst-bytes needs %sbps: a burst is the depth of a rate's bucket", x.prefix, x.prefix)
		}
		if d.BurstBytes != nil && *d.BurstBytes < bucket.MaxFrame {
			return usagef("%sburst-bytes %s is smaller than the largest frame, %d bytes with two VLAN tags; use at least %db",
				x.prefix, d.BurstBytes, bucket.MaxFrame, bucket.MaxFrame)
		}
		if d.BPS != nil && *d.BPS > 0 && *d.BPS < 8 {
			return usagef("%sbps %s is below one byte per second", x.prefix, d.BPS)
		}
		if d.BypassBPS != nil && *d.BypassBPS > 0 && *d.BypassBPS < 8 {
			return usagef("%sbypass-bps %s is below one byte per second", x.prefix, d.BypassBPS)
		}
		if d.Mode == "" && (d.Delay != nil || d.QueueBytes != nil || d.QueueTime != nil) {
			return usagef("%sdelay, %squeue-bytes and %squeue-time need %smode shape", x.prefix, x.prefix, x.prefix, x.prefix)
		}
		if len(d.Classes) > 0 {
			if _, err := rules.Parse(strings.Join(d.Classes, "\n")); err != nil {
				return usagef("%sclass: %v", x.prefix, err)
			}
		}
		pol := d.policy()
		if err := pol.Validate(); err != nil {
			return usagef("%s: %v", strings.TrimSuffix(x.prefix, "-"), err)
		}
	}
	if err := s.classifyConfig().Validate(); err != nil {
		return usagef("%v", err)
	}
	if (s.GuardMAC != "" || s.GuardIP != "") && !s.Guard {
		return usagef("--guard-mac and --guard-ip need --guard")
	}
	if s.Guard && s.GuardMAC != "" && s.GuardIP != "" {
		if _, err := s.guard(); err != nil {
			return usagef("%v", err)
		}
	}
	return nil
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
