package classify

import (
	"errors"
	"fmt"
)

// Class is the verdict of Classify: the traffic class a frame belongs to.
// The zero value is Control. Classes are small integers, so a [NumClasses]T
// array indexed by Class is the natural per-class counter.
type Class uint8

const (
	// Control is ARP and ICMPv6 router/neighbour discovery (types 133-137).
	Control Class = iota
	// Bypass is a frame of a tracked ssh/rdp connection (see Config).
	Bypass
	// TCPSyn is TCP with SYN set and ACK clear.
	TCPSyn
	// TCP is any other TCP frame.
	TCP
	// UDP is UDP over IPv4 or IPv6.
	UDP
	// ICMP is ICMPv4, and ICMPv6 other than types 133-137.
	ICMP
	// Other is anything else well-formed: other ethertypes, other IP
	// protocols, IPv4 and IPv6 non-first fragments.
	Other
	// Malformed is a frame with a truncated or bogus header; Frame.Malformed
	// says which.
	Malformed
	// NumClasses is the number of classes; it is not a class.
	NumClasses
)

var classNames = [NumClasses]string{
	Control:   "control",
	Bypass:    "bypass",
	TCPSyn:    "tcp-syn",
	TCP:       "tcp",
	UDP:       "udp",
	ICMP:      "icmp",
	Other:     "other",
	Malformed: "malformed",
}

// String returns the stable lower-case name of c ("control", "bypass",
// "tcp-syn", "tcp", "udp", "icmp", "other", "malformed"), used as JSON key and
// metric label. It does not allocate; values out of range give "invalid".
func (c Class) String() string {
	if c < NumClasses {
		return classNames[c]
	}
	return "invalid"
}

// ErrUnknownClass is wrapped by ParseClass and UnmarshalText when the name is
// not one of the strings Class.String returns; the caller should report the
// name to whoever configured it.
var ErrUnknownClass = errors.New("unknown class")

// ParseClass returns the Class whose String is s.
func ParseClass(s string) (Class, error) {
	for c, name := range classNames {
		if name == s {
			return Class(c), nil
		}
	}
	return 0, fmt.Errorf("classify: %w %q (want one of control, bypass, tcp-syn, tcp, udp, icmp, other, malformed)", ErrUnknownClass, s)
}

// MarshalText implements encoding.TextMarshaler, so that a Class can be a
// JSON map key.
func (c Class) MarshalText() ([]byte, error) {
	if c >= NumClasses {
		return nil, fmt.Errorf("classify: class %d out of range", uint8(c))
	}
	return []byte(classNames[c]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseClass.
func (c *Class) UnmarshalText(b []byte) error {
	v, err := ParseClass(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// Direction says which way a frame travels relative to the VM. The zero
// value is FromVM.
type Direction uint8

const (
	// FromVM is a frame the VM sent (the flood case).
	FromVM Direction = iota
	// ToVM is a frame destined to the VM.
	ToVM
)

// String returns "from_vm" or "to_vm" ("invalid" out of range); it does not
// allocate.
func (d Direction) String() string {
	switch d {
	case FromVM:
		return "from_vm"
	case ToVM:
		return "to_vm"
	}
	return "invalid"
}
