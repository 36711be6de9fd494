// Package config reads shaperd's YAML configuration file. Every key is the
// name of a `shaperd run` flag with '_' for '-'; a flag given on the command
// line wins over the file.
package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/baseline"
	"github.com/shaperd/shaperd/internal/smallfile"
	"github.com/shaperd/shaperd/profile"
)

// Config is the daemon's configuration. The zero value means "all defaults".
type Config struct {
	Socket    string `yaml:"socket"`
	StateDir  string `yaml:"state_dir"`
	LogLevel  string `yaml:"log_level"`  // debug, info, warn, error
	LogFormat string `yaml:"log_format"` // text or json
	// ForwarderNice is the scheduling priority of the forwarding threads,
	// -20..19; nil means the default, -10.
	ForwarderNice *int `yaml:"forwarder_nice"`
	// Coalesce is the forwarders' latency budget for sharing one wake-up
	// among several frames, as a Go duration ("300us"), 0 to 10ms; "0"
	// turns it off; "" means the default (see the run flag --coalesce).
	Coalesce string `yaml:"coalesce"`
	// TapQueues is how many queues each VM and net tap of a splice has,
	// one forwarding goroutine each, 1 to 16; nil means the default (see
	// the run flag --tap-queues).
	TapQueues *int `yaml:"tap_queues"`
	// MetricsAddr is the host:port where Prometheus metrics are served at
	// /metrics; nil means the default, 127.0.0.1:9750, and "" turns the
	// endpoint off.
	MetricsAddr *string `yaml:"metrics_addr"`
	// PendingTTL is how long a quarantine of a missing port waits for it,
	// as a Go duration ("24h").
	PendingTTL string `yaml:"pending_ttl"`
	// SocketGroup owns the control socket; its members may use it.
	SocketGroup string `yaml:"socket_group"`

	// Watch lists the glob patterns of the ports whose counters are watched
	// for floods; none by default, so nothing is spliced unless asked.
	Watch []string `yaml:"watch"`
	// Exclude lists patterns never flagged, even if they match Watch.
	Exclude []string `yaml:"exclude"`
	// WatchInterval is how often the watched ports' counters are read
	// ("500ms").
	WatchInterval string `yaml:"watch_interval"`
	// FlagAfter is how long a port must stay above the quarantine
	// profile's threshold to be flagged ("1s").
	FlagAfter string `yaml:"flag_after"`
	// MaxAuto caps the concurrent automatic quarantines; nil means 10.
	MaxAuto *int `yaml:"max_auto"`
	// DryRun flags and reports without splicing.
	DryRun bool `yaml:"dry_run"`

	// AlertsToken is the bearer token of the Alertmanager webhook; without
	// one the endpoint is off.
	AlertsToken string `yaml:"alerts_token"`
	// AlertsTokenFile names a file that holds the token (its first line),
	// instead of AlertsToken; systemd's LoadCredential= credential
	// "alerts_token" is read when neither is set. See LoadSecrets.
	AlertsTokenFile string `yaml:"alerts_token_file"`
	// AlertsAddr is the host:port of a listener of the webhook's own, so
	// that the metrics can stay on localhost; "" serves the webhook on the
	// metrics listener.
	AlertsAddr string `yaml:"alerts_addr"`
	// AlertsCert and AlertsKey serve the webhook over TLS: on its own
	// listener with AlertsAddr, else on the metrics listener (and the
	// metrics with it).
	AlertsCert string `yaml:"alerts_cert"`
	AlertsKey  string `yaml:"alerts_key"`
	// InstanceName is this host's name in alerts' instance label; "" means
	// the hostname.
	InstanceName string `yaml:"instance_name"`
	// InstanceAliases are more names of this host that an alert's
	// instance label may carry (a DNS alias, a service address); its
	// short name, FQDN and interface addresses are known without them.
	InstanceAliases []string `yaml:"instance_aliases"`
	// AlertsAllowNoInstance lets an alert without an instance label act
	// on this host; by default such an alert is ignored, since every host
	// that receives it would act on it.
	AlertsAllowNoInstance bool `yaml:"alerts_allow_no_instance"`

	// Profiles are named sets of thresholds, limits and ladders; see
	// package profile for the keys.
	Profiles map[string]profile.Raw `yaml:"profiles"`
	// Groups name the router port of a tenant's VMs, for correlation.
	Groups map[string]Group `yaml:"groups"`
	// Baselines are kernel baseline limits (nftables, no splice) for every
	// port whose name matches a pattern, installed when it appears and
	// removed when it goes; the first matching entry applies, and a
	// baseline set by the command line for an exact name wins over all.
	Baselines []Baseline `yaml:"baselines"`
}

