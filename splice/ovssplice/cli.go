package ovssplice

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ExecFunc runs one of Open vSwitch's command-line tools (ovs-vsctl,
// ovs-ofctl, ovs-appctl) with args, feeding it stdin (nil: none), and
// returns its standard output. A failure returns an error that carries the
// tool's standard error. It has the shape of go-openvswitch's exec hook
// (ovs.Exec) plus stdin for bundles; tests pass a fake.
type ExecFunc func(stdin []byte, name string, args ...string) ([]byte, error)

// cmdTimeout bounds every OVS command (the tools' own --timeout is a second
// shorter, so they report which step hung).
const cmdTimeout = 15 * time.Second

// Exec runs the real tools. They find the daemons through OVS_RUNDIR (and
// the database through OVS_DBDIR) in the environment, as shaperd inherits it.
func Exec(stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// cli wraps the OVS tools with the options every call needs.
type cli struct{ run ExecFunc }

func (c cli) vsctl(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-vsctl", append([]string{"--timeout=10"}, args...)...)
}

// ofctl talks OpenFlow 1.0 (with Nicira extensions): port config flags such
// as no-flood exist only there.
func (c cli) ofctl(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-ofctl", append([]string{"--timeout=10"}, args...)...)
}

// ofctl14 talks OpenFlow 1.4: groups and bundles.
func (c cli) ofctl14(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-ofctl", append([]string{"--timeout=10", "-O", "OpenFlow14"}, args...)...)
}

// bundle applies text (flow and group mods, one per line) to bridge as one
// atomic OpenFlow 1.4 bundle: on any error, none of it is applied.
func (c cli) bundle(bridge, text string) error {
	_, err := c.run([]byte(text), "ovs-ofctl", "--timeout=10", "-O", "OpenFlow14", "bundle", bridge, "-")
	return err
}

func (c cli) appctl(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-appctl", append([]string{"--timeout=10"}, args...)...)
}

// ovsRunning reports, cheaply and without running anything, whether an
// ovsdb-server seems to be there to ask: the tools are installed and the
// database socket exists.
func ovsRunning() bool {
	if _, err := exec.LookPath("ovs-vsctl"); err != nil {
		return false
	}
	dir := os.Getenv("OVS_RUNDIR")
	if dir == "" {
		dir = "/var/run/openvswitch"
	}
	_, err := os.Stat(filepath.Join(dir, "db.sock"))
	return err == nil
}

// errNotInOVS means OVS knows no interface of that name.
var errNotInOVS = errors.New("not an interface of any Open vSwitch bridge")

// ifaceBridge returns the bridge whose port has the interface name.
func (c cli) ifaceBridge(name string) (string, error) {
	out, err := c.vsctl("iface-to-br", name)
	if err != nil {
		if strings.Contains(err.Error(), "no interface named") {
			return "", errNotInOVS
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// ofport returns the OpenFlow port number of interface name: an error if
// OVS has not (or could not) give it one.
func (c cli) ofport(name string) (int, error) {
	out, err := c.vsctl("get", "Interface", name, "ofport")
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(out))
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		msg, _ := c.vsctl("get", "Interface", name, "error")
		return 0, fmt.Errorf("interface %s has no OpenFlow port (ofport %s, error %s)", name, s, strings.TrimSpace(string(msg)))
	}
	return n, nil
}

// externalID returns the value of external_ids:key of interface name, "" if unset.
func (c cli) externalID(name, key string) (string, error) {
	out, err := c.vsctl("--if-exists", "get", "Interface", name, "external_ids:"+key)
	if err != nil {
		return "", err
	}
	return unquote(strings.TrimSpace(string(out))), nil
}

func unquote(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	return s
}

// portConfig returns the OpenFlow 1.0 config flags (NO_FLOOD, PORT_DOWN,
// ...) of the port named port on bridge.
func (c cli) portConfig(bridge, port string) ([]string, error) {
	out, err := c.ofctl("dump-ports-desc", bridge, port)
	if err != nil {
		return nil, err
	}
	flags, ok := parsePortConfig(out, port)
	if !ok {
		return nil, fmt.Errorf("ovs-ofctl dump-ports-desc %s %s: no config line for %s in %q", bridge, port, port, out)
	}
	return flags, nil
}

var portLine = regexp.MustCompile(`^\s*(\d+|LOCAL)\((.*)\): addr:`)

// parsePortConfig finds port's "config:" line in ovs-ofctl port description
// output ("config:     0" or "config:     NO_FLOOD PORT_DOWN").
func parsePortConfig(out []byte, port string) ([]string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	in := false
	for sc.Scan() {
		line := sc.Text()
		if m := portLine.FindStringSubmatch(line); m != nil {
			in = m[2] == port
			continue
		}
		if f := strings.Fields(line); in && len(f) > 0 && f[0] == "config:" {
			var flags []string
			for _, x := range f[1:] {
				if x != "0" {
					flags = append(flags, x)
				}
			}
			return flags, true
		}
	}
	return nil, false
}

// learnedMACs parses `ovs-appctl fdb/show` and returns the unicast MACs
// learned on OpenFlow port ofport.
func learnedMACs(out []byte, ofport int) []net.HardwareAddr {
	var macs []net.HardwareAddr
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != strconv.Itoa(ofport) {
			continue
		}
		if mac, err := net.ParseMAC(f[2]); err == nil && isUnicast(mac) {
			macs = append(macs, mac)
		}
	}
	return macs
}

func isUnicast(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0]&1 == 0 && !bytes.Equal(mac, make(net.HardwareAddr, 6))
}

