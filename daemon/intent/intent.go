package intent

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/shaperd/shaperd/api"
)

// Intent is s in the command line's words, only what differs from a new
// spec: "pps=5000 bps=16mbit to-vm-pps=500 fail=open". It is kept on the
// plumbing (see splice.IntentRecorder) so a daemon without its state file
// recovers the limits; ParseIntent reverses it.
func (s Spec) Intent() string {
	def := New()
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	for _, d := range []struct {
		prefix   string
		got, def DirSpec
	}{{"", s.FromVM, def.FromVM}, {"to-vm-", s.ToVM, def.ToVM}} {
		g, p := d.got, d.prefix
		if g.PPS != nil {
			add(p+"pps", strconv.FormatFloat(*g.PPS, 'g', -1, 64))
		}
		if g.BPS != nil {
			add(p+"bps", g.BPS.String())
		}
		if g.Burst != nil {
			add(p+"burst", strconv.Itoa(*g.Burst))
		}
		if g.BurstBytes != nil {
			add(p+"burst-bytes", g.BurstBytes.String())
		}
		if g.Mode != "" {
			add(p+"mode", string(g.Mode))
		}
		if g.Delay != nil {
			add(p+"delay", g.Delay.String())
		}
		if g.QueueBytes != nil {
			add(p+"queue-bytes", g.QueueBytes.String())
		}
		if g.QueueTime != nil {
			add(p+"queue-time", g.QueueTime.String())
		}
		if !eqF(g.BypassPPS, d.def.BypassPPS) {
			add(p+"bypass-pps", fmtF(g.BypassPPS))
		}
		if !eqR(g.BypassBPS, d.def.BypassBPS) {
			v := "none"
			if g.BypassBPS != nil {
				v = g.BypassBPS.String()
			}
			add(p+"bypass-bps", v)
		}
		if !eqF(g.ControlPPS, d.def.ControlPPS) {
			add(p+"control-pps", fmtF(g.ControlPPS))
		}
		if g.SynPPS != nil {
			add(p+"syn-pps", fmtF(g.SynPPS))
		}
		if g.UDPPPS != nil {
			add(p+"udp-pps", fmtF(g.UDPPPS))
		}
		if g.ICMPBPS != nil {
			add(p+"icmp-bps", g.ICMPBPS.String())
		}
		if g.MaxFrame != nil {
			add(p+"max-frame", g.MaxFrame.String())
		}
		if g.BypassConnPerSource != nil {
			add(p+"bypass-conn-per-source", strconv.Itoa(*g.BypassConnPerSource))
		}
		if g.Backstop != nil {
			add(p+"backstop", fmtF(g.Backstop))
		}
		if g.BackstopOff {
			add(p+"backstop", "none")
		}
		if g.Classes.Len() > 0 {
			// Rules have spaces: escaped, one rule per line.
			add(p+"class", url.QueryEscape(strings.Join(g.Classes.Lines(), "\n")))
		}
	}
	if !slices.Equal(s.BypassPorts, def.BypassPorts) {
		var ps []string
		for _, p := range s.BypassPorts {
			ps = append(ps, strconv.Itoa(int(p)))
		}
		v := strings.Join(ps, ",")
		if v == "" {
			v = "none"
		}
		add("bypass", v)
	}
	if s.BypassOutbound {
		add("bypass-outbound", "true")
	}
	if s.Fail != "" {
		add("fail", string(s.Fail))
	}
	if s.Guard {
		add("guard", "true")
		if s.GuardMAC != "" {
			add("guard-mac", s.GuardMAC)
		}
		if s.GuardIP != "" {
			add("guard-ip", s.GuardIP)
		}
	}
	if s.Profile != "" {
		add("profile", s.Profile)
	}
	if s.Origin != "" {
		add("origin", string(s.Origin))
	}
	if s.Stage != "" {
		add("stage", string(s.Stage))
	}
	return strings.Join(parts, " ")
}

// ParseIntent turns an Intent back into a Spec.
func Parse(intent string) (Spec, error) {
	flags := api.LimitFlags{}
	for _, f := range strings.Fields(intent) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Spec{}, fmt.Errorf("intent %q: %q is not key=value", intent, f)
		}
		if k == "class" || k == "to-vm-class" {
			u, err := url.QueryUnescape(v)
			if err != nil {
				return Spec{}, fmt.Errorf("intent %q: %s: %v", intent, k, err)
			}
			v = u
		}
		flags[k] = v
	}
	meta := map[string]string{}
	for _, k := range []string{"profile", "origin", "stage"} {
		if v, ok := flags[k]; ok {
			meta[k] = v
			delete(flags, k)
		}
	}
	req, err := api.ParseLimits(flags)
	if err != nil {
		return Spec{}, err
	}
	if !req.HasLimit() {
		return Spec{}, fmt.Errorf("intent %q names no limit", intent)
	}
	s, err := New().Apply(req, false)
	if err != nil {
		return s, err
	}
	s.Profile, s.Origin, s.Stage = meta["profile"], api.Origin(meta["origin"]), api.Stage(meta["stage"])
	return s, nil
}

func fmtF(p *float64) string {
	if p == nil {
		return "none"
	}
	return strconv.FormatFloat(*p, 'g', -1, 64)
}

func eqF(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func eqR[T comparable](a, b *T) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
