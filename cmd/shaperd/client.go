package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
)

const unitsHelp = `
Rates use tc's units: bit (or a bare number), kbit, mbit, gbit are BITS per
second; bps, kbps, mbps, gbps are BYTES per second, as in tc. Sizes: b (or a
bare number), kb, mb are bytes (k = 1024). 'none' clears a limit.
Unprefixed limits apply to frames FROM the VM (the flood case); each has a
--to-vm- twin for frames TO the VM.`

var limitHelp = map[string]string{
	"pps":                    "aggregate packets per second, at least 1 (to drop everything, --block)",
	"block":                  "drop everything but the bypass and control classes",
	"bps":                    "aggregate rate (tc units: 16mbit; kbps = BYTES/s)",
	"burst":                  "aggregate burst in packets (default 10 ms of --pps)",
	"burst-bytes":            "aggregate burst in bytes (default 10 ms of --bps, at least 1522b)",
	"bypass-pps":             "bypass (ssh/rdp) budget in packets per second (default 2000)",
	"bypass-bps":             "bypass budget rate (default 100mbit)",
	"control-pps":            "ARP/neighbour-discovery budget in packets per second (default 200)",
	"mode":                   "police (drop what the budgets refuse) or shape (queue it, release at the rate after --delay)",
	"delay":                  "shape mode: fixed delay of every frame, e.g. 200ms",
	"queue-bytes":            "shape mode: queue bound in bytes (default what the rate releases in --queue-time, plus a burst)",
	"queue-time":             "shape mode: longest a frame may wait (default --delay + 10ms)",
	"syn-pps":                "new TCP connections per second (SYN without ACK), not counting bypass connections",
	"udp-pps":                "UDP packets per second",
	"icmp-bps":               "ICMP and ICMPv6 (other than neighbour discovery) rate, e.g. 2kbit",
	"max-frame":              "drop frames longer than this many bytes, Ethernet header included (e.g. 1400)",
	"bypass-conn-per-source": "new bypass (ssh/rdp) connections per source address per minute (brute-force protection)",
	"class":                  "a traffic class rule, repeatable, in order: 'NAME: MATCH... [pps N] [bps RATE] [per src|dst ...] [drop|continue|reclassify C] [mode police|shape]'",
	"guard":                  "anti-spoofing guard on frames from the VM: only its MAC and IPs, pinned ARP and ND, no DHCP server replies or router advertisements",
	"guard-mac":              "the VM's MAC address(es) for --guard, comma-separated (default: learnt by the profile, if it allows)",
	"guard-ip":               "the VM's addresses or prefixes for --guard, comma-separated",
	"backstop":               "kernel pre-policer ceiling in packets per second, none (off) or auto (default: twice the budgets, see docs/architecture.md)",
}

// addLimitFlags registers every limit flag (and its --to-vm- twin) as a
// string; package api parses them, on both sides of the socket, so all
// clients share the daemon's errors.
func addLimitFlags(fs *pflag.FlagSet) {
	for _, name := range api.LimitFlagNames() {
		base := strings.TrimPrefix(name, "to-vm-")
		help := limitHelp[base]
		switch {
		case strings.HasPrefix(base, "guard"):
		case base != name:
			help += ", frames to the VM"
		default:
			help += ", frames from the VM"
		}
		switch base {
		case "class":
			fs.StringArray(name, nil, help)
		case "guard", "block":
			fs.Bool(name, false, help)
		default:
			fs.String(name, "", help)
		}
	}
}

// limitFlags collects the limit flags given on the command line, in the
// control socket's words.
func limitFlags(fs *pflag.FlagSet, extra ...string) api.LimitFlags {
	req := api.LimitFlags{}
	names := append(api.LimitFlagNames(), extra...)
	for _, n := range names {
		if f := fs.Lookup(n); f != nil && f.Changed {
			if a, ok := f.Value.(pflag.SliceValue); ok {
				// Repeatable (--class): one rule per line.
				req[n] = strings.Join(a.GetSlice(), "\n")
				continue
			}
			req[n] = f.Value.String()
		}
	}
	return req
}

