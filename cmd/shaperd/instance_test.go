package main

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/shaperd/shaperd/config"
)

// instanceAliases: the configured aliases, the short name or FQDN the
// hostname is not, and the interfaces' addresses but loopback; a resolver
// that hangs costs the FQDN only, after 2 s at most.
func TestInstanceAliases(t *testing.T) {
	addrs := func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.IPv4(127, 0, 0, 1), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.IPv4(198, 18, 0, 7), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("2001:db8::7"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	cfg := config.Config{InstanceAliases: []string{"hv1-mgmt"}}
	got := instanceAliases(cfg, hostNames{
		hostname: func() (string, error) { return "hv1", nil },
		fqdn:     func(context.Context, string) (string, error) { return "hv1.example.net.", nil },
		addrs:    addrs,
	})
	if want := []string{"hv1-mgmt", "hv1.example.net", "198.18.0.7", "2001:db8::7"}; !slices.Equal(got, want) {
		t.Errorf("short hostname: %q, want %q", got, want)
	}
	got = instanceAliases(config.Config{}, hostNames{
		hostname: func() (string, error) { return "hv1.example.net", nil },
		fqdn:     func(context.Context, string) (string, error) { return "hv1.example.net.", nil },
		addrs:    func() ([]net.Addr, error) { return nil, errors.New("no") },
	})
	if want := []string{"hv1"}; !slices.Equal(got, want) {
		t.Errorf("FQDN hostname: %q, want %q", got, want)
	}
	start := time.Now()
	got = instanceAliases(config.Config{}, hostNames{
		hostname: func() (string, error) { return "hv1", nil },
		fqdn: func(ctx context.Context, _ string) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		},
		addrs: func() ([]net.Addr, error) { return nil, nil },
	})
	if took := time.Since(start); len(got) != 0 || took > 3*time.Second {
		t.Errorf("hung resolver: %q after %v, want nothing within 2 s", got, took)
	}
}
