package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/alerts"
	"github.com/shaperd/shaperd/baseline"
	"github.com/shaperd/shaperd/config"
	"github.com/shaperd/shaperd/control"
	"github.com/shaperd/shaperd/daemon"
	"github.com/shaperd/shaperd/internal/version"
	"github.com/shaperd/shaperd/metrics"
	"github.com/shaperd/shaperd/portpolicy"
	"github.com/shaperd/shaperd/portpolicy/ovspolicy"
	"github.com/shaperd/shaperd/splice/backends"
)

// DefaultStateDir is where the daemon keeps its state.
const DefaultStateDir = "/var/lib/shaperd"

func newRunCmd(g *globals) *cobra.Command {
	var cfgPath string
	var flags config.Config
	var nice, tapQueues int
	var metricsAddr string
	var pendingTTL, watchInterval, flagAfter, coalesce time.Duration
	var maxAuto int
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
			fs := cmd.Flags()
			// Flags win over the file, also when SIGHUP reloads it.
			overlay := func(cfg *config.Config) {
				if fs.Changed("watch") {
					cfg.Watch = flags.Watch
				}
				if fs.Changed("exclude") {
					cfg.Exclude = flags.Exclude
				}
				if fs.Changed("watch-interval") || cfg.WatchInterval == "" {
					cfg.WatchInterval = watchInterval.String()
				}
				if fs.Changed("flag-after") || cfg.FlagAfter == "" {
					cfg.FlagAfter = flagAfter.String()
				}
				if fs.Changed("max-auto") || cfg.MaxAuto == nil {
					n := maxAuto
					cfg.MaxAuto = &n
				}
				if fs.Changed("dry-run") {
					cfg.DryRun = flags.DryRun
				}
				if fs.Changed("alerts-token") {
					cfg.AlertsToken, cfg.AlertsTokenFile = flags.AlertsToken, ""
				}
				if fs.Changed("alerts-addr") {
					cfg.AlertsAddr = flags.AlertsAddr
				}
				if fs.Changed("alerts-cert") {
					cfg.AlertsCert = flags.AlertsCert
				}
				if fs.Changed("alerts-key") {
					cfg.AlertsKey = flags.AlertsKey
				}
				if fs.Changed("instance-name") {
					cfg.InstanceName = flags.InstanceName
				}
			}
			overlay(&cfg)
			if fs.Changed("state-dir") {
				cfg.StateDir = flags.StateDir
			}
			if fs.Changed("log-level") {
				cfg.LogLevel = flags.LogLevel
			}
			if fs.Changed("log-format") {
				cfg.LogFormat = flags.LogFormat
			}
			if fs.Changed("socket-group") {
				cfg.SocketGroup = flags.SocketGroup
			}
			if fs.Changed("pending-ttl") || cfg.PendingTTL == "" {
				cfg.PendingTTL = pendingTTL.String()
			}
			if fs.Changed("metrics-addr") || cfg.MetricsAddr == nil {
				a := metricsAddr
				cfg.MetricsAddr = &a
			}
			if fs.Changed("coalesce") || cfg.Coalesce == "" {
				cfg.Coalesce = coalesce.String()
			}
			if fs.Changed("tap-queues") || cfg.TapQueues == nil {
				n := tapQueues
				cfg.TapQueues = &n
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
			if err := daemon.CheckProfiles(cfg.ProfileSet()); err != nil {
				return &exitError{code: 2, err: err}
			}
			return runDaemon(cfg, cfgPath, fs.Changed("log-level"), overlay)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML configuration file")
	cmd.Flags().StringVar(&flags.StateDir, "state-dir", DefaultStateDir, "directory for the daemon's state (config key state_dir)")
	cmd.Flags().StringVar(&flags.LogLevel, "log-level", "info", "debug, info, warn or error (config key log_level)")
	cmd.Flags().StringVar(&flags.LogFormat, "log-format", "text", "text or json (config key log_format)")
	cmd.Flags().StringVar(&flags.SocketGroup, "socket-group", "", "group that owns the control socket (mode 0660) and may use it besides root (config key socket_group)")
	cmd.Flags().DurationVar(&pendingTTL, "pending-ttl", daemon.DefaultPendingTTL, "how long a quarantine of a missing port waits for it to return (config key pending_ttl)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", metrics.DefaultAddr, `host:port serving Prometheus metrics at /metrics; "" turns them off (config key metrics_addr)`)
	cmd.Flags().StringSliceVar(&flags.Watch, "watch", nil, "glob patterns of the ports to watch for floods, e.g. 'vm-*,tap*' (config key watch; default none: nothing is spliced unless asked)")
	cmd.Flags().StringSliceVar(&flags.Exclude, "exclude", nil, "glob patterns of ports never flagged (config key exclude)")
	cmd.Flags().DurationVar(&watchInterval, "watch-interval", 500*time.Millisecond, "how often the watched ports' counters are read (config key watch_interval)")
	cmd.Flags().DurationVar(&flagAfter, "flag-after", time.Second, "how long a watched port stays above the quarantine profile's threshold before it is flagged (config key flag_after)")
	cmd.Flags().IntVar(&maxAuto, "max-auto", 10, "most automatic quarantines at once on this host; each refusal is an event (config key max_auto)")
	cmd.Flags().BoolVar(&flags.DryRun, "dry-run", false, "flag and report floods (status's flagged array) without splicing anything (config key dry_run)")
	cmd.Flags().StringVar(&flags.AlertsToken, "alerts-token", "", "bearer token of the Alertmanager webhook at POST "+alerts.Path+" on the metrics listener; without one the webhook is off (config key alerts_token; prefer the config file, which ps cannot show)")
	cmd.Flags().StringVar(&flags.AlertsAddr, "alerts-addr", "", `host:port of a listener of the webhook's own, so that /metrics can stay on localhost; "" serves it on the metrics listener (config key alerts_addr)`)
	cmd.Flags().StringVar(&flags.AlertsCert, "alerts-cert", "", "TLS certificate file: serve the webhook over HTTPS, on --alerts-addr if set, else on the metrics listener with the metrics (config key alerts_cert)")
	cmd.Flags().StringVar(&flags.AlertsKey, "alerts-key", "", "TLS key file for --alerts-cert (config key alerts_key)")
	cmd.Flags().StringVar(&flags.InstanceName, "instance-name", "", "this host's name in alerts' instance label (compared without :port); default the hostname (config key instance_name)")
	cmd.Flags().DurationVar(&coalesce, "coalesce", daemon.DefaultCoalesce, "latency budget, 0 (off) to 10ms, that the forwarder may add to frames from and to a VM so that several share one wake-up; frames from the VM steered to the priority tap (bypass and control) never wait (config key coalesce)")
	cmd.Flags().IntVar(&tapQueues, "tap-queues", daemon.DefaultTapQueues, "queues of each VM and net tap a splice creates (Linux bridge), one forwarding thread each, 1 to 16; above 1 the taps are multi-queue and the kernel spreads flows over the queues (config key tap_queues)")
	cmd.Flags().IntVar(&nice, "forwarder-nice", -10, "scheduling priority of the forwarding threads, -20..19; 0 keeps the daemon's (config key forwarder_nice)")
	return cmd
}

func parseLevel(name string) slog.Level {
	switch name {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// newLogger returns the daemon's logger and the level it filters at, which
// SIGHUP may change.
func newLogger(cfg config.Config) (*slog.Logger, *slog.LevelVar) {
	lvl := new(slog.LevelVar)
	lvl.Set(parseLevel(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if underJournal() {
		return slog.New(newJournalHandler(os.Stderr, opts, cfg.LogFormat == "json")), lvl
	}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), lvl
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), lvl
}

// runDaemon restores what an earlier daemon left, serves until SIGINT or
// SIGTERM, then stops the forwarders and removes the socket. Splices and the
// state file stay, for the next daemon to adopt.
func runDaemon(cfg config.Config, cfgPath string, levelFromFlag bool, overlay func(*config.Config)) error {
	if err := cfg.LoadSecrets(); err != nil {
		return &exitError{code: 2, err: err}
	}
	log, level := newLogger(cfg)
	if os.Geteuid() != 0 {
		log.Warn("not running as root: splicing needs CAP_NET_ADMIN")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	ttl, _ := time.ParseDuration(cfg.PendingTTL)    // validated
	coalesce, _ := time.ParseDuration(cfg.Coalesce) // validated
	bl, err := baseline.New(baseline.Options{Logger: log})
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	pp, err := portpolicy.New(portpolicy.Options{Logger: log})
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	m := daemon.NewWithOptions(log, daemon.Options{
		Baseline:      bl,
		PortPolicy:    pp,
		OVSPortPolicy: ovspolicy.New(ovspolicy.Options{Logger: log}),
		StateDir:      cfg.StateDir,
		PendingTTL:    ttl,
		ForwarderNice: *cfg.ForwarderNice,
		Coalesce:      coalesce,
		TapQueues:     *cfg.TapQueues,
	}, backends.New(log)...)
	// Profiles before restoring: restored ladders resume with them.
	if err := m.Configure(cfg.ProfileSet(), watchConfig(cfg)); err != nil {
		return &exitError{code: 2, err: err}
	}
	// The listeners are bound first (served only once the restore is
	// done): a second daemon on the same socket, or a metrics address in
	// use, fails the start before anything is adopted or changed.
	// With alerts_addr the webhook (and TLS) has a listener of its own;
	// without, it shares the metrics listener.
	mopt := metrics.Options{CertFile: cfg.AlertsCert, KeyFile: cfg.AlertsKey}
	aopt := metrics.Options{CertFile: cfg.AlertsCert, KeyFile: cfg.AlertsKey, NoMetrics: true}
	if cfg.AlertsAddr != "" {
		mopt = metrics.Options{}
	}
	var webhook *alerts.Handler
	if cfg.AlertsToken != "" {
		webhook = &alerts.Handler{Token: cfg.AlertsToken, Instance: instanceName(cfg), Aliases: instanceAliases(cfg, systemNames), AllowNoInstance: cfg.AlertsAllowNoInstance, Target: m, Log: log}
		hs := map[string]http.Handler{alerts.Path: webhook}
		if cfg.AlertsAddr != "" {
			aopt.Handlers = hs
		} else {
			mopt.Handlers = hs
			if *cfg.MetricsAddr == "" {
				log.Warn("alerts_token is set but metrics_addr is off: the Alertmanager webhook is served on the metrics listener, so it is off too (or give it alerts_addr)")
			}
		}
	} else if cfg.AlertsAddr != "" {
		log.Warn("alerts_addr is set but there is no alerts token: the webhook is off, and alerts_addr is not bound")
	}
	var msrv, asrv *metrics.Server
	closeHTTP := func() {
		for _, s := range []*metrics.Server{msrv, asrv} {
			if s != nil {
				s.Shutdown(ctx)
			}
		}
	}
	if addr := *cfg.MetricsAddr; addr != "" {
		s, err := metrics.ListenOptions(addr, m, log, mopt)
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		msrv = s
	}
	if aopt.Handlers != nil {
		s, err := metrics.ListenOptions(cfg.AlertsAddr, m, log, aopt)
		if err != nil {
			closeHTTP()
			return &exitError{code: 1, err: err}
		}
		asrv = s
	}
	srv, err := control.ListenOptions(cfg.Socket, m, log, control.Options{Group: cfg.SocketGroup})
	if err != nil {
		closeHTTP()
		return &exitError{code: 1, err: err}
	}
	unbind := func() {
		srv.Shutdown(ctx)
		closeHTTP()
	}
	// Subscribe before restoring, so no link event falls between the two.
	if err := m.WatchLinks(ctx); err != nil {
		unbind()
		return &exitError{code: 1, err: fmt.Errorf("watch links: %w", err)}
	}
	if err := m.Restore(); err != nil {
		unbind()
		return &exitError{code: 1, err: err}
	}
	// The baseline after the quarantines: a spliced port's net tap is
	// named with its port's limits. A kernel that refuses it leaves the
	// daemon running (quarantines do not need it) and says so.
	if err := m.RestoreBaselines(baselineRules(cfg)); err != nil {
		log.Error("baseline: not applied at start", "err", err)
	}
	// The guards and isolations likewise (adopted, not duplicated).
	if err := m.RestorePortPolicies(); err != nil {
		log.Error("guard and isolate: not applied at start", "err", err)
	}
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				m.Tick(now)
			}
		}
	}()
	go m.RunWatch(ctx)
	go m.RunHeartbeat(ctx)
	if msrv != nil {
		go func() {
			if err := msrv.Serve(); err != nil {
				log.Error("metrics endpoint stopped", "err", err)
			}
		}()
		scheme := "http"
		if mopt.CertFile != "" {
			scheme = "https"
		}
		log.Info("serving metrics", "url", scheme+"://"+msrv.Addr().String()+"/metrics", "alerts_webhook", mopt.Handlers != nil)
	}
	if asrv != nil {
		go func() {
			if err := asrv.Serve(); err != nil {
				log.Error("alerts webhook listener stopped", "err", err)
			}
		}()
		scheme := "http"
		if aopt.CertFile != "" {
			scheme = "https"
		}
		log.Info("serving the alerts webhook", "url", scheme+"://"+asrv.Addr().String()+alerts.Path)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	log.Info("shaperd running", "socket", cfg.Socket, "pid", os.Getpid(), "version", version.Version(), "commit", version.Commit())
	sdNotify("READY=1\nSTATUS=serving")
	go watchdog(ctx, m.Alive, func() {
		m.NoteWatchdogMissed()
		log.Error("event: watchdog not fed: a forwarder has stopped", "event", daemon.EventWatchdogMissed)
	})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload(log, level, cfg, cfgPath, levelFromFlag, overlay, m, webhook)
			}
		}
	}()

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		sdNotify("STOPPING=1")
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if msrv != nil {
		msrv.Shutdown(sctx)
	}
	if err := m.Close(); err != nil {
		log.Error("stopping forwarders", "err", err)
		return &exitError{code: 1, err: err}
	}
	if serveErr != nil {
		return &exitError{code: 1, err: serveErr}
	}
	return nil
}

