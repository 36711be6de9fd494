package daemon

import (
	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
)

// Tests write requests in the command line's words and parse them as the
// control socket does (api.ParseRequest), or as a profile's limits and an
// intent are parsed (api.ParseLimits); an error of either is the request's.

func quarantineFlags(m *Manager, port string, f api.LimitFlags, pending bool) (api.Quarantine, error) {
	req, err := api.ParseRequest(f)
	if err != nil {
		return api.Quarantine{}, err
	}
	return m.Quarantine(port, req, pending)
}

func setFlags(m *Manager, port string, f api.LimitFlags) (api.Quarantine, error) {
	req, err := api.ParseRequest(f)
	if err != nil {
		return api.Quarantine{}, err
	}
	return m.Set(port, req)
}

func applyFlags(s intent.Spec, f api.LimitFlags, forSet bool) (intent.Spec, error) {
	req, err := api.ParseLimits(f)
	if err != nil {
		return s, err
	}
	return s.Apply(req, forSet)
}

func eqF(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
