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

// TestKernelIndexFollowsPorts checks the index maps: a port that exists at
// Apply is indexed by its ifindex (going to its profile), one that does not
// is covered by name only, and a port recreated with a new ifindex is
// re-indexed by the next Apply, its old ifindex gone.
func TestKernelIndexFollowsPorts(t *testing.T) {
	ns := newTestNS(t)
	before := ns.ruleset(t)
	m := newTestManager(t, ns)
	link := func(cmd string) {
		t.Helper()
		if out, err := exec.Command("sh", "-c", "ip -n "+ns.name+" "+cmd).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", cmd, err, out)
		}
	}
	indexed := func() (from, to map[uint32]string, idx map[string]uint32) {
		t.Helper()
		c, err := m.conn()
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseLasting()
		st, err := m.read(c)
		if err != nil {
			t.Fatal(err)
		}
		if idx, err = m.linkIndexes(); err != nil {
			t.Fatal(err)
		}
		return st.fromIx, st.toIx, idx
	}
	pa, pb := newProfile(limA), newProfile(limB)
	link("link add vm-a type veth peer name vm-a-p")
	desired := map[string]Limits{"vm-a": limA, "vm-b": limB}
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	from, to, idx := indexed()
	a1 := idx["vm-a"]
	if len(from) != 1 || from[a1] != pa.chainName(fromVM) || len(to) != 1 || to[a1] != pa.chainName(toVM) {
		t.Fatalf("index maps %v %v, want only vm-a (%d) going to profile A", from, to, a1)
	}

	// vm-a deleted and made again (a new ifindex), vm-b appears.
	link("link del vm-a")
	link("link add vm-a type veth peer name vm-a-p")
	link("link add vm-b type veth peer name vm-b-p")
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	from, to, idx = indexed()
	a2, b := idx["vm-a"], idx["vm-b"]
	if a2 == a1 {
		t.Fatalf("vm-a kept its ifindex %d; the test needs a new one", a1)
	}
	if len(from) != 1 || from[a2] != pa.chainName(fromVM) {
		t.Errorf("from_index %v, want only vm-a's new ifindex %d (profile B has no from-VM rules)", from, a2)
	}
	if len(to) != 2 || to[a2] != pa.chainName(toVM) || to[b] != pb.chainName(toVM) {
		t.Errorf("to_index %v, want vm-a (%d) and vm-b (%d)", to, a2, b)
	}
	// A repeated Apply changes nothing.
	rs := ns.ruleset(t)
	if err := m.Apply(desired); err != nil {
		t.Fatal(err)
	}
	if rs2 := ns.ruleset(t); rs2 != rs {
		t.Fatalf("a repeated Apply changed the ruleset:\n%s", rs2)
	}
	if err := m.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if after := ns.ruleset(t); after != before {
		t.Fatalf("ruleset after removal differs:\n%s", after)
	}
}
