package detect

import (
	"errors"
	"strings"
	"testing"
)

func TestMatcher(t *testing.T) {
	m, err := NewMatcher([]string{"vm-*", "pub-00d?"}, []string{"vm-4243-*", `vm-\*`})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		port string
		want bool
	}{
		{"vm-4519-00df", true},
		{"vm-", true},
		{"vm-4243-00dc", false}, // excluded
		{"vm-*", false},         // excluded by the escaped pattern
		{"pub-00df", true},
		{"pub-00dff", false},
		{"eth0", false},
		{"shq1234abcdv", false},
		{"", false},
	} {
		if got := m.Match(tt.port); got != tt.want {
			t.Errorf("Match(%q) = %v; want %v", tt.port, got, tt.want)
		}
	}
	got := m.Filter(nil, []string{"lo", "vm-1", "vm-4243-00dc", "pub-00d1", "vm-2"})
	if strings.Join(got, ",") != "vm-1,pub-00d1,vm-2" {
		t.Errorf("Filter = %v", got)
	}
}

func TestMatcherWatchesNothingByDefault(t *testing.T) {
	m, err := NewMatcher(nil, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	var zero Matcher
	var nilM *Matcher
	for _, p := range []string{"vm-1", "lo", ""} {
		if m.Match(p) || zero.Match(p) || nilM.Match(p) {
			t.Errorf("Match(%q) with no --watch: true; want false", p)
		}
	}
}

func TestMatcherErrors(t *testing.T) {
	for _, tt := range []struct {
		watch, exclude []string
		want           string
	}{
		{[]string{"vm-["}, nil, `--watch "vm-[": malformed pattern`},
		{[]string{"vm-*", ""}, nil, `--watch: empty pattern`},
		{[]string{"vm-*"}, []string{"[a-"}, `--exclude "[a-": malformed pattern`},
		{[]string{"vm-*"}, []string{`vm\`}, `--exclude "vm\\": malformed pattern`},
		// A syntax error after a mismatching prefix is still caught.
		{[]string{"zz[-"}, nil, `--watch "zz[-": malformed pattern`},
		{nil, []string{""}, `--exclude: empty pattern`},
	} {
		_, err := NewMatcher(tt.watch, tt.exclude)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewMatcher(%q, %q) = %v; want an ErrInvalidConfig containing %q", tt.watch, tt.exclude, err, tt.want)
		}
	}
}

func TestMatcherCopiesPatterns(t *testing.T) {
	w := []string{"vm-*"}
	m, _ := NewMatcher(w, nil)
	w[0] = "zz"
	if !m.Match("vm-1") {
		t.Error("changing the caller's slice changed the Matcher")
	}
}
