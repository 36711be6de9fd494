// Package hosttest is a fake host.Host for unit tests: fake taps, ports
// that exist or not as the test says, a clock it sets, link events it sends,
// and hooks it records. Every field is optional; set them before the
// manager is made, or guard later changes yourself.
package hosttest

import (
	"context"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/forward/fakedev"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/quota"
)

// Host implements host.Host with the functions given, and these
// defaults: the real clock; every port exists; taps are fakedev devices of
// 16 frames; every port's meters are zero with ifindex 0 (gone); no links
// and no link events; nothing learnt for a guard; hooks succeed and are
// recorded.
type Host struct {
	Clock     func() time.Time
	Exists    func(name string) bool
	Tap       func(name string) (forward.Device, error)
	Meters    func(ports []string) ([]quota.PortMeter, error)
	LinkNames func() ([]string, error)
	Subscribe func(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error
	Learn     func(port string, bridge bool) (guard.Config, []string)
	Hook      func(argv []string) ([]byte, error)
	Kind      func(name string) (string, error)
	mu        sync.Mutex
	hooks     [][]string
}

func (h *Host) Now() time.Time {
	if h.Clock != nil {
		return h.Clock()
	}
	return time.Now()
}

func (h *Host) PortExists(name string) bool { return h.Exists == nil || h.Exists(name) }

func (h *Host) OpenTap(name string) (forward.Device, error) {
	if h.Tap != nil {
		return h.Tap(name)
	}
	return fakedev.New(16), nil
}

// OpenTapQueues opens n taps through OpenTap: a fake has no queues, and
// no offloads.
func (h *Host) OpenTapQueues(name string, n int, _ bool) ([]forward.Device, error) {
	out := make([]forward.Device, 0, n)
	for range n {
		d, err := h.OpenTap(name)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func (h *Host) PortMeters(ports []string) ([]quota.PortMeter, error) {
	if h.Meters != nil {
		return h.Meters(ports)
	}
	out := make([]quota.PortMeter, len(ports))
	for i, p := range ports {
		out[i].Name = p
	}
	return out, nil
}

func (h *Host) Links() ([]string, error) {
	if h.LinkNames != nil {
		return h.LinkNames()
	}
	return nil, nil
}

func (h *Host) SubscribeLinks(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error {
	if h.Subscribe != nil {
		return h.Subscribe(ch, done, onErr)
	}
	go func() {
		<-done
		close(ch)
	}()
	return nil
}

func (h *Host) LearnGuard(port string, bridge bool) (guard.Config, []string) {
	if h.Learn != nil {
		return h.Learn(port, bridge)
	}
	return guard.Config{}, []string{"test host (nothing to learn from)"}
}

func (h *Host) RunHook(_ context.Context, argv []string) ([]byte, error) {
	h.mu.Lock()
	h.hooks = append(h.hooks, append([]string(nil), argv...))
	h.mu.Unlock()
	if h.Hook != nil {
		return h.Hook(argv)
	}
	return nil, nil
}

// LinkKind is "veth" unless Kind says otherwise.
func (h *Host) LinkKind(name string) (string, error) {
	if h.Kind != nil {
		return h.Kind(name)
	}
	return "veth", nil
}

// Hooks returns the hooks run so far, each its argv.
func (h *Host) Hooks() [][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([][]string(nil), h.hooks...)
}
