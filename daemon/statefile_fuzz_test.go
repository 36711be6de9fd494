package daemon_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	dintent "github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/internal/fuzzcorpus"
	"github.com/shaperd/shaperd/ladder"
	"github.com/shaperd/shaperd/statefile"
)

// The daemon reads its state file with an unexported function (loadState)
// into unexported types; these fuzz targets stay with what is exported: a
// state file's entry decoded into a mirror of its layout (held to the real
// file by TestStateEntryMirror), its Spec validated, and the intent that
// the plumbing keeps (Spec.Intent, ParseIntent), which is what a daemon
// that lost its state file reads back.

// stateEntry mirrors the daemon's savedEntry, field for field.
type stateEntry struct {
	Port    string        `json:"port"`
	State   api.State     `json:"state"`
	Backend string        `json:"backend,omitempty"`
	Spec    dintent.Spec  `json:"spec"`
	Since   time.Time     `json:"since"`
	Expires time.Time     `json:"expires,omitzero"`
	Ladder  *ladder.State `json:"ladder,omitempty"`
}

type stateBody struct {
	Version     int          `json:"version"`
	Written     time.Time    `json:"written"`
	Quarantines []stateEntry `json:"quarantines"`
}

// realStateFile is a state file the daemon wrote (see package statefile's
// testdata).
var realStateFile = filepath.Join("..", "statefile", "testdata", "real", "state.json")

// The mirror holds every field of a real state file, and nothing else.
func TestStateEntryMirror(t *testing.T) {
	data, err := os.ReadFile(realStateFile)
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Body json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(env.Body))
	dec.DisallowUnknownFields()
	var b stateBody
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("the mirror of the state file's layout lacks a field: %v", err)
	}
	if len(b.Quarantines) != 3 || b.Quarantines[0].Spec.Validate() != nil {
		t.Fatalf("%+v", b)
	}
}

// FuzzStateEntry decodes one entry of a state file's quarantines list, as
// the daemon does (encoding/json into the same layout). Beyond not
// panicking: an entry whose Spec validates has an intent that reads back
// (ParseIntent) to a Spec that validates and has the same intent; its
// Spec, encoded and decoded again, has the same intent and still
// validates.
//
// The seed corpus is in testdata/fuzz/FuzzStateEntry (see
// TestFuzzCorpusStateEntry): the entries of a real state file, and
// entries with odd values.
func FuzzStateEntry(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var e stateEntry
		if json.Unmarshal(data, &e) != nil || e.Spec.Validate() != nil {
			return
		}
		checkIntent(t, e.Spec)
		b, err := json.Marshal(e.Spec)
		if err != nil {
			t.Fatalf("a valid spec does not encode: %v", err)
		}
		var s2 dintent.Spec
		if err := json.Unmarshal(b, &s2); err != nil {
			t.Fatalf("a valid spec's JSON does not decode: %v\n%s", err, b)
		}
		if err := s2.Validate(); err != nil {
			t.Fatalf("a valid spec, encoded and decoded, does not validate: %v\n%s", err, b)
		}
		if s2.Intent() != e.Spec.Intent() {
			t.Fatalf("a valid spec's intent changed through JSON: %q, then %q", e.Spec.Intent(), s2.Intent())
		}
	})
}

// FuzzParseIntent reads arbitrary intents, as a daemon without its state
// file reads them from the plumbing (an OVS external_id, a tap's alias).
// Beyond not panicking: an intent that parses gives a Spec that validates
// and whose intent parses to the same intent.
//
// The seed corpus is in testdata/fuzz/FuzzParseIntent (see
// TestFuzzCorpusParseIntent).
func FuzzParseIntent(f *testing.F) {
	f.Fuzz(func(t *testing.T, intent string) {
		s, err := dintent.Parse(intent)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("ParseIntent(%q) gave a spec that does not validate: %v", intent, err)
		}
		checkIntent(t, s)
	})
}

// checkIntent checks that s's intent reads back to a valid spec whose
// intent reads back to itself. (The first reading may change the intent:
// a class rule is written back in its canonical form.)
func checkIntent(t *testing.T, s dintent.Spec) {
	t.Helper()
	in := s.Intent()
	s2, err := dintent.Parse(in)
	if err != nil {
		if strings.Contains(err.Error(), "names no limit") {
			return // a spec of defaults only: the plumbing's intent is empty
		}
		t.Fatalf("the intent %q of a valid spec does not parse: %v", in, err)
	}
	if err := s2.Validate(); err != nil {
		t.Fatalf("the intent %q parses to a spec that does not validate: %v", in, err)
	}
	in2 := s2.Intent()
	s3, err := dintent.Parse(in2)
	if err != nil {
		t.Fatalf("intent %q parses to a spec of intent %q, which does not parse: %v", in, in2, err)
	}
	if in3 := s3.Intent(); in3 != in2 {
		t.Fatalf("intent %q parses to a spec of intent %q, which parses to one of %q", in, in2, in3)
	}
}

