// Package intent is a quarantine's spec: what the operator asked for
// (limits, bypass, guard, fail mode, profile and ladder stage), how it is
// written down (the state file's JSON, the intent string kept on the
// plumbing) and what it means for the forwarder (its policies), the
// classifier, the guard and the kernel half's backstop. It does no I/O and
// holds no lock: the daemon owns the specs.
package intent

import (
	"slices"
	"strings"
	"unicode"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/units"
)

var usagef = api.Usagef

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

// DirSpec is the intent for one direction: its limits, typed, as the state
// file keeps them.
type DirSpec = api.DirLimits

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
	Stage api.Stage `json:"stage,omitempty"`

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
func New() Spec {
	s := Spec{BypassPorts: slices.Clone(DefaultBypassPorts)}
	for _, d := range []*DirSpec{&s.FromVM, &s.ToVM} {
		bp, bb, cp := float64(DefaultBypassPPS), DefaultBypassBPS, float64(DefaultControlPPS)
		d.BypassPPS, d.BypassBPS, d.ControlPPS = &bp, &bb, &cp
	}
	return s
}

// hasLimit reports whether s limits anything beyond the bypass and control
// budgets every quarantine has: an aggregate, a flood class, a frame size,
// rule classes, or the guard.
func (s Spec) HasLimit() bool {
	return s.FromVM.HasLimit() || s.ToVM.HasLimit() || s.Guard
}

// Apply returns s changed by the limits req names (its Profile aside).
// forSet refuses settings that cannot change in place. s is not modified.
func (s Spec) Apply(req api.LimitRequest, forSet bool) (Spec, error) {
	if forSet {
		if err := req.CheckSet(); err != nil {
			return s, err
		}
	}
	out := s
	out.BypassPorts = slices.Clone(s.BypassPorts)
	if req.Bypass != nil {
		out.BypassPorts = slices.Clone(*req.Bypass)
	}
	if req.BypassOutbound != nil {
		out.BypassOutbound = *req.BypassOutbound
	}
	if req.Fail != nil {
		out.Fail = *req.Fail
	}
	if req.Guard != nil {
		out.Guard = *req.Guard
	}
	if req.GuardMAC != nil {
		out.GuardMAC = *req.GuardMAC
	}
	if req.GuardIP != nil {
		out.GuardIP = *req.GuardIP
	}
	out.FromVM = s.FromVM.Apply(req.FromVM)
	out.ToVM = s.ToVM.Apply(req.ToVM)
	if err := out.Validate(); err != nil {
		return s, err
	}
	return out, nil
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
		if err := d.Classes.Err(); err != nil {
			return usagef("%sclass: %v", x.prefix, err)
		}
		if d.Backstop != nil && !(*d.Backstop >= 1) {
			return usagef("%sbackstop %v: want at least 1 packet per second, or none", x.prefix, *d.Backstop)
		}
		pol := DirPolicy(*d)
		if err := pol.Validate(); err != nil {
			return usagef("%s: %v", strings.TrimSuffix(x.prefix, "-"), err)
		}
	}
	if err := s.ClassifyConfig().Validate(); err != nil {
		return usagef("%v", err)
	}
	// The intent kept on the plumbing is space-separated words, written
	// as these are: a space in one could not be read back.
	for _, f := range []struct{ name, v string }{{"profile", s.Profile}, {"origin", string(s.Origin)}, {"stage", string(s.Stage)}, {"--guard-mac", s.GuardMAC}, {"--guard-ip", s.GuardIP}} {
		if strings.ContainsFunc(f.v, unicode.IsSpace) {
			return usagef("%s %q: no white space allowed", f.name, f.v)
		}
	}
	if (s.GuardMAC != "" || s.GuardIP != "") && !s.Guard {
		return usagef("--guard-mac and --guard-ip need --guard")
	}
	if s.Guard && s.GuardMAC != "" && s.GuardIP != "" {
		if _, err := s.NewGuard(); err != nil {
			return usagef("%v", err)
		}
	}
	return nil
}

// Duration is a time.Duration that reads and writes as "200ms" in JSON.
type Duration = api.Duration

// Conservative is what a port gets when its splice is found on the host
// but neither the state file nor the plumbing says with which limits: the
// first stage of the seeds' ladder, 10000 pps from the VM.
func Conservative() Spec {
	s := New()
	pps := 10000.0
	s.FromVM.PPS = &pps
	return s
}
