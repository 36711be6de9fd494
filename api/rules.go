package api

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/shaperd/shaperd/rules"
)

// Rules are rule classes (package rules), in order: the rules in their
// canonical words, one per entry, and the set they compile to. In JSON, the
// list of rules. A nil *Rules is no rule class. Rules are immutable.
type Rules struct {
	set *rules.Set
	// err is why rules read from JSON do not compile; see Err.
	lines []string
	err   error
}

// ParseRules compiles rules, one per line (as --class flags, joined by
// newlines, give them). flag names the flag in errors ("--class").
func ParseRules(text, flag string) (*Rules, error) {
	for i, line := range strings.Split(text, "\n") {
		if _, err := rules.ParseRule(line); err != nil {
			return nil, Usagef("%s (rule %d) %q: %v", flag, i+1, line, err)
		}
	}
	s, err := rules.Parse(text)
	if err != nil {
		return nil, Usagef("%s: %v", flag, err)
	}
	return &Rules{set: s, lines: s.Strings()}, nil
}

// Set is the compiled set; nil for no rules, or rules that do not compile.
func (r *Rules) Set() *rules.Set {
	if r == nil {
		return nil
	}
	return r.set
}

// Lines are the rules in their canonical words, one per entry.
func (r *Rules) Lines() []string {
	if r == nil {
		return nil
	}
	return slices.Clone(r.lines)
}

// Len is the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.lines)
}

// Err is why rules read from JSON do not compile; nil for rules that do
// (ParseRules never returns rules that do not).
func (r *Rules) Err() error {
	if r == nil {
		return nil
	}
	return r.err
}

// MarshalJSON writes the rules as a list of strings.
func (r Rules) MarshalJSON() ([]byte, error) { return json.Marshal(r.lines) }

// UnmarshalJSON reads a list of rules. Rules that do not compile are kept
// with their error (see Err), so that one bad entry of a state file does
// not make the whole file unreadable: Validate refuses them.
func (r *Rules) UnmarshalJSON(b []byte) error {
	var lines []string
	if err := json.Unmarshal(b, &lines); err != nil {
		return err
	}
	r.lines, r.set, r.err = lines, nil, nil
	for i, line := range lines {
		// Each entry is one rule, as --class takes it: a blank line or a
		// comment would vanish from the intent the plumbing keeps.
		if _, err := rules.ParseRule(line); err != nil {
			r.err = fmt.Errorf("rule %d %q: %v", i+1, line, err)
			return nil
		}
	}
	s, err := rules.Parse(strings.Join(lines, "\n"))
	if err != nil {
		r.err = err
		return nil
	}
	r.set = s
	return nil
}
