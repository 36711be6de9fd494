package detect

import (
	"errors"
	"fmt"
	"math"
)

// ErrInvalidConfig is wrapped by every error from Config.Validate,
// Threshold.Validate, ParseDirection, NewTracker and NewMatcher that rejects a
// setting. The message names the flag or profile key to fix; callers should
// report it to the operator as a usage error, not retry.
var ErrInvalidConfig = errors.New("invalid watch configuration")

// configError is a validation failure whose text names the setting to fix
// and which matches ErrInvalidConfig under errors.Is.
type configError struct{ msg string }

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == ErrInvalidConfig }

func invalid(format string, args ...any) error {
	return &configError{msg: "detect: " + fmt.Sprintf(format, args...)}
}

// Direction says which frames of a port a Threshold looks at. The zero value
// is FromVM.
type Direction uint8

const (
	// FromVM looks at frames sent by the VM: the port's RX counters. It is
	// the default, because a VM taking part in a flood shows there.
	FromVM Direction = iota
	// ToVM looks at frames sent to the VM: the port's TX counters.
	ToVM
	// Either looks at both directions; either one above the threshold counts.
	Either
)

// String returns the profile spelling: "from_vm", "to_vm" or "either".
func (d Direction) String() string {
	switch d {
	case FromVM:
		return "from_vm"
	case ToVM:
		return "to_vm"
	case Either:
		return "either"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// ParseDirection parses the threshold_direction profile key: "from_vm" (or
// "", the default), "to_vm" or "either".
func ParseDirection(s string) (Direction, error) {
	switch s {
	case "", "from_vm":
		return FromVM, nil
	case "to_vm":
		return ToVM, nil
	case "either":
		return Either, nil
	}
	return FromVM, invalid("threshold_direction %q: want from_vm, to_vm or either", s)
}

// MarshalText implements encoding.TextMarshaler with the profile spelling.
func (d Direction) MarshalText() ([]byte, error) {
	if d > Either {
		return nil, invalid("threshold_direction %d: want from_vm, to_vm or either", uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler; see ParseDirection.
func (d *Direction) UnmarshalText(b []byte) error {
	v, err := ParseDirection(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Threshold is the rate above which a port's traffic is suspect: above PPS
// or above BitsPerSecond (either one is enough), in Direction. A dimension
// set to 0 is not checked. The profile keys are threshold_pps,
// threshold_bps (bits per second; the config takes tc syntax such as
// "800mbit") and threshold_direction.
//
// The zero Threshold checks nothing and fails Validate; start from
// DefaultThreshold.
type Threshold struct {
	// PPS is in packets (frames) per second; 0 means no packet threshold.
	PPS float64
	// BitsPerSecond is in bits per second of frame bytes (Ethernet header
	// included, no FCS); 0 means no bit-rate threshold.
	BitsPerSecond float64
	// Direction is which frames are compared; the zero value is FromVM.
	Direction Direction
}

// DefaultThreshold returns the defaults of issue 6: 50000 pps or 800 Mbit/s
// of frames from the VM.
func DefaultThreshold() Threshold {
	return Threshold{PPS: 50000, BitsPerSecond: 800e6, Direction: FromVM}
}

// Validate checks th and returns an error naming the profile key to fix and
// wrapping ErrInvalidConfig, or nil. Rates must be finite and not negative,
// and at least one must be set.
func (th Threshold) Validate() error {
	if err := checkRate("threshold_pps", th.PPS, "packets/s"); err != nil {
		return err
	}
	if err := checkRate("threshold_bps", th.BitsPerSecond, "bits/s"); err != nil {
		return err
	}
	if th.PPS == 0 && th.BitsPerSecond == 0 {
		return invalid("threshold_pps and threshold_bps are both 0: set at least one (defaults %v pps, %v bit/s)",
			DefaultThreshold().PPS, DefaultThreshold().BitsPerSecond)
	}
	if th.Direction > Either {
		return invalid("threshold_direction %d: want from_vm, to_vm or either", uint8(th.Direction))
	}
	return nil
}

func checkRate(key string, v float64, unit string) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return invalid("%s %v is not a rate; use a number of %s, or 0 to not check it", key, v, unit)
	case v < 0:
		return invalid("%s %v is negative; use a number of %s, or 0 to not check it", key, v, unit)
	}
	return nil
}

// Exceeded reports whether a load of pps packets per second and bitsPerSec
// bits per second is above th (strictly above PPS or strictly above
// BitsPerSecond, ignoring a dimension set to 0). Direction is not looked
// at: the caller passes the load of the right direction (see Offered).
func (th Threshold) Exceeded(pps, bitsPerSec float64) bool {
	return (th.PPS > 0 && pps > th.PPS) || (th.BitsPerSecond > 0 && bitsPerSec > th.BitsPerSecond)
}

// Offered returns the load of r that th looks at: r.FromVM's or r.ToVM's
// rates, or for Either the larger of the two in each dimension (so that
// Exceeded is true when either direction is above).
func (th Threshold) Offered(r Rates) (pps, bitsPerSec float64) {
	switch th.Direction {
	case ToVM:
		return r.ToVM.PPS, r.ToVM.BitsPerSec
	case Either:
		return max(r.FromVM.PPS, r.ToVM.PPS), max(r.FromVM.BitsPerSec, r.ToVM.BitsPerSec)
	}
	return r.FromVM.PPS, r.FromVM.BitsPerSec
}

// Above reports whether the load of r in th's direction exceeds th.
func (th Threshold) Above(r Rates) bool {
	return th.Exceeded(th.Offered(r))
}
