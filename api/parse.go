package api

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/units"
)

// Parsing limits from the command line's words: the only place that knows
// the flags' names and their errors.

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
	case "pps":
		d.PPS, err = optPPS(v, none, flag)
	case "bypass-pps":
		d.BypassPPS, err = optPPS(v, none, flag)
	case "control-pps":
		d.ControlPPS, err = optPPS(v, none, flag)
	case "syn-pps":
		d.SynPPS, err = optPPS(v, none, flag)
	case "udp-pps":
		d.UDPPPS, err = optPPS(v, none, flag)
	case "bps":
		d.BPS, err = optRate(v, none, flag)
	case "bypass-bps":
		d.BypassBPS, err = optRate(v, none, flag)
	case "icmp-bps":
		d.ICMPBPS, err = optRate(v, none, flag)
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
