package main

import (
	"os/exec"
	"testing"
)

// TestDebianVersion: git describe's forms map to valid Debian versions
// that dpkg orders as the commits are: a pre-release before its release,
// commits after a tag after it, an untagged tree before any tag.
func TestDebianVersion(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"v1.2.0", "1.2.0"},
		{"1.2.0", "1.2.0"},
		{"v1.2.0-rc1", "1.2.0~rc1"},
		{"v1.2.0-5-gabc1234", "1.2.0+5.gabc1234"},
		{"v1.2.0-5-gabc1234-dirty", "1.2.0+5.gabc1234.dirty"},
		{"v1.2.0-dirty", "1.2.0+0.dirty"},
		{"aa1692e", "0~gaa1692e"},
		{"aa1692e-dirty", "0~gaa1692e.dirty"},
	} {
		got, err := DebianVersion(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("DebianVersion(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "unknown", "release_1", "v-1"} {
		if got, err := DebianVersion(bad); err == nil {
			t.Errorf("DebianVersion(%q) = %q, want an error", bad, got)
		}
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Fatal("dpkg not found")
	}
	order := []string{"aa1692e", "v1.2.0-rc1", "v1.2.0", "v1.2.0-dirty", "v1.2.0-5-gabc1234", "v1.2.0-5-gabc1234-dirty", "v1.2.1"}
	for i := 1; i < len(order); i++ {
		a, _ := DebianVersion(order[i-1])
		b, _ := DebianVersion(order[i])
		if err := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run(); err != nil {
			t.Errorf("dpkg does not order %s (%s) before %s (%s)", a, order[i-1], b, order[i])
		}
	}
}
