package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shaperd/shaperd/splice"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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
			m.health.add(EventLinkWatchLost)
			m.log.Warn("link watch ended; subscribing again, then checking every port", "event", EventLinkWatchLost)
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
	if err := m.host.SubscribeLinks(ch, done, onErr); err != nil {
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
			if strings.HasPrefix(name, splice.TapPrefix) {
				go m.SpliceTapGone(name)
				continue
			}
			go func() {
				if m.host.PortExists(name) {
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
	names, err := m.host.Links()
	if err != nil {
		m.log.Error("link watch: cannot list the links to check the ports", "err", err)
		return
	}
	m.resyncBaselines(names)
	exists := make(map[string]bool, len(names))
	for _, n := range names {
		exists[n] = true
	}
	m.mu.Lock()
	ports := m.portsLocked()
	for _, p := range m.quotas.PortNames() {
		if _, ok := m.q[p]; !ok {
			ports = append(ports, p)
		}
	}
	m.mu.Unlock()
	for _, p := range ports {
		if exists[p] {
			m.PortAppeared(p)
		} else if !m.host.PortExists(p) {
			m.PortGone(p)
		}
	}
}

// PortGone is called when a link disappears. A quarantined port's splice is
// torn down, and the quarantine waits, pending, for the port to return (a VM
// restart) until it is released or expires. A tenant's splice is torn down
// until the port returns.
func (m *Manager) PortGone(port string) {
	m.baselinePortEvent(port, false)
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	q := m.q[port]
	tp, _ := m.quotas.Port(port)
	active := q != nil && q.state == StateActive
	spliced := !o.Idle()
	closed := m.closed
	m.mu.Unlock()
	if closed || (!active && !spliced) {
		return
	}
	switch {
	case active:
		m.log.Warn("quarantined port disappeared: removing its splice; the quarantine is pending until the port returns", "port", port)
	case tp != nil:
		m.log.Warn("tenant port disappeared: removing its splice until it returns", "port", port, "tenant", tp.Tenant.Cfg.Tenant)
	}
	if err := m.reconcile(o); err != nil && !errors.Is(err, ErrClosed) {
		m.log.Error("cleaning up after a vanished port", "port", port, "err", err)
	}
	if active {
		m.save()
	}
}

// SpliceTapGone is called when a link named as a splice tap disappears.
// If it was a tap of a port's splice (deleted by hand: the daemon's own
// releases leave no splice naming it, or one whose new tap exists), the
// splice is reverted, what is left of it removed, and made again; if that
// fails, the quarantine goes pending and every tick tries again. Either way
// it is an event (splice_tap_gone).
func (m *Manager) SpliceTapGone(tap string) {
	port := ""
	m.mu.Lock()
	for p := range m.owners {
		vm, nt := splice.TapNames(p)
		if tap == vm || tap == nt || tap == splice.PriorityTapName(p) {
			port = p
		}
	}
	m.mu.Unlock()
	if port == "" {
		return
	}
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	sp, _, _ := o.State()
	if sp == nil || (sp.VMTap() != tap && sp.NetTap() != tap && sp.PriorityTap() != tap) || m.host.PortExists(tap) {
		return
	}
	m.health.add(EventSpliceTapGone)
	m.log.Error("event: a tap of the port's splice was deleted; making the splice again", "event", EventSpliceTapGone, "port", port, "tap", tap)
	err := o.Revert()
	if err == nil {
		err = m.reconcile(o)
	}
	if errors.Is(err, ErrClosed) {
		return
	}
	if err != nil {
		now := m.host.Now()
		m.mu.Lock()
		if q := m.q[port]; q != nil && q.state == StateActive {
			m.makePendingLocked(q, now)
		}
		m.mu.Unlock()
		m.log.Error("cannot make the splice again; the quarantine is pending, tried again every tick", "port", port, "err", err)
		m.save()
		return
	}
	m.log.Warn("splice made again after one of its taps was deleted", "port", port)
}

// PortAppeared is called when a link appears or changes: a pending
// quarantine of that port is applied if the port can be spliced now, and a
// tenant port nothing splices is spliced for its tenant.
func (m *Manager) PortAppeared(port string) {
	m.baselinePortEvent(port, true)
	m.mu.Lock()
	q := m.q[port]
	_, tenant := m.quotas.Port(port)
	closed := m.closed
	m.mu.Unlock()
	if closed || (q == nil && !tenant) {
		return
	}
	m.tryPort(port, m.host.Now())
}

// tryPort applies a pending quarantine of port if the port is there and on
// a bridge, or splices a tenant port that nothing splices; otherwise it
// stays as it is, and is tried again on the next event or tick.
func (m *Manager) tryPort(port string, now time.Time) {
	o := m.lockOwner(port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	q := m.q[port]
	tp, _ := m.quotas.Port(port)
	pending := q != nil && q.state == StatePending
	_, fwd, _ := o.State()
	unspliced := q == nil && tp != nil && fwd == nil
	m.mu.Unlock()
	switch {
	case pending:
		if err := m.reconcile(o); err != nil {
			// Not on a bridge yet (libvirt adds it a moment later).
			m.log.Debug("pending quarantine not applied yet", "port", port, "err", err)
			return
		}
		m.mu.Lock()
		applied := q.state == StateActive
		m.mu.Unlock()
		if applied {
			m.log.Info("pending quarantine applied: the port is back", "port", port)
			m.save()
		}
	case unspliced:
		m.reconcileTenant(o, now)
	}
}

// Tick retries pending quarantines and unspliced tenant ports, drops
// expired quarantines, and closes the tenants' intervals. The daemon calls
// it periodically, as a safety net for missed link events.
func (m *Manager) Tick(now time.Time) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	retry := m.tickQuotasLocked(now)
	expired := false
	for _, p := range m.portsLocked() {
		q := m.q[p]
		if q.state != StatePending {
			continue
		}
		if now.After(q.expires) {
			m.log.Warn("pending quarantine expired: its port did not return", "port", p, "expired", q.expires)
			delete(m.q, p)
			expired = true
			continue
		}
		retry = append(retry, p)
	}
	m.mu.Unlock()
	m.flushSnapshots()
	if expired || m.notSaved.Load() != nil {
		m.save() // a failed write is tried again every tick
	}
	for _, p := range retry {
		m.tryPort(p, now)
	}
}
