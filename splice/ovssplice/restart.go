package ovssplice

// Restarts of ovs-vswitchd under live splices. ovs-vswitchd keeps flows,
// groups and the ports' no-flood flags only in memory: when it restarts
// they are gone, and a splice's frames from the VM, which the forwarder
// writes into the net tap, go wherever the bridge's default sends them,
// while the ports stay (ovsdb-server keeps their rows and numbers). While
// any splice is live the backend watches ovs-vswitchd's pidfile; when a
// new process appears it puts back what each splice lost, in one bundle
// per splice (as Adopt does for a splice a dead daemon left), trying again
// every poll until every splice is whole.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// VswitchdPID returns the pid of the running ovs-vswitchd from its pidfile
// in OVS_RUNDIR (default /var/run/openvswitch), "" if there is none or
// that process is gone: exited, or a zombie its parent has not reaped yet
// (it answers kill 0 but serves nothing). A new pid means a restart,
// which loses every flow (the port policies watch it too).
func VswitchdPID() string {
	dir := os.Getenv("OVS_RUNDIR")
	if dir == "" {
		dir = "/var/run/openvswitch"
	}
	b, err := os.ReadFile(filepath.Join(dir, "ovs-vswitchd.pid"))
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) == syscall.ESRCH || zombie(pid) {
		return ""
	}
	return s
}

// zombie reports whether process pid has exited and waits to be reaped
// (state Z in /proc/PID/stat). An unreadable stat is not a zombie.
func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// trackLocked counts s among the live splices and makes sure the
// watcher runs. The caller holds b.mu.
func (b *Backend) trackLocked(s *spliced) {
	if b.live == nil {
		b.live = map[*spliced]bool{}
	}
	b.live[s] = true
	if b.watch != nil {
		b.watch.Start()
	}
	b.changed()
}

// untrackLocked forgets s; the watcher stops once nothing it serves is
// live. The caller holds b.mu.
func (b *Backend) untrackLocked(s *spliced) {
	delete(b.live, s)
	b.changed()
}

// changed tells the watcher's other clients (the port policies, which
// keep a splice's multicast copies from an isolated VM) that the splices
// changed.
func (b *Backend) changed() {
	if b.watch != nil {
		b.watch.Others()
	}
}

// active reports whether any splice is live (the watcher's question).
func (b *Backend) active() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.live) > 0
}

// repairAll repairs every live splice; it reports whether all are whole.
func (b *Backend) repairAll(bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	ok := true
	for s := range b.live {
		start := time.Now()
		repaired, err := s.repairLive()
		if err != nil {
			ok = false
			b.log.Debug("splice not repaired yet after the restart of ovs-vswitchd; trying again", "port", s.port, "err", err)
			continue
		}
		if len(repaired) > 0 {
			b.log.Warn("splice repaired after the restart of ovs-vswitchd", "port", s.port, "bridge", s.bridge,
				"cookie", fmt.Sprintf("%#x", s.plan.cookie), "recreated", repaired, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	return ok
}

// repairLive puts back what a restart of ovs-vswitchd took from a live
// splice (see repairOpenFlow), with the port numbers as they are now. A
// splice whose port is gone is left to the daemon, which releases it. The
// caller holds b.mu.
func (s *spliced) repairLive() ([]string, error) {
	if s.released || s.portIndex == 0 {
		return nil, nil
	}
	if l, ok, err := s.b.links.lookup(s.port); err != nil || !ok || l.index != s.portIndex {
		return nil, err
	}
	port, err := s.b.ovs.ofport(s.bridge, s.port)
	if err != nil {
		return nil, err
	}
	netTap, err := s.b.ovs.ofport(s.bridge, s.netTap)
	if err != nil {
		return nil, err
	}
	groups, err := s.b.ovs.groups(s.bridge)
	if err != nil {
		return nil, fmt.Errorf("read the groups of %s: %w", s.bridge, err)
	}
	for _, g := range s.plan.groups() {
		if line, ok := groups[g]; ok && !slices.Contains(s.ownGroups(groups), g) {
			return nil, fmt.Errorf("bridge %s has a group %d that is not the splice's (%q)", s.bridge, g, line)
		}
	}
	s.plan.port, s.plan.netTap = port, netTap
	repaired, _, err := s.repairOpenFlow(groups)
	return repaired, err
}
