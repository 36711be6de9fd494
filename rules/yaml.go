package rules

import (
	"errors"
	"fmt"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	yamlparser "github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// ParseYAML parses the classes at path (a YAML path such as "$.classes" or
// "$.profiles.quarantine.classes") in the YAML document doc, and returns
// them in order. Errors are *Error located in doc (line and column of the
// offending word; exact for plain and quoted scalars without escapes). A
// path that is absent gives no classes and no error.
//
// The classes are a sequence whose items are either a rule as a string, or
// a one-key mapping from the class name to the rest of the rule, which is
// how YAML reads an unquoted rule:
//
//	classes:
//	  - ssh-brute: tcp dport 22 syn per src pps 5 burst 10
//	  - "dns: udp dport 53 pps 1000 continue"
//
// or a literal block (|) with one rule per line.
func ParseYAML(doc []byte, path string) ([]Class, error) {
	f, err := yamlparser.ParseBytes(doc, 0)
	if err != nil {
		return nil, &Error{Msg: "yaml: " + strings.TrimSpace(yaml.FormatError(err, false, false))}
	}
	p, err := yaml.PathString(path)
	if err != nil {
		return nil, fmt.Errorf("rules: YAML path %q: %w", path, err)
	}
	node, err := p.FilterFile(f)
	if err != nil {
		if errors.Is(err, yaml.ErrNotFoundNode) {
			return nil, nil
		}
		// The document's structure does not hold the path (a scalar
		// where a mapping should be).
		return nil, &Error{Msg: fmt.Sprintf("yaml: %s: %v", path, err)}
	}
	switch n := node.(type) {
	case *ast.NullNode:
		return nil, nil
	case *ast.SequenceNode:
		var out []Class
		for _, item := range n.Values {
			c, err := yamlItem(item)
			if err != nil {
				return nil, err
			}
			if c != nil {
				out = append(out, *c)
			}
		}
		return out, nil
	case *ast.LiteralNode:
		return yamlBlock(doc, n)
	}
	tk := node.GetToken()
	return nil, errorAt(tk.Position.Line, tk.Position.Column, "%s: want a list of rules, one per item, or a literal block (|) with one rule per line", path)
}

// scalarPos returns a posFunc for the text of a scalar token: plain
// scalars start at the token, quoted ones one column later.
func scalarPos(tk *token.Token) posFunc {
	line, col := tk.Position.Line, tk.Position.Column
	if tk.Type == token.DoubleQuoteType || tk.Type == token.SingleQuoteType {
		col++
	}
	return func(off int) (int, int) { return line, col + off }
}

// yamlItem parses one item of the sequence.
func yamlItem(item ast.Node) (*Class, error) {
	switch n := item.(type) {
	case *ast.StringNode:
		return parseRule(n.Value, scalarPos(n.GetToken()))
	case *ast.MappingNode:
		if len(n.Values) == 1 {
			return yamlPair(n.Values[0])
		}
	case *ast.MappingValueNode:
		return yamlPair(n)
	}
	tk := item.GetToken()
	return nil, errorAt(tk.Position.Line, tk.Position.Column, "want a rule such as \"dns: udp dport 53 pps 1000\" (quote it if it has a second colon)")
}

// yamlPair parses an item YAML read as a mapping: name: rest.
func yamlPair(mv *ast.MappingValueNode) (*Class, error) {
	key, ok := mv.Key.(*ast.StringNode)
	if !ok {
		tk := mv.Key.GetToken()
		return nil, errorAt(tk.Position.Line, tk.Position.Column, "want a class name before the colon")
	}
	var body string
	var bodyTk *token.Token
	switch v := mv.Value.(type) {
	case *ast.StringNode:
		body, bodyTk = v.Value, v.GetToken()
	case *ast.NullNode:
	default:
		// A number, a bool or a nested structure: rules are words.
		tk := mv.Value.GetToken()
		if s, ok := scalarText(mv.Value); ok {
			body, bodyTk = s, tk
			break
		}
		return nil, errorAt(tk.Position.Line, tk.Position.Column, "class %q: want the rest of the rule on the same line, as in \"%s: udp dport 53 pps 1000\"", key.Value, key.Value)
	}
	text := key.Value + ":"
	keyPos := scalarPos(key.GetToken())
	sep := len(text)
	if body != "" {
		text += " " + body
		sep++
	}
	var bodyPos posFunc
	if bodyTk != nil {
		bodyPos = scalarPos(bodyTk)
	}
	return parseRule(text, func(off int) (int, int) {
		if off < sep || bodyPos == nil {
			return keyPos(min(off, len(key.Value)))
		}
		return bodyPos(off - sep)
	})
}

// scalarText returns the source text of a non-string scalar (a rule body
// YAML read as a number or a bool).
func scalarText(n ast.Node) (string, bool) {
	switch n.(type) {
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return n.GetToken().Value, true
	}
	return "", false
}

// yamlBlock parses a literal block, one rule per line. Its content starts
// on the line after the '|'; each line's column comes from the source.
func yamlBlock(doc []byte, n *ast.LiteralNode) ([]Class, error) {
	src := strings.Split(string(doc), "\n")
	first := n.GetToken().Position.Line // the line of the '|'
	var out []Class
	for i, line := range strings.Split(n.Value.Value, "\n") {
		lineNo := first + 1 + i
		indent := 0
		if lineNo-1 < len(src) {
			s := strings.TrimRight(src[lineNo-1], "\r")
			if j := strings.Index(s, line); j >= 0 && line != "" {
				indent = j
			}
		}
		c, err := parseRule(line, func(off int) (int, int) { return lineNo, indent + off + 1 })
		if err != nil {
			return nil, err
		}
		if c != nil {
			out = append(out, *c)
		}
	}
	return out, nil
}