// stateEntrySeeds are the entries of the real state file, and odd ones.
func stateEntrySeeds(t testing.TB) map[string][]byte {
	var b struct {
		Quarantines []json.RawMessage `json:"quarantines"`
	}
	if err := statefile.Read(realStateFile, &b); err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		"empty":        []byte(`{}`),
		"null-spec":    []byte(`{"port":"vm-1","state":"active","spec":null}`),
		"nan-ish":      []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1e308,"bps":1e30,"burst":-1}}}`),
		"classes":      []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1000,"classes":["ssh: tcp dport 22 pps 100","dns: udp dport 53 pps 50"]}}}`),
		"class-space":  []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"classes":["a: tcp  dport 22 pps 1\n"]}}}`),
		"guard":        []byte(`{"port":"vm-1","state":"active","spec":{"guard":true,"guard_mac":"52:54:00:12:34:56","guard_ip":"198.18.0.5,2001:db8::5"}}`),
		"bypass-ports": []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1},"bypass_ports":[0,65535,22,22],"bypass_outbound":true}}`),
		"backstop":     []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1,"backstop":0},"to_vm":{"backstop_off":true}}}`),
		"meta-spaces":  []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1},"profile":"a b","origin":"x=y","stage":"stage 1"}}`),
		"durations":    []byte(`{"port":"vm-1","state":"pending","spec":{"from_vm":{"pps":1,"mode":"shape","delay":"1h","queue_time":"-1s"}},"expires":"2026-12-08T10:28:25Z"}`),
		"ladder":       []byte(`{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1}},"ladder":{"stage":"stage9","rung":-5,"observed":-1}}`),
	}
	for i, q := range b.Quarantines {
		seeds["real-"+string(rune('0'+i))] = q
	}
	return seeds
}

// parseIntentSeeds are intents as the daemon writes them, and odd ones.
var parseIntentSeeds = map[string]string{
	"pps":          "pps=5000",
	"full":         "pps=5000 bps=16mbit to-vm-pps=500 fail=open",
	"shape":        "pps=10000 mode=shape delay=200ms queue-time=220ms profile=quarantine stage=stage1",
	"class":        "class=ssh%3A+tcp+dport+22+pps+100%0Adns%3A+udp+dport+53+pps+50",
	"class-bad":    "class=%zz",
	"bypass":       "pps=1 bypass=22,3389 bypass-outbound=true bypass-pps=none to-vm-bypass-bps=none",
	"guard":        "guard=true guard-mac=52:54:00:12:34:56 guard-ip=198.18.0.5",
	"backstop":     "pps=1 backstop=none to-vm-backstop=0.5",
	"origin-alert": "pps=1 origin=alert",
	"no-limit":     "profile=quarantine",
	"not-kv":       "pps",
	"empty":        "",
	"dup":          "pps=1 pps=2",
	"huge":         "pps=1e30 burst-bytes=99999999999mb",
	"tabs":         "pps=1\tbps=\x00",
}

// stateEntryCrashers are inputs the fuzzer found, kept in
// testdata/fuzz/FuzzStateEntry under the names it gave them.
var stateEntryCrashers = map[string]string{
	// A comment as a class: the spec validated, and its intent did not
	// read back; now Validate refuses a blank or comment class.
	"d4fc5f49af54a6e8": `{"port":"vm-1","state":"active","spec":{"from_vm":{"pps":1000,"classes":["ssh: tcp dport 22 pps 100","#00000000000000000000"]}}}`,
}

func TestFuzzCorpusStateEntry(t *testing.T) {
	entries := map[string][]any{}
	for name, b := range stateEntrySeeds(t) {
		entries[name] = []any{b}
	}
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(filepath.Join("testdata", "fuzz", "FuzzStateEntry"), entries); err != nil {
			t.Fatal(err)
		}
	}
	for name, s := range stateEntryCrashers {
		entries[name] = []any{[]byte(s)}
	}
	fuzzcorpus.Check(t, filepath.Join("testdata", "fuzz", "FuzzStateEntry"), entries, []byte(nil))
}

func TestFuzzCorpusParseIntent(t *testing.T) {
	entries := map[string][]any{}
	for name, s := range parseIntentSeeds {
		entries[name] = []any{s}
	}
	writeOrCheck(t, "FuzzParseIntent", entries, "")
}

// writeOrCheck checks that testdata/fuzz/target holds exactly entries;
// with SHAPERD_WRITE_CORPUS=1 it (re)writes the files first.
func writeOrCheck(t *testing.T, target string, entries map[string][]any, args ...any) {
	dir := filepath.Join("testdata", "fuzz", target)
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, entries); err != nil {
			t.Fatal(err)
		}
	}
	fuzzcorpus.Check(t, dir, entries, args...)
}
