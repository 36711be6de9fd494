package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// The guard and isolate commands refuse bad input before any daemon is
// asked: no daemon listens on the socket, so anything but a usage error
// (exit 2) would be "daemon not running" (exit 1).
func TestGuardIsolateCLIRefuseBeforeAsking(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, c := range []struct {
		args   []string
		errHas string
	}{
		{[]string{"guard", "vm-1", "--mac", "zz", "--ip", "198.18.0.11"}, "--mac"},
		{[]string{"guard", "vm-1", "--mac", "01:00:5e:00:00:01", "--ip", "198.18.0.11"}, "--mac"},
		{[]string{"guard", "vm-1", "--mac", "02:00:00:00:00:01", "--ip", "198.18.0.1/24"}, "--ip"},
		{[]string{"guard", "vm-1", "--mac", "02:00:00:00:00:01", "--ip", "198.18.0.1", "--ipv6", "2001:db8::"}, "--ipv6"},
		{[]string{"guard", "this-name-is-too-long", "--mac", "02:00:00:00:00:01", "--ip", "198.18.0.1"}, "15 characters"},
		{[]string{"guard", "--remove", "vm-1", "--ip", "198.18.0.1"}, "no address with --remove"},
		{[]string{"isolate", "vm-1"}, "--allow-from"},
		{[]string{"isolate", "vm-1", "--allow-from", "198.18.0.0/33"}, "--allow-from"},
		{[]string{"isolate", "vm-1", "--allow-from", "2001:db8::/64"}, "--allow-from"},
		{[]string{"isolate", "--remove", "vm-1", "--allow-from", "198.18.0.0/24"}, "no --allow-from with --remove"},
		{[]string{"isolate", "a", "b", "--allow-from", "198.18.0.0/24"}, "PORT"},
	} {
		code, _, stderr := cli(t, sock, c.args...)
		if code != 2 || !strings.Contains(stderr, c.errHas) {
			t.Errorf("shaperd %s: exit %d (%q), want 2 with %q", strings.Join(c.args, " "), code, stderr, c.errHas)
		}
	}
}
