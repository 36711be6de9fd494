// Package integration runs shaperd end to end in a throwaway namespace lab:
// real taps, real tc, a real daemon process. It runs only as root with
// SHAPERD_NETNS=1 and SHAPERD_BIN pointing at the built binaries (make test
// does both); otherwise every test skips.
package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/internal/netnstest"
)

func binDir(t *testing.T) string {
	t.Helper()
	netnstest.Require(t, "ip", "tc", "bridge", "nft", "ethtool", "tmux")
	dir := os.Getenv("SHAPERD_BIN")
	if dir == "" {
		t.Fatal("SHAPERD_BIN is not set: point it at the directory holding shaperd, flood, sink and probe (make test does)")
	}
	return dir
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// lab is one throwaway namespace lab built by scripts/netns/lab.sh.
type lab struct {
	t   *testing.T
	bin string
	env map[string]string
}

func newLab(t *testing.T, mode string) *lab {
	t.Helper()
	bin := binDir(t)
	name := "it" + randName(4)
	script := filepath.Join(repoRoot(), "scripts/netns/lab.sh")
	labEnv := []string{"LAB=" + name}
	var ovsDir string
	if mode == "ovs" {
		// The lab's private OVS lives in a directory of the test's own
		// (removed after lab down); see ovs_test.go.
		ovsDir = t.TempDir()
		labEnv = append(labEnv, "LAB_OVS_DIR="+ovsDir, "LAB_PROBE="+filepath.Join(bin, "probe"))
	}
	// run returns the script's standard output, and its standard output
	// and error together for a message.
	run := func(args ...string) (string, string, error) {
		cmd := exec.Command(script, args...)
		cmd.Env = append(os.Environ(), labEnv...)
		var stdout, both bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.MultiWriter(&stdout, &both), &both
		err := cmd.Run()
		return stdout.String(), both.String(), err
	}
	t.Cleanup(func() {
		if _, all, err := run("down", mode); err != nil {
			t.Errorf("lab down: %v\n%s", err, all)
		}
		if ovsDir != "" {
			checkOVSStopped(t, ovsDir)
		}
	})
	// up prints the lab's env assignments, as env does.
	out, all, err := run("up", mode)
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, all)
	}
	l := &lab{t: t, bin: bin, env: map[string]string{}}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if ok {
			l.env[k] = strings.Trim(v, `'"`)
		}
	}
	for _, k := range []string{"HV_NS", "VM1_NS", "EXT_NS", "VM1_PORT", "VM1_IP", "EXT_IP"} {
		if l.env[k] == "" {
			t.Fatalf("lab up's env lacks %s:\n%s", k, out)
		}
	}
	if mode == "ovs" {
		l.useOVS()
	}
	return l
}

func (l *lab) get(k string) string { return l.env[k] }

// randName is n random hex digits, for lab and object names.
func randName(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// inNS returns a command running argv inside namespace ns.
func inNS(ns string, argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// sh runs a shell command in ns and returns its output; it fails the test on error.
func (l *lab) sh(ns, script string) string {
	l.t.Helper()
	out, err := inNS(ns, "sh", "-c", script).CombinedOutput()
	if err != nil {
		l.t.Fatalf("in %s: %s: %v\n%s", ns, script, err, out)
	}
	return string(out)
}

// bg starts a tool from the bin directory in ns; it is killed at cleanup.
// Its stdout and stderr go to files in a temp dir.
type proc struct {
	cmd      *exec.Cmd
	out, err *bytes.Buffer
	done     chan error
}

func (l *lab) bg(ns, tool string, args ...string) *proc {
	l.t.Helper()
	cmd := inNS(ns, append([]string{filepath.Join(l.bin, tool)}, args...)...)
	p := &proc{cmd: cmd, out: &bytes.Buffer{}, err: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.err
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", tool, err)
	}
	go func() { p.done <- cmd.Wait() }()
	l.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
		}
	})
	return p
}

// wait waits up to d for p to exit and returns its error.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v; stderr:\n%s", p.cmd.Args, d, p.err)
		return nil
	}
}