// reload re-reads the config file on SIGHUP. An invalid file changes
// nothing: the running config stays and the error is logged. The log level
// changes at once (unless --log-level was given); keys that need a restart
// are named in the log.
func reload(log *slog.Logger, level *slog.LevelVar, running config.Config, path string, levelFromFlag bool, overlay func(*config.Config), m *daemon.Manager, webhook *alerts.Handler) {
	if path == "" {
		log.Info("SIGHUP: no --config file to reload")
		return
	}
	c, err := config.Load(path)
	if err == nil {
		overlay(&c)
		err = c.Validate()
	}
	if err == nil {
		err = c.LoadSecrets()
	}
	if err == nil {
		err = m.Configure(c.ProfileSet(), watchConfig(c))
		if err == nil {
			err = m.ConfigureBaselines(baselineRules(c))
		}
	}
	if err != nil {
		log.Error("SIGHUP: config not reloaded; the running config stays", "err", err)
		return
	}
	if !levelFromFlag && c.LogLevel != "" {
		level.Set(parseLevel(c.LogLevel))
	}
	var restart []string
	if c.Socket != "" && c.Socket != running.Socket {
		restart = append(restart, "socket")
	}
	if c.StateDir != "" && c.StateDir != running.StateDir {
		restart = append(restart, "state_dir")
	}
	if c.SocketGroup != running.SocketGroup {
		restart = append(restart, "socket_group")
	}
	// The webhook's token applies at once (a rotated token file or
	// credential); only mounting the webhook needs a restart.
	switch {
	case webhook != nil:
		webhook.SetToken(c.AlertsToken)
	case c.AlertsToken != "":
		restart = append(restart, "alerts_token (the webhook is not mounted)")
	}
	if c.AlertsAddr != running.AlertsAddr || c.AlertsCert != running.AlertsCert || c.AlertsKey != running.AlertsKey || c.InstanceName != running.InstanceName || !slices.Equal(c.InstanceAliases, running.InstanceAliases) {
		restart = append(restart, "alerts_addr/alerts_cert/alerts_key/instance_name/instance_aliases")
	}
	log.Info("SIGHUP: config reloaded", "path", path, "log_level", level.Level().String(), "need_restart", restart)
}

