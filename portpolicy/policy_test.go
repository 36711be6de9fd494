package portpolicy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseGuardRejects(t *testing.T) {
	for _, c := range []struct{ mac, ips, ip6, want string }{
		{"zz:zz", "198.18.0.11", "", "--mac"},
		{"", "198.18.0.11", "", "--mac"},
		{"01:00:5e:00:00:01", "198.18.0.11", "", "--mac"},
		{"02:c6:12:00:00:11,02:c6:12:00:00:12", "198.18.0.11", "", "--mac"},
		{"02:c6:12:00:00:11", "", "", "--ip"},
		{"02:c6:12:00:00:11", "198.18.0", "", "--ip"},
		{"02:c6:12:00:00:11", "198.18.0.0/24", "", "--ip"},
		{"02:c6:12:00:00:11", "2001:2::11", "", "--ip"},
		{"02:c6:12:00:00:11", "0.0.0.0", "", "--ip"},
		{"02:c6:12:00:00:11", "224.0.0.1", "", "--ip"},
		{"02:c6:12:00:00:11", "198.18.0.11", "2001:2::", "--ipv6"},
		{"02:c6:12:00:00:11", "198.18.0.11", "198.18.0.0/24", "--ipv6"},
		{"02:c6:12:00:00:11", "198.18.0.11", "ff02::/16", "--ipv6"},
	} {
		_, err := ParseGuard(c.mac, c.ips, c.ip6)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "--guard-") {
			t.Errorf("ParseGuard(%q, %q, %q) = %v, want ErrInvalid naming %s", c.mac, c.ips, c.ip6, err, c.want)
		}
	}
	g, err := ParseGuard("02:C6:12:00:00:11", "198.18.0.11, 198.18.0.12,198.18.0.11", "2001:2::5/64")
	if err != nil || g.String() != "--mac 02:c6:12:00:00:11 --ip 198.18.0.11,198.18.0.12 --ipv6 2001:2::/64" {
		t.Fatalf("ParseGuard: %v %v", g, err)
	}
}

func TestParseIsolateRejects(t *testing.T) {
	for _, s := range []string{"", "198.18.0.1", "nonsense/8", "0.0.0.0/0", "2001:2::/64", "198.18.0.0/33"} {
		if _, err := ParseIsolate(s); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "--allow-from") {
			t.Errorf("ParseIsolate(%q) = %v, want ErrInvalid naming --allow-from", s, err)
		}
	}
	i, err := ParseIsolate("198.18.0.7/24")
	if err != nil || i.String() != "--allow-from 198.18.0.0/24" {
		t.Fatalf("ParseIsolate: %v %v", i, err)
	}
}

func TestChainsOfChangeWithThePolicy(t *testing.T) {
	g1, _ := ParseGuard("02:c6:12:00:00:11", "198.18.0.11", "")
	g2, _ := ParseGuard("02:c6:12:00:00:11", "198.18.0.12", "")
	a, b, c := chainsOf("vm-1", Policy{Guard: &g1}), chainsOf("vm-1", Policy{Guard: &g2}), chainsOf("vm-2", Policy{Guard: &g1})
	if a[0] == b[0] || a[0] == c[0] || a[0] != chainsOf("vm-1", Policy{Guard: &g1})[0] || a[1] != "" {
		t.Fatalf("chain names: %v %v %v", a, b, c)
	}
}
