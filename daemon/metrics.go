package daemon

import (
	"sort"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/forward"
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
// sorted by port. It holds the manager's lock while it reads, so it sees no
// quarantine half-made; it is meant for scrapes (a few per minute), not for
// anything per frame. Safe for concurrent use.
func (m *Manager) MetricsSnapshot(now time.Time) []PortMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PortMetrics, 0, len(m.q))
	for _, q := range m.q {
		pm := PortMetrics{Status: m.statusLocked(q)}
		if q.fwd != nil {
			pm.Running = true
			pm.FromVMFill = q.fwd.FromVM.Fill(now)
			pm.ToVMFill = q.fwd.ToVM.Fill(now)
		}
		out = append(out, pm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Status.Port < out[j].Status.Port })
	return out
}