// baselineRules is the config's baselines (validated).
func baselineRules(cfg config.Config) []daemon.BaselineRule {
	var out []daemon.BaselineRule
	for _, b := range cfg.Baselines {
		out = append(out, daemon.BaselineRule{Pattern: b.Port, Limits: b.BaselineLimits})
	}
	return out
}

// watchConfig is the watch loop's part of cfg (validated).
func watchConfig(cfg config.Config) daemon.WatchConfig {
	w := daemon.DefaultWatchConfig()
	w.Watch, w.Exclude, w.DryRun = cfg.Watch, cfg.Exclude, cfg.DryRun
	if d, err := time.ParseDuration(cfg.WatchInterval); err == nil {
		w.Interval = d
	}
	if d, err := time.ParseDuration(cfg.FlagAfter); err == nil {
		w.FlagAfter = d
	}
	if cfg.MaxAuto != nil {
		w.MaxAuto = *cfg.MaxAuto
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Groups)) {
		g := cfg.Groups[name]
		w.Groups = append(w.Groups, daemon.Group{Name: name, Router: g.Router, Members: g.Members})
	}
	return w
}

// hostNames are the sources instanceAliases asks: the hostname, its FQDN
// (a resolver's canonical name), and the addresses of the interfaces.
type hostNames struct {
	hostname func() (string, error)
	fqdn     func(ctx context.Context, host string) (string, error)
	addrs    func() ([]net.Addr, error)
}

