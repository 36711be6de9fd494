package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/ovssplice"
	"github.com/shaperd/shaperd/splice/tcsplice"
)

// offlineBackends are the backends `release --offline` asks for splices.
func offlineBackends(log *slog.Logger) []splice.Backend {
	// OVS first: tcsplice also recognises an OVS splice's taps by their
	// alias, but only ovssplice can revert its flows.
	return []splice.Backend{ovssplice.New(log), tcsplice.New(log)}
}

func releaseOffline(cmd *cobra.Command, g *globals, stateDir string, ports []string, all bool) error {
	if g.client().Running() {
		return usageErr("a daemon answers on %s: release through it (drop --offline), or stop it first", g.socketPath())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	released, err := daemon.ReleaseOffline(log, stateDir, ports, all, offlineBackends(log)...)
	for _, p := range released {
		fmt.Fprintf(cmd.OutOrStdout(), "released %s (offline)\n", p)
	}
	if err != nil {
		if errors.Is(err, daemon.ErrUsage) && len(released) == 0 {
			return &exitError{code: 2, err: err}
		}
		return &exitError{code: 1, err: err}
	}
	return nil
}
