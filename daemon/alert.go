package daemon

import (
	"errors"
	"maps"
	"math"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/profile"
)

// Alertmanager's alerts, and the counters of what the watch loop, the
// ladders and the alerts did.

// ErrUnknownPort is returned by Alert for a port that does not exist here.
var ErrUnknownPort = errors.New("no such port on this host")

// Alert handles one alert from the webhook: a firing alert quarantines port
// with the quarantine profile (a port already quarantined is left as it
// is, so repeated notifications are idempotent); a resolved one starts the
// probation of its ladder. It returns what it did, for the log.
func (m *Manager) Alert(port string, firing bool) (string, error) {
	if err := checkPortName(port); err != nil {
		return "", err
	}
	outcome := ""
	defer func() {
		if outcome != "" {
			m.mu.Lock()
			m.events.Alerts[outcome]++
			m.mu.Unlock()
		}
	}()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return "", ErrClosed
	}
	now := m.host.Now()
	q, ok := m.q[port]
	switch {
	case firing && ok:
		m.mu.Unlock()
		outcome = "already_quarantined"
		return outcome, nil
	case firing:
		m.mu.Unlock()
		if !m.host.PortExists(port) {
			outcome = "unknown_port"
			return outcome, ErrUnknownPort
		}
		if _, err := m.quarantine(port, nil, false, OriginAlert, now); err != nil {
			outcome = "failed"
			return outcome, err
		}
		outcome = "quarantined"
		m.log.Warn("event: quarantine by alert", "event", "alert_quarantine", "port", port, "profile", profile.Quarantine)
		return outcome, nil
	case !ok:
		m.mu.Unlock()
		outcome = "resolved_not_quarantined"
		return outcome, nil
	case q.lad == nil:
		m.mu.Unlock()
		outcome = "resolved_no_ladder"
		return outcome, nil
	}
	tr := q.lad.Probation(now)
	if tr == nil {
		m.mu.Unlock()
		outcome = "resolved_already_probation"
		return outcome, nil
	}
	act := autoActions{save: true}
	m.transitionLocked(q, tr, &act)
	m.mu.Unlock()
	m.do(act, now)
	outcome = "probation"
	return outcome, nil
}

// Events returns copies of the event counters.
func (m *Manager) Events() Events {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.events
	e.Transitions = maps.Clone(e.Transitions)
	e.Hooks = maps.Clone(e.Hooks)
	e.Alerts = maps.Clone(e.Alerts)
	return e
}

// flaggedLocked lists the watched ports flagged and not quarantined.
func (m *Manager) flaggedLocked() []api.Flagged {
	out := []api.Flagged{}
	th := m.profiles[profile.Quarantine].Threshold
	for _, f := range m.tracker.AppendFlagged(nil) {
		if _, ok := m.q[f.Port]; ok || !m.matcher.Match(f.Port) {
			continue
		}
		pps, bps := th.Offered(f.Rates)
		out = append(out, api.Flagged{Port: f.Port, Since: f.Since.UTC(), PPS: math.Round(pps), BPS: math.Round(bps)})
	}
	return out
}
