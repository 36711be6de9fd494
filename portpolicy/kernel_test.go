package portpolicy

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/internal/netnstest"
)

func nftIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mustGuard(t *testing.T, mac, ips, ip6 string) *Guard {
	t.Helper()
	g, err := ParseGuard(mac, ips, ip6)
	if err != nil {
		t.Fatal(err)
	}
	return &g
}

// TestKernelApplyAdoptRemove: install a guard and an isolation in a
// namespace of the test's own (with someone else's table there), adopt
// with a new Manager without a change, change one policy, refuse invalid
// input without a change, and remove everything, leaving the ruleset as it
// was.
func TestKernelApplyAdoptRemove(t *testing.T) {
	netnstest.Require(t, "ip", "nft")
	ns, fd := netnstest.Namespace(t, "ppt")
	nftIn(t, ns, "add", "table", "bridge", "someone_else")
	before := nftIn(t, ns, "list", "ruleset")
	m, err := New(Options{NetNS: fd})
	if err != nil {
		t.Fatal(err)
	}
	iso, err := ParseIsolate("198.18.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	desired := map[string]Policy{
		"vm-1": {Guard: mustGuard(t, "02:c6:12:00:00:11", "198.18.0.11", "2001:2::/64")},
		"vm-2": {Isolate: &iso},
		"vm-3": {Guard: mustGuard(t, "02:c6:12:00:00:13", "198.18.0.13,198.18.0.14", ""), Isolate: &iso},
	}
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	installed := nftIn(t, ns, "list", "ruleset")
	if strings.Count(installed, "table bridge "+TableName) != 1 || strings.Count(installed, "\tchain ") != 2+1+2+1+2 {
		t.Fatalf("after Apply:\n%s", installed)
	}
	for _, want := range []string{`"vm-1" : jump g_`, `"vm-3" : jump i_`, `comment "guard_ra"`, `comment "isolate_new_from_vm"`} {
		if !strings.Contains(installed, want) {
			t.Errorf("ruleset lacks %q", want)
		}
	}
	m2, _ := New(Options{NetNS: fd})
	if err := m2.Apply(desired); err != nil {
		t.Fatal(err)
	}
	if got := nftIn(t, ns, "list", "ruleset"); got != installed {
		t.Fatalf("a new Manager's Apply of the same set changed the ruleset:\n%s", got)
	}
	if ports, err := m2.Installed(); err != nil || strings.Join(ports, ",") != "vm-1,vm-2,vm-3" {
		t.Fatalf("Installed: %v %v", ports, err)
	}
	st, err := m2.Stats()
	if err != nil || len(st) != 3 {
		t.Fatalf("Stats: %v %v", st, err)
	}

	// Invalid input changes nothing.
	bad := map[string]Policy{"vm-1": {}}
	if err := m.Apply(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Apply of an empty policy: %v, want ErrInvalid", err)
	}
	if got := nftIn(t, ns, "list", "ruleset"); got != installed {
		t.Fatalf("invalid input changed the ruleset")
	}

	// A change swaps vm-1's chain; the old one goes.
	desired["vm-1"] = Policy{Guard: mustGuard(t, "02:c6:12:00:00:11", "198.18.0.12", "")}
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	changed := nftIn(t, ns, "list", "ruleset")
	if changed == installed || strings.Count(changed, "\tchain ") != 8 || strings.Contains(changed, "guard_ra") {
		t.Fatalf("after the change:\n%s", changed)
	}

	// A flow of each isolated port, as traffic would leave them; removing
	// vm-2's isolation removes its flow and keeps vm-3's.
	for _, p := range []string{"vm-2", "vm-3"} {
		nftIn(t, ns, "add", "element", "bridge", TableName, setFlows, `{ "`+p+`" . 198.18.0.11 . 198.18.0.100 . 22 . 40000 }`)
	}
	delete(desired, "vm-2")
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	if got := nftIn(t, ns, "list", "ruleset"); strings.Contains(got, `"vm-2"`) || !strings.Contains(got, `"vm-3" . 198.18.0.11`) || strings.Count(got, "\tchain ") != 6 {
		t.Fatalf("after removing vm-2:\n%s", got)
	}
	if err := m.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if got := nftIn(t, ns, "list", "ruleset"); got != before {
		t.Fatalf("after removing everything:\n%s\nwant\n%s", got, before)
	}
}
