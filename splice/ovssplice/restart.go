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

// vswitchdPoll is how often the pidfile is read while splices are live: a
// small file read, five times a second.
const vswitchdPoll = 200 * time.Millisecond

// VswitchdPID returns the pid of the running ovs-vswitchd from its pidfile
// in OVS_RUNDIR (default /var/run/openvswitch), "" if there is none or
// that process is gone. A new pid means a restart, which loses every
// flow (the port policies watch it too).
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
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) == syscall.ESRCH {
		return ""
	}
	return s
}

// trackLocked counts s among the live splices and starts the watcher if
// it is not running. The caller holds b.mu.
func (b *Backend) trackLocked(s *spliced) {
	if b.live == nil {
		b.live = map[*spliced]bool{}
	}
	b.live[s] = true
	if !b.watching && b.vswitchd != nil {
		b.watching = true
		go b.watchVswitchd(b.vswitchd())
	}
}

// untrackLocked forgets s; the watcher stops once no splice is live. The
// caller holds b.mu.
func (b *Backend) untrackLocked(s *spliced) { delete(b.live, s) }

// watchVswitchd polls ovs-vswitchd's pid, first seen as last, until no
// splice is live; after a change to a running process it repairs every
// live splice (see repairLive).
func (b *Backend) watchVswitchd(last string) {
	dirty := false
	for {
		time.Sleep(vswitchdPoll)
		b.mu.Lock()
		if len(b.live) == 0 {
			b.watching = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		pid := b.vswitchd()
		if pid != last && pid != "" {
			b.log.Warn("ovs-vswitchd restarted: putting back the splices' flows, groups and no-flood flags", "pid", pid, "was", last)
			dirty = true
		}
		last = pid
		if dirty && pid != "" {
			dirty = !b.repairAll()
		}
	}
}

// repairAll repairs every live splice; it reports whether all are whole.
func (b *Backend) repairAll() bool {
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
