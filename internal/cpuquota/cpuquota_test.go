package cpuquota

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A confined process lands in a child of its own cpu cgroup with the
// quota set, and goes back there when the group is removed.
func TestConfineNestsAndRestores(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		t.Skip("cgroup v2: the group is a child of the root")
	}
	pid := os.Getpid()
	before, err := v1Parent(pid)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Confine(pid, 0.5, "shaperd-cpuquota-test-"+strconv.Itoa(pid))
	if err != nil {
		t.Fatal(err)
	}
	now, err := v1Parent(pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(before, filepath.Base(g.Dir())); now != want {
		t.Errorf("confined in %s, want %s", now, want)
	}
	q, err := os.ReadFile(filepath.Join(g.Dir(), "cpu.cfs_quota_us"))
	if err != nil || strings.TrimSpace(string(q)) != "50000" {
		t.Errorf("cpu.cfs_quota_us %q (%v), want 50000", q, err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if after, _ := v1Parent(pid); after != before {
		t.Errorf("back in %s, want %s", after, before)
	}
	if _, err := os.Stat(g.Dir()); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", g.Dir(), err)
	}
}

func TestConfineRefusesBadShare(t *testing.T) {
	for _, s := range []float64{0, -1, 1.5} {
		if _, err := Confine(os.Getpid(), s, "x"); err == nil {
			t.Errorf("share %v accepted", s)
		}
	}
}