func newQuarantineCmd(g *globals) *cobra.Command {
	var asJSON, pending bool
	cmd := &cobra.Command{
		Use:   "quarantine PORT [limits]",
		Short: "Splice PORT through shaperd and police it with the limits given, or a profile",
		Long: `Splice PORT (a VM's switch port) through a tap pair and police it with exactly
the limits given, or with a profile of the daemon's config (--profile NAME).
With no --pps, --bps (or a --to-vm- twin) and no --profile, the 'quarantine'
profile applies: its escalation ladder shapes the VM to 10000 pps behind a
200 ms delay queue, then tightens and finally blocks while the flood goes on,
and releases the port after a calm period.
TCP connections TO the VM on the --bypass ports (default 22,3389) keep working
with their own budget.` + unitsHelp,
		Args: exactArgs("PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.QuarantineRequest{Port: args[0], Limits: limitFlags(cmd.Flags(), "bypass", "bypass-outbound", "fail", "profile"), Pending: pending}
			if err := daemon.CheckRequest(req.Port, req.Limits, false); err != nil {
				return usageErr("%s", strings.TrimPrefix(err.Error(), "usage: "))
			}
			q, err := g.client().Quarantine(req)
			if err != nil {
				return clientErr(err)
			}
			return printQuarantine(cmd.OutOrStdout(), q, asJSON)
		},
	}
	addLimitFlags(cmd.Flags())
	cmd.Flags().String("bypass", "22,3389", "TCP ports on the VM kept working (connections TO the VM), or none")
	cmd.Flags().String("profile", "", "a profile of the daemon's config: its limits and escalation ladder (default 'quarantine' when no --pps or --bps is given)")
	cmd.Flags().String("fail", "", "open or closed: whether traffic falls back to the direct path if the forwarder dies (default open where the backend can, e.g. OVS; the tc backend is always closed)")
	cmd.Flags().Bool("bypass-outbound", false, "also bypass the VM's own connections to the bypass ports (off: outbound brute force is what must be limited)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the quarantine as JSON")
	cmd.Flags().BoolVar(&pending, "pending", false, "accept a port that does not exist yet: quarantine it when it appears (until released or --pending-ttl)")
	return cmd
}

func newSetCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "set PORT [limits]",
		Short: "Change the named limits of a quarantined PORT in place",
		Long:  `Change only the limits named; 'none' clears one. A default burst follows its rate.` + unitsHelp,
		Args:  exactArgs("PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.SetRequest{Port: args[0], Limits: limitFlags(cmd.Flags())}
			if len(req.Limits) == 0 {
				return usageErr("set %s: nothing to change: name at least one limit flag (see 'shaperd set --help')", args[0])
			}
			if err := daemon.CheckRequest(req.Port, req.Limits, true); err != nil {
				return usageErr("%s", strings.TrimPrefix(err.Error(), "usage: "))
			}
			q, err := g.client().Set(req)
			if err != nil {
				return clientErr(err)
			}
			return printQuarantine(cmd.OutOrStdout(), q, asJSON)
		},
	}
	addLimitFlags(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the quarantine as JSON")
	return cmd
}

