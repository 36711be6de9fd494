package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
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

// TestQuotaTenantCommands drives add, list, report, status and remove over
// a real control socket, against a daemon on a fake backend.
func TestQuotaTenantCommands(t *testing.T) {
	sock, fb := startFake(t)
	dir := t.TempDir()
	add := []string{"quota", "add", "acme", "--ports", "vm-1-00c9,vm-2-00c9", "--commit", "100mbit", "--interval", "1m", "--period", "1d", "--burst-ceiling", "200mbit"}
	code, out, errOut := cli(t, sock, add...)
	if code != 0 || !strings.Contains(out, "acme") || !strings.Contains(out, "vm-1-00c9(spliced)") {
		t.Fatalf("add: exit %d\n%s%s", code, out, errOut)
	}
	if !fb.Spliced("vm-1-00c9") || !fb.Spliced("vm-2-00c9") {
		t.Fatal("ports not spliced")
	}
	// release --all ends quarantines, and says what it keeps: the ports
	// spliced for their tenant.
	if code, out, errOut := cli(t, sock, "release", "--all"); code != 0 || !strings.Contains(out, "kept vm-1-00c9: spliced for quota tenant acme") ||
		!strings.Contains(out, "kept vm-2-00c9") || !fb.Spliced("vm-1-00c9") {
		t.Errorf("release --all with a tenant: exit %d\n%s%s", code, out, errOut)
	}
	// The same again: refused by the daemon, exit 2.
	if code, _, errOut := cli(t, sock, add...); code != 2 || !strings.Contains(errOut, "tenant acme exists") {
		t.Errorf("second add: exit %d, %s", code, errOut)
	}

	code, out, _ = cli(t, sock, "quota", "list", "--json")
	var l struct {
		Tenants []struct {
			Tenant   string            `json:"tenant"`
			Settings map[string]string `json:"settings"`
			Ports    []struct{ Port, State string }
		} `json:"tenants"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.Tenants) != 1 || l.Tenants[0].Settings["burst-ceiling"] != "200mbit" ||
		l.Tenants[0].Settings["percentile"] != "95" || len(l.Tenants[0].Ports) != 2 || l.Tenants[0].Ports[1].State != "spliced" {
		t.Errorf("list --json: exit %d\n%s", code, out)
	}
	if code, out, _ := cli(t, sock, "quota", "list"); code != 0 || !strings.Contains(out, "BURST USED/LEFT") || !strings.Contains(out, "100.00 Mbit/s") {
		t.Errorf("list: exit %d\n%s", code, out)
	}

	plot := filepath.Join(dir, "acme.svg")
	code, out, errOut = cli(t, sock, "quota", "report", "acme", "--json", "--plot", plot)
	var rep map[string]json.RawMessage
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
		t.Fatalf("report: exit %d\n%s%s", code, out, errOut)
	}
	var keys []string
	for k := range rep {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if want := []string{"burst_intervals_left", "burst_intervals_used", "commit_bps", "percentile_bps", "projected_bps", "samples", "tenant"}; !slices.Equal(keys, want) {
		t.Errorf("report keys %v, want %v", keys, want)
	}
	if svg, err := os.ReadFile(plot); err != nil || !strings.Contains(string(svg), "<svg") || !strings.Contains(string(svg), "95th percentile") {
		t.Errorf("plot: %v", err)
	}
	if code, out, _ := cli(t, sock, "quota", "report", "acme"); code != 0 || !strings.Contains(out, "burst intervals: 0 used, 72 left") {
		t.Errorf("report: exit %d\n%s", code, out)
	}

	code, out, _ = cli(t, sock, "status", "--json")
	var st struct {
		Quarantines []json.RawMessage `json:"quarantines"`
		Quotas      []map[string]json.RawMessage
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Quarantines) != 0 || len(st.Quotas) != 1 || st.Quotas[0]["ports"] == nil || st.Quotas[0]["commit_bps"] == nil {
		t.Errorf("status --json: exit %d\n%s", code, out)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"quota", "report", "nobody"}, 3, "no such tenant nobody"},
		{[]string{"quota", "report", "acme", "--plot", filepath.Join(dir, "x.png")}, 2, "the chart is SVG"},
		{[]string{"quota", "remove", "nobody"}, 3, "no such tenant nobody"},
		{[]string{"quota", "add", "beta", "--ports", "vm-9", "--commit", "1mbit"}, 2, "vm-9: no such port"},
		{[]string{"quota", "add", "beta", "--ports", "routed-0", "--commit", "1mbit"}, 2, "routed-0"},
		{[]string{"quota", "add", "beta", "--ports", "vm-1-00c9", "--commit", "1mbit"}, 2, "belongs to tenant acme"},
		{[]string{"quota", "add"}, 2, "exactly one TENANT"},
		{[]string{"quota", "remove"}, 2, "exactly one TENANT"},
	} {
		code, _, errOut := cli(t, sock, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want exit %d mentioning %q", c.args, code, errOut, c.code, c.want)
		}
	}

	if code, out, _ := cli(t, sock, "quota", "remove", "acme"); code != 0 || !strings.Contains(out, "removed tenant acme") {
		t.Errorf("remove: exit %d\n%s", code, out)
	}
	if fb.Spliced("vm-1-00c9") || fb.Spliced("vm-2-00c9") {
		t.Error("ports still spliced after remove")
	}
	if code, out, _ := cli(t, sock, "quota", "list"); code != 0 || !strings.Contains(out, "no quota tenants") {
		t.Errorf("list after remove: exit %d\n%s", code, out)
	}
}

// TestQuotaAddValidatesLocally: bad settings are refused (exit 2) before
// the daemon is asked; a missing daemon is a runtime error (exit 1).
func TestQuotaAddValidatesLocally(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "none.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"acme", "--ports", "vm-1"}, "--commit is required"},
		{[]string{"acme", "--commit", "1mbit"}, "--ports is required"},
		{[]string{"a/b", "--ports", "vm-1", "--commit", "1mbit"}, `tenant "a/b"`},
		{[]string{"acme", "--ports", "vm-1", "--commit", "1mbit", "--soft", "120%"}, "--soft 120% is outside"},
		{[]string{"acme", "--ports", "vm-1", "--commit", "1mbit", "--direction", "up"}, "--direction \"up\""},
		{[]string{"acme", "--ports", "vm-1", "--commit", "1mbit", "--period", "fortnight"}, "--period \"fortnight\""},
		{[]string{"acme", "--ports", "vm-1", "--commit", "1mbit", "--percentile", "0"}, "--percentile 0 is outside"},
		{[]string{"acme", "--ports", "vm-1", "--commit", "1mbit", "--exponent", "-1"}, "--exponent -1 is outside"},
		{[]string{"acme", "--ports", "vm-1", "--commit", "1mbit", "--colour", "red"}, "unknown flag: --colour"},
	} {
		code, _, errOut := cli(t, nowhere, append([]string{"quota", "add"}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want exit 2 mentioning %q", c.args, code, errOut, c.want)
		}
	}
	if code, _, errOut := cli(t, nowhere, "quota", "add", "acme", "--ports", "vm-1", "--commit", "1mbit"); code != 1 || !strings.Contains(errOut, "daemon not running") {
		t.Errorf("no daemon: exit %d, %q; want exit 1", code, errOut)
	}
}
