// Package api defines the JSON shapes of shaperd's control socket: the
// requests the command line sends and the status it prints. These names are
// a contract with external tooling: add keys, never rename them.
package api

import "time"

// Version is the control protocol's version, sent in every path.
const Version = "v1"

// QuarantineRequest asks for a new quarantine of Port.
type QuarantineRequest struct {
	Port string `json:"port"`
	// Limits are in the command line's words; the daemon parses them with
	// ParseRequest, so every client gets the same errors.
	Limits LimitFlags `json:"limits"`
	// Pending accepts a port that does not exist yet: the quarantine is
	// applied when it appears.
	Pending bool `json:"pending,omitempty"`
}

// SetRequest changes the named limits of an active quarantine in place.
type SetRequest struct {
	Port   string     `json:"port"`
	Limits LimitFlags `json:"limits"`
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
	// Warnings are what the caller should know although the release
	// succeeded (the state file could not be written).
	Warnings []string `json:"warnings,omitempty"`
	// Kept lists, for release --all, the ports that stay spliced for
	// their quota tenant, port → tenant (quota remove releases them).
	Kept map[string]string `json:"kept,omitempty"`
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
	CodeUsage    = "usage"
	CodeRuntime  = "runtime"
	CodeNotFound = "not_found" // the port is not quarantined, the tenant does not exist
)

// Status is what `shaperd status --json` prints.
type Status struct {
	Daemon      Daemon       `json:"daemon"`
	Quarantines []Quarantine `json:"quarantines"`
	// Flagged are the watched ports above the quarantine profile's
	// threshold that are not quarantined: every flag in --dry-run mode,
	// and flags refused by --max-auto.
	Flagged []Flagged `json:"flagged"`
	// Quotas are the percentile-quota tenants, sorted by name. Their
	// ports are not listed under quarantines unless they are quarantined
	// too.
	Quotas []QuotaStatus `json:"quotas"`
	// Baselines are the ports with kernel baseline limits, sorted by port.
	Baselines []Baseline `json:"baselines"`
	// Guards are the ports with a kernel port guard (shaperd guard),
	// Isolations those with a one-way isolation (shaperd isolate), sorted
	// by port.
	Guards     []Guard     `json:"guards"`
	Isolations []Isolation `json:"isolations"`
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
	PID     int    `json:"pid"`
	Version string `json:"version"`
	// Commit is the commit shaperd was built from; GoVersion the Go
	// that built it.
	Commit    string    `json:"commit"`
	GoVersion string    `json:"go_version"`
	Started   time.Time `json:"started"`
	// Now is the daemon's clock when it took the snapshot; the counters
	// were read within microseconds of it. To compute a rate from two
	// snapshots, divide by the difference of their Now, not by the
	// caller's clock: on a loaded host the request itself may take
	// seconds.
	Now time.Time `json:"now"`
	// StateNotSaved says, when not empty, that the daemon cannot write its
	// state file (a full or read-only state directory): since when, and
	// why. Quarantines stay in force, but a restart may not keep the
	// latest changes. Empty again once a write succeeds (tried every
	// tick).
	StateNotSaved string `json:"state_not_saved,omitempty"`
}

// State is a quarantine's state.
type State string

const (
	StateActive  State = "active"
	StatePending State = "pending" // the port is missing; applied when it returns
)

// Origin is who started a quarantine.
type Origin string

const (
	OriginManual      Origin = "manual"      // the command line or the control API
	OriginWatch       Origin = "watch"       // flagged by the watch loop
	OriginAlert       Origin = "alert"       // an Alertmanager webhook
	OriginCorrelation Origin = "correlation" // a group's router port, limited toward the router
)

// FailMode is what happens to a spliced port's traffic when its forwarder
// or the daemon dies.
type FailMode string

const (
	FailOpen   FailMode = "open"   // the direct way, in the kernel
	FailClosed FailMode = "closed" // dropped
)

// Mode is what a direction does with a frame its budgets refuse.
type Mode string

const (
	ModePolice Mode = "police" // dropped
	ModeShape  Mode = "shape"  // queued, released at the shaped rate after a delay
)

// Stage is where a quarantine is on its escalation ladder (package ladder
// names the same rungs).
type Stage string

const (
	StageManual    Stage = "manual"    // no ladder: limits set by hand, or a profile without one
	Stage1         Stage = "stage1"    // shaped to the profile's target
	Stage2         Stage = "stage2"    // a share of stage 1's budgets
	Stage3         Stage = "stage3"    // blocked but for the bypass and control classes
	StageProbation Stage = "probation" // a lower rung's limits while traffic stays calm
)

