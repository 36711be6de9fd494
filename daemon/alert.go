package daemon

import (
	"errors"
	"fmt"
	"maps"
	"math"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/profile"
)

// Alertmanager's alerts, and the counters of what the watch loop, the
// ladders and the alerts did.

// ErrUnknownPort is returned by Alert for a port that does not exist here.
var ErrUnknownPort = errors.New("no such port on this host")

// ErrNotVMPort is returned by Alert for a port an alert may not quarantine:
// not a VM port, excluded, or over max_auto.
var ErrNotVMPort = errors.New("not a port an alert may quarantine")

// alertRefusalLocked says why the safety settings refuse an alert's
// quarantine of port, or "": watch set and port outside it, port
// excluded, or max_auto automatic quarantines already running.
func (m *Manager) alertRefusalLocked(port string) (string, error) {
	switch {
	case len(m.watch.Watch) > 0 && !m.matcher.Match(port):
		return "not_watched", fmt.Errorf("%w: %s is outside the watch patterns %v, or excluded", ErrNotVMPort, port, m.watch.Watch)
	case matchAny(m.watch.Exclude, port):
		return "excluded", fmt.Errorf("%w: %s matches exclude %v", ErrNotVMPort, port, m.watch.Exclude)
	case m.autoLocked() >= m.watch.MaxAuto:
		return "max_auto", fmt.Errorf("%w: %d automatic quarantines already (max_auto %d)", ErrNotVMPort, m.autoLocked(), m.watch.MaxAuto)
	}
	return "", nil
}

// autoLocked counts the automatic quarantines: the watch loop's and the
// alerts'.
func (m *Manager) autoLocked() int {
	n := 0
	for _, q := range m.q {
		if q.spec.Origin == OriginWatch || q.spec.Origin == OriginAlert {
			n++
		}
	}
	return n
}

// notVMPort says why port, with no watch patterns to decide, is not a VM
// port: a VM's port is a veth or a tap, and a member of a bridge or an
// OVS bridge (a splice backend handles it). An uplink or a bond is not.
// The caller holds no lock.
func (m *Manager) notVMPort(port string) (string, error) {
	m.mu.Lock()
	watched := len(m.watch.Watch) > 0
	m.mu.Unlock()
	if watched {
		return "", nil // the watch patterns decided
	}
	kind, err := m.host.LinkKind(port)
	if err != nil {
		return "not_vm_port", fmt.Errorf("%w: %s: %v", ErrNotVMPort, port, err)
	}
	if kind != "veth" && kind != "tuntap" {
		return "not_vm_port", fmt.Errorf("%w: %s is a %s, not a veth or a tap", ErrNotVMPort, port, kind)
	}
	for _, b := range m.backends {
		if ok, _ := b.Handles(port); ok {
			return "", nil
		}
	}
	return "not_vm_port", fmt.Errorf("%w: %s is on no bridge a splice backend handles", ErrNotVMPort, port)
}

// Alert handles one alert from the webhook: a firing alert quarantines port
// with the quarantine profile (a port already quarantined is left as it
// is, so repeated notifications are idempotent); a resolved one starts the
// probation of its ladder. It returns what it did, for the log.
//
// An alert quarantines only what the watch loop could, with the same
// safety settings: only a VM port (see vmPortLocked), not an excluded one,
// nothing with dry_run (the port is only reported), and not beyond
// max_auto automatic quarantines (the watch loop's and the alerts').
func (m *Manager) Alert(port string, firing bool) (string, error) {
	if err := api.CheckPort(port); err != nil {
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
		refusal, err := m.alertRefusalLocked(port)
		dry := m.watch.DryRun
		m.mu.Unlock()
		if !m.host.PortExists(port) {
			outcome = "unknown_port"
			return outcome, ErrUnknownPort
		}
		if refusal == "" {
			refusal, err = m.notVMPort(port)
		}
		if refusal != "" {
			outcome = refusal
			m.log.Warn("event: alert refused", "event", "alert_refused", "port", port, "why", refusal, "err", err)
			return outcome, err
		}
		if dry {
			outcome = "dry_run"
			m.log.Warn("event: port flagged by an alert (dry run: not quarantined)", "event", "flagged", "port", port, "dry_run", true)
			return outcome, nil
		}
		if _, err := m.quarantine(port, api.LimitRequest{}, false, OriginAlert, now); err != nil {
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
	e.Health = m.health.snapshot()
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
