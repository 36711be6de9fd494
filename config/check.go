package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/shaperd/shaperd/internal/smallfile"
)

// Problem is one thing wrong in a config file: where (line and column, 1
// based, 0 when unknown), the key's path (such as profiles.quarantine.limits),
// and what.
type Problem struct {
	Line, Column int
	Path         string
	Msg          string
}

func (p Problem) String() string {
	where := ""
	if p.Line > 0 {
		where = fmt.Sprintf("%d:%d: ", p.Line, p.Column)
	}
	if p.Path == "" || strings.HasPrefix(p.Msg, p.Path) {
		return where + p.Msg // the message names its key
	}
	return where + p.Path + ": " + p.Msg
}

// Check reads the config file at path as the daemon would (Load, then
// LoadSecrets) and reports every problem it finds, each with its place in
// the file. A file that cannot be read, or is not YAML, is one problem. No
// problems: the daemon would start with this file.
func Check(path string) []Problem {
	data, err := smallfile.Read(path, MaxBytes, true)
	if err != nil {
		return []Problem{{Msg: err.Error()}}
	}
	var c Config
	if err := decode(data, &c); err != nil {
		return []Problem{parseProblem(err)}
	}
	var errs []error
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.LoadSecrets(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil
	}
	file, _ := parser.ParseBytes(data, 0)
	var out []Problem
	for _, line := range strings.Split(errors.Join(errs...).Error(), "\n") {
		if line == "" {
			continue
		}
		p := Problem{Msg: line}
		if m := keyPath.FindStringSubmatch(line); m != nil {
			p.Path = m[1]
			if rest, ok := strings.CutPrefix(line, p.Path+": "); ok {
				p.Msg = rest
			}
			if file != nil && len(file.Docs) > 0 {
				p.Line, p.Column = position(file.Docs[0].Body, p.Path)
			}
		}
		out = append(out, p)
	}
	return out
}

// keyPath matches the key's path that a message of Validate or
// LoadSecrets starts with ("forwarder_nice -30: ...", "profiles.x.limits:
// ...", "alerts_cert and alerts_key go together").
var keyPath = regexp.MustCompile(`^([a-z_]+(?:\.[A-Za-z0-9_.\-]+)?)(?::| |$)`)

// yamlPos is the "[line:column]" a parser's message starts with.
var yamlPos = regexp.MustCompile(`^\[(\d+):(\d+)\] `)

// parseProblem is the problem of a file the YAML parser refused.
func parseProblem(err error) Problem {
	msg := redact(strings.TrimSpace(yaml.FormatError(err, false, false)))
	first, _, _ := strings.Cut(msg, "\n")
	p := Problem{Msg: first}
	if m := yamlPos.FindStringSubmatch(first); m != nil {
		fmt.Sscan(m[1], &p.Line)
		fmt.Sscan(m[2], &p.Column)
		p.Msg = first[len(m[0]):]
	}
	return p
}

// position returns the line and column of the deepest key of path (keys
// separated by dots; a key may hold dots itself, as a profile's name may)
// that the document holds, or 0, 0.
func position(n ast.Node, path string) (line, col int) {
	for path != "" {
		if seq, ok := n.(*ast.SequenceNode); ok {
			// A list's entry: path goes on with its index.
			idx, rest, _ := strings.Cut(path, ".")
			i, err := strconv.Atoi(idx)
			if err != nil || i < 0 || i >= len(seq.Values) {
				return line, col
			}
			n, path = seq.Values[i], rest
			if mn, ok := n.(*ast.MappingNode); ok && len(mn.Values) > 0 {
				tk := mn.Values[0].Key.GetToken() // the entry's first key
				line, col = tk.Position.Line, tk.Position.Column
			} else if tk := n.GetToken(); tk != nil {
				line, col = tk.Position.Line, tk.Position.Column
			}
			continue
		}
		mv := lookup(n, path)
		if mv == nil {
			return line, col
		}
		tk := mv.Key.GetToken()
		line, col = tk.Position.Line, tk.Position.Column
		k := mv.Key.String()
		path = strings.TrimPrefix(strings.TrimPrefix(path, k), ".")
		n = mv.Value
	}
	return line, col
}

// lookup finds the entry of mapping n whose key is the longest one that
// path starts with (followed by a dot or nothing).
func lookup(n ast.Node, path string) *ast.MappingValueNode {
	var values []*ast.MappingValueNode
	switch m := n.(type) {
	case *ast.MappingNode:
		values = m.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{m}
	default:
		return nil
	}
	var best *ast.MappingValueNode
	for _, mv := range values {
		k := mv.Key.String()
		if (path == k || strings.HasPrefix(path, k+".")) && (best == nil || len(k) > len(best.Key.String())) {
			best = mv
		}
	}
	return best
}
