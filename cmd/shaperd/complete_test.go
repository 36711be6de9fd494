package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// fakeSysClassNet makes a directory with one entry per link name.
func fakeSysClassNet(t *testing.T, names ...string) string {
	dir := t.TempDir()
	for _, n := range names {
		if err := os.Mkdir(filepath.Join(dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestPortCompletion: with a daemon, set/release/status/top complete its
// quarantined ports; without one, and for quarantine, the host's
// VM-port-like links (not shaperd's own taps, not other links); only the
// first argument completes, by prefix.
func TestPortCompletion(t *testing.T) {
	links := fakeSysClassNet(t, "lo", "eth0", "br0", "vnet3", "vnet12", "tap1f2e", "vm-1-00c9", "shq1234abcdv", "ovs-system")
	complete := func(sock string, quarantined bool, args []string, prefix string) []string {
		t.Helper()
		g := &globals{socket: sock}
		got, dir := portCompletion(g, quarantined, links)(&cobra.Command{}, args, prefix)
		if dir != cobra.ShellCompDirectiveNoFileComp {
			t.Errorf("directive %v, want NoFileComp", dir)
		}
		return got
	}
	host := []string{"tap1f2e", "vm-1-00c9", "vnet12", "vnet3"}
	down := filepath.Join(t.TempDir(), "none.sock")
	if got := complete(down, true, nil, ""); !slices.Equal(got, host) {
		t.Errorf("daemon down: %v, want the host's VM links %v", got, host)
	}
	if got := complete(down, false, nil, "vnet"); !slices.Equal(got, []string{"vnet12", "vnet3"}) {
		t.Errorf("quarantine vnet<TAB>: %v", got)
	}
	if got := complete(down, false, []string{"vnet3"}, ""); len(got) != 0 {
		t.Errorf("second argument: %v, want nothing", got)
	}

	sock, _ := startFake(t)
	if code, _, errs := cli(t, sock, "quarantine", "vm-2-00c9", "--pps", "1000"); code != 0 {
		t.Fatalf("quarantine: %d %s", code, errs)
	}
	if got := complete(sock, true, nil, ""); !slices.Equal(got, []string{"vm-2-00c9"}) {
		t.Errorf("daemon up: %v, want its quarantined port vm-2-00c9", got)
	}
	if got := complete(sock, false, nil, "vm-"); !slices.Equal(got, []string{"vm-1-00c9"}) {
		t.Errorf("quarantine vm-<TAB> with a daemon: %v, want the host's links", got)
	}
	// Through the shell's entry point, as bash/zsh/fish call it.
	code, out, _ := cli(t, sock, "__complete", "release", "")
	if code != 0 || !strings.HasPrefix(out, "vm-2-00c9\n") {
		t.Errorf("shaperd __complete release '': %d %q", code, out)
	}
}