func newReleaseCmd(g *globals) *cobra.Command {
	var all, offline bool
	var stateDir string
	cmd := &cobra.Command{
		Use:   "release PORT | --all",
		Short: "End PORT's quarantine (or every one) and revert its splice exactly",
		Long: `End PORT's quarantine, or every quarantine with --all, and revert the splice
exactly. A pending quarantine is dropped.

--offline works with no daemon running: it finds shaperd's splices on the
host (tap names, tc filters, OVS cookies) and reverts them. It is meant for a
service manager's OnFailure= unit once restarts are exhausted; it refuses to
run while a daemon answers on the socket.`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case all && len(args) > 0:
				return usageErr("release takes a PORT or --all, not both")
			case !all && len(args) != 1:
				return usageErr("release takes exactly one PORT, or --all (see 'shaperd release --help')")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var ports []string
			if !all {
				ports = args
			}
			if offline {
				return releaseOffline(cmd, g, stateDir, ports, all)
			}
			req := api.ReleaseRequest{All: all}
			if !all {
				req.Port = args[0]
			}
			res, err := g.client().Release(req)
			if err != nil {
				return clientErr(err)
			}
			for _, p := range res.Released {
				fmt.Fprintf(cmd.OutOrStdout(), "released %s\n", p)
			}
			for _, warn := range res.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", warn)
			}
			kept := slices.Sorted(maps.Keys(res.Kept))
			for _, p := range kept {
				t := res.Kept[p]
				fmt.Fprintf(cmd.OutOrStdout(), "kept %s: spliced for quota tenant %s (shaperd quota remove %s releases it)\n", p, t, t)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "release every quarantine")
	cmd.Flags().BoolVar(&offline, "offline", false, "revert splices with no daemon running")
	cmd.Flags().StringVar(&stateDir, "state-dir", DefaultStateDir, "with --offline: the daemon's state directory")
	return cmd
}

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON, noSamples bool
	cmd := &cobra.Command{
		Use:   "status [PORT]",
		Short: "Show quarantines with per-class pass and drop counters",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErr("status takes at most one PORT")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			port := ""
			if len(args) == 1 {
				port = args[0]
			}
			w := cmd.OutOrStdout()
			if asJSON {
				// As the daemon wrote it: decoding and encoding it
				// again was most of the command's time on a host with
				// 100 quarantines. (The daemon's own trailing newline
				// is not part of the JSON value.)
				raw, err := g.client().StatusJSON(port, !noSamples)
				if err != nil {
					return clientErr(err)
				}
				_, err = fmt.Fprintf(w, "%s\n", raw)
				return err
			}
			// The human view shows no quota samples.
			st, err := g.client().StatusWithoutSamples(port)
			if err != nil {
				return clientErr(err)
			}
			if st.Daemon.StateNotSaved != "" {
				fmt.Fprintln(w, "state not saved "+st.Daemon.StateNotSaved)
			}
			if len(st.Quarantines) == 0 {
				fmt.Fprintln(w, "no quarantines")
			}
			for _, q := range st.Quarantines {
				printHuman(w, q)
			}
			for _, f := range st.Flagged {
				fmt.Fprintf(w, "flagged %s  since=%s  %.0f pps  %.0f bit/s  (not quarantined: dry run or --max-auto)\n",
					f.Port, f.Since.Format("2006-01-02T15:04:05Z"), f.PPS, f.BPS)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	cmd.Flags().BoolVar(&noSamples, "no-quota-samples", false, "with --json: leave each quota tenant's samples out (an empty list)")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printQuarantine(w io.Writer, q api.Quarantine, asJSON bool) error {
	if asJSON {
		return writeJSON(w, q)
	}
	printHuman(w, q)
	for _, warn := range q.Warnings {
		fmt.Fprintln(os.Stderr, "warning:", warn)
	}
	return nil
}

func fmtLimits(l api.Limits) string {
	var parts []string
	if l.PPS != nil {
		parts = append(parts, fmt.Sprintf("%g pps (burst %d)", *l.PPS, *l.BurstPackets))
	}
	if l.BitsPerSecond != nil {
		parts = append(parts, fmt.Sprintf("%d bit/s (burst %d bytes)", *l.BitsPerSecond, *l.BurstBytes))
	}
	if len(parts) == 0 {
		return "no limit"
	}
	return strings.Join(parts, ", ")
}

func printHuman(w io.Writer, q api.Quarantine) {
	fmt.Fprintf(w, "%s  %s  backend=%s  fail=%s  since=%s  taps=%s/%s\n", q.Port, q.State, q.Backend, q.Fail, q.Since.Format("2006-01-02T15:04:05Z"), q.Taps.VM, q.Taps.Net)
	stage := fmt.Sprintf("  stage=%s  origin=%s", q.Stage, q.Origin)
	if q.Profile != "" {
		stage += "  profile=" + q.Profile
	}
	if q.NextTransition != nil {
		stage += "  next_transition=" + q.NextTransition.Format("2006-01-02T15:04:05Z")
	}
	fmt.Fprintln(w, stage)
	for _, d := range []struct {
		name string
		dir  api.Direction
	}{{"from_vm", q.Directions.FromVM}, {"to_vm", q.Directions.ToVM}} {
		fmt.Fprintf(w, "  %s: %s\n", d.name, fmtLimits(d.dir.Limits))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "    class\tpassed pkts\tpassed bytes\tdropped pkts\tdropped bytes\tdrops by reason\t")
		names := make([]string, 0, len(d.dir.Classes))
		for n := range d.dir.Classes {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			c := d.dir.Classes[n]
			var reasons []string
			for r, v := range c.Drops {
				if v > 0 {
					reasons = append(reasons, fmt.Sprintf("%s=%d", r, v))
				}
			}
			sort.Strings(reasons)
			fmt.Fprintf(tw, "    %s\t%d\t%d\t%d\t%d\t%s\t\n", n, c.PassedPackets, c.PassedBytes, c.DroppedPackets, c.DroppedBytes, strings.Join(reasons, " "))
		}
		tw.Flush()
		if d.dir.TapDrops > 0 {
			fmt.Fprintf(w, "    and %d frames dropped at the tap queue, never read (in no class)\n", d.dir.TapDrops)
		}
		var kd []string
		total := uint64(0)
		for _, r := range []string{"backstop", "class_backstop", "fail_closed"} {
			if v := d.dir.KernelDrops[r]; v > 0 {
				kd = append(kd, fmt.Sprintf("%s=%d", r, v))
				total += v
			}
		}
		if total > 0 {
			fmt.Fprintf(w, "    and %d frames dropped in the kernel before the taps (%s; in no class)\n", total, strings.Join(kd, " "))
		}
	}
}
