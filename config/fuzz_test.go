package config

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"

	"github.com/goccy/go-yaml"

	"github.com/shaperd/shaperd/internal/fuzzcorpus"
	"github.com/shaperd/shaperd/profile"
)

// FuzzLoad feeds the config loader arbitrary files, as --config and SIGHUP
// would. Beyond not panicking: a file that loads validates, and writes
// back (yaml.Marshal) as a file that loads to the same Config (written
// the same way); Check, the
// `shaperd check-config` path, agrees with Load: a file Load refuses has a
// problem, a file Load accepts (with valid secrets) has none. The seed
// corpus is in testdata/fuzz/FuzzLoad (see TestFuzzCorpus); the shipped
// configs (deploy/shaperd.yaml, scripts/netns/lab.yaml) are added as they
// are now.
func FuzzLoad(f *testing.F) {
	for _, b := range shippedConfigs(f) {
		f.Add(b)
	}
	dir := f.TempDir()
	// No systemd credential: LoadSecrets must not read one from the
	// environment of whoever runs the fuzzer.
	os.Unsetenv("CREDENTIALS_DIRECTORY")
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(p)
		// Check reads the file the input's alerts_token_file names; it
		// is left out for those.
		var raw Config
		namesFile := decode(data, &raw) == nil && raw.AlertsTokenFile != ""
		if err != nil {
			if !reflect.DeepEqual(c, Config{}) {
				t.Fatalf("Load failed (%v) and returned %+v", err, c)
			}
			if !namesFile && len(Check(p)) == 0 {
				t.Fatalf("Load refused the file (%v), Check found no problem", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a config that does not validate: %v", err)
		}
		if _, ok := c.ProfileSet()[profile.Quarantine]; !ok {
			t.Fatal("a loaded config has no quarantine profile")
		}
		if withSecrets := c; !namesFile && withSecrets.LoadSecrets() == nil {
			if ps := Check(p); len(ps) != 0 {
				t.Fatalf("Load and LoadSecrets accepted the file, Check found %v", ps)
			}
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("a loaded config does not marshal: %v", err)
		}
		if err := os.WriteFile(p, out, 0o600); err != nil {
			t.Fatal(err)
		}
		c2, err := Load(p)
		if err != nil {
			t.Fatalf("a loaded config, written back, does not load: %v\n%s", err, out)
		}
		// Compared as written: a nil list and an empty one are the same
		// config.
		if out2, err := yaml.Marshal(c2); err != nil || string(out2) != string(out) {
			t.Fatalf("round trip changed the config (%v):\n%s\nread back as\n%s", err, out, out2)
		}
	})
}

