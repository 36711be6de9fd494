package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/portpolicy"
)

// printRemoved prints the answer to a removal (guard, isolate).
func printRemoved(cmd *cobra.Command, asJSON bool, what string, res api.Removed) error {
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), res)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %s removed\n", res.Port, what)
	printWarnings(cmd.ErrOrStderr(), res.Warnings)
	return nil
}

func printWarnings(w io.Writer, warnings []string) {
	for _, s := range warnings {
		fmt.Fprintln(w, "warning:", s)
	}
}

func newGuardCmd(g *globals) *cobra.Command {
	var remove, asJSON bool
	var req api.GuardRequest
	cmd := &cobra.Command{
		Use:   "guard PORT [--mac M --ip A[,A...]] [--ipv6 PREFIX] | guard --remove PORT",
		Short: "Set or remove the kernel port guard (nftables, or OpenFlow on OVS) of one VM port",
		Long: `Install the permanent anti-spoofing guard of a router's public port (seed
001's publicrouter.of) on one VM port of a Linux bridge (nftables) or of an
Open vSwitch bridge (OpenFlow flows), without a splice, or remove it with
--remove. From the VM it allows the DHCP client, ARP from its
MAC for its addresses (or 0.0.0.0), IPv4 from its pinned addresses and, with
--ipv6, IPv6 from that prefix and its link-local address with the neighbour
discovery they need; it drops rogue DHCP server replies, neighbour discovery
that is not the VM's, ICMPv6 types 134, 137, 146, 147, 151, 152 and 153, and
everything else (docs/guard.md). Without --mac or --ip the addresses are
learned as a quarantine's guard learns them (libvirt, the bridge's tables).`,
		Args: exactArgs("PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Port = args[0]
			if remove {
				if req.MAC != "" || req.IP != "" || req.IPv6 != "" {
					return usageErr("guard --remove %s: give no address with --remove", req.Port)
				}
				res, err := g.client().GuardRemove(req.Port)
				if err != nil {
					return clientErr(err)
				}
				return printRemoved(cmd, asJSON, "guard", res)
			}
			if err := api.CheckPort(req.Port); err != nil {
				return usageErr("guard: %v", err)
			}
			if req.MAC != "" && req.IP != "" {
				if _, err := portpolicy.ParseGuard(req.MAC, req.IP, req.IPv6); err != nil {
					return usageErr("guard %s: %v", req.Port, err)
				}
			}
			res, err := g.client().Guard(req)
			if err != nil {
				return clientErr(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: guard --mac %s --ip %s", res.Port, res.MAC, res.IP)
			if res.IPv6 != "" {
				fmt.Fprintf(cmd.OutOrStdout(), " --ipv6 %s", res.IPv6)
			}
			if len(res.LearnedFrom) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), " (learned from %v)", res.LearnedFrom)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			printWarnings(cmd.ErrOrStderr(), res.Warnings)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&remove, "remove", false, "remove the port's guard")
	f.StringVar(&req.MAC, "mac", "", "the VM's MAC address (default: learned)")
	f.StringVar(&req.IP, "ip", "", "the VM's IPv4 addresses, comma-separated, each pinned as a /32 (default: learned)")
	f.StringVar(&req.IPv6, "ipv6", "", "the VM's IPv6 prefix, such as 2001:db8:0:1::/64 (default: no IPv6 at all)")
	f.BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return cmd
}

func newIsolateCmd(g *globals) *cobra.Command {
	var remove, asJSON bool
	var allow string
	cmd := &cobra.Command{
		Use:   "isolate PORT --allow-from CIDR | isolate --remove PORT",
		Short: "Set or remove the one-way isolation (nftables, or OpenFlow ct() on OVS) of one VM port",
		Long: `Isolate one VM port of a Linux or Open vSwitch bridge the way seed 001 isolates a management
leg (gw_mgmt): new connections from CIDR into the VM are allowed, the VM may
answer on them and open nothing (new connections from the VM are dropped),
ARP passes both ways, and frames with a multicast source MAC, UDP, IPv6 and
anything else that is not IPv4 are dropped (docs/guard.md). --remove
removes it.`,
		Args: exactArgs("PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			port := args[0]
			if remove {
				if allow != "" {
					return usageErr("isolate --remove %s: give no --allow-from with --remove", port)
				}
				res, err := g.client().IsolateRemove(port)
				if err != nil {
					return clientErr(err)
				}
				return printRemoved(cmd, asJSON, "isolation", res)
			}
			if err := api.CheckPort(port); err != nil {
				return usageErr("isolate: %v", err)
			}
			if allow == "" {
				return usageErr("isolate %s: give --allow-from CIDR (the management network)", port)
			}
			if _, err := portpolicy.ParseIsolate(allow); err != nil {
				return usageErr("isolate %s: %v", port, err)
			}
			res, err := g.client().Isolate(port, allow)
			if err != nil {
				return clientErr(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: isolated, new connections only from %s\n", res.Port, res.AllowFrom)
			printWarnings(cmd.ErrOrStderr(), res.Warnings)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&remove, "remove", false, "remove the port's isolation")
	f.StringVar(&allow, "allow-from", "", "the IPv4 network allowed to open connections into the VM")
	f.BoolVar(&asJSON, "json", false, "print the answer as JSON")
	return cmd
}
