package daemon

import (
	"strings"

	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/guard"
)

// prepareGuard completes the anti-spoofing guard of a quarantine that
// asks for one, before its port is spliced. The VM's addresses come from,
// in this order: the request (--guard-mac, --guard-ip); libvirt, when
// present; the bridge's forwarding table and the host's neighbour table.
// The last two only when the profile allows it (guard_learn): never from
// traffic during a flood, since nothing is learnt after the splice.
//
// A manual quarantine whose addresses stay unknown is refused. An automatic
// one (watch, alert, correlation) goes ahead without the guard, with an
// event: stopping the flood matters more.
//
// It runs before the splice, under the port's owner lock and not under
// Manager.mu: learning may wait for virsh.
func (m *Manager) prepareGuard(q *quarantine) error {
	m.mu.Lock()
	spec := q.spec
	m.mu.Unlock()
	if err := m.completeGuard(q.port, &spec); err != nil {
		return err
	}
	m.mu.Lock()
	q.spec = spec
	m.mu.Unlock()
	return nil
}

func (m *Manager) completeGuard(port string, s *intent.Spec) error {
	if !s.Guard || (s.GuardMAC != "" && s.GuardIP != "") {
		return nil
	}
	found, from := m.host.LearnGuard(port, s.GuardLearn)
	if s.GuardMAC == "" && len(found.MACs) > 0 {
		macs := make([]string, len(found.MACs))
		for i, mac := range found.MACs {
			macs[i] = mac.String()
		}
		s.GuardMAC = strings.Join(macs, ",")
	}
	if s.GuardIP == "" && len(found.IPs) > 0 {
		s.GuardIP = guard.FormatIPs(found.IPs)
	}
	_, err := s.NewGuard()
	if err == nil {
		m.log.Info("event: guard addresses", "event", "guard", "port", port, "mac", s.GuardMAC, "ip", s.GuardIP, "learned_from", from)
		return nil
	}
	if s.Origin != "" && s.Origin != OriginManual {
		m.health.add(EventGuardOff)
		m.log.Warn("event: the VM's addresses are unknown; quarantined without the anti-spoofing guard", "event", EventGuardOff,
			"port", port, "err", err, "learned_from", from)
		s.Guard, s.GuardMAC, s.GuardIP = false, "", ""
		return nil
	}
	return usagef("--guard on %s: %v (nothing learnt from %s: give --guard-mac and --guard-ip)", port, err, strings.Join(from, ", "))
}
