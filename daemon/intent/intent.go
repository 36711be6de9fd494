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
// recovers the limits; Parse reverses it.
func (s Spec) Intent() string {
	def := New()
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	for _, d := range []struct {
		prefix   string
		got, def DirSpec
	}{{"", s.FromVM, def.FromVM}, {"to-vm-", s.ToVM, def.ToVM}} {
		for _, f := range d.got.Flags(d.prefix, d.def) {
			if f.Name == d.prefix+"class" {
				// Rules have spaces: escaped, one rule per line.
				f.Value = url.QueryEscape(f.Value)
			}
			add(f.Name, f.Value)
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

// Parse turns an Intent back into a Spec.
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
