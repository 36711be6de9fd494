package fuzzcorpus

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Encode writes what go test -fuzz writes (the first two are files it
// wrote in this repository), and Decode reads it back.
func TestEncodeDecode(t *testing.T) {
	for _, tc := range []struct {
		vals []any
		file string
	}{
		{[]any{"00"}, "go test fuzz v1\nstring(\"00\")\n"},
		{[]any{[]byte("{\"a\":1}\x00\xff"), int64(5000000067)}, "go test fuzz v1\n[]byte(\"{\\\"a\\\":1}\\x00\\xff\")\nint64(5000000067)\n"},
		{[]any{int64(-9223372036854775808)}, "go test fuzz v1\nint64(-9223372036854775808)\n"},
		{[]any{[]byte{}}, "go test fuzz v1\n[]byte(\"\")\n"},
	} {
		if got := string(Encode(tc.vals...)); got != tc.file {
			t.Errorf("Encode(%v) = %q, want %q", tc.vals, got, tc.file)
		}
		got, err := Decode([]byte(tc.file))
		if err != nil || !reflect.DeepEqual(got, tc.vals) {
			t.Errorf("Decode(%q) = %#v, %v", tc.file, got, err)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, file := range []string{
		"",
		"go test fuzz v2\nstring(\"x\")\n",
		"go test fuzz v1\n",
		"go test fuzz v1\nstring(x)\n",
		"go test fuzz v1\nstring(\"x\"\n",
		"go test fuzz v1\n[]byte(5)\n",
		"go test fuzz v1\n[4]byte(\"x\")\n",
		"go test fuzz v1\nint(5)\n",
		"go test fuzz v1\nint64(\"5\")\n",
		"go test fuzz v1\nint64(99999999999999999999)\n",
		"go test fuzz v1\nstring(\"x\", \"y\")\n",
		"[]byte(\"x\")\n",
	} {
		if vals, err := Decode([]byte(file)); err == nil {
			t.Errorf("Decode(%q) = %v, want an error", file, vals)
		}
	}
}

// Check passes on exactly the entries, and names each way a corpus can
// differ from them.
func TestCheck(t *testing.T) {
	entries := map[string][]any{"a": {"x"}, "b": {"y"}}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // substrings of the errors, in order; none: passes
	}{
		{"exact", map[string]string{"a": "go test fuzz v1\nstring(\"x\")\n", "b": "go test fuzz v1\nstring(\"y\")\n"}, nil},
		{"missing", map[string]string{"a": "go test fuzz v1\nstring(\"x\")\n"}, []string{"b: missing"}},
		{"extra", map[string]string{"a": "go test fuzz v1\nstring(\"x\")\n", "b": "go test fuzz v1\nstring(\"y\")\n", "c": "go test fuzz v1\nstring(\"z\")\n"}, []string{"c: not an entry the test defines"}},
		{"other content", map[string]string{"a": "go test fuzz v1\nstring(\"x\")\n", "b": "go test fuzz v1\nstring(\"Y\")\n"}, []string{"b: holds"}},
		{"other spelling", map[string]string{"a": "go test fuzz v1\nstring(\"x\")\n", "b": "go test fuzz v1\nstring(`y`)\n"}, []string{"b: right values, not written as Encode writes them"}},
		{"other type", map[string]string{"a": "go test fuzz v1\n[]byte(\"x\")\n", "b": "go test fuzz v1\nstring(\"y\")\n"}, []string{"a: holds ([]uint8), the fuzz target takes (string)", "a: missing"}},
		{"not a corpus file", map[string]string{"a": "x", "b": "go test fuzz v1\nstring(\"y\")\n"}, []string{"a: not a corpus entry", "a: missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			rec := &recorder{TB: t}
			Check(rec, dir, entries, "")
			if len(rec.errs) != len(tc.want) {
				t.Fatalf("errors %q, want %q", rec.errs, tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(rec.errs[i], w) {
					t.Errorf("error %q, want %q", rec.errs[i], w)
				}
			}
		})
	}
	// Write writes what Check accepts.
	dir := t.TempDir()
	if err := Write(dir, entries); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{TB: t}
	Check(rec, dir, entries, "")
	if len(rec.errs) != 0 {
		t.Fatalf("after Write: %q", rec.errs)
	}
}

// recorder collects Errorf's messages instead of failing.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
