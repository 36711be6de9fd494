package control

import (
	"errors"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
)

// Every per-port setting's endpoint refuses a removal (it has its own
// endpoint) as a usage error, and a daemon without the engine answers
// with the engine's sentinel, not a success.
func TestPortChangeEndpoints(t *testing.T) {
	s := testServer(t, Options{})
	c := NewClient(s.path)
	for _, tc := range []struct {
		name string
		do   func() error
		want string
	}{
		{"guard with remove", func() error { _, err := c.Guard(api.GuardRequest{Port: "vm-1", Remove: true}); return err }, "/v1/guard/remove"},
		{"baseline with remove", func() error {
			return c.do("POST", "/v1/baseline", api.BaselineRequest{Port: "vm-1", Remove: true}, nil)
		}, "/v1/baseline/remove"},
		{"isolate with remove", func() error {
			return c.do("POST", "/v1/isolate", api.IsolateRequest{Port: "vm-1", AllowFrom: "198.18.0.0/24", Remove: true}, nil)
		}, "/v1/isolate/remove"},
	} {
		err := tc.do()
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a usage error naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := c.Isolate("vm-1", "198.18.0.0/24"); err == nil || !strings.Contains(err.Error(), daemon.ErrNoPortPolicy.Error()) {
		t.Errorf("isolate without an engine: %v, want %v", err, daemon.ErrNoPortPolicy)
	}
	if _, err := c.GuardRemove("vm-1"); err == nil || !strings.Contains(err.Error(), daemon.ErrNoPortPolicy.Error()) {
		t.Errorf("guard --remove without an engine: %v, want %v", err, daemon.ErrNoPortPolicy)
	}
}