// daemon is a shaperd process running in the lab's hypervisor namespace.
type daemon struct {
	dir    string
	l      *lab
	sock   string
	cmd    *exec.Cmd
	logBuf *syncBuffer
	done   chan error
}

func (l *lab) startDaemon(extra ...string) *daemon {
	l.t.Helper()
	return l.startDaemonIn(l.t.TempDir(), extra...)
}

// startDaemonIn starts a daemon whose socket and state live in dir, so a
// test can kill it and start another on the same state.
func (l *lab) startDaemonIn(dir string, extra ...string) *daemon {
	l.t.Helper()
	return l.startDaemonAs(dir, nil, extra...)
}

// startDaemonAs is startDaemonIn with the daemon's command run by the
// command wrap (such as setpriv with a unit's capabilities), nil for none.
func (l *lab) startDaemonAs(dir string, wrap []string, extra ...string) *daemon {
	l.t.Helper()
	d := &daemon{dir: dir, l: l, sock: filepath.Join(dir, "shaperd.sock"), logBuf: &syncBuffer{}, done: make(chan error, 1)}
	args := append(append(append([]string{}, wrap...), filepath.Join(l.bin, "shaperd"), "run", "--socket", d.sock, "--state-dir", filepath.Join(dir, "state"), "--log-level", "debug"), extra...)
	d.cmd = inNS(l.get("HV_NS"), args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logBuf, d.logBuf
	if err := d.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	l.t.Cleanup(func() {
		d.stop()
		if l.t.Failed() {
			l.t.Logf("daemon log:\n%s", d.logBuf.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _, _ := d.cli("status"); code == 0 {
			return d
		}
		select {
		case err := <-d.done:
			d.done <- err
			l.t.Fatalf("daemon exited at start: %v\n%s", err, d.logBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("daemon not answering after 10 s:\n%s", d.logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 kills the daemon with SIGKILL, as a crash would.
func (d *daemon) kill9() {
	d.l.t.Helper()
	d.cmd.Process.Kill()
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(5 * time.Second):
		d.l.t.Fatal("daemon did not die of SIGKILL")
	}
}

// stop sends SIGTERM and waits.
func (d *daemon) stop() {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		d.l.t.Errorf("daemon did not stop within 15 s of SIGTERM")
	}
}

// cli runs a shaperd client command against the daemon.
func (d *daemon) cli(args ...string) (int, string, string) {
	cmd := exec.Command(filepath.Join(d.l.bin, "shaperd"), append([]string{"--socket", d.sock}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return code, out.String(), errb.String()
}

// must runs a client command that must succeed.
func (d *daemon) must(args ...string) string {
	d.l.t.Helper()
	code, out, errs := d.cli(args...)
	if code != 0 {
		d.l.t.Fatalf("shaperd %s: exit %d: %s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func (d *daemon) status(port string) api.Quarantine {
	d.l.t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(d.must("status", port, "--json")), &st); err != nil {
		d.l.t.Fatal(err)
	}
	return st.Quarantines[0]
}

// statusAt is status, with the daemon's clock when it read the counters
// (daemon.now): rates from two readings divide by the difference of
// these, exact however long the status command took.
func (d *daemon) statusAt(port string) (api.Quarantine, time.Time) {
	d.l.t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(d.must("status", port, "--json")), &st); err != nil {
		d.l.t.Fatal(err)
	}
	if st.Daemon.Now.IsZero() {
		d.l.t.Fatal("status --json has no daemon.now")
	}
	return st.Quarantines[0], st.Daemon.Now
}

// counter reads an interface statistic inside ns.
func (l *lab) counter(ns, dev, stat string) uint64 {
	l.t.Helper()
	n, _ := l.counterAt(ns, dev, stat)
	return n
}

// counterAt reads a statistics counter of dev in ns (rx_packets,
// tx_packets, rx_dropped, tx_dropped, rx_bytes, tx_bytes) over netlink from
// the test process itself, and the time it was read: the middle of the
// request, retried while the request takes longer than 10 ms (the test was
// descheduled in it). So two readings give a rate over a window known to a
// few milliseconds even on a loaded host, where a `cat` in a new process is
// read at an unknown moment of a spawn that can take a second: that error
// alone made the OVS lab's delivered rate look 2-3% short.
func (l *lab) counterAt(ns, dev, stat string) (uint64, time.Time) {
	l.t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		l.t.Fatalf("netns %s: %v", ns, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		l.t.Fatalf("netlink in %s: %v", ns, err)
	}
	defer nh.Close()
	for try := 0; ; try++ {
		before := time.Now()
		link, err := nh.LinkByName(dev)
		after := time.Now()
		if err != nil {
			l.t.Fatalf("%s in %s: %v", dev, ns, err)
		}
		if after.Sub(before) > 10*time.Millisecond && try < 20 {
			continue
		}
		st := link.Attrs().Statistics
		if st == nil {
			l.t.Fatalf("%s in %s: no statistics", dev, ns)
		}
		n, ok := map[string]uint64{
			"rx_packets": st.RxPackets, "tx_packets": st.TxPackets,
			"rx_dropped": st.RxDropped, "tx_dropped": st.TxDropped,
			"rx_bytes": st.RxBytes, "tx_bytes": st.TxBytes,
		}[stat]
		if !ok {
			l.t.Fatalf("counter %q: not supported", stat)
		}
		return n, before.Add(after.Sub(before) / 2)
	}
}

// rxRate measures the packets per second dev receives in ns over d.
func (l *lab) rxRate(ns, dev string, d time.Duration) float64 {
	l.t.Helper()
	a, ta := l.counterAt(ns, dev, "rx_packets")
	time.Sleep(d)
	b, tb := l.counterAt(ns, dev, "rx_packets")
	return float64(b-a) / tb.Sub(ta).Seconds()
}

// volatile matches timers, and the bridge port numbers the kernel allocates
// (lowest free) when a port joins: with several splices at once a restored
// port may get another number. No setting can choose them.
var volatile = regexp.MustCompile(`(\w+_timer|port_id|port_no|designated_port)\s+\S+`)

// snapshot lists what the hypervisor namespace's plumbing looks like: links,
// qdiscs, ingress filters, bridge ports, VLANs and permanent fdb entries.
func (l *lab) snapshot() string {
	l.t.Helper()
	ns := l.get("HV_NS")
	if br := l.get("BRIDGE"); br != "" && l.get("LAB_MODE") != "ovs" {
		// A freshly built bridge gains carrier a moment after its
		// ports come up; compare settled states only.
		for i := 0; i < 100; i++ {
			if strings.TrimSpace(l.sh(ns, "cat /sys/class/net/"+br+"/carrier 2>/dev/null || echo 0")) == "1" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var b strings.Builder
	links := l.sh(ns, "ip -d link show")
	b.WriteString(volatile.ReplaceAllString(links, "$1 X"))
	b.WriteString(l.sh(ns, "tc qdisc show"))
	var names []string
	sc := bufio.NewScanner(strings.NewReader(l.sh(ns, "ls /sys/class/net")))
	for sc.Scan() {
		names = append(names, sc.Text())
	}
	sort.Strings(names)
	for _, n := range names {
		b.WriteString(n + " ingress filters:\n" + l.sh(ns, "tc filter show dev "+n+" ingress 2>/dev/null || true"))
	}
	b.WriteString(l.sh(ns, "bridge link show"))
	b.WriteString(l.sh(ns, "bridge vlan show"))
	b.WriteString(l.sh(ns, "bridge fdb show | grep permanent || true"))
	if l.get("LAB_MODE") == "ovs" {
		b.WriteString(l.ovsSnapshot())
	}
	return b.String()
}

// ifindex returns the ifindex of dev in ns.
func (l *lab) ifindex(ns, dev string) string {
	l.t.Helper()
	return strings.TrimSpace(l.sh(ns, "cat /sys/class/net/"+dev+"/ifindex"))
}

func within(got, want, frac float64) bool {
	return got >= want*(1-frac) && got <= want*(1+frac)
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reader test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// interrupt stops a tool the way ^C would.
var interrupt = syscall.SIGINT
