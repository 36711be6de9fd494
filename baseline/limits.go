// Package baseline keeps the kernel's baseline rules equal to a desired set
// of per-port limits: new-connection and new-flow rates in both directions,
// a per-source new-connection limit towards the VM, and a packet-rate
// ceiling per direction, enforced by nftables in the bridge family at kernel
// speed, with every drop counted per port and reason.
//
// The design (one table, verdict maps keyed by ifindex and by port name
// into one pair of chains per distinct Limits value, per-element meters in
// dynamic sets) and what it changes on the host are described in
// docs/baseline.md.
package baseline

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Rate is a token-bucket limit in packets (or new connections, or new
// flows) per period: Count per Per, with at most Burst passing back to back.
// The zero Rate means "no limit".
type Rate struct {
	// Count is how many per Per; 0 means no limit.
	Count uint64
	// Per is the period: time.Second, time.Minute, time.Hour or 24h.
	// Zero means time.Second.
	Per time.Duration
	// Burst is the bucket size in packets: at most Burst pass back to back,
	// and in any window of length W at most Burst + Count*W/Per pass.
	// Zero means 5, nftables' own default.
	Burst uint32
}

// DefaultBurst is the burst of a Rate whose Burst is zero (nftables' default).
const DefaultBurst = 5

// MaxBurst bounds Burst: a larger bucket is a misconfiguration (it would let
// a VM send that many packets before any limit applies).
const MaxBurst = 1 << 20

// PerSecond is a Rate of n per second with burst b (0: DefaultBurst).
func PerSecond(n uint64, b uint32) Rate { return Rate{Count: n, Per: time.Second, Burst: b} }

// PerMinute is a Rate of n per minute with burst b (0: DefaultBurst).
func PerMinute(n uint64, b uint32) Rate { return Rate{Count: n, Per: time.Minute, Burst: b} }

// IsZero reports whether r sets no limit.
func (r Rate) IsZero() bool { return r.Count == 0 }

func (r Rate) per() time.Duration {
	if r.Per == 0 {
		return time.Second
	}
	return r.Per
}

func (r Rate) burst() uint32 {
	if r.Burst == 0 {
		return DefaultBurst
	}
	return r.Burst
}

// refill is how long an empty bucket takes to fill up to its burst.
func (r Rate) refill() time.Duration {
	return time.Duration(float64(r.per()) * float64(r.burst()) / float64(r.Count))
}

func (r Rate) String() string {
	if r.IsZero() {
		return "none"
	}
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "min", time.Hour: "h", 24 * time.Hour: "day"}[r.per()]
	return fmt.Sprintf("%d/%s burst %d", r.Count, unit, r.burst())
}

func (r Rate) validate(field string) error {
	if r.IsZero() {
		if r.Burst != 0 || r.Per != 0 {
			return fmt.Errorf("%s: burst or period set without a count; set a count or leave all zero", field)
		}
		return nil
	}
	switch r.per() {
	case time.Second, time.Minute, time.Hour, 24 * time.Hour:
	default:
		return fmt.Errorf("%s: period %v: use 1s, 1m, 1h or 24h", field, r.Per)
	}
	// nft_limit keeps the cost of one packet as period/count nanoseconds:
	// a count above the period in ns would cost 0 ns and the kernel
	// refuses it.
	if r.Count > uint64(r.per()) {
		return fmt.Errorf("%s: %d per %v is more than one per nanosecond", field, r.Count, r.per())
	}
	if r.Burst > MaxBurst {
		return fmt.Errorf("%s: burst %d is above the maximum %d", field, r.Burst, MaxBurst)
	}
	return nil
}

// Limits are one port's baseline limits. "From the VM" is traffic the port
// receives from the guest (the bridge's ingress from that port), "to the
// VM" is traffic the bridge sends out of it. The zero value limits nothing
// (and Apply refuses it: a port with no limits is a mistake in the caller).
//
// A new TCP connection is a TCP segment with SYN set and ACK clear. A new
// UDP flow is a UDP 5-tuple (in either direction, so a reply belongs to the
// flow it answers) not seen on that port within FlowTimeout.
type Limits struct {
	// NewTCPFromVM limits the new TCP connections the VM opens (per VM).
	NewTCPFromVM Rate
	// NewUDPFromVM limits the new UDP flows the VM starts (per VM).
	NewUDPFromVM Rate
	// NewTCPToVM limits new TCP connections towards the VM, all sources
	// together.
	NewTCPToVM Rate
	// NewUDPToVM limits new UDP flows towards the VM, all sources together.
	NewUDPToVM Rate
	// NewPerSourceToVM limits new TCP connections and new UDP flows towards
	// the VM from each remote source address (brute force: 10/min, burst
	// 10). It is checked before NewTCPToVM/NewUDPToVM, so a source over its
	// own limit does not use up the VM's budget for the others.
	NewPerSourceToVM Rate
	// PPSFromVM and PPSToVM are packet-rate ceilings (all frames, any
	// protocol) per direction.
	PPSFromVM Rate
	PPSToVM   Rate
}

