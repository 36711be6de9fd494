package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/splice/backends"
)

func releaseOffline(cmd *cobra.Command, g *globals, stateDir string, ports []string, all bool) error {
	if g.client().Running() {
		return usageErr("a daemon answers on %s: release through it (drop --offline), or stop it first", g.socketPath())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	released, err := daemon.ReleaseOffline(log, stateDir, ports, all, backends.New(log)...)
	for _, p := range released {
		fmt.Fprintf(cmd.OutOrStdout(), "released %s (offline)\n", p)
	}
	if err != nil {
		if errors.Is(err, daemon.ErrNotFound) && len(released) == 0 {
			return &exitError{code: 3, err: err}
		}
		if errors.Is(err, daemon.ErrUsage) && len(released) == 0 {
			return &exitError{code: 2, err: err}
		}
		return &exitError{code: 1, err: err}
	}
	return nil
}