// Baseline is one entry of baselines: a port pattern (a glob, as watch)
// and its limits, with the keys of the baseline command's flags ('_' for
// '-').
type Baseline struct {
	Port               string `yaml:"port"`
	api.BaselineLimits `yaml:",inline"`
}

// Group is a tenant's set of VM ports and the router port their traffic
// goes to.
type Group struct {
	Router  string   `yaml:"router"`
	Members []string `yaml:"members"`
}

// MaxBytes bounds a config file; only a regular file (or a link to one) is
// read.
const MaxBytes = 1 << 20

// Load reads and validates the file at path. Errors carry the line and column
// of the offending key or value.
func Load(path string) (Config, error) {
	var c Config
	data, err := smallfile.Read(path, MaxBytes, true)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := decode(data, &c); err != nil {
		return Config{}, fmt.Errorf("config %s: %s", path, redact(strings.TrimSpace(yaml.FormatError(err, false, false))))
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// decode is yaml.UnmarshalWithOptions(data, c, yaml.Strict()), except that
// a panic of the YAML library is an error: goccy/go-yaml v1.19.2
// dereferences nil on a list key whose value is only a tag ("watch:
// !!seq", found by FuzzLoad), and a config file, which SIGHUP reads again,
// must not take the daemon down. This is the one place the library
// decodes; the recover covers nothing of shaperd's own.
func decode(data []byte, c *Config) (err error) {
	defer func() {
		if r := recover(); r != nil {
			*c = Config{}
			err = fmt.Errorf("the YAML library failed on this file (%v): look for a tag (!) or an anchor (&) without a value", r)
		}
	}()
	return yaml.UnmarshalWithOptions(data, c, yaml.Strict())
}

// quoted matches a double-quoted string in a parser's message.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// plain is what a config key or a simple value looks like.
var plain = regexp.MustCompile(`^"[A-Za-z0-9_.\-]{0,40}"$`)

// redact hides the text of the file that a parser's message quotes, unless
// it looks like a config key or a simple value: --config pointed at a file
// that is not a config (/etc/shadow) must not have its lines echoed into
// the log.
func redact(msg string) string {
	return quoted.ReplaceAllStringFunc(msg, func(q string) string {
		if plain.MatchString(q) {
			return q
		}
		return "(text not shown: not a config key)"
	})
}

// MinTokenBytes is the shortest webhook token accepted.
const MinTokenBytes = 16

// LoadSecrets sets AlertsToken from AlertsTokenFile, or, when neither is
// given, from systemd's credential "alerts_token" ($CREDENTIALS_DIRECTORY,
// LoadCredential=), and checks the token is at least MinTokenBytes long.
// The file's trailing newline is not part of the token.
func (c *Config) LoadSecrets() error {
	file := c.AlertsTokenFile
	switch {
	case c.AlertsToken != "" && file != "":
		return errors.New("alerts_token and alerts_token_file: give one of them")
	case c.AlertsToken == "" && file == "":
		if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
			if p := filepath.Join(dir, "alerts_token"); fileExists(p) {
				file = p
			}
		}
	}
	if file != "" {
		b, err := smallfile.Read(file, 4096, true)
		if err != nil {
			return fmt.Errorf("alerts_token_file: %w", err)
		}
		tok, _, _ := strings.Cut(string(b), "\n")
		c.AlertsToken = strings.TrimSuffix(tok, "\r")
		if c.AlertsToken == "" {
			return fmt.Errorf("alerts_token_file %s: the first line is empty", file)
		}
	}
	if n := len(c.AlertsToken); n > 0 && n < MinTokenBytes {
		return fmt.Errorf("alerts_token: %d bytes; use at least %d (e.g. head -c 24 /dev/urandom | base64)", n, MinTokenBytes)
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Validate checks values that have a fixed set of choices. It reports
// every problem it finds, one per line, each starting with its key's path.
func (c Config) Validate() error {
	var errs []error
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: want text or json", c.LogFormat))
	}
	if c.PendingTTL != "" {
		if d, err := time.ParseDuration(c.PendingTTL); err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("pending_ttl %q: want a positive duration such as 24h", c.PendingTTL))
		}
	}
	if c.MetricsAddr != nil && *c.MetricsAddr != "" {
		_, port, err := net.SplitHostPort(*c.MetricsAddr)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 {
			errs = append(errs, fmt.Errorf("metrics_addr %q: want host:port such as 127.0.0.1:9750, or \"\" to turn metrics off", *c.MetricsAddr))
		}
	}
	if c.Coalesce != "" {
		if d, err := time.ParseDuration(c.Coalesce); err != nil || d < 0 || d > 10*time.Millisecond {
			errs = append(errs, fmt.Errorf("coalesce %q: want a duration from 0 (off) to 10ms, such as 300us", c.Coalesce))
		}
	}
	if c.TapQueues != nil && (*c.TapQueues < 1 || *c.TapQueues > 16) {
		errs = append(errs, fmt.Errorf("tap_queues %d: want 1 to 16", *c.TapQueues))
	}
	if c.ForwarderNice != nil && (*c.ForwarderNice < -20 || *c.ForwarderNice > 19) {
		errs = append(errs, fmt.Errorf("forwarder_nice %d: want -20..19", *c.ForwarderNice))
	}
	for _, x := range []struct{ key, v string }{{"watch_interval", c.WatchInterval}, {"flag_after", c.FlagAfter}} {
		if x.v == "" {
			continue
		}
		if d, err := time.ParseDuration(x.v); err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s %q: want a positive duration such as 500ms", x.key, x.v))
		}
	}
	if c.MaxAuto != nil && *c.MaxAuto < 0 {
		errs = append(errs, fmt.Errorf("max_auto %d: want 0 or more", *c.MaxAuto))
	}
	if c.AlertsAddr != "" {
		_, port, err := net.SplitHostPort(c.AlertsAddr)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 {
			errs = append(errs, fmt.Errorf("alerts_addr %q: want host:port such as 0.0.0.0:9751, or \"\" to serve the webhook on the metrics listener", c.AlertsAddr))
		}
	}
	if (c.AlertsCert == "") != (c.AlertsKey == "") {
		errs = append(errs, fmt.Errorf("alerts_cert and alerts_key go together: give both or neither"))
	}
	if _, err := profile.BuildSet(c.Profiles); err != nil {
		errs = append(errs, err)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Groups)) {
		if g := c.Groups[name]; g.Router == "" || len(g.Members) == 0 {
			errs = append(errs, fmt.Errorf("groups.%s: want a router port and at least one member pattern", name))
		}
	}
	errs = append(errs, c.validateBaselines()...)
	return errors.Join(errs...)
}

