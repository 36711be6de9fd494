package daemon

import "sync"

// Health events (Events.Health, shaperd_health_events_total).
const (
	// EventLinkWatchLost: the netlink subscription to link changes
	// ended (the daemon subscribes again and checks every port).
	EventLinkWatchLost = "link_watch_lost"
	// EventGuardOff: an automatic quarantine started without the
	// anti-spoofing guard, the VM's addresses being unknown.
	EventGuardOff = "guard_off"
	// EventLimitsUnrecovered: a restart adopted a splice whose limits
	// it could not recover (not in the state file, and the intent on the
	// plumbing unreadable); it polices with a conservative default.
	EventLimitsUnrecovered = "limits_unrecovered"
	// EventWatchdogMissed: the service manager's watchdog was not fed
	// (a forwarder that should run has stopped).
	EventWatchdogMissed = "watchdog_missed"
	// EventForwarderPanic: a port's forwarder stopped after a contained
	// panic.
	EventForwarderPanic = "forwarder_panic"
	// EventStateNotSaved: a write of the state file failed (a full or
	// read-only state directory); status says so until one succeeds, and
	// the daemon tries again every tick.
	EventStateNotSaved = "state_not_saved"
	// EventSpliceTapGone: a tap of a port's splice was deleted (by hand);
	// the splice was made again, or the quarantine went pending.
	EventSpliceTapGone = "splice_tap_gone"
)

// HealthEvents are the names of Events.Health.
var HealthEvents = []string{EventLinkWatchLost, EventGuardOff, EventLimitsUnrecovered, EventWatchdogMissed, EventForwarderPanic, EventStateNotSaved, EventSpliceTapGone}

// healthEvents counts the health events; safe for concurrent use, and
// never waits for the manager's lock.
type healthEvents struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (h *healthEvents) add(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]uint64{}
	}
	h.n[name]++
}

func (h *healthEvents) snapshot() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]uint64, len(HealthEvents))
	for _, e := range HealthEvents {
		out[e] = h.n[e]
	}
	return out
}

// NoteWatchdogMissed counts a watchdog feed the daemon withheld.
func (m *Manager) NoteWatchdogMissed() { m.health.add(EventWatchdogMissed) }
