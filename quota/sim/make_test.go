package sim

import (
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// make unit (so make test) runs TestMonthReplay with every seed: under
// -race it replays one (raceEnabled), so the target must run it once more
// without -race and without -short.
func TestMakeUnitReplaysEverySeed(t *testing.T) {
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not installed")
	}
	out, err := exec.Command(mk, "-n", "-C", "../..", "unit").Output()
	if err != nil {
		t.Fatalf("make -n unit: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1] != "test" || slices.Contains(f, "-race") || slices.Contains(f, "-short") {
			continue
		}
		pkg := slices.Contains(f, "./quota/sim/") || slices.Contains(f, "./quota/sim") || slices.Contains(f, "./...")
		for _, arg := range f {
			pat, ok := strings.CutPrefix(arg, "-run=")
			if !ok || !pkg {
				continue
			}
			if re, err := regexp.Compile(strings.Trim(pat, `'"`)); err == nil && re.MatchString("TestMonthReplay") {
				return
			}
		}
	}
	t.Fatalf("make unit runs TestMonthReplay only under -race, one seed of five; its commands:\n%s", out)
}
