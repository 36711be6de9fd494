package main

// The floor of shaperd's cost: a bare tap pair. The bench process runs
// itself as `bench-e2e bare-pair --port PORT` inside the hypervisor
// namespace; that splices the port exactly as shaperd does (the tc
// backend, the default bypass ports, so three taps) and relays the taps
// with forward.Relay, which reads and writes through the same Device and
// the same reader as shaperd's pipes, with no logic at all. shaperd's own
// CPU per frame against this row, in the same cell, is the cost of its
// logic.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/tcsplice"
)

// barePairCommand is the hidden subcommand that runs the bare pair.
const barePairCommand = "bare-pair"

// loosePPS is the limit of the "limit above the load" rows: the highest
// the daemon accepts (daemon.MaxPPS), far above anything the generator
// offers here. TestLoosePPSAccepted holds the two equal.
const loosePPS = 10_000_000

// barePairSystems are the rows of this file and latency.go: the bare pair,
// shaperd with a limit far above the load (its logic runs, nothing is
// refused), and the coalescing curve's.
func barePairSystems() []system {
	return append([]system{
		{key: "bare-pair", title: "bare tap pair (tc splice, no logic)", lab: "bridge", setup: barePair(1), check: needSelf},
		{key: "shaperd-loose", title: "shaperd police, limit above the load", lab: "bridge", setup: shaperdLoose, check: needShaperd},
		{key: "bare-pair-2q", title: "bare tap pair, 2 queues", lab: "bridge", setup: barePair(2), check: needSelf},
		{key: "shaperd-loose-2q", title: "shaperd police, limit above the load, 2 queues", lab: "bridge", setup: shaperdLooseQueues(2), check: needShaperd},
	}, coalesceSystems()...)
}

func needSelf(*harness) error {
	if _, err := os.Executable(); err != nil {
		return fmt.Errorf("the bench cannot find its own executable for the bare pair: %w", err)
	}
	return nil
}

// shaperdLoose quarantines with --pps loosePPS: every frame is classified
// and charged, none refused.
func shaperdLoose(ctx context.Context, c cellEnv) (*installed, error) {
	c.limit = loosePPS
	return shaperdQuarantine(ctx, c)
}

// shaperdLooseQueues is shaperdLoose with run --tap-queues n.
func shaperdLooseQueues(n int) func(context.Context, cellEnv) (*installed, error) {
	return func(ctx context.Context, c cellEnv) (*installed, error) {
		c.runArgs = []string{"--tap-queues", strconv.Itoa(n)}
		return shaperdLoose(ctx, c)
	}
}

// barePair starts the bare pair, with n queues per VM and net tap, in the
// hypervisor namespace and waits until it has spliced the port.
func barePair(n int) func(context.Context, cellEnv) (*installed, error) {
	return func(ctx context.Context, c cellEnv) (*installed, error) { return barePairN(ctx, c, n) }
}

