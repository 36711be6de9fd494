// Package netnstest gates the tests that build network-namespace labs.
//
// A netns test runs only when it was asked for: SHAPERD_NETNS=1, as
// `make integration` sets it. Without it the test skips, so that a plain
// `go test ./...` (the unit run) stays free of root and side effects. Once it
// was asked for, a missing prerequisite is a failure, never a skip: a lab
// test that cannot run must not pass.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"testing"
)

// Enabled reports whether netns tests were asked for (SHAPERD_NETNS=1).
func Enabled() bool { return os.Getenv("SHAPERD_NETNS") == "1" }

// Require skips t unless netns tests were asked for; then it fails t unless
// the process is root and every tool named is on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if !Enabled() {
		t.Skip("netns test: set SHAPERD_NETNS=1 and run as root (make integration does)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("SHAPERD_NETNS=1 but not root: netns tests need root (run make test with sudo)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("SHAPERD_NETNS=1 but %s is not on PATH: install it (scripts/deps.sh does)", tool)
		}
	}
}

// Namespace makes a named network namespace (prefix and random hex,
// at most 15 characters), removed at t's cleanup, after Require(t, "ip").
// It returns the name and an open file descriptor of it, closed at cleanup.
func Namespace(t testing.TB, prefix string) (string, int) {
	t.Helper()
	Require(t, "ip")
	b := make([]byte, 3)
	rand.Read(b)
	name := prefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		exec.Command("ip", "netns", "delete", name).Run()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v\n%s", name, err, out)
		}
	})
	return name, int(f.Fd())
}
