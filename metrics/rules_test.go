package metrics

import (
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shaperd/shaperd/daemon"
)

// TestAlertRules keeps deploy/prometheus/shaperd-rules.yml in step with the
// collector: every shaperd_ metric its rules query exists, every health
// event has a rule, and the stage and tap-drop rules are there. (promtool
// checks the file's syntax and runs its unit tests: TestMonitoringConfigs
// in integration/.)
func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile("../deploy/prometheus/shaperd-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name     string `yaml:"name"`
			Interval string `yaml:"interval"`
			Rules    []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatalf("rule file: %v", err)
	}
	known := map[string]bool{}
	ch := make(chan *prometheus.Desc, 64)
	NewCollector(&fakeSource{}, nil).Describe(ch)
	close(ch)
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if m := fq.FindStringSubmatch(d.String()); m != nil {
			known[m[1]] = true
		}
	}
	name := regexp.MustCompile(`shaperd_[a-z_]+`)
	event := regexp.MustCompile(`shaperd_health_events_total\{event="([a-z_]+)"\}`)
	var events []string
	used := map[string]bool{}
	for _, g := range file.Groups {
		if g.Interval != "" {
			t.Errorf("group %s sets interval %s: the server's evaluation_interval must apply", g.Name, g.Interval)
		}
		for _, r := range g.Rules {
			for _, n := range name.FindAllString(r.Expr, -1) {
				used[n] = true
				if !known[n] {
					t.Errorf("rule %s queries %s, which shaperd does not export", r.Alert, n)
				}
			}
			for _, m := range event.FindAllStringSubmatch(r.Expr, -1) {
				events = append(events, m[1])
			}
		}
	}
	for _, e := range daemon.HealthEvents {
		if !slices.Contains(events, e) {
			t.Errorf("no rule alerts on the health event %s", e)
		}
	}
	for _, e := range events {
		if !slices.Contains(daemon.HealthEvents, e) {
			t.Errorf("a rule alerts on the health event %q, which the daemon does not count", e)
		}
	}
	for _, n := range []string{"shaperd_quarantine_stage_info", "shaperd_tap_drops_total"} {
		if !used[n] {
			t.Errorf("no rule queries %s", n)
		}
	}
}
