// Package host is everything the daemon needs of the machine it runs on,
// behind one interface (Host): the clock, the links, the taps, the ports'
// counters, libvirt and the hooks. System is the real machine; package
// daemon/hosttest is a fake for unit tests.
package host

import (
	"context"
	"os/exec"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/quota"
)

// Host is everything the daemon needs of the machine it runs on: the clock,
// the links, the taps, libvirt and the hooks. System is the real one;
// tests give Options.Host a fake. Every method must be safe for concurrent
// use.
type Host interface {
	// Now is the daemon's clock.
	Now() time.Time
	// PortExists reports whether a link of that name exists.
	PortExists(name string) bool
	// OpenTap opens one of a splice's taps; OpenTapQueues the n queues
	// of a multi-queue tap (one, of a single-queue tap), with offload
	// when the splice's taps take GSO segments (splice.Offloader).
	OpenTap(name string) (forward.Device, error)
	OpenTapQueues(name string, n int, offload bool) ([]forward.Device, error)
	// PortMeters reads ports' ifindexes and byte counters (ifindex 0
	// for a port that does not exist), for the tenants at a clean stop
	// and at the start after it.
	PortMeters(ports []string) ([]quota.PortMeter, error)
	// Links lists the links of the daemon's network namespace.
	Links() ([]string, error)
	// SubscribeLinks sends link events on ch until done is closed or
	// the subscription fails, when it closes ch (after onErr, on a
	// failure).
	SubscribeLinks(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error
	// LearnGuard finds a VM's addresses: libvirt, then, with bridge, the
	// bridge's and the neighbour tables. It says where it looked.
	LearnGuard(port string, bridge bool) (guard.Config, []string)
	// RunHook runs a profile's on-block hook and returns its output.
	RunHook(ctx context.Context, argv []string) ([]byte, error)
	// LinkKind is a link's kind as netlink names it: veth, tuntap,
	// bridge, bond, device...
	LinkKind(name string) (string, error)
}

// System is the machine the daemon runs on. The zero value is ready.
type System struct{}

func (System) Now() time.Time { return time.Now() }

func (System) PortExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

func (System) OpenTap(name string) (forward.Device, error) { return forward.OpenTap(name) }

func (System) OpenTapQueues(name string, n int, offload bool) ([]forward.Device, error) {
	return forward.OpenTapQueues(name, n, offload)
}

func (System) PortMeters(ports []string) ([]quota.PortMeter, error) {
	return readPortMeters(ports)
}

func (System) Links() ([]string, error) { return linkNames() }

func (System) SubscribeLinks(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error {
	return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr})
}

func (System) LearnGuard(port string, bridge bool) (guard.Config, []string) {
	return learnGuard(port, bridge)
}

func (System) LinkKind(name string) (string, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return "", err
	}
	return l.Type(), nil
}

func (System) RunHook(ctx context.Context, argv []string) ([]byte, error) {
	return exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
}