// validateBaselines checks baselines; each error starts with the path of
// the key to fix (baselines.N.port, baselines.N.pps).
func (c Config) validateBaselines() []error {
	var errs []error
	for i, b := range c.Baselines {
		if b.Port == "" {
			errs = append(errs, fmt.Errorf("baselines.%d: no port: give a port pattern such as vm-*", i))
		} else if _, err := path.Match(b.Port, ""); err != nil || strings.ContainsAny(b.Port, "/ \t\n") {
			errs = append(errs, fmt.Errorf("baselines.%d.port %q: malformed pattern; use a glob such as vm-*", i, b.Port))
		}
		_, err := baseline.ParseLimits(b.BaselineLimits)
		var fe *baseline.FlagError
		switch {
		case err == nil:
		case errors.As(err, &fe):
			errs = append(errs, fmt.Errorf("baselines.%d.%s %v", i, strings.ReplaceAll(fe.Flag, "-", "_"), fe.Err))
		default:
			errs = append(errs, fmt.Errorf("baselines.%d: %v", i, strings.ReplaceAll(strings.ReplaceAll(err.Error(), "--", ""), "-", "_")))
		}
	}
	return errs
}

// ProfileSet returns the validated profiles; Load has checked them.
func (c Config) ProfileSet() profile.Set {
	s, err := profile.BuildSet(c.Profiles)
	if err != nil {
		return profile.Set{profile.Quarantine: profile.Default()}
	}
	return s
}
