package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/baseline"
)

func newBaselineCmd(g *globals) *cobra.Command {
	var remove, asJSON bool
	var l api.BaselineLimits
	cmd := &cobra.Command{
		Use:   "baseline PORT [limits] | baseline --remove PORT",
		Short: "Set or remove the kernel baseline limits (nftables) of one port",
		Long: `Set kernel-speed limits on one exact port name (Linux bridge ports; the port
need not exist yet), or remove them with --remove. No splice: the limits are
nftables rules in the bridge family, every drop counted per reason (status,
metrics). This port's limits replace those of a baselines: pattern of the
config. A quarantine of the port keeps them in force (docs/baseline.md).

A rate is N, N/s, N/min, N/h or N/day, with :BURST optionally (default: N).
A bare N is per second, except --to-vm-new-conn-per-source's, per minute.`,
		Args: exactArgs("PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			port := args[0]
			if remove {
				if l != (api.BaselineLimits{}) {
					return usageErr("baseline --remove %s: give no limit with --remove", port)
				}
				res, err := g.client().BaselineRemove(port)
				if err != nil {
					return clientErr(err)
				}
				if asJSON {
					return writeJSON(cmd.OutOrStdout(), res)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: baseline removed\n", port)
				for _, w := range res.Warnings {
					fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
				}
				return nil
			}
			lim, err := baseline.ParseLimits(l)
			if err == nil {
				err = baseline.Validate(map[string]baseline.Limits{port: lim})
			}
			if err != nil {
				return usageErr("baseline %s: %v", port, err)
			}
			b, err := g.client().Baseline(port, l)
			if err != nil {
				return clientErr(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), b)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: baseline %s\n", port, lim)
			for _, w := range b.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&remove, "remove", false, "remove the port's baseline set by this command")
	f.StringVar(&l.NewConnRate, "new-conn-rate", "", "new TCP connections and new UDP flows the VM opens, each (N/s)")
	f.StringVar(&l.ToVMNewConnRate, "to-vm-new-conn-rate", "", "new TCP connections and new UDP flows towards the VM, all sources together, each (N/s)")
	f.StringVar(&l.ToVMNewConnPerSource, "to-vm-new-conn-per-source", "", "new connections and flows towards the VM per remote source (N/min; brute force: 10/min)")
	f.StringVar(&l.PPS, "pps", "", "packets per second from the VM, any protocol")
	f.StringVar(&l.ToVMPPS, "to-vm-pps", "", "packets per second to the VM, any protocol")
	f.BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return cmd
}
