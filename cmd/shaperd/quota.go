package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

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
			return usageErr("quota needs a subcommand: simulate (see 'shaperd quota --help')")
		},
	}
	cmd.AddCommand(newQuotaSimulateCmd())
	return cmd
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