// Quarantine is one quarantined port.
type Quarantine struct {
	Port    string    `json:"port"`
	State   State     `json:"state"`   // "active" or "pending" (the port is missing; applied when it returns)
	Backend string    `json:"backend"` // "tc", "ovs"
	Fail    FailMode  `json:"fail"`    // "open" or "closed": what happens to traffic if the forwarder dies
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
	Origin Origin `json:"origin"`
	// Stage is "manual", "stage1", "stage2", "stage3" or "probation".
	Stage Stage `json:"stage"`
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
	Panics        uint64                `json:"panics"` // panics contained in this direction's forwarding (the forwarder then stops)
	// TapDrops counts the frames the kernel dropped at the splice's tap
	// queue before the forwarder read them: the taps' tx_dropped, since
	// the taps were made. Under a flood faster than the forwarder reads,
	// that is most of the flood. They are in no class: the forwarder never
	// saw them.
	TapDrops uint64 `json:"tap_drops"`
	// KernelDrops counts the frames the splice's kernel half (its BPF
	// program) dropped before any tap, by reason: "backstop" (the
	// direction's aggregate ceiling), "class_backstop" (a class's own
	// ceiling) and "fail_closed" (the daemon gone or its heartbeat stale,
	// with --fail closed). The forwarder never saw them. Empty when the
	// splice has no kernel half.
	KernelDrops map[string]uint64 `json:"kernel_drops"`
	// KernelPassed counts the frames the kernel half let through, by
	// where: "main" (the VM tap from the VM, the net tap's queue to it),
	// "priority" (bypass and control candidates, never charged), and
	// "fail_open" (sent the direct way with the daemon gone or stale).
	KernelPassed map[string]uint64 `json:"kernel_passed"`
	// Backstop is the kernel pre-policer's ceilings in force; null when
	// it is off or nothing is limited.
	Backstop *Backstop `json:"backstop"`
	// Mode is "police" (refused frames are dropped) or "shape" (queued
	// and released at the shaped rate after a delay).
	Mode  Mode  `json:"mode"`
	Queue Queue `json:"queue"`
}

