package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/quota"
	"github.com/shaperd/shaperd/quota/sim"
)

func newQuotaCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quota",
		Short: "Percentile quotas for burstable tenants (95th-percentile billing)",
		Long: `A tenant is billed at the 95th percentile of its 5-minute samples: 5% of a
period's intervals may exceed the commit for free. shaperd passes full speed
up to 75% of each interval's quota, then drops with a rising probability up
to a hard cap at the quota, and spends the free burst intervals where they
deliver the most, so that the bill never exceeds the commit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErr("quota needs a subcommand: add, remove, list, report or simulate (see 'shaperd quota --help')")
		},
	}
	cmd.AddCommand(newQuotaAddCmd(g), newQuotaRemoveCmd(g), newQuotaListCmd(g), newQuotaReportCmd(g), newQuotaSimulateCmd())
	return cmd
}

// addSettings are the tenant settings `quota add` takes, as quota.Config.Set
// names them; the defaults are quota's.
var addSettings = []struct{ name, help string }{
	{"ports", "the tenant's switch ports, comma-separated (required): P1,P2"},
	{"commit", "committed rate (required; tc units: 100mbit; kbps = kiloBYTES/s)"},
	{"interval", "sample interval (default 5m); must divide the period (a day for month)"},
	{"period", "billing period: month (calendar month, UTC; the default) or a fixed length such as 30d, anchored at the Unix epoch"},
	{"percentile", "billed percentile, nearest rank (default 95): the top 5% of intervals are free"},
	{"direction", "billed direction: max (default: the larger of the two directions' percentiles), sum, to_vm or from_vm"},
	{"soft", "share of each interval's quota passed at full speed before drops start (default 75%)"},
	{"exponent", "shape of the drop probability between --soft and the quota (default 1: linear)"},
	{"burst-ceiling", "highest average rate of an interval allowed above the commit (default none: the port's speed; equal to --commit disables bursting)"},
	{"bypass-reserve", "share of each interval's quota kept for bypass (ssh/rdp) and control frames (default 1%)"},
	{"burst-reserve", "burst intervals never spent on purpose, kept for bypass traffic (default auto: a fiftieth of the free intervals)"},
}

func newQuotaAddCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "add TENANT --ports P1,P2 --commit RATE [--interval 5m] [--period month] [--percentile 95] [--direction max] [--soft 75%] [--exponent 1] [--burst-ceiling RATE]",
		Short: "Enforce a percentile quota on a tenant's ports",
		Long: `Add a tenant billed at a percentile of its interval samples, over all of its
ports together. shaperd splices every port (like a quarantine, with only the
default ssh/rdp bypass and ARP/ND budgets besides the quota) and drops frames
once an interval's quota is nearly used: full speed up to --soft of it, then
a rising drop probability, then a hard cap. Free burst intervals (5% of the
period at the 95th percentile) let an interval run above the commit, up to
--burst-ceiling, while keeping the bill at the commit.

A quarantined port keeps its quarantine's splice: its forwarder applies the
quarantine's limits, then the quota. Quota drops never escalate. The tenant
and its samples survive restarts (the interval cut short by a restart counts
at its quota). Remove with 'shaperd quota remove TENANT'.` + unitsHelp,
		Args: exactArgs("TENANT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			settings := map[string]string{}
			for _, s := range addSettings {
				if f := cmd.Flags().Lookup(s.name); f.Changed {
					settings[s.name] = f.Value.String()
				}
			}
			// The daemon validates too; checking here first gives the
			// same errors without a daemon.
			cfg, err := quota.Parse(args[0], settings)
			if err != nil {
				return usageErr("%v", err)
			}
			if len(cfg.Ports) == 0 {
				return usageErr("quota add %s: --ports is required: the tenant's switch ports, e.g. --ports vm-1,vm-2", args[0])
			}
			t, err := g.client().QuotaAdd(api.QuotaAddRequest{Tenant: args[0], Settings: settings})
			if err != nil {
				return clientErr(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), t)
			}
			printTenants(cmd.OutOrStdout(), []api.QuotaTenant{t})
			return nil
		},
	}
	for _, s := range addSettings {
		cmd.Flags().String(s.name, "", s.help)
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the tenant as JSON")
	return cmd
}

func newQuotaRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove TENANT",
		Short: "Stop enforcing a tenant's quota, revert its splices and forget its samples",
		Long: `Remove a tenant: shaperd reverts the splices it made for the tenant (a
quarantined port keeps its quarantine, without the quota) and deletes the
tenant's settings and samples.`,
		Args: exactArgs("TENANT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := quota.ValidTenant(args[0]); err != nil {
				return usageErr("%v", err)
			}
			if err := g.client().QuotaRemove(args[0]); err != nil {
				return clientErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed tenant %s\n", args[0])
			return nil
		},
	}
}

func newQuotaListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the quota tenants: ports, commit, percentile so far, projected bill, burst intervals",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.client().QuotaList()
			if err != nil {
				return clientErr(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), l)
			}
			if len(l.Tenants) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no quota tenants")
				return nil
			}
			printTenants(cmd.OutOrStdout(), l.Tenants)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the tenants as JSON")
	return cmd
}

func printTenants(w io.Writer, ts []api.QuotaTenant) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tPORTS\tCOMMIT\tPERCENTILE\tPROJECTED\tBURST USED/LEFT\tINTERVAL\tPERIOD")
	for _, t := range ts {
		var ports []string
		for _, p := range t.Ports {
			ports = append(ports, p.Port+"("+p.State+")")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s to %s\n", t.Tenant, strings.Join(ports, ","),
			mbit(t.CommitBPS), mbit(t.PercentileBPS), mbit(t.ProjectedBPS), t.BurstIntervalsUsed, t.BurstIntervalsLeft,
			t.Settings["interval"], t.PeriodStart.Format(time.RFC3339), t.PeriodEnd.Format(time.RFC3339))
	}
	tw.Flush()
}

func newQuotaReportCmd(g *globals) *cobra.Command {
	var asJSON bool
	var plotPath string
	cmd := &cobra.Command{
		Use:   "report TENANT [--json] [--plot FILE]",
		Short: "Show a tenant's billing period so far: samples, percentile, burst intervals, projected bill",
		Long: `Show a tenant's billing period so far: the percentile of its samples (the
intervals not closed yet counting as zero), the burst intervals used and
left, the projected bill (the period's rest repeating the samples so far
under the burst policy), and the samples. --json prints exactly tenant,
commit_bps, percentile_bps, burst_intervals_used, burst_intervals_left,
projected_bps and samples (start, bps). --plot writes an SVG chart of the
samples with the commit, the percentile and the projection.`,
		Args: exactArgs("TENANT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := quota.ValidTenant(args[0]); err != nil {
				return usageErr("%v", err)
			}
			if plotPath != "" && !strings.HasSuffix(strings.ToLower(plotPath), ".svg") {
				return usageErr("quota report: --plot %s: the chart is SVG; name a .svg file", plotPath)
			}
			c := g.client()
			r, err := c.QuotaReport(args[0])
			if err != nil {
				return clientErr(err)
			}
			if plotPath != "" {
				if err := plotReport(c, r, plotPath); err != nil {
					return err
				}
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			printReport(cmd.OutOrStdout(), r)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as one JSON object")
	cmd.Flags().StringVar(&plotPath, "plot", "", "write an SVG chart of the samples, the commit and the percentile to this file")
	return cmd
}

// plotReport writes r's chart, over the whole billing period, with the
// tenant's interval and percentile.
func plotReport(c interface {
	QuotaList() (api.QuotaList, error)
}, r api.QuotaReport, path string) error {
	opt := quota.PlotOptions{}
	if l, err := c.QuotaList(); err == nil {
		for _, t := range l.Tenants {
			if t.Tenant != r.Tenant {
				continue
			}
			if cfg, err := quota.Parse(t.Tenant, t.Settings); err == nil {
				opt.Interval, opt.Percentile = cfg.Interval, cfg.Percentile
			}
			opt.End = t.PeriodEnd
		}
	}
	qr := quota.Report{Tenant: r.Tenant, CommitBPS: r.CommitBPS, PercentileBPS: r.PercentileBPS,
		BurstIntervalsUsed: r.BurstIntervalsUsed, BurstIntervalsLeft: r.BurstIntervalsLeft, ProjectedBPS: r.ProjectedBPS}
	for _, s := range r.Samples {
		qr.Samples = append(qr.Samples, quota.Sample{Start: s.Start, BPS: s.BPS})
	}
	if err := os.WriteFile(path, quota.PlotSVG(qr, opt), 0o644); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("quota report: --plot: %w", err)}
	}
	return nil
}

