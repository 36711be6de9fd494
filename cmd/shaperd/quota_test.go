package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuotaSimulate runs `shaperd quota simulate` offline on a trace file:
// no daemon, no socket.
func TestQuotaSimulate(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.csv")
	// One day of 5-minute intervals (288, 14 free): 40 Mbit/s, with a
	// 300 Mbit/s burst for the first 2 hours and a 150 Mbit/s one later.
	os.WriteFile(trace, []byte("seconds_from_start,offered_rate\n0,40mbit\n3600,300mbit\n10800,40mbit\n40000,150mbit\n50000,40mbit\n"), 0o644)
	plot := filepath.Join(dir, "plot.svg")
	code, out, errOut := cli(t, "", "quota", "simulate", "--commit", "100mbit", "--trace", trace, "--period", "1d", "--json", "--plot", plot)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var res map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(res) != 2 || res["offered_bytes"] == nil || res["policies"] == nil {
		t.Fatalf("keys: %s", out)
	}
	type outcome struct {
		BilledBPS      uint64 `json:"billed_bps"`
		DeliveredBytes int64  `json:"delivered_bytes"`
		DroppedBytes   int64  `json:"dropped_bytes"`
	}
	var pol map[string]outcome
	if err := json.Unmarshal(res["policies"], &pol); err != nil {
		t.Fatal(err)
	}
	var offered int64
	json.Unmarshal(res["offered_bytes"], &offered)
	// 40 Mbit/s for 22.22 h, 300 for 2 h, 150 for 2.78 h... in bytes.
	want := int64((40e6*(86400-7200-10000) + 300e6*7200 + 150e6*10000) / 8)
	if offered != want {
		t.Errorf("offered %d, want %d", offered, want)
	}
	for _, name := range []string{"shaperd", "flat", "seed75", "oracle"} {
		o, ok := pol[name]
		if !ok {
			t.Fatalf("no %s in %s", name, out)
		}
		if o.BilledBPS > 100e6 || o.DeliveredBytes+o.DroppedBytes != offered {
			t.Errorf("%s: %+v", name, o)
		}
	}
	if s := pol["shaperd"]; s.DeliveredBytes <= pol["flat"].DeliveredBytes || s.DeliveredBytes > pol["oracle"].DeliveredBytes {
		t.Errorf("shaperd %+v, flat %+v, oracle %+v", s, pol["flat"], pol["oracle"])
	}
	if svg, err := os.ReadFile(plot); err != nil || !strings.Contains(string(svg), "95th percentile") {
		t.Errorf("plot: %v", err)
	}

	// The human table.
	code, out, _ = cli(t, "", "quota", "simulate", "--commit", "100mbit", "--trace", trace, "--period", "1d")
	if code != 0 || !strings.Contains(out, "shaperd") || !strings.Contains(out, "of oracle") {
		t.Errorf("table: exit %d\n%s", code, out)
	}

	// A synthetic month, saved, replays the same from the file.
	saved := filepath.Join(dir, "synthetic.csv")
	code, out1, errOut := cli(t, "", "quota", "simulate", "--commit", "100mbit", "--synthetic", "3", "--save-trace", saved, "--json")
	if code != 0 {
		t.Fatalf("synthetic: exit %d: %s", code, errOut)
	}
	code, out2, _ := cli(t, "", "quota", "simulate", "--commit", "100mbit", "--trace", saved, "--json")
	if code != 0 || out1 != out2 {
		t.Errorf("saved synthetic trace replays differently:\n%s\n%s", out1, out2)
	}
}

func TestQuotaSimulateErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.csv")
	os.WriteFile(good, []byte("0,1mbit\n"), 0o644)
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("0,1mbit\n30,2mbit\n20,3mbit\n"), 0o644)
	late := filepath.Join(dir, "late.csv")
	os.WriteFile(late, []byte("0,1mbit\n2600000,2mbit\n"), 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--trace", good}, "--commit is required"},
		{[]string{"--commit", "100mbit"}, "--trace FILE is required"},
		{[]string{"--commit", "100mb", "--trace", good}, `unknown unit "mb"`},
		{[]string{"--commit", "100mbit", "--trace", good, "--burst-ceiling", "50mbit"}, "--burst-ceiling 50mbit is below --commit 100mbit"},
		{[]string{"--commit", "100mbit", "--trace", good, "--period", "month"}, "replay a fixed length"},
		{[]string{"--commit", "100mbit", "--trace", good, "--interval", "7m"}, "--interval 7m0s does not divide --period 30d"},
		{[]string{"--commit", "100mbit", "--trace", bad}, "line 3: 20s is not after the previous line's 30s (line 2)"},
		{[]string{"--commit", "100mbit", "--trace", late}, "line 2: 2600000s is at or after the end of the 30d period"},
		{[]string{"--commit", "100mbit", "--trace", filepath.Join(dir, "missing.csv")}, "no such file"},
		{[]string{"--commit", "100mbit", "--trace", good, "--synthetic", "1"}, "not both"},
	}
	for _, c := range cases {
		code, _, errOut := cli(t, "", append([]string{"quota", "simulate"}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want exit 2 mentioning %q", c.args, code, errOut, c.want)
		}
	}
}
