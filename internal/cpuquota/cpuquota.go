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
	"time"
)

// Period is the controller's period: a confined process runs at most
// share × Period in each Period, then every one of its threads waits for
// the next.
const Period = 100 * time.Millisecond

// Group is a cgroup holding one confined process.
type Group struct {
	root, dir string
	pid       int
}

// Confine creates the cgroup name under the cpu controller's root, limits
// it to share (0 < share <= 1) of one CPU and moves every thread of pid
// into it. On error nothing is left behind.
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
		limit = [][2]string{{"cpu.cfs_period_us", strconv.FormatInt(period, 10)}, {"cpu.cfs_quota_us", quota}}
	}
	g.dir = filepath.Join(g.root, name)
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

// Remove moves the process back to the root cgroup and removes the group,
// waiting up to 5 s for threads that are leaving (the process may have
// exited).
func (g *Group) Remove() error {
	os.WriteFile(filepath.Join(g.root, "cgroup.procs"), []byte(strconv.Itoa(g.pid)), 0o644)
	var err error
	for range 50 {
		if err = os.Remove(g.dir); err == nil || os.IsNotExist(err) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("cpuquota: cgroup %s not removed: %w", g.dir, err)
}
