package host

// The guard's address learning: what libvirt, the bridge and the neighbour
// table say of a VM's addresses, before its port is spliced.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/guard/learn"
)

// learnGuard finds the VM's addresses: libvirt first, then, with bridge,
// the bridge's and the neighbour tables. It says where it looked.
func learnGuard(port string, bridge bool) (guard.Config, []string) {
	var from []string
	ctx, cancel := context.WithTimeout(context.Background(), virshTimeout)
	cfg, err := fromLibvirt(ctx, port)
	cancel()
	if err == nil {
		from = append(from, "libvirt")
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

// virshTimeout bounds one address lookup in libvirt, every virsh call of it
// together: it runs before the splice, while the caller waits.
const virshTimeout = 5 * time.Second

// virsh runs `virsh -q ARGS` and returns its standard output. An exit with
// an error names the command and carries virsh's own message (its standard
// error). Once ctx is done, virsh and whatever it started are killed, and
// the error wraps ctx's (context.DeadlineExceeded past its deadline).
func virsh(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q"}, args...)...)
	// Its own process group, killed whole: a child still holding the
	// output pipe (ssh for a remote URI) would otherwise keep Output
	// waiting past the deadline. WaitDelay is the backstop for a child
	// that left the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 100 * time.Millisecond
	out, err := cmd.Output()
	if err == nil {
		return string(out), nil
	}
	what := "virsh " + strings.Join(args, " ")
	if ctx.Err() != nil {
		return "", fmt.Errorf("%s: no answer in time: %w", what, ctx.Err())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		var msg []string
		for _, line := range strings.Split(string(exit.Stderr), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				msg = append(msg, line)
			}
		}
		if len(msg) > 0 {
			return "", fmt.Errorf("%s: %w: %s", what, err, strings.Join(msg, "; "))
		}
	}
	return "", fmt.Errorf("%s: %w", what, err)
}

// fromLibvirt asks libvirt for the domain whose interface is port, its MAC
// there, and the addresses libvirt knows for it (its DHCP leases, else the
// host's ARP table). It returns what it found even with an error: a MAC
// whose addresses virsh could not list (or not in time) is still the VM's.
// Every virsh call shares ctx, so ctx's deadline bounds the whole lookup.
func fromLibvirt(ctx context.Context, port string) (guard.Config, error) {
	var cfg guard.Config
	if _, err := exec.LookPath("virsh"); err != nil {
		return cfg, fmt.Errorf("not installed")
	}
	doms, err := virsh(ctx, "list", "--name")
	if err != nil {
		return cfg, err
	}
	var failed []string
	// One name a line: a domain's name may hold spaces.
	for _, dom := range strings.Split(doms, "\n") {
		dom = strings.TrimSpace(dom)
		if dom == "" {
			continue
		}
		ifs, err := virsh(ctx, "domiflist", dom)
		if err != nil {
			if ctx.Err() != nil {
				return cfg, err
			}
			// A domain may go away between the list and this call;
			// the others are still worth asking.
			failed = append(failed, err.Error())
			continue
		}
		mac := macOfInterface(ifs, port)
		if mac == nil {
			continue
		}
		cfg.MACs = []net.HardwareAddr{mac}
		var unanswered []string
		for _, src := range []string{"lease", "arp"} {
			out, err := virsh(ctx, "domifaddr", dom, "--source", src)
			if err != nil {
				if ctx.Err() != nil {
					return cfg, err
				}
				unanswered = append(unanswered, err.Error())
				continue
			}
			if cfg.IPs = addrsOf(out, mac); len(cfg.IPs) > 0 {
				return cfg, nil
			}
		}
		if len(unanswered) > 0 {
			return cfg, fmt.Errorf("domain %q has %s with MAC %s, but its addresses are unknown: %s", dom, port, mac, strings.Join(unanswered, "; "))
		}
		return cfg, nil
	}
	if len(failed) > 0 {
		return cfg, fmt.Errorf("no domain has an interface %s (%s)", port, strings.Join(failed, "; "))
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
		case 3:
			// An interface without a MAC ("Name Protocol Address"):
			// neither it nor its further addresses are mac's.
			cur = ""
			continue
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
