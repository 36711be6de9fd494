package auto

import (
	"errors"
	"fmt"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/profile"
)

// Alertmanager's alerts.

// ErrUnknownPort is returned by Alert for a port that does not exist here.
var ErrUnknownPort = errors.New("no such port on this host")

// ErrNotVMPort is returned by Alert for a port an alert may not quarantine:
// not a VM port, excluded, or over max_auto.
var ErrNotVMPort = errors.New("not a port an alert may quarantine")

// refusalLocked says why the safety settings refuse an alert's quarantine
// of port, or "": watch set and port outside it, port excluded, or
// max_auto automatic quarantines already running.
func (e *Engine) refusalLocked(tx Txn, port string) (string, error) {
	switch n := autoCount(tx); {
	case len(e.cfg.Watch) > 0 && !e.matcher.Match(port):
		return "not_watched", fmt.Errorf("%w: %s is outside the watch patterns %v, or excluded", ErrNotVMPort, port, e.cfg.Watch)
	case matchAny(e.cfg.Exclude, port):
		return "excluded", fmt.Errorf("%w: %s matches exclude %v", ErrNotVMPort, port, e.cfg.Exclude)
	case n >= e.cfg.MaxAuto:
		return "max_auto", fmt.Errorf("%w: %d automatic quarantines already (max_auto %d)", ErrNotVMPort, n, e.cfg.MaxAuto)
	}
	return "", nil
}

// notVMPort says why port, with no watch patterns to decide, is not a VM
// port (see Manager.VMPort). The caller holds no lock.
func (e *Engine) notVMPort(m Manager, port string) (string, error) {
	e.mu.Lock()
	watched := len(e.cfg.Watch) > 0
	e.mu.Unlock()
	if watched {
		return "", nil // the watch patterns decided
	}
	if err := m.VMPort(port); err != nil {
		return "not_vm_port", err
	}
	return "", nil
}

// Alert handles one alert from the webhook: a firing alert quarantines port
// with the quarantine profile (a port already quarantined is left as it
// is, so repeated notifications are idempotent); a resolved one starts the
// probation of its ladder. It returns what it did, for the log.
//
// An alert quarantines only what the watch loop could, with the same
// safety settings: only a VM port (see Manager.VMPort), not an excluded
// one, nothing with dry_run (the port is only reported), and not beyond
// max_auto automatic quarantines (the watch loop's and the alerts').
func (e *Engine) Alert(m Manager, port string, firing bool) (string, error) {
	if err := api.CheckPort(port); err != nil {
		return "", err
	}
	outcome := ""
	defer func() {
		if outcome != "" {
			e.mu.Lock()
			e.events.Alerts[outcome]++
			e.mu.Unlock()
		}
	}()
	now := m.Now()
	var (
		refusal string
		refErr  error
		dry     bool
		act     = actions{save: true}
		moved   bool
	)
	err := m.Update(func(tx Txn) {
		e.mu.Lock()
		defer e.mu.Unlock()
		q, ok := tx.Get(port)
		switch {
		case firing && ok:
			outcome = "already_quarantined"
		case firing:
			refusal, refErr = e.refusalLocked(tx, port)
			dry = e.cfg.DryRun
		case !ok:
			outcome = "resolved_not_quarantined"
		case q.Escalation() == nil:
			outcome = "resolved_no_ladder"
		default:
			tr := q.Escalation().Ladder.Probation(now)
			if tr == nil {
				outcome = "resolved_already_probation"
				return
			}
			e.transitionLocked(q, tr, &act)
			moved = true
		}
	})
	switch {
	case err != nil:
		return "", err
	case outcome != "":
		return outcome, nil
	case moved:
		e.do(m, act, now)
		outcome = "probation"
		return outcome, nil
	}
	// A firing alert for a port not quarantined.
	if !m.PortExists(port) {
		outcome = "unknown_port"
		return outcome, ErrUnknownPort
	}
	if refusal == "" {
		refusal, refErr = e.notVMPort(m, port)
	}
	if refusal != "" {
		outcome = refusal
		e.log.Warn("event: alert refused", "event", "alert_refused", "port", port, "why", refusal, "err", refErr)
		return outcome, refErr
	}
	if dry {
		outcome = "dry_run"
		e.log.Warn("event: port flagged by an alert (dry run: not quarantined)", "event", "flagged", "port", port, "dry_run", true)
		return outcome, nil
	}
	if err := m.Quarantine(port, api.LimitRequest{}, api.OriginAlert, now); err != nil {
		outcome = "failed"
		return outcome, err
	}
	outcome = "quarantined"
	e.log.Warn("event: quarantine by alert", "event", "alert_quarantine", "port", port, "profile", profile.Quarantine)
	return outcome, nil
}
