package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkSubscriber subscribes to link events: updates arrive on ch until done
// is closed or the subscription fails, when ch is closed (after onErr, on a
// failure). netlink.LinkSubscribeWithOptions by default; a hook for tests.
type linkSubscriber func(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error

func netlinkSubscribe(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error {
	return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr})
}

// linkNames lists the links of the daemon's network namespace; a hook for
// tests.
func linkNames() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(links))
	for i, l := range links {
		out[i] = l.Attrs().Name
	}
	return out, nil
}

// ResubscribeDelay is how long WatchLinks waits before subscribing again
// after the subscription failed.
const ResubscribeDelay = time.Second

// WatchLinks follows link events of the daemon's network namespace until ctx
// ends: a port that appears gets its pending quarantine (and its tenant's
// splice), a port that is deleted loses its splice until it returns. It
// returns once the subscription is in place.
//
// A netlink subscription ends on an error, such as ENOBUFS when the kernel
// drops events on a busy host. Then WatchLinks subscribes again (every
// ResubscribeDelay until it succeeds) and, since events were lost, checks
// every quarantined and tenant port against the links that exist.
func (m *Manager) WatchLinks(ctx context.Context) error {
	ch, done, err := m.subscribeLinks(ctx)
	if err != nil {
		return err
	}
	go func() {
		for {
			m.followLinks(ctx, ch, done)
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("link watch ended; subscribing again, then checking every port", "event", "link_watch_lost")
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(ResubscribeDelay):
				}
				if ch, done, err = m.subscribeLinks(ctx); err == nil {
					break
				}
				m.log.Error("link watch: cannot subscribe", "err", err)
			}
			m.resyncLinks()
		}
	}()
	return nil
}

// subscribeLinks starts one subscription.
func (m *Manager) subscribeLinks(ctx context.Context) (chan netlink.LinkUpdate, chan struct{}, error) {
	ch := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	onErr := func(err error) {
		if ctx.Err() == nil { // closing the subscription at the end fails it too
			m.log.Error("link watch failed", "err", err)
		}
	}
	if err := m.linkSubscribe(ch, done, onErr); err != nil {
		return nil, nil, fmt.Errorf("link watch: %w", err)
	}
	return ch, done, nil
}

// followLinks handles the events of one subscription until ctx ends or the
// subscription does; it then closes done.
func (m *Manager) followLinks(ctx context.Context, ch chan netlink.LinkUpdate, done chan struct{}) {
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-ch:
			if !ok {
				return
			}
			if u.Header.Type == unix.RTM_NEWLINK && u.Link != nil {
				go m.PortAppeared(u.Link.Attrs().Name)
				continue
			}
			// A port leaving a bridge also sends RTM_DELLINK, with
			// family AF_BRIDGE: splicing does that. Only a real
			// deletion counts, and only if the link is really gone.
			if u.Header.Type != unix.RTM_DELLINK || u.Link == nil || u.IfInfomsg.Family == unix.AF_BRIDGE {
				continue
			}
			name := u.Link.Attrs().Name
			go func() {
				if m.portExists(name) {
					return
				}
				m.PortGone(name)
			}()
		}
	}
}

// resyncLinks does what the events lost while the watch was down would
// have done: PortGone for every quarantined or tenant port that no longer
// exists, PortAppeared for every one that does.
func (m *Manager) resyncLinks() {
	names, err := m.listLinks()
	if err != nil {
		m.log.Error("link watch: cannot list the links to check the ports", "err", err)
		return
	}
	exists := make(map[string]bool, len(names))
	for _, n := range names {
		exists[n] = true
	}
	m.mu.Lock()
	ports := m.portsLocked()
	for p := range m.quotas.byPort {
		if _, ok := m.q[p]; !ok {
			ports = append(ports, p)
		}
	}
	m.mu.Unlock()
	for _, p := range ports {
		if exists[p] {
			m.PortAppeared(p)
		} else if !m.portExists(p) {
			m.PortGone(p)
		}
	}
}
