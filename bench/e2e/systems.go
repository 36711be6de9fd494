package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/internal/cpuquota"
)

// system is one row of the comparison: a way to police (or not) the frames
// from VM 1's port, set up and torn down inside one lab's hypervisor
// namespace for each measurement.
type system struct {
	key   string // stable id, used by -systems
	title string // the row label
	lab   string // "bridge" or "ovs": the lab mode it runs in
	// policed systems are configured to the run's limit; byBytes ones
	// count bytes, configured to limit × frame bytes per second.
	policed, byBytes bool
	// ungated rows show what goes wrong without a feature: the smoke run
	// reports them and holds them to nothing.
	ungated bool
	// check says, before any lab work, whether this tree or machine offers
	// the system: nil, an unavailableError (the row keeps the reason), or
	// another error (the row fails).
	check func(h *harness) error
	setup func(ctx context.Context, c cellEnv) (*installed, error)
}

// cellEnv is what a system's setup needs for one measurement.
type cellEnv struct {
	h     *harness
	l     *lab
	size  int   // frame bytes without FCS
	load  int64 // offered packets per second; 0 = the generator's maximum
	limit int64 // packets per second
	// runArgs are extra `shaperd run` flags for shaperd's systems.
	runArgs []string
}

// bytesPerSec is the byte-counting systems' limit for this frame size.
func (c cellEnv) bytesPerSec() int64 { return c.limit * int64(c.size) }

// installed is a system set up for one measurement.
type installed struct {
	config   string       // what was configured, for the results
	pid      int          // a process whose own CPU is reported (shaperd), else 0
	alive    func() error // nil, or a check that it is still running
	teardown func() error // removes exactly what setup added; nil = nothing
}

// burst10ms is 10 ms of a rate, at least min: every policer gets the same
// burst, shaperd's default.
func burst10ms(rate, min int64) int64 { return max(rate/100, min) }

func systems() []system {
	return append([]system{
		{key: "bridge", title: "no policy, Linux bridge", lab: "bridge", setup: noPolicy},
		{key: "ovs", title: "no policy, OVS userspace", lab: "ovs", setup: noPolicy},
		{key: "nft-limit", title: "nftables netdev limit (pps)", lab: "bridge", policed: true, setup: nftLimit(false), check: needTool("nft")},
		// The fair peer for the probe (issue 13): an operator would exempt ssh.
		{key: "nft-limit-ssh", title: "nftables netdev limit (pps), tcp sport 22 accepted", lab: "bridge", policed: true, setup: nftLimit(true), check: needTool("nft")},
		{key: "tc-tbf", title: "tc ifb + tbf (bytes)", lab: "bridge", policed: true, byBytes: true, setup: tcTBF, check: needTool("tc")},
		{key: "ovs-meter-pktps", title: "OVS meter pktps", lab: "ovs", policed: true, setup: ovsMeter(false)},
		{key: "ovs-meter-kbps", title: "OVS meter kbps (bytes)", lab: "ovs", policed: true, byBytes: true, setup: ovsMeter(true)},
		{key: "shaperd-police", title: "shaperd police, Linux bridge", lab: "bridge", policed: true, setup: shaperdPolice, check: needShaperd},
		{key: "shaperd-police-ovs", title: "shaperd police, OVS", lab: "ovs", policed: true, setup: shaperdPolice, check: needShaperd},
		{key: "shaperd-shape", title: "shaperd shape, 200 ms delay", lab: "bridge", policed: true, setup: shaperdShape, check: needShaperd},
		// Issue 13: a host that gives the daemon little CPU.
		{key: "shaperd-police-cpu20", title: "shaperd police, Linux bridge, daemon confined to 20% of a core", lab: "bridge", policed: true, setup: shaperdConfined(), check: needShaperd},
		{key: "shaperd-police-ovs-cpu20", title: "shaperd police, OVS, daemon confined to 20% of a core", lab: "ovs", policed: true, setup: shaperdConfined(), check: needShaperd},
		{key: "shaperd-police-cpu20-nobackstop", title: "shaperd police, Linux bridge, confined to 20% of a core, --backstop none (what the backstop prevents)", lab: "bridge", policed: true, ungated: true,
			setup: shaperdConfined("--backstop", "none"), check: needShaperd},
	}, barePairSystems()...)
}

func needTool(name string) func(*harness) error {
	return func(*harness) error {
		if _, err := exec.LookPath(name); err != nil {
			return unavailable("%s is not installed (make deps installs it)", name)
		}
		return nil
	}
}

