package statefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/shaperd/shaperd/internal/fuzzcorpus"
)

// stateLike has the shapes the daemon's files hold (times, nested lists,
// optional pointers), to exercise typed decoding as well as `any`.
type stateLike struct {
	Version     int       `json:"version"`
	Written     time.Time `json:"written"`
	Quarantines []struct {
		Port   string         `json:"port"`
		State  string         `json:"state"`
		Spec   map[string]any `json:"spec"`
		Since  time.Time      `json:"since"`
		Ladder *struct {
			Stage string `json:"stage"`
			Rung  int    `json:"rung"`
		} `json:"ladder"`
	} `json:"quarantines"`
	Tenants []struct {
		Tenant   string            `json:"tenant"`
		Settings map[string]string `json:"settings"`
	} `json:"tenants"`
}

// FuzzDecode feeds Decode arbitrary files, twice: as given (a file damaged
// on disk or written by someone else), and, when the input is JSON,
// sealed with its right checksum, so that the fuzzer reaches the body's
// decoding instead of stopping at the seal. Beyond not panicking:
//   - every refusal is a *CorruptError (ErrCorrupt), never another error;
//   - a file that decodes re-encodes (Encode) to a file that decodes to
//     the same value;
//   - a sealed JSON body decodes as json.Unmarshal decodes the body
//     alone, and with one digit of its checksum changed never does;
//   - Read of the file written to disk agrees with Decode.
//
// The seed corpus is in testdata/fuzz/FuzzDecode (see TestFuzzCorpus):
// real files the daemon wrote (testdata/real), damaged copies, and odd
// JSON.
func FuzzDecode(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(file []byte, what string) (any, error) {
			var v any
			err := Decode(file, &v)
			var ce *CorruptError
			if err != nil && (!errors.As(err, &ce) || !errors.Is(err, ErrCorrupt)) {
				t.Fatalf("%s: Decode: %v (%T), want a *CorruptError", what, err, err)
			}
			var typed stateLike
			if terr := Decode(file, &typed); terr != nil && !errors.As(terr, &ce) {
				t.Fatalf("%s: typed Decode: %v (%T), want a *CorruptError", what, terr, terr)
			}
			if err != nil {
				return nil, err
			}
			again, eerr := Encode(v, len(file)%2 == 0)
			if eerr != nil {
				t.Fatalf("%s: decoded %#v does not encode: %v", what, v, eerr)
			}
			var w any
			if err := Decode(again, &w); err != nil || !reflect.DeepEqual(v, w) {
				t.Fatalf("%s: decoded %#v, re-encoded and decoded %#v, %v", what, v, w, err)
			}
			return v, nil
		}
		v, err := check(data, "the input")

		p := filepath.Join(dir, "f.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var r any
		rerr := Read(p, &r)
		if (rerr == nil) != (err == nil) || !reflect.DeepEqual(r, v) {
			t.Fatalf("Read: %#v, %v; Decode: %#v, %v", r, rerr, v, err)
		}

		if !json.Valid(data) {
			return
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, data); err != nil {
			t.Fatalf("json.Valid, yet json.Compact: %v", err)
		}
		sum := sha256.Sum256(compact.Bytes())
		hexSum := hex.EncodeToString(sum[:])
		sealed := []byte(`{"sha256":"` + hexSum + `","body":` + string(data) + "}")
		var direct any
		derr := json.Unmarshal(data, &direct)
		if sv, err := check(sealed, "the input, sealed"); (err == nil) != (derr == nil) || err == nil && !reflect.DeepEqual(sv, direct) {
			t.Fatalf("a sealed JSON body: %#v, %v; json.Unmarshal of the body: %#v, %v", sv, err, direct, derr)
		}
		bad := []byte(hexSum)
		bad[0] = "1032547698badcfe"[hexDigit(bad[0])]
		tampered := bytes.Replace(sealed, []byte(hexSum), bad, 1)
		var x any
		if err := Decode(tampered, &x); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("a sealed body with a wrong checksum: %v, want ErrCorrupt", err)
		}
	})
}

func hexDigit(c byte) int {
	if c <= '9' {
		return int(c - '0')
	}
	return int(c-'a') + 10
}

// corpusSeeds are the seed files: the real files in testdata/real, each
// also truncated, with its checksum changed and with its body only (which
// the fuzz target seals); and JSON's odd corners.
func corpusSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{
		"empty":          {},
		"null":           []byte("null"),
		"no-body":        []byte(`{"sha256":"00"}`),
		"null-body":      []byte(`{"sha256":"00","body":null}`),
		"unknown-field":  []byte(`{"sha256":"00","body":{},"x":1}`),
		"two-objects":    []byte(`{"sha256":"00","body":{}} {}`),
		"deep":           bytes.Repeat([]byte("["), 10000),
		"big-number":     []byte(`{"version":1e400,"written":"2026-12-07T10:28:25Z"}`),
		"bad-time":       []byte(`{"version":1,"written":"yesterday","quarantines":[{"port":"vm-1","since":"2026-13-45T99:00:00Z"}]}`),
		"utf8":           []byte("{\"quarantines\":[{\"port\":\"vm-\\ud800\xff\",\"state\":\"active\"}]}"),
		"dup-keys":       []byte(`{"version":1,"version":2,"quarantines":[],"quarantines":null}`),
		"wrong-types":    []byte(`{"version":"1","quarantines":{"port":1},"tenants":[1,2]}`),
		"body-string":    []byte(`"body"`),
		"indented-empty": []byte("{\n \"sha256\": \"\",\n \"body\": {}\n}\n"),
	}
	for _, name := range []string{"state.json", "tenants.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", "real", name))
		if err != nil {
			t.Fatal(err)
		}
		var env envelope
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatalf("testdata/real/%s: %v", name, err)
		}
		seeds[name] = b
		seeds[name+"-body"] = env.Body
		seeds[name+"-truncated"] = b[:len(b)/2]
		seeds[name+"-resealed-wrong"] = bytes.Replace(b, []byte(env.SHA256[:8]), []byte("00000000"), 1)
	}
	return seeds
}

// TestFuzzCorpus checks that the checked-in corpus is exactly the seeds
// corpusSeeds makes. With SHAPERD_WRITE_CORPUS=1 it (re)writes the files
// first.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	entries := map[string][]any{}
	for name, b := range corpusSeeds(t) {
		entries[name] = []any{b}
	}
	if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
		if err := fuzzcorpus.Write(dir, entries); err != nil {
			t.Fatal(err)
		}
	}
	fuzzcorpus.Check(t, dir, entries, []byte(nil))
}

// The real files in testdata/real, which the daemon wrote, decode.
func TestRealFilesDecode(t *testing.T) {
	for _, name := range []string{"state.json", "tenants.json"} {
		var v stateLike
		if err := Read(filepath.Join("testdata", "real", name), &v); err != nil || v.Version != 1 {
			t.Errorf("%s: %+v, %v", name, v, err)
		}
	}
}
