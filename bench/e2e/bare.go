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
	"sync"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/tcsplice"
)

// barePairCommand is the hidden subcommand that runs the bare pair.
const barePairCommand = "bare-pair"

// loosePPS is the limit of the "limit above the load" rows: far above
// anything the generator offers.
const loosePPS = 100_000_000

// barePairSystems are the rows of this file: the bare pair, and shaperd with
// a limit far above the load (its logic runs, nothing is refused).
func barePairSystems() []system {
	return []system{
		{key: "bare-pair", title: "bare tap pair (tc splice, no logic)", lab: "bridge", setup: barePair, check: needSelf},
		{key: "shaperd-loose", title: "shaperd police, limit above the load", lab: "bridge", setup: shaperdLoose, check: needShaperd},
	}
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

// barePair starts the bare pair in the hypervisor namespace and waits
// until it has spliced the port.
func barePair(ctx context.Context, c cellEnv) (*installed, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	port := c.l.get("VM1_PORT")
	cmd := exec.Command("ip", "netns", "exec", c.l.get("HV_NS"), self, barePairCommand, "--port", port)
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
		config: "tc splice of " + port + " (bypass 22,3389: VM, priority and net taps), each tap relayed by forward.Relay at nice -10, no logic",
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
	if err := fs.Parse(args); err != nil || *port == "" {
		fmt.Fprintln(os.Stderr, "bare-pair: want --port PORT")
		return 2
	}
	if err := barePairMain(*port, *nice); err != nil {
		fmt.Fprintln(os.Stderr, "bare-pair:", err)
		return 1
	}
	return 0
}

func barePairMain(port string, nice int) (err error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	sp, err := tcsplice.New(slog.New(slog.DiscardHandler)).Splice(port, splice.Options{BypassPorts: []uint16{22, 3389}})
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
	open := func(name string) (forward.Device, error) {
		d, err := forward.OpenTap(name)
		if err == nil {
			devs = append(devs, d)
		}
		return d, err
	}
	vm, err := open(sp.VMTap())
	if err != nil {
		return err
	}
	nt, err := open(sp.NetTap())
	if err != nil {
		return err
	}
	pairs := [][2]forward.Device{{vm, nt}, {nt, vm}}
	if name := sp.PriorityTap(); name != "" {
		pr, err := open(name)
		if err != nil {
			return err
		}
		pairs = append(pairs, [2]forward.Device{pr, nt})
	}
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			forward.Relay(p[0], p[1], nice)
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
// each cell where both ran: the cost of shaperd's logic as a ratio.
func (h *harness) versusBare() []string {
	var lines []string
	for _, size := range h.opt.sizes {
		for _, load := range h.opt.loads {
			bare := h.find("bare-pair", size, load)
			if bare == nil || !bare.ok() || bare.ProcUserNsFrame+bare.ProcSysNsFrame == 0 {
				continue
			}
			floor := bare.ProcUserNsFrame + bare.ProcSysNsFrame
			for _, key := range []string{"shaperd-police", "shaperd-loose"} {
				r := h.find(key, size, load)
				if r == nil || !r.ok() {
					continue
				}
				own := r.ProcUserNsFrame + r.ProcSysNsFrame
				line := fmt.Sprintf("%s at %d B, %s: own CPU %.0f ns/frame, %.2f× the bare pair's %.0f", key, size, loadName(load), own, own/floor, floor)
				if key == "shaperd-loose" {
					line += fmt.Sprintf("; delivers %.0f pps, %.2f× the bare pair's %.0f", r.DeliveredPPS, r.DeliveredPPS/math.Max(bare.DeliveredPPS, 1), bare.DeliveredPPS)
				}
				lines = append(lines, line)
			}
		}
	}
	return lines
}