// addMAC appends mac to macs unless it is there already.
func addMAC(macs []net.HardwareAddr, mac net.HardwareAddr) []net.HardwareAddr {
	if slices.ContainsFunc(macs, func(m net.HardwareAddr) bool { return bytes.Equal(m, mac) }) {
		return macs
	}
	return append(macs, mac)
}

// flowEntry is one line of `ovs-ofctl dump-flows --no-stats`.
type flowEntry struct {
	cookie   uint64
	table    int
	priority int
	text     string // the whole line, trimmed
}

var (
	cookieField   = regexp.MustCompile(`(?:^|[ ,])cookie=(0x[0-9a-f]+)`)
	tableField    = regexp.MustCompile(`(?:^|[ ,])table=(\d+)`)
	priorityField = regexp.MustCompile(`(?:^|[ ,])priority=(\d+)`)
)

// parseFlows parses dump-flows output; a missing cookie is 0, a missing
// table 0 and a missing priority OpenFlow's default, 32768.
func parseFlows(out []byte) []flowEntry {
	var fs []flowEntry
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "OFPST_") || strings.HasPrefix(line, "NXST_") {
			continue
		}
		head, _, _ := strings.Cut(line, "actions=")
		f := flowEntry{priority: 32768, text: line}
		if m := cookieField.FindStringSubmatch(head); m != nil {
			f.cookie, _ = strconv.ParseUint(m[1], 0, 64)
		}
		if m := tableField.FindStringSubmatch(head); m != nil {
			f.table, _ = strconv.Atoi(m[1])
		}
		if m := priorityField.FindStringSubmatch(head); m != nil {
			f.priority, _ = strconv.Atoi(m[1])
		}
		fs = append(fs, f)
	}
	return fs
}

// isOurs reports whether cookie is a shaperd splice cookie.
func isOurs(cookie uint64) bool { return cookie&CookieMask == CookieTag }

var (
	markMatch = regexp.MustCompile(markReg + `=0/(0x[0-9a-f]+)`)
	groupID   = regexp.MustCompile(`group_id=(\d+)`)
)

// slotsInUse returns the mark bits that shaperd flows on the bridge match on.
func slotsInUse(flows []flowEntry) map[uint]bool {
	used := map[uint]bool{}
	for _, f := range flows {
		if !isOurs(f.cookie) {
			continue
		}
		for _, m := range markMatch.FindAllStringSubmatch(f.text, -1) {
			v, _ := strconv.ParseUint(m[1], 0, 32)
			for b := uint(0); b < 32; b++ {
				if v&(1<<b) != 0 {
					used[b] = true
				}
			}
		}
	}
	return used
}

// usesMarkReg reports whether a flow of someone else's matches or sets the
// register shaperd marks frames with.
func usesMarkReg(f flowEntry) bool {
	t := strings.ToLower(f.text)
	return strings.Contains(t, markReg+"=") || strings.Contains(t, strings.ToLower(markNXM)+"[") ||
		strings.Contains(t, "->"+markReg) || strings.Contains(t, "xreg6") || strings.Contains(t, "xxreg3")
}

// parseGroups returns the group ids in dump-groups output, with each
// group's description line.
func parseGroups(out []byte) map[uint32]string {
	gs := map[uint32]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := groupID.FindStringSubmatch(line); m != nil {
			id, err := strconv.ParseUint(m[1], 10, 32)
			if err == nil {
				gs[uint32(id)] = line
			}
		}
	}
	return gs
}