var systemNames = hostNames{
	hostname: os.Hostname,
	fqdn:     net.DefaultResolver.LookupCNAME,
	addrs:    net.InterfaceAddrs,
}

// instanceAliases are this host's other names in alerts' instance labels:
// the configured aliases, the hostname cut at its first dot and the
// hostname's FQDN (whichever the hostname is not), and the interfaces'
// addresses, so that Prometheus targets scraped by short name, FQDN or
// address all name this host. A resolver that does not answer within 2 s
// costs the FQDN only.
func instanceAliases(cfg config.Config, src hostNames) []string {
	out := slices.Clone(cfg.InstanceAliases)
	if h, err := src.hostname(); err == nil && h != "" {
		if short, _, ok := strings.Cut(h, "."); ok {
			out = append(out, short)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if f, err := src.fqdn(ctx, h); err == nil {
			if f = strings.TrimSuffix(f, "."); f != "" && !strings.EqualFold(f, h) {
				out = append(out, f)
			}
		}
		cancel()
	}
	if as, err := src.addrs(); err == nil {
		for _, a := range as {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() {
				out = append(out, p.Addr().String())
			}
		}
	}
	return out
}

// instanceName is this host's name in alerts.
func instanceName(cfg config.Config) string {
	if cfg.InstanceName != "" {
		return cfg.InstanceName
	}
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}
