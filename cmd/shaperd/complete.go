package main

import (
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/splice"
)

// completeTimeout bounds the wait for the daemon's answer while the shell
// completes a PORT: past it, completion falls back to the host's links.
const completeTimeout = time.Second

// vmPortPrefixes name links that look like VM ports: libvirt's vnetN,
// OpenStack's and others' tapXXX, and the lab's vm-*.
var vmPortPrefixes = []string{"vnet", "tap", "vm-"}

// portCompletion is the ValidArgsFunction of a command whose first argument
// is a PORT. With quarantined, the daemon's quarantined ports complete (the
// ports a command about an existing quarantine takes); otherwise, or when
// the daemon does not answer within completeTimeout, the host's VM-port-like
// links (vmPortPrefixes, in sysClassNet) do. Only the first argument
// completes, and never to a file name.
func portCompletion(g *globals, quarantined bool, sysClassNet string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var ports []string
		if quarantined {
			ports = daemonPorts(g)
		}
		if ports == nil {
			ports = vmLinks(sysClassNet)
		}
		var out []cobra.Completion
		for _, p := range ports {
			if strings.HasPrefix(p, toComplete) {
				out = append(out, p)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// daemonPorts returns the quarantined ports (and pending ones) that the
// daemon on g's socket reports, sorted, or nil if it does not answer in
// time. A late answer is dropped: the process ends with the completion.
func daemonPorts(g *globals) []string {
	ch := make(chan []string, 1)
	go func() {
		st, err := g.client().StatusWithoutSamples("")
		if err != nil {
			ch <- nil
			return
		}
		ports := []string{}
		for _, q := range st.Quarantines {
			ports = append(ports, q.Port)
		}
		slices.Sort(ports)
		ch <- slices.Compact(ports)
	}()
	select {
	case p := <-ch:
		return p
	case <-time.After(completeTimeout):
		return nil
	}
}

// vmLinks returns the links in dir (/sys/class/net) whose names start with
// one of vmPortPrefixes, sorted, leaving out shaperd's own taps.
func vmLinks(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, splice.TapPrefix) {
			continue
		}
		for _, p := range vmPortPrefixes {
			if strings.HasPrefix(n, p) {
				out = append(out, n)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// addPortCompletion sets the PORT completion of root's commands that take
// one: quarantine completes the host's VM ports, the others the daemon's
// quarantined ports.
func addPortCompletion(root *cobra.Command, g *globals) {
	for _, c := range root.Commands() {
		switch c.Name() {
		case "quarantine":
			c.ValidArgsFunction = portCompletion(g, false, "/sys/class/net")
		case "set", "release", "status", "top":
			c.ValidArgsFunction = portCompletion(g, true, "/sys/class/net")
		}
	}
}
