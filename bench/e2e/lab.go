package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// lab is one namespace lab built by scripts/netns/lab.sh in one mode
// (bridge or ovs). The bench creates it, and deletes exactly it.
type lab struct {
	name, mode string
	root, bin  string
	env        map[string]string

	mu    sync.Mutex
	procs []*proc // started in the lab; ended by PID at down
}

// unavailableError marks a system or lab that this machine or this tree does
// not offer yet: its rows carry the reason instead of figures, and the run
// does not fail.
type unavailableError struct{ reason string }

func (e *unavailableError) Error() string { return e.reason }

func unavailable(format string, args ...any) error {
	return &unavailableError{reason: fmt.Sprintf(format, args...)}
}

func isUnavailable(err error) bool {
	var u *unavailableError
	return errors.As(err, &u)
}

// randHex returns n random hex digits.
func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// notImplemented matches lab.sh's refusals of a mode it does not have.
var notImplemented = regexp.MustCompile(`unknown mode '`)

// upLab builds a lab in mode. A mode lab.sh does not offer (or OVS not being
// installed, for ovs) is an unavailableError naming the reason.
func upLab(root, bin, mode string) (*lab, error) {
	prefix := map[string]string{"bridge": "bb", "ovs": "bo"}[mode]
	if prefix == "" {
		return nil, fmt.Errorf("lab mode %q: want bridge or ovs", mode)
	}
	l := &lab{name: prefix + randHex(4), mode: mode, root: root, bin: bin}
	if mode == "ovs" {
		for _, tool := range []string{"ovs-vswitchd", "ovsdb-server", "ovs-ofctl"} {
			if _, err := exec.LookPath(tool); err != nil {
				return nil, unavailable("lab ovs mode not available: %s not installed (openvswitch-switch; make deps installs it)", tool)
			}
		}
	}
	out, err := l.script("up")
	if err != nil {
		msg := firstLine(lastLabError(out), err.Error())
		l.downIfAny()
		if notImplemented.MatchString(out) {
			return nil, unavailable("lab %s mode not available: %s", mode, msg)
		}
		return nil, fmt.Errorf("lab %s mode failed: %s", mode, msg)
	}
	out, err = l.script("env")
	if err != nil {
		l.down()
		return nil, fmt.Errorf("lab %s env: %v: %s", mode, err, firstLine(out, ""))
	}
	l.env = parseEnv(out)
	for _, k := range []string{"HV_NS", "VM1_NS", "EXT_NS", "VM1_PORT", "VM1_IP", "EXT_IP", "BRIDGE"} {
		if l.env[k] == "" {
			l.down()
			return nil, fmt.Errorf("lab %s env lacks %s", mode, k)
		}
	}
	return l, nil
}

func (l *lab) script(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(l.root, "scripts/netns/lab.sh"), append(args, l.mode)...)
	cmd.Env = append(os.Environ(), "LAB="+l.name)
	if p := filepath.Join(l.bin, "probe"); isExec(p) {
		cmd.Env = append(cmd.Env, "LAB_PROBE="+p) // no go build inside lab.sh
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// parseEnv reads lab.sh env's KEY=VALUE lines.
func parseEnv(out string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "export "), "=")
		if ok && k != "" && !strings.ContainsAny(k, " \t") {
			env[k] = strings.Trim(v, `'"`)
		}
	}
	return env
}

// lastLabError returns the last "lab.sh: ..." line of out, without the prefix.
func lastLabError(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if s, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), "lab.sh: "); ok {
			return s
		}
	}
	return out
}

func firstLine(s, fallback string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return fallback
	}
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// nsNames lists the namespaces this lab's name could own.
func (l *lab) nsNames() []string {
	var out []string
	for _, g := range []string{"hv", "vm1", "vm2", "ext", "ext2"} {
		out = append(out, l.name+"-"+g)
	}
	return out
}

func (l *lab) anyNS() bool {
	for _, ns := range l.nsNames() {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			return true
		}
	}
	return false
}

// downIfAny tears down a lab whose up failed, in case it left anything.
func (l *lab) downIfAny() {
	if l.anyNS() {
		l.down()
	}
}

// down ends the processes the bench started in the lab, then deletes the
// lab's namespaces with lab.sh, and checks that none is left.
func (l *lab) down() error {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(syscall.SIGTERM, 3*time.Second)
	}
	out, err := l.script("down")
	if err != nil && l.anyNS() {
		return fmt.Errorf("lab %s down: %v: %s", l.name, err, firstLine(lastLabError(out), ""))
	}
	if l.anyNS() {
		return fmt.Errorf("lab %s down: namespaces left", l.name)
	}
	return nil
}

func (l *lab) get(k string) string { return l.env[k] }

// ovsEnv returns the lab's OVS_* variables (its private OVS run directory),
// for ovs-* commands and for a daemon driving the lab's OVS.
func (l *lab) ovsEnv() []string {
	var env []string
	for k, v := range l.env {
		if strings.HasPrefix(k, "OVS_") {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// sh runs a shell script inside namespace ns.
func (l *lab) sh(ns, script string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", script).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %v: %s", ns, firstLine(script, ""), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ovs runs an ovs-* command against the lab's private OVS. It refuses when
// the lab did not say where that OVS is, so that it can never reach another
// OVS on the machine.
func (l *lab) ovs(tool string, args ...string) (string, error) {
	if l.env["OVS_RUNDIR"] == "" {
		return "", errors.New("the lab's env has no OVS_RUNDIR: refusing to run ovs-* commands that could reach another OVS on this machine")
	}
	cmd := exec.Command(tool, args...)
	cmd.Env = append(os.Environ(), l.ovsEnv()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// proc is a tool the bench started (inside a namespace with ip netns exec,
// which execs, so pid is the tool's own).
type proc struct {
	name     string
	cmd      *exec.Cmd
	out, err *syncBuffer
	done     chan struct{}
	waitErr  error
}

// start runs a tool from the bin directory in ns, with extra environment.
func (l *lab) start(ns string, env []string, tool string, args ...string) (*proc, error) {
	argv := append([]string{"netns", "exec", ns, filepath.Join(l.bin, tool)}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{name: tool, cmd: cmd, out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.err
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", tool, err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the process to exit; it reports whether it did.
func (p *proc) wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	case <-ctx.Done():
		return false
	}
}

// stop sends sig, waits up to grace, then kills. Safe to call twice.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// syncBuffer is a bytes.Buffer safe for a writing process and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(b)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// sleepCtx sleeps d or until ctx ends; it returns ctx's error.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
