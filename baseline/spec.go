package baseline

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
)

// ParseRate reads a rate in the command line's words: "N", "N/s", "N/min",
// "N/h" or "N/day", optionally followed by ":B" for the burst. A bare N is
// per defPer; the burst defaults to N (one period's worth, at most
// MaxBurst). "" is the zero Rate (no limit).
func ParseRate(s string, defPer time.Duration) (Rate, error) {
	if s == "" {
		return Rate{}, nil
	}
	v, burst, hasBurst := strings.Cut(s, ":")
	n, unit, hasUnit := strings.Cut(v, "/")
	per := defPer
	if hasUnit {
		switch unit {
		case "s", "sec":
			per = time.Second
		case "min", "m":
			per = time.Minute
		case "h", "hour":
			per = time.Hour
		case "day", "d":
			per = 24 * time.Hour
		default:
			return Rate{}, fmt.Errorf("%q: unit %q: use /s, /min, /h or /day", s, unit)
		}
	}
	count, err := strconv.ParseUint(n, 10, 64)
	if err != nil || count == 0 {
		return Rate{}, fmt.Errorf("%q: want a count above 0 such as 100 or 10/min (with :BURST optionally)", s)
	}
	r := Rate{Count: count, Per: per}
	if hasBurst {
		b, err := strconv.ParseUint(burst, 10, 32)
		if err != nil || b == 0 {
			return Rate{}, fmt.Errorf("%q: burst %q: want a count above 0", s, burst)
		}
		r.Burst = uint32(min(b, MaxBurst+1)) // validate says what is too big
	} else {
		r.Burst = uint32(min(count, MaxBurst))
	}
	if err := r.validate(""); err != nil {
		return Rate{}, fmt.Errorf("%q%s", s, err.Error())
	}
	return r, nil
}

// FlagError is a ParseLimits error of one setting, named as its flag
// (new-conn-rate; the config's key is the same with '_').
type FlagError struct {
	Flag string
	Err  error
}

func (e *FlagError) Error() string { return "--" + e.Flag + " " + e.Err.Error() }
func (e *FlagError) Unwrap() error { return e.Err }

// ParseLimits maps a port's limits in the command line's words onto Limits:
//
//	new-conn-rate              NewTCPFromVM and NewUDPFromVM (per second)
//	to-vm-new-conn-rate        NewTCPToVM and NewUDPToVM (per second)
//	to-vm-new-conn-per-source  NewPerSourceToVM (per minute)
//	pps, to-vm-pps             PPSFromVM, PPSToVM (per second)
//
// Errors name the flag (with '-'); at least one limit must be set.
func ParseLimits(b api.BaselineLimits) (Limits, error) {
	var l Limits
	for _, f := range []struct {
		flag string
		s    string
		per  time.Duration
		into []*Rate
	}{
		{"new-conn-rate", b.NewConnRate, time.Second, []*Rate{&l.NewTCPFromVM, &l.NewUDPFromVM}},
		{"to-vm-new-conn-rate", b.ToVMNewConnRate, time.Second, []*Rate{&l.NewTCPToVM, &l.NewUDPToVM}},
		{"to-vm-new-conn-per-source", b.ToVMNewConnPerSource, time.Minute, []*Rate{&l.NewPerSourceToVM}},
		{"pps", b.PPS, time.Second, []*Rate{&l.PPSFromVM}},
		{"to-vm-pps", b.ToVMPPS, time.Second, []*Rate{&l.PPSToVM}},
	} {
		r, err := ParseRate(f.s, f.per)
		if err != nil {
			return Limits{}, &FlagError{Flag: f.flag, Err: err}
		}
		for _, p := range f.into {
			*p = r
		}
	}
	if l.IsZero() {
		return Limits{}, fmt.Errorf("no limit given: set at least one of --new-conn-rate, --to-vm-new-conn-rate, --to-vm-new-conn-per-source, --pps, --to-vm-pps")
	}
	return l, l.Validate()
}
