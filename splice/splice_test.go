package splice

import (
	"strings"
	"testing"
)

func TestTapNames(t *testing.T) {
	tests := []struct {
		port   string
		vm, nt string
	}{
		// FNV-32a("") is the offset basis 0x811c9dc5.
		{"", "shq811c9dc5v", "shq811c9dc5n"},
		// FNV-32a("a") = 0xe40c292c.
		{"a", "shqe40c292cv", "shqe40c292cn"},
	}
	for _, tt := range tests {
		vm, nt := TapNames(tt.port)
		if vm != tt.vm || nt != tt.nt {
			t.Errorf("TapNames(%q) = %q, %q; want %q, %q", tt.port, vm, nt, tt.vm, tt.nt)
		}
	}

	seen := map[string]string{}
	for _, port := range []string{"vnet0", "vnet1", "vnet10", "veth-abcdefghij", "tap0123456789ab"} {
		vm, nt := TapNames(port)
		for _, n := range []string{vm, nt} {
			if len(n) > 15 {
				t.Errorf("TapNames(%q): %q is longer than 15 characters", port, n)
			}
			if !strings.HasPrefix(n, TapPrefix) {
				t.Errorf("TapNames(%q): %q lacks prefix %q", port, n, TapPrefix)
			}
			if other, ok := seen[n]; ok {
				t.Errorf("TapNames(%q) and TapNames(%q) both give %q", port, other, n)
			}
			seen[n] = port
		}
		if vm2, nt2 := TapNames(port); vm2 != vm || nt2 != nt {
			t.Errorf("TapNames(%q) is not deterministic", port)
		}
	}
}
