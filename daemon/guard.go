package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/guard/learn"
)

// prepareGuardLocked completes the anti-spoofing guard of a quarantine that
// asks for one, before its port is spliced. The VM's addresses come from,
// in this order: the request (--guard-mac, --guard-ip); libvirt, when
// present; the bridge's forwarding table and the host's neighbour table.
// The last two only when the profile allows it (guard_learn): never from
// traffic during a flood, since nothing is learnt after the splice.
//
// A manual quarantine whose addresses stay unknown is refused. An automatic
// one (watch, alert, correlation) goes ahead without the guard, with an
// event: stopping the flood matters more.
func (m *Manager) prepareGuardLocked(q *quarantine) error {
	s := &q.spec
	if !s.Guard || (s.GuardMAC != "" && s.GuardIP != "") {
		return nil
	}
	found, from := m.learnGuard(q.port, s.GuardLearn)
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
	_, err := s.guard()
	if err == nil {
		m.log.Info("event: guard addresses", "event", "guard", "port", q.port, "mac", s.GuardMAC, "ip", s.GuardIP, "learned_from", from)
		return nil
	}
	if s.Origin != "" && s.Origin != OriginManual {
		m.log.Warn("event: the VM's addresses are unknown; quarantined without the anti-spoofing guard", "event", "guard_off",
			"port", q.port, "err", err, "learned_from", from)
		s.Guard, s.GuardMAC, s.GuardIP = false, "", ""
		return nil
	}
	return usagef("--guard on %s: %v (nothing learnt from %s: give --guard-mac and --guard-ip)", q.port, err, strings.Join(from, ", "))
}

// learnGuard finds the VM's addresses: libvirt first, then, with bridge,
// the bridge's and the neighbour tables. It says where it looked.
func (m *Manager) learnGuard(port string, bridge bool) (guard.Config, []string) {
	if m.guardLearner != nil {
		return m.guardLearner(port, bridge)
	}
	var cfg guard.Config
	var from []string
	if c, err := fromLibvirt(port); err == nil {
		cfg, from = c, append(from, "libvirt")
	} else {
		from = append(from, "libvirt ("+err.Error()+")")
	}
	if !bridge {
		from = append(from, "not the bridge (the profile does not allow learning)")
	} else if len(cfg.MACs) == 0 || len(cfg.IPs) == 0 {
		c, err := learn.FromBridge(nil, port)
		if err != nil {
			from = append(from, "bridge ("+err.Error()+")")
		} else {
			from = append(from, "bridge")
			if len(cfg.MACs) == 0 {
				cfg.MACs = c.MACs
			}
			if len(cfg.IPs) == 0 {
				cfg.IPs = c.IPs
			}
		}
	}
	return cfg, from
}

// SetGuardLearner replaces how the VM's addresses are found (for tests).
func (m *Manager) SetGuardLearner(f func(port string, bridge bool) (guard.Config, []string)) {
	m.guardLearner = f
}

// virsh runs virsh with a timeout; a hook for tests.
var virsh = func(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-q"}, args...)...).Output()
	return string(out), err
}

// fromLibvirt asks libvirt for the domain whose interface is port, its MAC
// there, and the addresses libvirt knows for it (its DHCP leases, else the
// host's ARP table).
func fromLibvirt(port string) (guard.Config, error) {
	var cfg guard.Config
	if _, err := exec.LookPath("virsh"); err != nil {
		return cfg, fmt.Errorf("not installed")
	}
	doms, err := virsh("list", "--name")
	if err != nil {
		return cfg, err
	}
	for _, dom := range strings.Fields(doms) {
		ifs, err := virsh("domiflist", dom)
		if err != nil {
			continue
		}
		mac := macOfInterface(ifs, port)
		if mac == nil {
			continue
		}
		cfg.MACs = []net.HardwareAddr{mac}
		for _, src := range []string{"lease", "arp"} {
			out, err := virsh("domifaddr", dom, "--source", src)
			if err == nil {
				cfg.IPs = addrsOf(out, mac)
			}
			if len(cfg.IPs) > 0 {
				break
			}
		}
		return cfg, nil
	}
	return cfg, fmt.Errorf("no domain has an interface %s", port)
}

// macOfInterface reads `virsh -q domiflist` (Interface Type Source Model
// MAC) and returns port's MAC.
func macOfInterface(out, port string) net.HardwareAddr {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[0] == port {
			if mac, err := net.ParseMAC(f[len(f)-1]); err == nil {
				return mac
			}
		}
	}
	return nil
}

// addrsOf reads `virsh -q domifaddr` (Name MAC Protocol Address/len) and
// returns mac's addresses as single addresses.
func addrsOf(out string, mac net.HardwareAddr) []netip.Prefix {
	var ips []netip.Prefix
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch len(f) {
		case 4:
			// A further address of the same interface has "-" for
			// its name and MAC.
			if f[1] != "-" {
				cur = f[1]
			}
			f = f[2:]
		default:
			continue
		}
		if !strings.EqualFold(cur, mac.String()) {
			continue
		}
		p, err := netip.ParsePrefix(f[1])
		if err != nil {
			continue
		}
		ips = append(ips, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
	}
	return ips
}
