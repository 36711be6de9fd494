package baseline

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/internal/netnstest"
)

// testNS is a named network namespace of the test's own, removed at cleanup.
type testNS struct {
	name string
	fd   int
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	netnstest.Require(t, "ip", "nft")
	name, fd := netnstest.Namespace(t, "blt")
	return &testNS{name: name, fd: fd}
}

func (n *testNS) ruleset(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.name, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v\n%s", err, out)
	}
	return string(out)
}

func (n *testNS) nft(t *testing.T, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s\n%s", err, out, script)
	}
}

func newTestManager(t *testing.T, ns *testNS) *Manager {
	t.Helper()
	m, err := New(Options{NetNS: ns.fd})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var (
	limA = Limits{NewTCPFromVM: PerSecond(100, 10), NewUDPFromVM: PerSecond(50, 10), NewPerSourceToVM: PerMinute(10, 10), PPSFromVM: PerSecond(100000, 1000), PPSToVM: PerSecond(100000, 1000)}
	limB = Limits{NewTCPToVM: PerSecond(20, 0)}
)

// TestKernelApplyChangeRemove installs, changes and removes baselines in a
// namespace of its own and checks the ruleset after each step: one table,
// one chain pair per distinct limits, the ruleset identical to before once
// the last port goes, and a foreign table left alone.
func TestKernelApplyChangeRemove(t *testing.T) {
	ns := newTestNS(t)
	// Someone else's table, which must survive everything below.
	ns.nft(t, "table bridge other { chain c { type filter hook prerouting priority 0; }; }")
	before := ns.ruleset(t)
	m := newTestManager(t, ns)

	if err := m.Apply(map[string]Limits{"vm-a": limA, "vm-b": limA, "vm-c": limB}); err != nil {
		t.Fatal(err)
	}
	rs := ns.ruleset(t)
	t.Logf("ruleset:\n%s", rs)
	if n := strings.Count(rs, "table bridge "+TableName); n != 1 {
		t.Fatalf("%d baseline tables, want 1", n)
	}
	// Two profiles: limA (both directions) and limB (to the VM only).
	pa, pb := newProfile(limA), newProfile(limB)
	for _, want := range []string{"chain " + pa.chainName(fromVM), "chain " + pa.chainName(toVM), "chain " + pb.chainName(toVM), `"vm-a" : jump ` + pa.chainName(fromVM)} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q", want)
		}
	}
	if strings.Contains(rs, "chain "+pb.chainName(fromVM)) {
		t.Errorf("profile B has a from-VM chain, but no from-VM limit")
	}
	got, err := m.Installed()
	if err != nil || strings.Join(got, ",") != "vm-a,vm-b,vm-c" {
		t.Fatalf("Installed = %v, %v", got, err)
	}

	// Idempotent: applying the same again changes nothing.
	if err := m.Apply(map[string]Limits{"vm-a": limA, "vm-b": limA, "vm-c": limB}); err != nil {
		t.Fatal(err)
	}
	if rs2 := ns.ruleset(t); rs2 != rs {
		t.Fatalf("a repeated Apply changed the ruleset:\n%s", rs2)
	}
	// A new Manager (a restarted daemon) adopts the table.
	m2 := newTestManager(t, ns)
	if err := m2.Apply(map[string]Limits{"vm-a": limA, "vm-b": limA, "vm-c": limB}); err != nil {
		t.Fatal(err)
	}
	if rs2 := ns.ruleset(t); rs2 != rs {
		t.Fatalf("a new manager's Apply changed the ruleset:\n%s", rs2)
	}

	// Change: vm-c moves to limA; profile B goes.
	if err := m.Apply(map[string]Limits{"vm-a": limA, "vm-c": limA}); err != nil {
		t.Fatal(err)
	}
	rs = ns.ruleset(t)
	if strings.Contains(rs, pb.chainName(toVM)) || strings.Contains(rs, "p"+pb.id+"_") {
		t.Errorf("unused profile B left behind:\n%s", rs)
	}
	if strings.Contains(rs, `"vm-b"`) {
		t.Errorf("removed port vm-b left behind:\n%s", rs)
	}

	// Invalid input: nothing changes.
	err = m.Apply(map[string]Limits{"vm-a": {NewTCPFromVM: Rate{Count: 5, Per: 3 * time.Second}}})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid Apply: %v, want ErrInvalid", err)
	}
	if rs2 := ns.ruleset(t); rs2 != rs {
		t.Fatalf("an invalid Apply changed the ruleset")
	}

	if err := m.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if after := ns.ruleset(t); after != before {
		t.Fatalf("ruleset after removing every port differs from before:\n--- before\n%s\n--- after\n%s", before, after)
	}
	// Removing again is a no-op.
	if err := m.Apply(nil); err != nil {
		t.Fatal(err)
	}
}
