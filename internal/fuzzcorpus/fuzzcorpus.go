// Package fuzzcorpus reads and writes the seed corpus files of Go's native
// fuzzing (testdata/fuzz/<FuzzTarget>/<name>, "go test fuzz v1" and one Go
// literal a line), so that a package's tests can hold its committed corpus
// to exactly the entries they define. Test code only: the product never
// imports it.
//
// Only the types shaperd's fuzz targets take are handled: []byte, string
// and int64. Decode follows the toolchain's reader (internal/fuzz) for
// them, and refuses anything else.
package fuzzcorpus

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const header = "go test fuzz v1"

// Encode returns the corpus file holding vals, as `go test -fuzz` writes
// it. It panics on a type other than []byte, string and int64.
func Encode(vals ...any) []byte {
	b := []byte(header + "\n")
	for _, v := range vals {
		switch v := v.(type) {
		case []byte:
			b = fmt.Appendf(b, "[]byte(%q)\n", v)
		case string:
			b = fmt.Appendf(b, "string(%q)\n", v)
		case int64:
			b = fmt.Appendf(b, "int64(%d)\n", v)
		default:
			panic(fmt.Sprintf("fuzzcorpus: unsupported type %T", v))
		}
	}
	return b
}

// Decode reads a corpus file into its values: []byte, string or int64.
func Decode(b []byte) ([]any, error) {
	lines := bytes.Split(b, []byte("\n"))
	if strings.TrimSuffix(string(lines[0]), "\r") != header {
		return nil, fmt.Errorf("first line %q, want %q", lines[0], header)
	}
	var vals []any
	for i, line := range lines[1:] {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		v, err := value(string(line))
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: %w", i+2, line, err)
		}
		vals = append(vals, v)
	}
	if len(vals) == 0 {
		return nil, errors.New("no value")
	}
	return vals, nil
}

// value parses one line: T(literal), T one of []byte, string, int64.
func value(line string) (any, error) {
	expr, err := parser.ParseExpr(line)
	if err != nil {
		return nil, err
	}
	call, ok := expr.(*ast.CallExpr)
	if !ok || len(call.Args) != 1 {
		return nil, errors.New("want a conversion T(literal)")
	}
	typ := ""
	switch f := call.Fun.(type) {
	case *ast.ArrayType:
		if elt, ok := f.Elt.(*ast.Ident); ok && f.Len == nil && elt.Name == "byte" {
			typ = "[]byte"
		}
	case *ast.Ident:
		typ = f.Name
	}
	lit, neg := call.Args[0], false
	if u, ok := lit.(*ast.UnaryExpr); ok && u.Op == token.SUB && typ == "int64" {
		lit, neg = u.X, true
	}
	bl, ok := lit.(*ast.BasicLit)
	if !ok {
		return nil, errors.New("want a literal")
	}
	switch {
	case (typ == "[]byte" || typ == "string") && bl.Kind == token.STRING:
		s, err := strconv.Unquote(bl.Value)
		if err != nil {
			return nil, err
		}
		if typ == "string" {
			return s, nil
		}
		return []byte(s), nil
	case typ == "int64" && bl.Kind == token.INT:
		v := bl.Value
		if neg {
			v = "-" + v
		}
		return strconv.ParseInt(v, 0, 64)
	}
	return nil, fmt.Errorf("unsupported %s of a %s literal", typ, bl.Kind)
}

// Write writes each entry (name → the fuzz target's arguments) into dir.
func Write(dir string, entries map[string][]any) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, vals := range entries {
		if err := os.WriteFile(filepath.Join(dir, name), Encode(vals...), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Check fails t unless dir holds exactly entries: every file decodes, with
// the types of args (the fuzz target's arguments after *testing.T, as zero
// values), and is an entry with the same values, written as Encode writes
// them; no entry is missing. A file the fuzzer wrote (a crasher) must be
// added to the test's entries to be kept.
func Check(t testing.TB, dir string, entries map[string][]any, args ...any) {
	t.Helper()
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("corpus: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := f.Name()
		path := filepath.Join(dir, name)
		if !f.Type().IsRegular() {
			t.Errorf("%s: not a regular file", path)
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		got, err := Decode(b)
		if err != nil {
			t.Errorf("%s: not a corpus entry: %v", path, err)
			continue
		}
		if len(got) != len(args) || !slices.EqualFunc(got, args, func(g, a any) bool { return reflect.TypeOf(g) == reflect.TypeOf(a) }) {
			t.Errorf("%s: holds %s, the fuzz target takes %s", path, types(got), types(args))
			continue
		}
		want, ok := entries[name]
		if !ok {
			t.Errorf("%s: not an entry the test defines (a new crasher? add it to the test's entries)", path)
			continue
		}
		seen[name] = true
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: holds %s\nwant %s\n(rewrite with SHAPERD_WRITE_CORPUS=1)", path, Encode(got...), Encode(want...))
		} else if !bytes.Equal(b, Encode(want...)) {
			t.Errorf("%s: right values, not written as Encode writes them (rewrite with SHAPERD_WRITE_CORPUS=1)", path)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		if !seen[name] {
			t.Errorf("%s: missing (write it with SHAPERD_WRITE_CORPUS=1)", filepath.Join(dir, name))
		}
	}
}

func types(vals []any) string {
	var s []string
	for _, v := range vals {
		s = append(s, fmt.Sprintf("%T", v))
	}
	return "(" + strings.Join(s, ", ") + ")"
}
