package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shaperd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Check reports every problem of a file, each at the line and column of
// its key, with the key's path; the first one found does not hide the
// others.
func TestCheckReportsEveryProblemWithItsPlace(t *testing.T) {
	p := writeFile(t, `log_level: loud
forwarder_nice: -30
profiles:
  quarantine:
    ladder: false
  strict.v2:
    ladder: false
groups:
  g1:
    router: ""
alerts_token: short
`)
	want := []string{
		`1:1: log_level "loud": want debug, info, warn or error`,
		`2:1: forwarder_nice -30: want -20..19`,
		`4:3: profiles.quarantine.limits: a profile with ladder: false needs limits (for example pps: 10000)`,
		`6:3: profiles.strict.v2.limits: a profile with ladder: false needs limits`,
		`9:3: groups.g1: want a router port and at least one member pattern`,
		`11:1: alerts_token: 5 bytes; use at least 16`,
	}
	got := Check(p)
	if len(got) != len(want) {
		t.Fatalf("%d problems, want %d:\n%s", len(got), len(want), problems(got))
	}
	for i, w := range want {
		if s := got[i].String(); !strings.HasPrefix(s, w) {
			t.Errorf("problem %d: %q, want it to start with %q", i, s, w)
		}
	}
}

func problems(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

// A file that is not valid YAML, or has an unknown key, is one problem at
// the parser's place.
func TestCheckParseErrors(t *testing.T) {
	for _, tt := range []struct{ body, want string }{
		{"log_level: info\nlog_levl: info\n", `2:1: unknown field "log_levl"`},
		{"log_level: [info\n", "1:"},
	} {
		got := Check(writeFile(t, tt.body))
		if len(got) != 1 || !strings.HasPrefix(got[0].String(), tt.want) {
			t.Errorf("%q: %s, want one problem starting with %q", tt.body, problems(got), tt.want)
		}
	}
}

// The shipped example config has no problem, and neither has an empty
// file (every default).
func TestCheckShippedConfig(t *testing.T) {
	for _, p := range []string{"../deploy/shaperd.yaml", writeFile(t, "")} {
		if got := Check(p); len(got) != 0 {
			t.Errorf("%s: %s", p, problems(got))
		}
	}
	if got := Check(filepath.Join(t.TempDir(), "none.yaml")); len(got) != 1 {
		t.Errorf("a missing file: %s, want one problem", problems(got))
	}
}

// A baselines entry's problem is reported at its key, inside the list.
func TestCheckBaselines(t *testing.T) {
	p := writeFile(t, `baselines:
  - port: "vm-*"
    to_vm_new_conn_per_source: 10/min
    pps: 50000
  - port: "tap[x"
    new_conn_rate: 10/week
  - port: web
  - pps: 5
`)
	want := []string{
		`5:5: baselines.1.port "tap[x": malformed pattern`,
		`6:5: baselines.1.new_conn_rate "10/week": unit "week"`,
		`7:5: baselines.2: no limit given: set at least one of new_conn_rate`,
		`8:5: baselines.3: no port`,
	}
	got := Check(p)
	if len(got) != len(want) {
		t.Fatalf("%d problems, want %d:\n%s", len(got), len(want), problems(got))
	}
	for i, w := range want {
		if s := got[i].String(); !strings.HasPrefix(s, w) {
			t.Errorf("problem %d: %q, want it to start with %q", i, s, w)
		}
	}
	c, err := Load(writeFile(t, "baselines:\n  - port: vm-*\n    to_vm_new_conn_per_source: 10/min\n"))
	if err != nil || len(c.Baselines) != 1 || c.Baselines[0].Port != "vm-*" || c.Baselines[0].ToVMNewConnPerSource != "10/min" {
		t.Fatalf("load: %+v, %v", c.Baselines, err)
	}
}