// shippedConfigs are the example configs the repository ships, as they are
// now.
func shippedConfigs(t testing.TB) [][]byte {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..")
	var out [][]byte
	for _, p := range []string{"deploy/shaperd.yaml", "scripts/netns/lab.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// corpusSeeds are the seed files: every key with a good value and a bad
// one, YAML's odd corners (anchors, tags, flow style, documents), and the
// README's profile examples.
var corpusSeeds = map[string]string{
	"empty":           "",
	"comment":         "# nothing\n",
	"ok":              "socket: /tmp/s.sock\nlog_format: json\n",
	"unknown-key":     "socket: /x\nsokcet: /y\n",
	"bad-syntax":      "socket: [\n",
	"bad-value":       "log_level: loud\n",
	"metrics-v6":      "metrics_addr: '[::1]:9751'\n",
	"metrics-off":     "metrics_addr: ''\n",
	"metrics-no-port": "metrics_addr: 127.0.0.1\n",
	"metrics-port-0":  "metrics_addr: ':0'\n",
	"coalesce":        "coalesce: 300us\n",
	"coalesce-long":   "coalesce: 20ms\n",
	"tap-queues":      "tap_queues: 16\nforwarder_nice: -20\n",
	"tap-queues-bad":  "tap_queues: 17\nforwarder_nice: 20\n",
	"durations":       "pending_ttl: 24h\nwatch_interval: 500ms\nflag_after: 1s\n",
	"durations-bad":   "pending_ttl: -1h\nwatch_interval: 0s\nflag_after: 1\n",
	"watch":           "watch: [\"vm-*\", \"tap[0-9]*\"]\nexclude: [vm-uplink]\nmax_auto: 0\ndry_run: true\n",
	"max-auto-neg":    "max_auto: -1\n",
	"alerts":          "alerts_token: 0123456789abcdef\nalerts_addr: 0.0.0.0:9751\ninstance_name: hv1\ninstance_aliases: [hv1-mgmt, 192.0.2.1]\nalerts_allow_no_instance: true\n",
	"alerts-short":    "alerts_token: short\n",
	"alerts-cert":     "alerts_cert: /etc/c.pem\n",
	"profile-police":  "profiles:\n  police-10k:\n    ladder: false\n    limits: {pps: 10000, to-vm-pps: 20000, bypass: \"22,3389\"}\n",
	"profile-ladder": "profiles:\n  quarantine:\n    threshold_pps: 50000\n    threshold_bps: 800mbit\n    threshold_direction: either\n    mode: police\n" +
		"    delay: 200ms\n    target_pps: 10000\n    stage2_factor: 0.25\n    stage2_delay_factor: 2\n    stage1_duration: 5m\n    stage2_duration: 5m\n" +
		"    saturation_share: 0.5\n    clear_after: 10m\n    on_block: [/usr/local/sbin/vm-shutdown]\n    correlate: true\n    guard: true\n    guard_learn: false\n",
	"profile-classes": "profiles:\n  web:\n    ladder: false\n    classes: [\"tcp dport 443 pps 1000\", \"udp pps 10\"]\n",
	"profile-bad":     "profiles:\n  quarantine:\n    threshold_pps: -1\n    mode: drop\n    stage2_factor: 2\n",
	"profile-nan":     "profiles:\n  quarantine:\n    threshold_pps: .nan\n    target_pps: .inf\n",
	"groups":          "groups:\n  tenant-a:\n    router: vm-router\n    members: [\"vm-a*\"]\n",
	"groups-empty":    "groups:\n  tenant-a: {}\n",
	"anchors":         "watch: &w [\"vm-*\"]\nexclude: *w\n",
	"merge":           "profiles:\n  a: &p {ladder: false, limits: {pps: 1}}\n  b:\n    <<: *p\n    mode: shape\n",
	"tags":            "socket: !!str 5\nmax_auto: !!int \"3\"\n",
	"two-docs":        "socket: /a\n---\nsocket: /b\n",
	"flow":            "{socket: /a, watch: [a, b], profiles: {quarantine: {ladder: false}}}\n",
	"null":            "socket: ~\nprofiles: null\nmetrics_addr: null\n",
	"shadow":          "root:$6$salt$hashhashhash:19000:0:99999:7:::\n",
	"binary":          "\x00\xff\xfe\n\t:",
	"tag-no-value":    "watch: !!seq\nexclude: &a\n",
}

// crashers are inputs the fuzzer found, kept in testdata/fuzz/FuzzLoad
// under the names it gave them.
var crashers = map[string]string{
	// goccy/go-yaml v1.19.2 panicked decoding a list key whose value is
	// a tag (see decode); found by FuzzLoad's first 30-minute run.
	"5275f99d136d92b5": "watch: &0 !00\n00",
}

// TestFuzzCorpus checks that the checked-in corpus is exactly corpusSeeds
// and crashers. With SHAPERD_WRITE_CORPUS=1 it (re)writes the seeds first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzLoad")
	entries := map[string][]any{}
	for name, s := range corpusSeeds {
		entries[name] = []any{[]byte(s)}
	}
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, entries); err != nil {
			t.Fatal(err)
		}
	}
	for name, s := range crashers {
		entries[name] = []any{[]byte(s)}
	}
	fuzzcorpus.Check(t, dir, entries, []byte(nil))
}

// A list key whose value is only a tag made the YAML library panic: Load
// and Check now refuse the file with an error, for every list key.
func TestLoadTagWithoutValue(t *testing.T) {
	dir := t.TempDir()
	for _, text := range []string{"watch: !!seq\n", "exclude: &a !x\n", "instance_aliases: !x\n0", "profiles:\n  quarantine:\n    on_block: !!seq\n", "groups:\n  a:\n    router: r\n    members: !!seq\n"} {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil {
			t.Errorf("Load(%q) accepted", text)
		}
		if ps := Check(p); len(ps) != 1 {
			t.Errorf("Check(%q): %v, want one problem", text, ps)
		}
	}
}
