// Package backends is the one list of shaperd's splice backends, in the
// order a port is offered to them: the daemon, `release --offline` and the
// tests of the list take it from here. A new backend is a package of its
// own plus one line in registry.
package backends

import (
	"log/slog"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/ovssplice"
	"github.com/shaperd/shaperd/splice/tcsplice"
)

// registry makes the backends. OVS first: tcsplice also recognises an OVS
// splice's taps by their alias, but only ovssplice can revert its flows.
var registry = []func(log *slog.Logger) splice.Backend{
	func(log *slog.Logger) splice.Backend { return ovssplice.New(log) },
	func(log *slog.Logger) splice.Backend { return tcsplice.New(log) },
}

// New returns one of each backend, in order; each that defers to others
// (splice.Deferrer) is told of the claimers before it.
func New(log *slog.Logger) []splice.Backend {
	out := make([]splice.Backend, len(registry))
	var claimers []splice.Claimer
	for i, mk := range registry {
		out[i] = mk(log)
		if d, ok := out[i].(splice.Deferrer); ok {
			d.DeferTo(claimers...)
		}
		if c, ok := out[i].(splice.Claimer); ok {
			claimers = append(claimers, c)
		}
	}
	return out
}
