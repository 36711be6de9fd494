package tcsplice

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// nwfilterDir is where libvirt keeps its network filter definitions.
const nwfilterDir = "/etc/libvirt/nwfilter"

// cmdTimeout bounds each external command run to collect warnings.
const cmdTimeout = 5 * time.Second

// ruleSources are the dumps searched for rules keyed on a port name. A
// missing binary is skipped; iptables matters through physdev matches.
var ruleSources = [][]string{
	{"nft", "list", "ruleset"},
	{"ebtables-save"},
	{"iptables-save"},
	{"ip6tables-save"},
}

// filterWarnings returns a warning for every firewall that names port: once
// spliced, the VM's frames enter the bridge through netTap and leave it
// through vmTap's redirect, so rules matching the port's name (iifname,
// --physdev-in, libvirt nwfilter chains) no longer see them.
func filterWarnings(port, vmTap, netTap string) []string {
	var out []string
	follow := fmt.Sprintf("filters keyed on the port name cannot follow the frames while it is spliced (they pass through %s and %s)", vmTap, netTap)
	for _, argv := range ruleSources {
		text, ok := runQuiet(argv...)
		if !ok {
			continue
		}
		if n, first := linesNaming(text, port); n > 0 {
			out = append(out, fmt.Sprintf("%s: %d line(s) mention %s, e.g. %q; %s", strings.Join(argv, " "), n, port, first, follow))
		}
	}
	if text, ok := runQuiet("virsh", "-q", "nwfilter-binding-list"); ok {
		for _, line := range strings.Split(text, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == port {
				out = append(out, fmt.Sprintf("libvirt nwfilter binding %q on %s; %s", strings.TrimSpace(line), port, follow))
			}
		}
	} else if fi, err := os.Stat(nwfilterDir); err == nil && fi.IsDir() {
		out = append(out, fmt.Sprintf("libvirt nwfilter is configured on this host (%s) and virsh is unavailable to check %s for a filterref; if it has one, %s", nwfilterDir, port, follow))
	}
	return out
}

// runQuiet runs argv and returns its standard output; ok is false if the
// binary is missing or fails.
func runQuiet(argv ...string) (string, bool) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return "", false
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, argv[1:]...).Output()
	if err != nil {
		return "", false
	}
	return string(out), true
}

// linesNaming counts the lines of text that mention name as a whole word
// (so "vnet1" does not match "vnet10", but does match "libvirt-I-vnet1" and
// `iifname "vnet1"`), and returns the first, trimmed.
func linesNaming(text, name string) (n int, first string) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if mentions(line, name) {
			if n == 0 {
				first = strings.TrimSpace(line)
			}
			n++
		}
	}
	return n, first
}

// mentions reports whether name occurs in s with no word character
// ([A-Za-z0-9_]) on either side.
func mentions(s, name string) bool {
	if name == "" {
		return false
	}
	for i := 0; ; {
		j := strings.Index(s[i:], name)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(name)
		if (start == 0 || !isWord(s[start-1])) && (end == len(s) || !isWord(s[end])) {
			return true
		}
		i = start + 1
	}
}

func isWord(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
