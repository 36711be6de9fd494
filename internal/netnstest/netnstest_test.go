package netnstest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRequire runs Require in a child test process under each condition and
// checks that it skips only when netns tests were not asked for.
func TestRequire(t *testing.T) {
	if os.Getenv("NETNSTEST_CHILD") != "" {
		var tools []string
		if tl := os.Getenv("NETNSTEST_TOOLS"); tl != "" {
			tools = strings.Split(tl, ",")
		}
		Require(t, tools...)
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, netns, tools string
		want               string // "SKIP", "FAIL" or "PASS"
	}{
		{"not asked for", "", "", "SKIP"},
		{"not asked for, tool missing", "0", "shaperd-no-such-tool", "SKIP"},
		{"tool missing", "1", "sh,shaperd-no-such-tool", "FAIL"},
		{"all there", "1", "sh", "PASS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if c.netns == "1" && os.Geteuid() != 0 {
				want = "FAIL" // not root fails before the tools are looked at
			}
			cmd := exec.Command(self, "-test.run=^TestRequire$", "-test.v")
			cmd.Env = append(os.Environ(), "NETNSTEST_CHILD=1", "SHAPERD_NETNS="+c.netns, "NETNSTEST_TOOLS="+c.tools)
			out, _ := cmd.CombinedOutput()
			if !strings.Contains(string(out), "--- "+want+": TestRequire") {
				t.Errorf("SHAPERD_NETNS=%q tools=%q: want %s, got:\n%s", c.netns, c.tools, want, out)
			}
		})
	}
}
