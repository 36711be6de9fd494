package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestDashboard keeps deploy/grafana/shaperd.json in step with the
// collector: it is valid JSON, and every shaperd_ metric it queries exists.
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("../deploy/grafana/shaperd.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
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
	if len(known) < 10 {
		t.Fatalf("found only %d metric names in the collector's descriptions: %v", len(known), known)
	}
	used := map[string]bool{}
	name := regexp.MustCompile(`shaperd_[a-z_]+`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				used[n] = true
				if !known[n] {
					t.Errorf("panel %q queries %s, which shaperd does not export", p.Title, n)
				}
			}
		}
	}
	for _, n := range []string{
		"shaperd_frames_total", "shaperd_bytes_total", "shaperd_drops_total", "shaperd_bucket_fill_ratio", "shaperd_quarantines",
		// The ladder and the watch (issue 6), the quotas (issue 8).
		"shaperd_quarantine_stage_info", "shaperd_ladder_transitions_total", "shaperd_flags_total", "shaperd_auto_quarantines_total",
		"shaperd_alerts_total", "shaperd_quota_percentile_bytes_per_second", "shaperd_quota_commit_bytes_per_second",
		"shaperd_quota_interval_used_bytes", "shaperd_quota_interval_quota_bytes", "shaperd_quota_packets_total",
		"shaperd_quota_burst_intervals_left", "shaperd_tap_drops_total",
	} {
		if !used[n] {
			t.Errorf("the dashboard does not use %s", n)
		}
	}
}