func needShaperd(h *harness) error {
	if !isExec(filepath.Join(h.bin, "shaperd")) {
		return fmt.Errorf("%s/shaperd is missing: run make build", h.bin)
	}
	return nil
}

func noPolicy(_ context.Context, c cellEnv) (*installed, error) {
	what := "Linux bridge " + c.l.get("BRIDGE") + ", no policy"
	if c.l.mode == "ovs" {
		what = "OVS bridge " + c.l.get("BRIDGE") + " (userspace datapath), the lab's flows, no policy"
	}
	return &installed{config: what}, nil
}

// nftLimit drops what exceeds the limit at the netdev ingress hook of VM 1's
// port, in a table of its own; with ssh, TCP from port 22 (the VM's ssh
// replies, the probe's) is accepted before the limit.
func nftLimit(ssh bool) func(context.Context, cellEnv) (*installed, error) {
	return func(ctx context.Context, c cellEnv) (*installed, error) { return nftLimitRule(ctx, c, ssh) }
}

func nftLimitRule(_ context.Context, c cellEnv, ssh bool) (*installed, error) {
	hv, port := c.l.get("HV_NS"), c.l.get("VM1_PORT")
	table := "shbench_" + randHex(6)
	burst := burst10ms(c.limit, 1)
	rule := fmt.Sprintf("limit rate over %d/second burst %d packets drop", c.limit, burst)
	if ssh {
		rule = "tcp sport 22 accept\n\t\t" + rule
	}
	ruleset := fmt.Sprintf("table netdev %s {\n\tchain in_vm1 {\n\t\ttype filter hook ingress device %q priority 0; policy accept;\n\t\t%s\n\t}\n}\n", table, port, rule)
	cmd := exec.Command("ip", "netns", "exec", hv, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		// nft -f is atomic: nothing was added.
		return nil, fmt.Errorf("nft -f: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return &installed{
		config: fmt.Sprintf("nft table netdev %s, ingress hook on %s: %s", table, port, rule),
		teardown: func() error {
			_, err := c.l.sh(hv, "nft delete table netdev "+table)
			return err
		},
	}, nil
}

// tcTBF redirects VM 1's port's ingress to an ifb of its own and shapes the
// ifb's egress with tbf at limit × frame bytes per second.
func tcTBF(_ context.Context, c cellEnv) (*installed, error) {
	hv, port := c.l.get("HV_NS"), c.l.get("VM1_PORT")
	if out, err := c.l.sh(hv, "tc qdisc show dev "+port+" ingress"); err != nil || strings.Contains(out, "ingress") {
		return nil, fmt.Errorf("%s already has an ingress qdisc (or tc failed: %v): not touching it", port, err)
	}
	ifb := "shbifb" + randHex(4)
	rate := c.bytesPerSec()
	burst := burst10ms(rate, int64(c.size))
	limit := burst + rate/50 // 20 ms of queue beyond the burst
	tbf := fmt.Sprintf("tbf rate %dbit burst %d limit %d", rate*8, burst, limit)
	var undo []string
	teardown := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if _, err := c.l.sh(hv, undo[i]); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	steps := []struct{ do, undo string }{
		{"ip link add " + ifb + " type ifb", "ip link del " + ifb},
		{"ip link set " + ifb + " up", ""},
		{"tc qdisc add dev " + ifb + " root " + tbf, ""},
		{"tc qdisc add dev " + port + " handle ffff: ingress", "tc qdisc del dev " + port + " ingress"},
		{"tc filter add dev " + port + " parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev " + ifb, ""},
	}
	for _, s := range steps {
		if _, err := c.l.sh(hv, s.do); err != nil {
			if terr := teardown(); terr != nil {
				err = fmt.Errorf("%w; rollback: %v", err, terr)
			}
			return nil, err
		}
		if s.undo != "" {
			undo = append(undo, s.undo)
		}
	}
	return &installed{
		config:   fmt.Sprintf("ingress of %s redirected (u32 + mirred) to %s; %s root %s (%d bytes/s = %d pps of %d-byte frames)", port, ifb, ifb, tbf, rate, c.limit, c.size),
		teardown: teardown,
	}, nil
}

// ovsMeter adds an OpenFlow meter and one flow (own cookie, above the lab's)
// sending VM 1's port's frames through it to NORMAL. kbps meters are set to
// limit × frame bytes × 8 / 1000.
func ovsMeter(kbps bool) func(context.Context, cellEnv) (*installed, error) {
	return func(_ context.Context, c cellEnv) (*installed, error) {
		br, port := c.l.get("BRIDGE"), c.l.get("VM1_PORT")
		meters, err := c.l.ovs("ovs-ofctl", "-O", "OpenFlow13", "dump-meters", br)
		if err != nil {
			return nil, err
		}
		id := 0
		for i := 0; i < 20 && id == 0; i++ {
			n, _ := strconv.ParseUint(randHex(4), 16, 32)
			cand := 1000 + int(n)%60000
			if !strings.Contains(meters, fmt.Sprintf("meter=%d ", cand)) {
				id = cand
			}
		}
		if id == 0 {
			return nil, errors.New("no free meter id")
		}
		cookie := "0x5bbe" + randHex(8)
		meter := fmt.Sprintf("meter=%d,pktps,burst,band=type=drop,rate=%d,burst_size=%d", id, c.limit, burst10ms(c.limit, 1))
		if kbps {
			k := c.bytesPerSec() * 8 / 1000
			meter = fmt.Sprintf("meter=%d,kbps,burst,band=type=drop,rate=%d,burst_size=%d", id, k, burst10ms(k, int64(c.size)*8/1000+1))
		}
		flow := fmt.Sprintf("cookie=%s,priority=60000,in_port=%s,actions=meter:%d,NORMAL", cookie, port, id)
		if _, err := c.l.ovs("ovs-ofctl", "-O", "OpenFlow13", "add-meter", br, meter); err != nil {
			return nil, err
		}
		delMeter := func() error {
			_, err := c.l.ovs("ovs-ofctl", "-O", "OpenFlow13", "del-meter", br, fmt.Sprintf("meter=%d", id))
			return err
		}
		if _, err := c.l.ovs("ovs-ofctl", "-O", "OpenFlow13", "add-flow", br, flow); err != nil {
			if derr := delMeter(); derr != nil {
				err = fmt.Errorf("%w; rollback: %v", err, derr)
			}
			return nil, err
		}
		return &installed{
			config: fmt.Sprintf("%s: %s; flow %s", br, meter, flow),
			teardown: func() error {
				_, err := c.l.ovs("ovs-ofctl", "-O", "OpenFlow13", "del-flows", br, "cookie="+cookie+"/-1")
				return errors.Join(err, delMeter())
			},
		}, nil
	}
}

// noBackend matches the daemon's refusal of a port no splice backend
// handles (shaperd's OVS backend not being built yet).
var noBackend = regexp.MustCompile(`(?i)no splice backend`)

// shaperdPolice runs bin/shaperd in the hypervisor namespace with its own
// socket and state directory, and quarantines VM 1's port with --pps limit
// and the default bypass (22, 3389).
func shaperdPolice(ctx context.Context, c cellEnv) (*installed, error) {
	return shaperdQuarantine(ctx, c)
}

// shaperdShape is shaperd in shape mode with the seeds' 200 ms delay: what
// shaperd offers in place of netem + tbf.
func shaperdShape(ctx context.Context, c cellEnv) (*installed, error) {
	return shaperdQuarantine(ctx, c, "--mode", "shape", "--delay", "200ms")
}

// confinedShare is the share of one core the confined rows give the daemon
// (cgroup cpu controller, see package cpuquota).
const confinedShare = 0.2

// shaperdConfined is shaperd police with extra quarantine flags and the
// daemon confined to confinedShare of one core, from before the warm-up
// to the end of the measurement.
func shaperdConfined(extra ...string) func(context.Context, cellEnv) (*installed, error) {
	return func(ctx context.Context, c cellEnv) (*installed, error) {
		in, err := shaperdQuarantine(ctx, c, extra...)
		if err != nil {
			return nil, err
		}
		g, err := cpuquota.Confine(in.pid, confinedShare, "shbench-"+randHex(6))
		if err != nil {
			return nil, errors.Join(err, in.teardown())
		}
		in.config += fmt.Sprintf("; the daemon confined to %.0f%% of one core (cgroup %s)", confinedShare*100, g.Dir())
		release := in.teardown
		in.teardown = func() error { return errors.Join(g.Remove(), release()) }
		return in, nil
	}
}

// shaperdQuarantine runs a daemon in the lab's hypervisor namespace and
// quarantines VM 1's port at the limit, with extra flags.
func shaperdQuarantine(ctx context.Context, c cellEnv, extra ...string) (*installed, error) {
	dir, err := os.MkdirTemp("", "shaperd-bench-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "shaperd.sock")
	var env []string
	if c.l.mode == "ovs" {
		env = c.l.ovsEnv()
	}
	run := append([]string{"run", "--socket", sock, "--state-dir", filepath.Join(dir, "state"), "--log-level", "info"}, c.runArgs...)
	d, err := c.l.start(c.l.get("HV_NS"), env, "shaperd", run...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cli := func(args ...string) (int, string) {
		cmd := exec.Command(filepath.Join(c.h.bin, "shaperd"), append([]string{"--socket", sock}, args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return ee.ExitCode(), string(out)
		case err != nil:
			return -1, err.Error()
		}
		return 0, string(out)
	}
	stop := func() error {
		d.stop(syscall.SIGTERM, 15*time.Second)
		os.RemoveAll(dir)
		if d.waitErr != nil {
			return fmt.Errorf("shaperd run exited with %v: %s", d.waitErr, lastLines(d.err.String()+d.out.String(), 5))
		}
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := cli("status"); code == 0 {
			break
		}
		if d.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			err := fmt.Errorf("shaperd run did not answer on its socket: %s", lastLines(d.err.String()+d.out.String(), 5))
			return nil, errors.Join(err, stop())
		}
		time.Sleep(50 * time.Millisecond)
	}
	port := c.l.get("VM1_PORT")
	args := append([]string{"quarantine", port, "--pps", strconv.FormatInt(c.limit, 10)}, extra...)
	if code, out := cli(args...); code != 0 {
		serr := stop()
		if noBackend.MatchString(out) {
			return nil, unavailable("shaperd cannot splice a port of this lab yet: %s", firstLine(out, ""))
		}
		return nil, errors.Join(fmt.Errorf("shaperd %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(out)), serr)
	}
	return &installed{
		config: "shaperd " + strings.Join(args, " ") + " (bypass 22,3389 by default; daemon in " + c.l.get("HV_NS") + ")",
		pid:    d.pid(),
		alive: func() error {
			if d.exited() {
				return fmt.Errorf("shaperd run exited during the measurement: %v: %s", d.waitErr, lastLines(d.err.String(), 5))
			}
			return nil
		},
		teardown: func() error {
			var rerr error
			if code, out := cli("release", port); code != 0 {
				rerr = fmt.Errorf("shaperd release %s: exit %d: %s", port, code, strings.TrimSpace(out))
			}
			return errors.Join(rerr, stop())
		},
	}, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// stripBridgeCarrier removes the carrier flags (NO-CARRIER, LOWER_UP) from
// the bridge device's own line of `ip -o link show` output. A bridge's
// carrier follows its ports by itself (a new bridge gains it a moment after
// they come up): the ports' own flags are compared, the bridge's are not
// plumbing.
func stripBridgeCarrier(out, br string) string {
	line := regexp.MustCompile(`(?m)^\d+: ` + regexp.QuoteMeta(br) + `: <[^>]*>`)
	return line.ReplaceAllStringFunc(out, func(l string) string {
		head, flags, _ := strings.Cut(strings.TrimSuffix(l, ">"), "<")
		var keep []string
		for _, f := range strings.Split(flags, ",") {
			if f != "NO-CARRIER" && f != "LOWER_UP" {
				keep = append(keep, f)
			}
		}
		return head + "<" + strings.Join(keep, ",") + ">"
	})
}

// snapshot lists the hypervisor namespace's plumbing (links, qdiscs, ingress
// filters, nftables, bridge ports; flows and meters in ovs mode) so that a
// cell can check its teardown removed exactly what its setup added.
func snapshot(l *lab) (string, error) {
	hv := l.get("HV_NS")
	out, err := l.sh(hv, `ip -o link show | sed 's/ state [A-Z]*//'; tc qdisc show; nft list ruleset;
for d in $(ls /sys/class/net); do echo "$d:"; tc filter show dev "$d" ingress 2>/dev/null; done
bridge link show 2>/dev/null | sed 's/ state [a-z]*//' || true`)
	if err != nil {
		return "", err
	}
	out = stripBridgeCarrier(out, l.get("BRIDGE"))
	if l.mode == "ovs" && l.get("OVS_RUNDIR") != "" {
		br := l.get("BRIDGE")
		flows, err := l.ovs("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", br, "--no-stats")
		if err != nil {
			return "", err
		}
		meters, err := l.ovs("ovs-ofctl", "-O", "OpenFlow13", "dump-meters", br)
		if err != nil {
			return "", err
		}
		out += flows + meters
	}
	return out, nil
}
