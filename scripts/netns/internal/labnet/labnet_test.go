package labnet

import (
	"errors"
	"net/netip"
	"testing"
)

func TestIsLab(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"198.18.0.100", true},
		{"198.19.255.255", true},
		{"198.17.255.255", false},
		{"198.20.0.0", false},
		{"10.0.0.1", false},
		{"127.0.0.1", false},
		{"8.8.8.8", false},
		{"::ffff:198.18.0.1", true},
		{"::ffff:10.0.0.1", false},
		{"2001:2::11", true},
		{"2001:2:0:ffff::1", true},
		{"2001:2:1::1", false},
		{"2001:db8::1", false},
		{"fd00::1", false},
		{"::1", false},
	} {
		if got := IsLab(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("IsLab(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}

func TestCheckDestinationRefusesOutsideLab(t *testing.T) {
	for _, a := range []string{"10.0.0.1", "2001:db8::1", "192.0.2.1"} {
		_, err := CheckDestination(netip.MustParseAddr(a))
		if !errors.Is(err, ErrNotLabAddress) {
			t.Errorf("CheckDestination(%s) = %v, want ErrNotLabAddress", a, err)
		}
	}
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"0.0.0.0", true},
		{"::", true},
		{"198.18.0.100", true},
		{"10.1.1.1", false},
	} {
		err := CheckListen(netip.MustParseAddr(tc.addr))
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%s) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestNotInNamedNetns(t *testing.T) {
	name, err := NetnsName()
	if err != nil {
		t.Skipf("cannot inspect namespaces: %v", err)
	}
	if name != "" {
		t.Skipf("running inside netns %s", name)
	}
	_, err = CheckDestination(netip.MustParseAddr("198.18.0.100"))
	if !errors.Is(err, ErrRootNetns) {
		t.Fatalf("CheckDestination outside a named netns = %v, want ErrRootNetns", err)
	}
}
