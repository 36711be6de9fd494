package daemon

import (
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
)

// PortMetrics is one quarantine as the metrics endpoint sees it at one
// instant: its status, with the very counters `status --json` prints, and
// how full its budgets are.
type PortMetrics struct {
	Status api.Quarantine
	// Running is false when the quarantine has no forwarder (a pending
	// one); the fills are then zero.
	Running    bool
	FromVMFill forward.DirFill
	ToVMFill   forward.DirFill
}

// MetricsSnapshot returns every quarantine's status and bucket fills at now,
// sorted by port. It holds the manager's lock (briefly: no I/O) while it
// reads, so it sees no quarantine half-made; the tap drops are read from
// sysfs after. It is meant for scrapes (a few per minute), not for
// anything per frame. Safe for concurrent use.
func (m *Manager) MetricsSnapshot(now time.Time) []PortMetrics {
	m.mu.Lock()
	out := make([]PortMetrics, 0, len(m.q))
	var sps []splice.Splice
	for _, p := range m.portsLocked() {
		q := m.q[p]
		s, sp := m.statusLocked(q)
		pm := PortMetrics{Status: s}
		sps = append(sps, sp)
		if _, fwd := m.qSpliceLocked(q); fwd != nil {
			pm.Running = true
			pm.FromVMFill = fwd.FromVM.Fill(now)
			pm.ToVMFill = fwd.ToVM.Fill(now)
		}
		out = append(out, pm)
	}
	m.mu.Unlock()
	for i := range out {
		addOutside(&out[i].Status, sps[i])
	}
	return out
}
