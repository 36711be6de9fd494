// Package config reads shaperd's YAML configuration file. Every key is the
// name of a `shaperd run` flag with '_' for '-'; a flag given on the command
// line wins over the file.
package config

import (
	"fmt"
	"os"
	"strings"

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
	if c.ForwarderNice != nil && (*c.ForwarderNice < -20 || *c.ForwarderNice > 19) {
		return fmt.Errorf("forwarder_nice %d: want -20..19", *c.ForwarderNice)
	}
	return nil
}
