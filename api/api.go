// Package api defines the JSON shapes of shaperd's control socket: the
// requests the command line sends and the status it prints. These names are
// a contract with external tooling: add keys, never rename them.
package api

import "time"

// Version is the control protocol's version, sent in every path.
const Version = "v1"

// LimitRequest names limits by their command-line flag without the leading
// dashes ("pps", "to-vm-bps", "bypass-pps", ...) and gives each its value as
// typed on the command line ("10000", "16mbit", "none"). The daemon parses
// and validates them, so every client gets the same errors.
type LimitRequest map[string]string

// QuarantineRequest asks for a new quarantine of Port.
type QuarantineRequest struct {
	Port   string       `json:"port"`
	Limits LimitRequest `json:"limits"`
	// Pending accepts a port that does not exist yet: the quarantine is
	// applied when it appears.
	Pending bool `json:"pending,omitempty"`
}

// SetRequest changes the named limits of an active quarantine in place.
type SetRequest struct {
	Port   string       `json:"port"`
	Limits LimitRequest `json:"limits"`
}

// ReleaseRequest ends the quarantine of Port.
type ReleaseRequest struct {
	Port string `json:"port,omitempty"`
	// All releases every quarantine; Port must be empty.
	All bool `json:"all,omitempty"`
}

// ReleaseResult lists the ports released.
type ReleaseResult struct {
	Released []string `json:"released"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	// Code is "usage" (exit 2: the request is wrong, nothing changed) or
	// "runtime" (exit 1: the daemon failed to carry out a valid request).
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	CodeUsage   = "usage"
	CodeRuntime = "runtime"
)

// Status is what `shaperd status --json` prints.
type Status struct {
	Daemon      Daemon       `json:"daemon"`
	Quarantines []Quarantine `json:"quarantines"`
	// Flagged are the watched ports above the quarantine profile's
	// threshold that are not quarantined: every flag in --dry-run mode,
	// and flags refused by --max-auto.
	Flagged []Flagged `json:"flagged"`
}

// Flagged is a watched port the watch loop flagged.
type Flagged struct {
	Port  string    `json:"port"`
	Since time.Time `json:"since"` // when it went above the threshold
	PPS   float64   `json:"pps"`   // frames per second, latest interval, in the threshold's direction
	BPS   float64   `json:"bps"`   // bits per second, likewise
}

// Destination is one of the top destinations of a VM's traffic.
type Destination struct {
	Address  string `json:"address"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Packets  uint64 `json:"packets"`
}

// Daemon describes the running daemon.
type Daemon struct {
	PID     int       `json:"pid"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
}

// Quarantine is one quarantined port.
type Quarantine struct {
	Port    string    `json:"port"`
	State   string    `json:"state"`   // "active" or "pending" (the port is missing; applied when it returns)
	Backend string    `json:"backend"` // "tc", "ovs"
	Fail    string    `json:"fail"`    // "open" or "closed": what happens to traffic if the forwarder dies
	Since   time.Time `json:"since"`   // RFC 3339, UTC
	// Expires is when a pending quarantine is dropped if its port has not
	// returned; null when active.
	Expires    *time.Time `json:"expires"`
	Taps       Taps       `json:"taps"`
	Bypass     Bypass     `json:"bypass"`
	Warnings   []string   `json:"warnings"`
	Directions Directions `json:"directions"`
	// Profile is the profile the quarantine was started with; "" for one
	// given limits by hand.
	Profile string `json:"profile"`
	// Origin is who started it: "manual", "watch" (flagged by the watch
	// loop), "alert" (an Alertmanager webhook) or "correlation" (a group's
	// router port, limited toward the router while a member floods).
	Origin string `json:"origin"`
	// Stage is "manual", "stage1", "stage2", "stage3" or "probation".
	Stage string `json:"stage"`
	// NextTransition is when the ladder next decides (RFC 3339); null when
	// nothing is scheduled.
	NextTransition *time.Time `json:"next_transition"`
	// TopDestinations are the top destinations of the VM's traffic by
	// packets, for abuse reports.
	TopDestinations []Destination `json:"top_destinations"`
}

// Taps names the splice's devices.
type Taps struct {
	VM       string `json:"vm"`
	Net      string `json:"net"`
	Priority string `json:"priority"`
}

// Bypass describes the ports kept working.
type Bypass struct {
	Ports    []uint16 `json:"ports"`
	Outbound bool     `json:"outbound"`
}

// Directions holds both directions; from_vm is the flood case.
type Directions struct {
	FromVM Direction `json:"from_vm"`
	ToVM   Direction `json:"to_vm"`
}

// Direction is the policy and counters of one direction.
type Direction struct {
	Limits        Limits                `json:"limits"`
	BypassLimits  Limits                `json:"bypass_limits"`
	ControlLimits Limits                `json:"control_limits"`
	Classes       map[string]ClassStats `json:"classes"`
	ReadErrors    uint64                `json:"read_errors"`
	// Mode is "police" (refused frames are dropped) or "shape" (queued
	// and released at the shaped rate after a delay).
	Mode  string `json:"mode"`
	Queue Queue  `json:"queue"`
}

// Queue is the occupancy of a direction's delay queue (zeros in police mode).
type Queue struct {
	DelayMS     float64 `json:"delay_ms"`
	MaxBytes    int     `json:"max_bytes"`
	MaxTimeMS   float64 `json:"max_time_ms"`
	Frames      int     `json:"frames"`
	Bytes       int     `json:"bytes"`
	OldestAgeMS float64 `json:"oldest_age_ms"`
}

// Limits is a budget; a nil field is no limit in that dimension. Bursts are
// the effective ones (defaults filled in) and are null when their rate is unset.
type Limits struct {
	PPS           *float64 `json:"pps"`
	BitsPerSecond *uint64  `json:"bits_per_second"`
	BurstPackets  *int     `json:"burst_packets"`
	BurstBytes    *int     `json:"burst_bytes"`
}

// ClassStats counts one class in one direction.
type ClassStats struct {
	PassedPackets  uint64            `json:"passed_packets"`
	PassedBytes    uint64            `json:"passed_bytes"`
	DroppedPackets uint64            `json:"dropped_packets"`
	DroppedBytes   uint64            `json:"dropped_bytes"`
	Drops          map[string]uint64 `json:"drops"`
}
