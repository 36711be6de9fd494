package daemon

import (
	"context"
	"time"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

const (
	// HeartbeatInterval is how often the daemon beats the kernel halves.
	HeartbeatInterval = 200 * time.Millisecond
	// HeartbeatStale is how old a splice's heartbeat may get before its
	// kernel half takes the fail path (open: the direct way; closed: drop)
	// on its own. A dead daemon is noticed at once (its liveness slots
	// empty, see package steer); this is for one that lives but stalls.
	HeartbeatStale = time.Second
)

type beating struct {
	k   splice.Kernel
	fwd *forward.Forwarder
}

// RunHeartbeat beats the kernel half of every splice whose forwarder runs,
// every HeartbeatInterval, until ctx ends. A splice whose forwarder stopped
// gets no beat: its kernel half fails open or closed after HeartbeatStale.
//
// It reads the list of splices under m.mu only when it can take the lock
// at once, and otherwise beats the ones it read last: nothing slow runs
// under m.mu, but a beat must never wait for it.
func (m *Manager) RunHeartbeat(ctx context.Context) {
	t := time.NewTicker(HeartbeatInterval)
	defer t.Stop()
	var list []beating
	for {
		if m.mu.TryLock() {
			list = m.beatingLocked(list[:0])
			m.mu.Unlock()
		}
		now := steer.Now()
		for _, b := range list {
			if b.fwd.Alive() {
				// A released splice answers ErrNoKernel: nothing to do.
				_ = b.k.Beat(now, HeartbeatStale)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beatingLocked lists the splices with a kernel half and a forwarder.
func (m *Manager) beatingLocked(out []beating) []beating {
	if m.closed {
		return out
	}
	for _, o := range m.owners {
		sp, fwd, _ := o.State()
		if k, ok := sp.(splice.Kernel); ok && fwd != nil {
			out = append(out, beating{k, fwd})
		}
	}
	return out
}
