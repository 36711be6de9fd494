package daemon

import (
	"context"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// WatchLinks follows link events of the daemon's network namespace until ctx
// ends, and tears down the quarantine of a port that is deleted. It returns
// once the subscription is in place.
func (m *Manager) WatchLinks(ctx context.Context) error {
	ch := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { m.log.Error("link watch", "err", err) },
	})
	if err != nil {
		return err
	}
	go func() {
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
					name := u.Link.Attrs().Name
					go m.PortAppeared(name)
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
					if _, err := netlink.LinkByName(name); err == nil {
						return
					}
					m.PortGone(name)
				}()
			}
		}
	}()
	return nil
}
