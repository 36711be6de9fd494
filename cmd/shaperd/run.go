package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/config"
	"github.com/shaperd/shaperd/control"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/splice/tcsplice"
)

// DefaultStateDir is where the daemon keeps its state.
const DefaultStateDir = "/var/lib/shaperd"

func newRunCmd(g *globals) *cobra.Command {
	var cfgPath string
	var flags config.Config
	var nice int
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon",
		Long: `Run the daemon in the foreground. Every flag has a key in the YAML --config
file (the flag's name with '_' for '-'); a flag given here wins.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var cfg config.Config
			if cfgPath != "" {
				c, err := config.Load(cfgPath)
				if err != nil {
					return &exitError{code: 2, err: err}
				}
				cfg = c
			}
			// Flags win over the file.
			fs := cmd.Flags()
			if fs.Changed("state-dir") {
				cfg.StateDir = flags.StateDir
			}
			if fs.Changed("log-level") {
				cfg.LogLevel = flags.LogLevel
			}
			if fs.Changed("log-format") {
				cfg.LogFormat = flags.LogFormat
			}
			if fs.Changed("forwarder-nice") || cfg.ForwarderNice == nil {
				n := nice
				cfg.ForwarderNice = &n
			}
			if cmd.Flags().Changed("socket") || g.socket != "" || cfg.Socket == "" {
				cfg.Socket = control.SocketPath(g.socket)
			}
			if cfg.StateDir == "" {
				cfg.StateDir = DefaultStateDir
			}
			if err := cfg.Validate(); err != nil {
				return &exitError{code: 2, err: err}
			}
			return runDaemon(cfg)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML configuration file")
	cmd.Flags().StringVar(&flags.StateDir, "state-dir", DefaultStateDir, "directory for the daemon's state (config key state_dir)")
	cmd.Flags().StringVar(&flags.LogLevel, "log-level", "info", "debug, info, warn or error (config key log_level)")
	cmd.Flags().StringVar(&flags.LogFormat, "log-format", "text", "text or json (config key log_format)")
	cmd.Flags().IntVar(&nice, "forwarder-nice", -10, "scheduling priority of the forwarding threads, -20..19; 0 keeps the daemon's (config key forwarder_nice)")
	return cmd
}

func newLogger(cfg config.Config) *slog.Logger {
	var lvl slog.Level
	switch cfg.LogLevel {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// runDaemon serves until SIGINT or SIGTERM, then releases every quarantine
// (there is no state to adopt them from yet) and removes the socket.
func runDaemon(cfg config.Config) error {
	log := newLogger(cfg)
	if os.Geteuid() != 0 {
		log.Warn("not running as root: splicing needs CAP_NET_ADMIN")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	m := daemon.New(log, tcsplice.New(log))
	m.ForwarderNice = *cfg.ForwarderNice
	if err := m.WatchLinks(ctx); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("watch links: %w", err)}
	}
	srv, err := control.Listen(cfg.Socket, m, log)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	log.Info("shaperd running", "socket", cfg.Socket, "pid", os.Getpid(), "version", daemon.Version)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := m.Close(); err != nil {
		log.Error("releasing quarantines", "err", err)
		return &exitError{code: 1, err: err}
	}
	if serveErr != nil {
		return &exitError{code: 1, err: serveErr}
	}
	return nil
}
