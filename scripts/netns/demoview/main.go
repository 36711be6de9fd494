// Command demoview is make demo's live view: it starts the flood, prints one
// compact line per second about one port, and at the end draws the run as a
// timeline (SVG) of offered and delivered packets per second with the
// ladder's stages shaded.
//
//	ip netns exec LAB-ext demoview --shaperd bin/shaperd --socket SOCK --port vm-1-00c9 \
//	    --offered LAB-vm1:eth0 --delivered LAB-ext:eth0 --probe 198.18.0.11:22 \
//	    --svg bin/demo-timeline.svg --samples bin/demo-samples.json \
//	    -- ip netns exec LAB-vm1 bin/flood --dst 198.18.0.100 --pps 0 --duration 26s
//	demoview svg --samples bin/demo-samples.json --svg out.svg   (redraw a recorded run)
//
// Every second it reads:
//   - offered: the frames the VM put on its wire, tx_packets + tx_dropped of
//     the --offered interface (netlink, in that namespace);
//   - delivered: the frames the external host received, rx_packets of the
//     --delivered interface;
//   - the port's ladder stage, limit and drop counters from `shaperd status
//     --json`; the drop reasons whose counters moved are printed as rates;
//   - an ssh-like probe: one TCP connection to --probe (a `probe server`)
//     carrying a 64-byte message every 100 ms; each second prints how many
//     echoes came back and how many were lost (no echo within 1 s).
//
// It runs the command after -- once --lead seconds of quiet are on the
// record, and stops --tail seconds after the port was released (or at
// --max). Only lab addresses are probed (198.18.0.0/15, 2001:2::/48), and
// it must run in a named namespace (ip netns exec), like the other tools.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demoview:", err)
		os.Exit(1)
	}
}

type options struct {
	shaperd   string
	socket    string
	port      string
	offered   nsIf
	delivered nsIf
	probe     string
	svg       string
	samples   string
	lead      int // seconds of quiet before the command starts
	tail      int // seconds recorded after the release
	max       time.Duration
	cmd       []string
}

// nsIf names an interface in a named network namespace: "NS:IF".
type nsIf struct{ ns, dev string }

func parseNsIf(flagName, s string) (nsIf, error) {
	ns, dev, ok := strings.Cut(s, ":")
	if !ok || ns == "" || dev == "" {
		return nsIf{}, fmt.Errorf("--%s %q: want NAMESPACE:INTERFACE, e.g. lab-vm1:eth0", flagName, s)
	}
	return nsIf{ns, dev}, nil
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "svg" {
		return runSVG(args[1:])
	}
	o, err := parse(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rec, runErr := record(ctx, o)
	if len(rec.Samples) == 0 {
		return runErr
	}
	if err := writeJSON(o.samples, rec); err != nil {
		return errors.Join(runErr, err)
	}
	if err := os.WriteFile(o.svg, rec.SVG(), 0o644); err != nil {
		return errors.Join(runErr, fmt.Errorf("--svg: %w", err))
	}
	abs, _ := filepath.Abs(o.svg)
	fmt.Printf("== timeline: %s\n", abs)
	return runErr
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("demoview", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.shaperd, "shaperd", "shaperd", "the shaperd binary")
	fs.StringVar(&o.socket, "socket", "", "the daemon's control socket (required)")
	fs.StringVar(&o.port, "port", "", "the watched port, e.g. vm-1-00c9 (required)")
	offered := fs.String("offered", "", "NS:IF whose tx counters are the VM's offered load (required)")
	delivered := fs.String("delivered", "", "NS:IF whose rx counters are what the external host receives (required)")
	fs.StringVar(&o.probe, "probe", "", "ADDR:PORT of a probe server behind the port, e.g. 198.18.0.11:22 (required)")
	fs.StringVar(&o.svg, "svg", "demo-timeline.svg", "where to write the timeline")
	fs.StringVar(&o.samples, "samples", "", "where to write the recorded samples as JSON (none if empty)")
	fs.IntVar(&o.lead, "lead", 2, "seconds recorded before the command starts (at least 1)")
	fs.IntVar(&o.tail, "tail", 3, "seconds recorded after the port's release")
	fs.DurationVar(&o.max, "max", 2*time.Minute, "give up if the port is not released within this")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.cmd = fs.Args()
	if o.socket == "" || o.port == "" || *offered == "" || *delivered == "" || o.probe == "" {
		return o, errors.New("--socket, --port, --offered, --delivered and --probe are required")
	}
	if len(o.cmd) == 0 {
		return o, errors.New("no command: give the flood to start after --")
	}
	if o.lead < 1 || o.tail < 0 || o.max <= 0 {
		return o, errors.New("want --lead >= 1, --tail >= 0 and --max > 0")
	}
	var err error
	if o.offered, err = parseNsIf("offered", *offered); err != nil {
		return o, err
	}
	if o.delivered, err = parseNsIf("delivered", *delivered); err != nil {
		return o, err
	}
	ap, err := labnet.ParseAddrPort("probe", o.probe)
	if err != nil {
		return o, err
	}
	if _, err := labnet.CheckDestination(ap.Addr()); err != nil {
		return o, fmt.Errorf("--probe: %w", err)
	}
	return o, nil
}

func runSVG(args []string) error {
	fs := flag.NewFlagSet("demoview svg", flag.ContinueOnError)
	in := fs.String("samples", "", "a recorded run (demoview --samples) (required)")
	out := fs.String("svg", "demo-timeline.svg", "where to write the timeline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || fs.NArg() > 0 {
		return errors.New("svg: want --samples FILE [--svg FILE] and no other arguments")
	}
	rec, err := readJSON(*in)
	if err != nil {
		return err
	}
	return os.WriteFile(*out, rec.SVG(), 0o644)
}
