package intent

import (
	"slices"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/units"
)

// What a spec means for the forwarder: its policies, its classifier and
// its guard, and the limits status shows.

// fromVMPolicy is FromVM's policy with the guard.
func (s Spec) FromVMPolicy() forward.Policy {
	p := DirPolicy(s.FromVM)
	p.Guard, _ = s.NewGuard() // validated; nil when incomplete (prepareGuardLocked refuses that)
	return p
}

// guard returns the guard of frames from the VM, nil without --guard. Its
// addresses must be complete (prepareGuardLocked fills them in).
func (s Spec) NewGuard() (*guard.Guard, error) {
	if !s.Guard {
		return nil, nil
	}
	macs, err := guard.ParseMACs(s.GuardMAC)
	if err != nil {
		return nil, err
	}
	ips, err := guard.ParseIPs(s.GuardIP)
	if err != nil {
		return nil, err
	}
	return guard.New(guard.Config{MACs: macs, IPs: ips})
}

func (s Spec) ClassifyConfig() classify.Config {
	return classify.Config{BypassPorts: slices.Clone(s.BypassPorts), BypassOutbound: s.BypassOutbound}
}

// limits turns a rate pair into bucket limits. A rate of 0 packets or bits
// per second is a real limit (admit nothing), not "unset".
func limits(pps *float64, bps *units.Rate, burst *int, burstBytes *units.Size) bucket.Limits {
	var l bucket.Limits
	block := false
	if pps != nil {
		if *pps == 0 {
			block = true
		}
		l.PPS = *pps
		if burst != nil {
			l.BurstPackets = *burst
		}
	}
	if bps != nil {
		if *bps == 0 {
			block = true
		}
		l.BytesPerSec = bps.BytesPerSecond()
		if burstBytes != nil {
			l.BurstBytes = int(*burstBytes)
		}
	}
	l.Block = block
	return l
}

// policy turns the intent of one direction into the forwarder's budgets.
func DirPolicy(d DirSpec) forward.Policy {
	var p forward.Policy
	p.Aggregate = limits(d.PPS, d.BPS, d.Burst, d.BurstBytes)
	p.Classes[classify.Bypass] = limits(d.BypassPPS, d.BypassBPS, nil, nil)
	if d.Mode == "shape" {
		p.Mode = forward.Shape
	}
	if d.Delay != nil {
		p.Delay = time.Duration(*d.Delay)
	}
	if d.QueueBytes != nil {
		p.QueueBytes = int(*d.QueueBytes)
	}
	if d.QueueTime != nil {
		p.QueueTime = time.Duration(*d.QueueTime)
	}
	p.Classes[classify.Control] = limits(d.ControlPPS, nil, nil, nil)
	if c := &p.Classes[classify.Control]; c.PPS > 0 && c.Effective().BurstPackets < ControlBurst {
		// 10 ms of 200 pps is 2 packets: too few for the bursts of
		// ARP and neighbour discovery a booting or re-resolving VM sends.
		c.BurstPackets = ControlBurst
	}
	p.Classes[classify.TCPSyn] = limits(d.SynPPS, nil, nil, nil)
	p.Classes[classify.UDP] = limits(d.UDPPPS, nil, nil, nil)
	p.Classes[classify.ICMP] = limits(nil, d.ICMPBPS, nil, nil)
	if d.MaxFrame != nil {
		p.MaxFrame = int(*d.MaxFrame)
	}
	if d.BypassConnPerSource != nil {
		p.BypassConnPerSource = *d.BypassConnPerSource
	}
	p.Rules = d.Classes.Set()
	return p
}

// apiLimits reports a rate pair as status shows it: the rates as given and
// the effective bursts (defaults filled in), null where unset.
func APILimits(pps *float64, bps *units.Rate, burst *int, burstBytes *units.Size) api.Limits {
	var out api.Limits
	e := limits(pps, bps, burst, burstBytes).Effective()
	if pps != nil {
		v, b := *pps, e.BurstPackets
		out.PPS, out.BurstPackets = &v, &b
	}
	if bps != nil {
		v, b := uint64(*bps), e.BurstBytes
		out.BitsPerSecond, out.BurstBytes = &v, &b
	}
	return out
}