func barePairN(ctx context.Context, c cellEnv, queues int) (*installed, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	port := c.l.get("VM1_PORT")
	cmd := exec.Command("ip", "netns", "exec", c.l.get("HV_NS"), self, barePairCommand, "--port", port, "--queues", strconv.Itoa(queues))
	p := &proc{name: barePairCommand, cmd: cmd, out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.err
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the bare pair: %w", err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()
	c.l.mu.Lock()
	c.l.procs = append(c.l.procs, p)
	c.l.mu.Unlock()
	if err := waitReady(ctx, map[*proc]string{p: "ready"}, 10*time.Second); err != nil {
		p.stop(syscall.SIGTERM, 10*time.Second)
		return nil, err
	}
	return &installed{
		config: fmt.Sprintf("tc splice of %s (bypass 22,3389: VM, priority and net taps; %d queues on the VM and net taps), each queue relayed by forward.Relay at nice -10, no logic", port, queues),
		pid:    p.pid(),
		alive: func() error {
			if p.exited() {
				return fmt.Errorf("the bare pair exited during the measurement: %v: %s", p.waitErr, lastLines(p.err.String(), 5))
			}
			return nil
		},
		teardown: func() error {
			p.stop(syscall.SIGTERM, 10*time.Second)
			if p.waitErr != nil {
				return fmt.Errorf("the bare pair exited with %v: %s", p.waitErr, lastLines(p.err.String(), 5))
			}
			return nil
		},
	}, nil
}

// runBarePair is `bench-e2e bare-pair --port PORT`: splice, relay until
// SIGTERM or SIGINT, then stop the relays and release the splice.
func runBarePair(args []string) int {
	fs := flag.NewFlagSet(barePairCommand, flag.ContinueOnError)
	port := fs.String("port", "", "the bridge port to splice (run inside its namespace)")
	nice := fs.Int("nice", -10, "scheduling priority of the relaying threads (shaperd's --forwarder-nice default)")
	queues := fs.Int("queues", 1, "queues of the VM and net taps (shaperd's --tap-queues)")
	if err := fs.Parse(args); err != nil || *port == "" {
		fmt.Fprintln(os.Stderr, "bare-pair: want --port PORT")
		return 2
	}
	if err := barePairMain(*port, *nice, *queues); err != nil {
		fmt.Fprintln(os.Stderr, "bare-pair:", err)
		return 1
	}
	return 0
}

func barePairMain(port string, nice, queues int) (err error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	sp, err := tcsplice.New(slog.New(slog.DiscardHandler)).Splice(port, splice.Options{BypassPorts: []uint16{22, 3389}, Queues: queues})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, sp.Release()) }()
	var devs []forward.Device
	defer func() {
		for _, d := range devs {
			d.Close()
		}
	}()
	// Offloads as shaperd opens a tc splice's taps.
	o, ok := sp.(splice.Offloader)
	offload := ok && o.Offloads()
	// The taps' creating files first, as shaperd's owner takes them
	// (splice.TapHolder).
	h, _ := sp.(splice.TapHolder)
	open := func(name string, n int) ([]forward.Device, error) {
		var f *os.File
		if h != nil {
			f = h.TakeTap(name)
		}
		var ds []forward.Device
		var err error
		if f != nil {
			ds, err = forward.TapQueues(f, name, n, offload)
		} else {
			ds, err = forward.OpenTapQueues(name, n, offload)
		}
		devs = append(devs, ds...)
		return ds, err
	}
	vms, err := open(sp.VMTap(), queues)
	if err != nil {
		return err
	}
	nts, err := open(sp.NetTap(), queues)
	if err != nil {
		return err
	}
	// Paired by index, as shaperd's forwarder pairs them.
	var pairs [][2]forward.Device
	for i := range max(len(vms), len(nts)) {
		vm, nt := vms[min(i, len(vms)-1)], nts[min(i, len(nts)-1)]
		if i < len(vms) {
			pairs = append(pairs, [2]forward.Device{vm, nt})
		}
		if i < len(nts) {
			pairs = append(pairs, [2]forward.Device{nt, vm})
		}
	}
	if name := sp.PriorityTap(); name != "" {
		pr, err := open(name, 1)
		if err != nil {
			return err
		}
		pairs = append(pairs, [2]forward.Device{pr[0], nts[0]})
	}
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			forward.Relay(p[0], p[1], nice, 0)
		}()
	}
	fmt.Fprintln(os.Stderr, "bare-pair: ready")
	<-sig
	for _, d := range devs {
		d.Close()
	}
	wg.Wait()
	return nil
}

// versusBare compares shaperd's own CPU per frame with the bare pair's, in
// each cell where both ran: the cost of shaperd's logic as a ratio; and 2
// queues against 1, for the bare pair and for shaperd.
func (h *harness) versusBare() []string {
	var lines []string
	own := func(r *result) float64 { return r.ProcUserNsFrame + r.ProcSysNsFrame }
	ok := func(r *result) bool { return r != nil && r.ok() && own(r) > 0 }
	for _, size := range h.opt.sizes {
		for _, load := range h.opt.loads {
			for _, c := range []struct{ key, bare string }{
				{"shaperd-police", "bare-pair"}, {"shaperd-loose", "bare-pair"}, {"shaperd-loose-2q", "bare-pair-2q"},
			} {
				r, bare := h.find(c.key, size, load), h.find(c.bare, size, load)
				if !ok(r) || !ok(bare) {
					continue
				}
				line := fmt.Sprintf("%s at %d B, %s: own CPU %.0f ns/frame, %.2f× %s's %.0f", c.key, size, loadName(load), own(r), own(r)/own(bare), c.bare, own(bare))
				if c.key != "shaperd-police" {
					line += fmt.Sprintf("; delivers %.0f pps, %.2f× %s's %.0f", r.DeliveredPPS, r.DeliveredPPS/math.Max(bare.DeliveredPPS, 1), c.bare, bare.DeliveredPPS)
				}
				lines = append(lines, line)
			}
			for _, c := range []struct{ one, two string }{{"bare-pair", "bare-pair-2q"}, {"shaperd-loose", "shaperd-loose-2q"}} {
				a, b := h.find(c.one, size, load), h.find(c.two, size, load)
				if !ok(a) || !ok(b) {
					continue
				}
				lines = append(lines, fmt.Sprintf("2 queues against 1, %s at %d B, %s: own CPU %.0f against %.0f ns/frame (%.2f×), delivers %.0f against %.0f pps (%.2f×), machine %.0f against %.0f ns/frame",
					c.one, size, loadName(load), own(b), own(a), own(b)/own(a), b.DeliveredPPS, a.DeliveredPPS, b.DeliveredPPS/math.Max(a.DeliveredPPS, 1),
					b.MachineNsPerFrame, a.MachineNsPerFrame))
			}
		}
	}
	return lines
}