// IsZero reports whether l limits nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

func (l Limits) fields() []struct {
	name string
	r    Rate
} {
	return []struct {
		name string
		r    Rate
	}{
		{"new-tcp-from-vm", l.NewTCPFromVM}, {"new-udp-from-vm", l.NewUDPFromVM},
		{"new-tcp-to-vm", l.NewTCPToVM}, {"new-udp-to-vm", l.NewUDPToVM},
		{"new-per-source-to-vm", l.NewPerSourceToVM},
		{"pps-from-vm", l.PPSFromVM}, {"pps-to-vm", l.PPSToVM},
	}
}

// Validate reports the first setting that cannot be installed.
func (l Limits) Validate() error {
	if l.IsZero() {
		return errors.New("no limit set; set at least one or remove the port")
	}
	for _, f := range l.fields() {
		if err := f.r.validate(f.name); err != nil {
			return err
		}
	}
	return nil
}

func (l Limits) String() string {
	s := ""
	for _, f := range l.fields() {
		if !f.r.IsZero() {
			if s != "" {
				s += ", "
			}
			s += f.name + " " + f.r.String()
		}
	}
	return s
}

// profileID names the chains and meters shared by every port with limits
// equal to l: a hash of the normalized limits (defaults filled in), so equal
// limits share one profile and the name alone says what it contains.
func (l Limits) profileID() string {
	h := sha256.New()
	var b [8]byte
	for _, f := range l.fields() {
		r := f.r
		if !r.IsZero() {
			r.Per, r.Burst = r.per(), r.burst()
		}
		binary.BigEndian.PutUint64(b[:], r.Count)
		h.Write(b[:])
		binary.BigEndian.PutUint64(b[:], uint64(r.Per))
		h.Write(b[:])
		binary.BigEndian.PutUint64(b[:], uint64(r.Burst))
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:5])
}

// tracksUDP reports whether the port's UDP flows must be tracked: any new-
// flow limit in either direction (a reply must be known as part of the flow
// it answers).
func (l Limits) tracksUDP() bool {
	return !l.NewUDPFromVM.IsZero() || !l.NewUDPToVM.IsZero() || !l.NewPerSourceToVM.IsZero()
}

// Reason is why the baseline dropped a frame. The values are stable: they
// are stored in the kernel's counter set.
type Reason uint32

const (
	ReasonPPSFromVM     Reason = 1 // over PPSFromVM
	ReasonPPSToVM       Reason = 2 // over PPSToVM
	ReasonNewTCPFromVM  Reason = 3 // over NewTCPFromVM
	ReasonNewTCPToVM    Reason = 4 // over NewTCPToVM
	ReasonNewUDPFromVM  Reason = 5 // over NewUDPFromVM
	ReasonNewUDPToVM    Reason = 6 // over NewUDPToVM
	ReasonPerSourceToVM Reason = 7 // over NewPerSourceToVM
)

// Reasons lists every reason, in a stable order (for metrics that start
// every series at 0).
var Reasons = []Reason{ReasonPPSFromVM, ReasonPPSToVM, ReasonNewTCPFromVM, ReasonNewTCPToVM, ReasonNewUDPFromVM, ReasonNewUDPToVM, ReasonPerSourceToVM}

func (r Reason) String() string {
	switch r {
	case ReasonPPSFromVM:
		return "pps_from_vm"
	case ReasonPPSToVM:
		return "pps_to_vm"
	case ReasonNewTCPFromVM:
		return "new_tcp_from_vm"
	case ReasonNewTCPToVM:
		return "new_tcp_to_vm"
	case ReasonNewUDPFromVM:
		return "new_udp_from_vm"
	case ReasonNewUDPToVM:
		return "new_udp_to_vm"
	case ReasonPerSourceToVM:
		return "per_source_to_vm"
	}
	return fmt.Sprintf("reason(%d)", uint32(r))
}
