// Package cpuquota confines a process to a share of one CPU with the
// cgroup cpu controller, for the tests and the bench that measure what
// shaperd does on a host that gives it little CPU: cpu.cfs_quota_us on
// cgroup v1 (the development machines), cpu.max on v2.
package cpuquota

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Period is the controller's period: a confined process runs at most
// share × Period in each Period, then every one of its threads waits for
// the next.
const Period = 100 * time.Millisecond

// Group is a cgroup holding one confined process.
type Group struct {
	root   string // the controller's root
	parent string // where pid was, and goes back to
	dir    string
	pid    int
}

// Confine creates the cgroup name, limits it to share (0 < share <= 1) of
// one CPU and moves every thread of pid into it. On error nothing is left
// behind.
//
// On cgroup v1 the group is a child of pid's own cpu cgroup, so that the
// process keeps its weight against its siblings and the quota only adds a
// ceiling (a group under the root would compete with the rest of the
// machine at the default weight: a CI job that runs in a weighted group
// of its own would starve the confined process). On v2, where a cgroup
// with processes cannot have children with controllers, it is a child of
// the root.
func Confine(pid int, share float64, name string) (*Group, error) {
	if !(share > 0 && share <= 1) {
		return nil, fmt.Errorf("cpuquota: share %v: want more than 0 and at most 1", share)
	}
	period := Period.Microseconds()
	quota := strconv.FormatInt(int64(share*float64(period)), 10)
	g := &Group{pid: pid}
	var limit [][2]string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		g.root = "/sys/fs/cgroup"
		// The cpu controller must be on for the root's children.
		if err := os.WriteFile(filepath.Join(g.root, "cgroup.subtree_control"), []byte("+cpu"), 0o644); err != nil {
			return nil, fmt.Errorf("cpuquota: cgroup v2: cannot enable the cpu controller: %w", err)
		}
		limit = [][2]string{{"cpu.max", quota + " " + strconv.FormatInt(period, 10)}}
	} else {
		g.root = "/sys/fs/cgroup/cpu"
		parent, err := v1Parent(pid)
		if err != nil {
			return nil, err
		}
		g.parent = filepath.Join(g.root, parent)
		limit = [][2]string{{"cpu.cfs_period_us", strconv.FormatInt(period, 10)}, {"cpu.cfs_quota_us", quota}}
	}
	if g.parent == "" {
		g.parent = g.root
	}
	g.dir = filepath.Join(g.parent, name)
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cpuquota: the cgroup cpu controller: %w", err)
	}
	for _, kv := range limit {
		if err := os.WriteFile(filepath.Join(g.dir, kv[0]), []byte(kv[1]), 0o644); err != nil {
			return nil, errors.Join(fmt.Errorf("cpuquota: %s: %w", kv[0], err), g.Remove())
		}
	}
	if err := os.WriteFile(filepath.Join(g.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return nil, errors.Join(fmt.Errorf("cpuquota: move %d into %s: %w", pid, g.dir, err), g.Remove())
	}
	return g, nil
}

// Dir is the cgroup's directory.
func (g *Group) Dir() string { return g.dir }

// Remove moves the process back to the cgroup it was in and removes the group,
// waiting up to 5 s for threads that are leaving (the process may have
// exited).
func (g *Group) Remove() error {
	os.WriteFile(filepath.Join(g.parent, "cgroup.procs"), []byte(strconv.Itoa(g.pid)), 0o644)
	var err error
	for range 50 {
		if err = os.Remove(g.dir); err == nil || os.IsNotExist(err) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("cpuquota: cgroup %s not removed: %w", g.dir, err)
}

// v1Parent returns pid's cgroup in the v1 cpu hierarchy ("/" for the root),
// from /proc/PID/cgroup: lines "ID:CONTROLLERS:PATH", the cpu controller
// alone or mounted with cpuacct ("cpu,cpuacct").
func v1Parent(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cpuquota: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpu" {
				return f[2], nil
			}
		}
	}
	return "", fmt.Errorf("cpuquota: process %d is in no cgroup of the cpu controller", pid)
}