func printReport(w io.Writer, r api.QuotaReport) {
	fmt.Fprintf(w, "tenant %s: commit %s, percentile so far %s, projected %s\n", r.Tenant, mbit(r.CommitBPS), mbit(r.PercentileBPS), mbit(r.ProjectedBPS))
	fmt.Fprintf(w, "burst intervals: %d used, %d left\n", r.BurstIntervalsUsed, r.BurstIntervalsLeft)
	if len(r.Samples) == 0 {
		fmt.Fprintln(w, "no interval closed yet in this period")
		return
	}
	var above []api.QuotaSample
	for _, s := range r.Samples {
		if s.BPS > r.CommitBPS {
			above = append(above, s)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if len(above) > 0 {
		fmt.Fprintf(w, "\nintervals above the commit (%d):\n", len(above))
		for _, s := range above {
			fmt.Fprintf(tw, "%s\t%s\t\n", s.Start.Format(time.RFC3339), mbit(s.BPS))
		}
		tw.Flush()
	}
	last := r.Samples[max(0, len(r.Samples)-12):]
	fmt.Fprintf(w, "\nlast %d of %d intervals (--json for all):\n", len(last), len(r.Samples))
	for _, s := range last {
		fmt.Fprintf(tw, "%s\t%s\t\n", s.Start.Format(time.RFC3339), mbit(s.BPS))
	}
	tw.Flush()
}

// simulateSettings are the tenant settings simulate takes, as quota.Config.Set
// names them, with simulate's defaults ("" keeps quota's default).
var simulateSettings = []struct{ name, def, help string }{
	{"commit", "", "committed rate (required; tc units: 100mbit; kbps = kiloBYTES/s)"},
	{"period", "30d", "billing period replayed: a fixed length such as 30d"},
	{"interval", "5m", "sample interval"},
	{"percentile", "95", "billed percentile, nearest rank"},
	{"burst-ceiling", "none", "highest average rate of a burst interval, or none (the port's speed)"},
	{"soft", "75%", "share of each interval's quota passed at full speed"},
	{"exponent", "1", "shape of the drop curve between --soft and the quota (1: linear)"},
}

func newQuotaSimulateCmd() *cobra.Command {
	var asJSON bool
	var tracePath, plotPath, saveTrace string
	var synthetic int64
	cmd := &cobra.Command{
		Use:   "simulate --commit RATE (--trace FILE | --synthetic SEED) [--period 30d] [--interval 5m] [--burst-ceiling RATE] [--json]",
		Short: "Replay an offered-load trace against shaperd's quota and three other policies, offline",
		Long: `Replay an offered-load trace over one billing period on a simulated clock (a
fluid model of rates: no real time, no network, no daemon) and compare:

  shaperd  the quota engine itself, with the settings given
  flat     min(offered, commit) at every instant
  seed75   full speed to 75% of each interval's quota, then the linear drop
           curve, hard cap at the quota, no bursting
  oracle   the offline optimum: the most bytes any policy could deliver with
           the billed percentile at or under the commit (and each interval
           under --burst-ceiling), knowing the whole trace

The trace is CSV, one line per change: seconds_from_start,offered_rate, the
rate in tc units or plain bits per second; the load holds until the next line,
the last line until the end of the period. --synthetic SEED replays a
generated bursty month instead (--save-trace writes it out).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			settings := map[string]string{}
			for _, s := range simulateSettings {
				if f := cmd.Flags().Lookup(s.name); f.Changed || s.def != "" {
					settings[s.name] = f.Value.String()
				}
			}
			if !cmd.Flags().Changed("commit") {
				return usageErr("quota simulate: --commit is required, e.g. --commit 100mbit")
			}
			cfg, err := quota.Parse("simulated", settings)
			if err != nil {
				return usageErr("quota simulate: %v", err)
			}
			if cfg.Period.IsMonth() {
				return usageErr("quota simulate: --period month: replay a fixed length, such as 30d or 31d")
			}
			useSynthetic := cmd.Flags().Changed("synthetic")
			var tr sim.Trace
			switch {
			case useSynthetic && tracePath != "":
				return usageErr("quota simulate: give --trace or --synthetic, not both")
			case useSynthetic:
				tr = sim.Generate(sim.GenConfig{Commit: cfg.Commit, Period: cfg.Period.Length, Seed: uint64(synthetic)})
			case tracePath != "":
				if tr, err = readTrace(cmd, tracePath); err != nil {
					return err
				}
			default:
				return usageErr("quota simulate: --trace FILE is required (or --synthetic SEED)")
			}
			if saveTrace != "" {
				if err := writeFileWith(saveTrace, tr.WriteCSV); err != nil {
					return &exitError{code: 1, err: fmt.Errorf("quota simulate: --save-trace: %w", err)}
				}
			}
			res, err := sim.Run(tr, sim.Options{Config: cfg})
			if err != nil {
				if errors.Is(err, sim.ErrBadTrace) || errors.Is(err, quota.ErrInvalidConfig) {
					return usageErr("quota simulate: %v", err)
				}
				return &exitError{code: 1, err: fmt.Errorf("quota simulate: %w", err)}
			}
			if plotPath != "" {
				svg := quota.PlotSVG(res.ShaperdReport, quota.PlotOptions{Interval: cfg.Interval, Percentile: cfg.Percentile})
				if err := os.WriteFile(plotPath, svg, 0o644); err != nil {
					return &exitError{code: 1, err: fmt.Errorf("quota simulate: --plot: %w", err)}
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, res)
			}
			printSimulation(w, cfg, res)
			return nil
		},
	}
	for _, s := range simulateSettings {
		cmd.Flags().String(s.name, s.def, s.help)
	}
	cmd.Flags().StringVar(&tracePath, "trace", "", "offered-load trace, CSV seconds_from_start,offered_rate ('-' reads stdin)")
	cmd.Flags().Int64Var(&synthetic, "synthetic", 0, "replay a generated bursty trace with this seed instead of --trace")
	cmd.Flags().StringVar(&saveTrace, "save-trace", "", "write the trace replayed (e.g. the --synthetic one) to this file as CSV")
	cmd.Flags().StringVar(&plotPath, "plot", "", "write an SVG chart of shaperd's samples, the commit and the percentile to this file")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	return cmd
}

func readTrace(cmd *cobra.Command, path string) (sim.Trace, error) {
	var r io.Reader = cmd.InOrStdin()
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageErr("quota simulate: --trace: %v", err)
		}
		defer f.Close()
		r = f
	}
	tr, err := sim.ParseTrace(r)
	if err != nil {
		return nil, usageErr("quota simulate: --trace %s: %v", path, err)
	}
	return tr, nil
}

func writeFileWith(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func printSimulation(w io.Writer, cfg quota.Config, r sim.Result) {
	fmt.Fprintf(w, "replayed %s of %s intervals (%d, %d free at the %sth percentile); %d intervals offered above the commit %s\n",
		cfg.Period, cfg.Interval, r.Intervals, r.FreeIntervals, strconv.FormatFloat(cfg.Percentile, 'g', -1, 64), r.AboveCommit, cfg.Commit)
	fmt.Fprintf(w, "offered %s\n\n", gbytes(r.OfferedBytes))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tbilled\tbilled/commit\tdelivered\tdropped\tof oracle\t")
	orc := float64(r.Policies.Oracle.DeliveredBytes)
	for _, p := range []struct {
		name string
		o    sim.Outcome
	}{{"shaperd", r.Policies.Shaperd}, {"flat", r.Policies.Flat}, {"seed75", r.Policies.Seed75}, {"oracle", r.Policies.Oracle}} {
		of := "-"
		if orc > 0 {
			of = strconv.FormatFloat(100*float64(p.o.DeliveredBytes)/orc, 'f', 1, 64) + "%"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%s\t%s\t%s\t\n", p.name, mbit(p.o.BilledBPS),
			float64(p.o.BilledBPS)/float64(cfg.Commit), gbytes(p.o.DeliveredBytes), gbytes(p.o.DroppedBytes), of)
	}
	tw.Flush()
}

func mbit(bps uint64) string { return strconv.FormatFloat(float64(bps)/1e6, 'f', 2, 64) + " Mbit/s" }

func gbytes(b int64) string { return strconv.FormatFloat(float64(b)/1e9, 'f', 2, 64) + " GB" }
