// Package config reads shaperd's YAML configuration file. Every key is the
// name of a `shaperd run` flag with '_' for '-'; a flag given on the command
// line wins over the file.
package config

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
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
	// MetricsAddr is the host:port where Prometheus metrics are served at
	// /metrics; nil means the default, 127.0.0.1:9750, and "" turns the
	// endpoint off.
	MetricsAddr *string `yaml:"metrics_addr"`
	// PendingTTL is how long a quarantine of a missing port waits for it,
	// as a Go duration ("24h").
	PendingTTL string `yaml:"pending_ttl"`
	// SocketGroup owns the control socket; its members may use it.
	SocketGroup string `yaml:"socket_group"`
}

// Load reads and validates the file at path. Errors carry the line and column
// of the offending key or value.
func Load(path string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := yaml.UnmarshalWithOptions(data, &c, yaml.Strict()); err != nil {
		return Config{}, fmt.Errorf("config %s: %s", path, strings.TrimSpace(yaml.FormatError(err, false, false)))
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks values that have a fixed set of choices.
func (c Config) Validate() error {
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return fmt.Errorf("log_format %q: want text or json", c.LogFormat)
	}
	if c.PendingTTL != "" {
		if d, err := time.ParseDuration(c.PendingTTL); err != nil || d <= 0 {
			return fmt.Errorf("pending_ttl %q: want a positive duration such as 24h", c.PendingTTL)
		}
	}
	if c.MetricsAddr != nil && *c.MetricsAddr != "" {
		_, port, err := net.SplitHostPort(*c.MetricsAddr)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 {
			return fmt.Errorf("metrics_addr %q: want host:port such as 127.0.0.1:9750, or \"\" to turn metrics off", *c.MetricsAddr)
		}
	}
	if c.ForwarderNice != nil && (*c.ForwarderNice < -20 || *c.ForwarderNice > 19) {
		return fmt.Errorf("forwarder_nice %d: want -20..19", *c.ForwarderNice)
	}
	return nil
}
