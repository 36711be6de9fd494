package detect

import (
	"path"
)

// Matcher selects the ports to watch: a port is watched when its name
// matches at least one --watch pattern and no --exclude pattern. Patterns
// use path.Match syntax (*, ?, [a-z], \ escapes); interface names hold no
// '/', so * matches any run of characters.
//
// A Matcher with no --watch pattern watches nothing, the daemon's default.
// The zero Matcher is such a Matcher. A Matcher is immutable and safe for
// concurrent use.
type Matcher struct {
	watch, exclude []string
}

// NewMatcher returns a Matcher for the given --watch and --exclude patterns,
// or an error naming the flag and the pattern that is malformed or empty,
// wrapping ErrInvalidConfig.
func NewMatcher(watch, exclude []string) (*Matcher, error) {
	if err := checkPatterns("--watch", watch); err != nil {
		return nil, err
	}
	if err := checkPatterns("--exclude", exclude); err != nil {
		return nil, err
	}
	return &Matcher{watch: slicesClone(watch), exclude: slicesClone(exclude)}, nil
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

func checkPatterns(flag string, patterns []string) error {
	for _, p := range patterns {
		if p == "" {
			return invalid("%s: empty pattern; use a glob such as vm-*", flag)
		}
		// path.Match checks the whole pattern's syntax, even when the
		// name does not match.
		if _, err := path.Match(p, ""); err != nil {
			return invalid("%s %q: malformed pattern (%v); use a glob such as vm-*", flag, p, err)
		}
	}
	return nil
}

// Match reports whether port is watched.
func (m *Matcher) Match(port string) bool {
	if m == nil {
		return false
	}
	return matchAny(m.watch, port) && !matchAny(m.exclude, port)
}

// Watches reports whether m can match any port: it has a --watch pattern.
func (m *Matcher) Watches() bool { return m != nil && len(m.watch) > 0 }

// Filter appends to dst the names that Match and returns the result.
func (m *Matcher) Filter(dst, names []string) []string {
	for _, n := range names {
		if m.Match(n) {
			dst = append(dst, n)
		}
	}
	return dst
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		// Patterns were validated by NewMatcher, so err is always nil.
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