// Backstop is a direction's kernel pre-policer: an aggregate ceiling and
// class ceilings, in packets per second with a burst in packets.
type Backstop struct {
	PPS     *float64           `json:"pps"`   // the aggregate ceiling; null for none
	Burst   *float64           `json:"burst"` // its burst, packets
	Classes map[string]float64 `json:"classes"`
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

// QuotaAddRequest adds a percentile-quota tenant. Settings name the tenant's
// settings by their command-line flag without the dashes ("ports",
// "commit", "interval", "period", "percentile", "direction", "soft",
// "exponent", "burst-ceiling", "bypass-reserve", "burst-reserve") with the
// values as typed ("vm-1,vm-2", "100mbit", "5m", "month", "95", "max",
// "75%", "1", "none", "1%", "auto"); the daemon parses and validates them.
type QuotaAddRequest struct {
	Tenant   string            `json:"tenant"`
	Settings map[string]string `json:"settings"`
}

// QuotaRemoveRequest removes a tenant.
type QuotaRemoveRequest struct {
	Tenant string `json:"tenant"`
}

// QuotaRemoveResult names the tenant removed.
type QuotaRemoveResult struct {
	Removed string `json:"removed"`
}

// QuotaReport is a tenant's billing period so far, as `shaperd quota report
// --json` prints it. Rates are in bits per second. These seven keys are the
// whole report.
type QuotaReport struct {
	Tenant    string `json:"tenant"`
	CommitBPS uint64 `json:"commit_bps"`
	// PercentileBPS is the billed percentile of the period so far, the
	// intervals not closed yet counting as zero.
	PercentileBPS uint64 `json:"percentile_bps"`
	// BurstIntervalsUsed counts the period's intervals above the commit
	// (the open one included once it is); BurstIntervalsLeft is the free
	// intervals less those (negative: the bill is above the commit).
	BurstIntervalsUsed int `json:"burst_intervals_used"`
	BurstIntervalsLeft int `json:"burst_intervals_left"`
	// ProjectedBPS is the bill at the end of the period if the rest of it
	// repeats the closed samples so far under the burst policy.
	ProjectedBPS uint64 `json:"projected_bps"`
	// Samples are the period's closed intervals, in order.
	Samples []QuotaSample `json:"samples"`
}

// QuotaSample is one closed interval: its start (RFC 3339, UTC) and its
// average rate in bits per second.
type QuotaSample struct {
	Start time.Time `json:"start"`
	BPS   uint64    `json:"bps"`
}

// QuotaStatus is one tenant in `status --json`: the keys of its report,
// plus its ports.
type QuotaStatus struct {
	QuotaReport
	Ports []QuotaPort `json:"ports"`
}

// Quota port states.
const (
	// QuotaPortSpliced: shaperd spliced the port for the tenant; its
	// forwarder enforces the quota.
	QuotaPortSpliced = "spliced"
	// QuotaPortQuarantined: the port is quarantined too; the quarantine's
	// forwarder enforces its limits, then the quota.
	QuotaPortQuarantined = "quarantined"
	// QuotaPortWaiting: the port is missing or cannot be spliced yet (or
	// its quarantine is pending), so its traffic is not metered; shaperd
	// retries when the port appears, and every few seconds.
	QuotaPortWaiting = "waiting"
)

// QuotaPort is one port of a tenant.
type QuotaPort struct {
	Port  string `json:"port"`
	State string `json:"state"`
}

// QuotaTenant is one tenant as `shaperd quota list --json` prints it: its
// settings (every one, in the command line's words), ports, billing period
// and the headline figures of its report.
type QuotaTenant struct {
	Tenant      string            `json:"tenant"`
	Settings    map[string]string `json:"settings"`
	Ports       []QuotaPort       `json:"ports"`
	Since       time.Time         `json:"since"`
	PeriodStart time.Time         `json:"period_start"`
	PeriodEnd   time.Time         `json:"period_end"`

	CommitBPS          uint64 `json:"commit_bps"`
	PercentileBPS      uint64 `json:"percentile_bps"`
	ProjectedBPS       uint64 `json:"projected_bps"`
	BurstIntervalsUsed int    `json:"burst_intervals_used"`
	BurstIntervalsLeft int    `json:"burst_intervals_left"`
}

// QuotaList is every tenant, sorted by name.
type QuotaList struct {
	Tenants []QuotaTenant `json:"tenants"`
}

// BaselineLimits are a port's baseline limits in the command line's words
// (the config's keys are the same with '_' for '-'). Each is a count with
// an optional unit and burst: "100", "100/s", "10/min", "10/min:5". A bare
// count is per second, except ToVMNewConnPerSource's, per minute. The
// burst defaults to the count (one period's worth). Empty: no limit.
type BaselineLimits struct {
	// NewConnRate limits the new TCP connections and new UDP flows the VM
	// opens (each counted against its own bucket).
	NewConnRate string `json:"new_conn_rate,omitempty" yaml:"new_conn_rate"`
	// ToVMNewConnRate limits new TCP connections and new UDP flows towards
	// the VM, all sources together.
	ToVMNewConnRate string `json:"to_vm_new_conn_rate,omitempty" yaml:"to_vm_new_conn_rate"`
	// ToVMNewConnPerSource limits them per remote source address.
	ToVMNewConnPerSource string `json:"to_vm_new_conn_per_source,omitempty" yaml:"to_vm_new_conn_per_source"`
	// PPS and ToVMPPS are packet-rate ceilings from and to the VM.
	PPS     string `json:"pps,omitempty" yaml:"pps"`
	ToVMPPS string `json:"to_vm_pps,omitempty" yaml:"to_vm_pps"`
}

// BaselineRequest sets (or, with Remove, removes) the baseline of one
// exact port name.
type BaselineRequest struct {
	Port   string         `json:"port"`
	Limits BaselineLimits `json:"limits"`
	Remove bool           `json:"remove,omitempty"`
}

// Baseline origins.
const (
	BaselineFromConfig = "config"
	BaselineFromCLI    = "cli"
)

// Baseline is one port's kernel baseline as status reports it.
type Baseline struct {
	Port   string         `json:"port"`
	Limits BaselineLimits `json:"limits"`
	// Origin is "config" (a baselines: pattern, named in Pattern) or
	// "cli" (shaperd baseline PORT).
	Origin  string `json:"origin"`
	Pattern string `json:"pattern,omitempty"`
	// Drops are the frames dropped, by reason (every reason, 0 included),
	// counted on the port and, while it is quarantined, on its splice's
	// net tap.
	Drops map[string]uint64 `json:"drops"`
	// Warnings, in an answer to a change: it is in force, but see why.
	Warnings []string `json:"warnings,omitempty"`
}

// BaselineRemoved answers a baseline removal.
type BaselineRemoved struct {
	Port     string   `json:"port"`
	Warnings []string `json:"warnings,omitempty"`
}

// GuardRequest sets (or, with Remove, removes) the kernel port guard of one
// port, in the command line's words: MAC and IP empty mean "learn them".
type GuardRequest struct {
	Port   string `json:"port"`
	MAC    string `json:"mac,omitempty"`
	IP     string `json:"ip,omitempty"`
	IPv6   string `json:"ipv6,omitempty"`
	Remove bool   `json:"remove,omitempty"`
}

// Guard is one port's kernel port guard as status reports it.
type Guard struct {
	Port string `json:"port"`
	MAC  string `json:"mac"`
	IP   string `json:"ip"` // IPv4 addresses, comma-separated
	IPv6 string `json:"ipv6,omitempty"`
	// LearnedFrom says where the addresses came from when they were not
	// given (libvirt, the bridge's tables); empty when given.
	LearnedFrom []string `json:"learned_from,omitempty"`
	// Drops are the frames dropped, by reason (every reason, 0 included).
	Drops    map[string]uint64 `json:"drops"`
	Warnings []string          `json:"warnings,omitempty"`
}

// IsolateRequest sets (or, with Remove, removes) the one-way isolation of
// one port.
type IsolateRequest struct {
	Port      string `json:"port"`
	AllowFrom string `json:"allow_from,omitempty"`
	Remove    bool   `json:"remove,omitempty"`
}

// Isolation is one port's one-way isolation as status reports it.
type Isolation struct {
	Port      string            `json:"port"`
	AllowFrom string            `json:"allow_from"`
	Drops     map[string]uint64 `json:"drops"`
	Warnings  []string          `json:"warnings,omitempty"`
}

// Removed answers the removal of a port's setting (guard, isolation).
type Removed struct {
	Port     string   `json:"port"`
	Warnings []string `json:"warnings,omitempty"`
}
