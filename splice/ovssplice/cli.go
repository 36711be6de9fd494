package ovssplice

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/digitalocean/go-openvswitch/ovs"
)

// ExecFunc runs one of Open vSwitch's command-line tools (ovs-vsctl,
// ovs-ofctl, ovs-appctl) with args, feeding it stdin (nil: none), and
// returns its standard output. A failure returns an error that carries the
// tool's standard error. It is go-openvswitch's exec hook (ovs.Exec) plus
// stdin for bundles: the backend hands it to the library's client and runs
// what the library cannot do through it too, so tests fake every command
// in one place.
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

// cli drives Open vSwitch. What go-openvswitch's client can do goes
// through it (lib): the port-to-bridge lookup, deleting ports, port numbers
// (dump-ports), port flags (mod-port), deleting flows by cookie. The rest
// the library has no API for, or parses lossily, and runs the tools through
// the same exec hook (run), so one ExecFunc sees every command: groups and
// atomic group+flow bundles (the library's bundles hold flows only), the
// Interface rows' external_ids, port descriptions (config flags such as
// NO_FLOOD), raw dump-flows and dump-groups (the library's flow parser
// rejects group actions and port names, and drops matches it does not know,
// such as the reg12 marks), and the MAC table.
type cli struct {
	run ExecFunc
	lib *ovs.Client
}

// ovsTimeout is the tools' own --timeout, in seconds: shorter than
// cmdTimeout, so a hung daemon is reported by the tool that waited.
const ovsTimeout = 10

func newCLI(run ExecFunc) cli {
	hook := func(name string, args ...string) ([]byte, error) { return run(nil, name, args...) }
	return cli{run: run, lib: ovs.New(ovs.Timeout(ovsTimeout), ovs.Exec(hook))}
}

var timeoutFlag = fmt.Sprintf("--timeout=%d", ovsTimeout)

// libErr unwraps the library's *ovs.Error when it adds nothing: the hook's
// error already carries the tool's standard error, and its output is
// empty (the library would print "err: ").
func libErr(err error) error {
	var e *ovs.Error
	if errors.As(err, &e) && len(bytes.TrimSpace(e.Out)) == 0 {
		return e.Err
	}
	return err
}

func (c cli) vsctl(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-vsctl", append([]string{timeoutFlag}, args...)...)
}

// ofctl talks OpenFlow 1.0 (with Nicira extensions): port config flags such
// as no-flood exist only there.
func (c cli) ofctl(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-ofctl", append([]string{timeoutFlag}, args...)...)
}

// ofctl14 talks OpenFlow 1.4: groups and bundles.
func (c cli) ofctl14(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-ofctl", append([]string{timeoutFlag, "-O", "OpenFlow14"}, args...)...)
}

// bundle applies text (flow and group mods, one per line) to bridge as one
// atomic OpenFlow 1.4 bundle: on any error, none of it is applied. The
// library's AddFlowBundle cannot: its transactions hold flows only.
func (c cli) bundle(bridge, text string) error {
	_, err := c.run([]byte(text), "ovs-ofctl", timeoutFlag, "-O", "OpenFlow14", "bundle", bridge, "-")
	return err
}

func (c cli) appctl(args ...string) ([]byte, error) {
	return c.run(nil, "ovs-appctl", append([]string{timeoutFlag}, args...)...)
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

// ifaceBridge returns the bridge of the port named name (the library's
// PortToBridge). A name OVS knows only as an interface (of a bond, or of a
// port with another name) is looked up with iface-to-br, so that the caller
// can refuse it with a clear message; errNotInOVS if OVS knows neither.
func (c cli) ifaceBridge(name string) (string, error) {
	br, err := c.lib.VSwitch.PortToBridge(name)
	err = libErr(err)
	if err == nil {
		return strings.TrimSpace(br), nil
	}
	if !strings.Contains(err.Error(), "no port named") {
		return "", err
	}
	out, err := c.vsctl("iface-to-br", name)
	if err != nil {
		if strings.Contains(err.Error(), "no interface named") {
			return "", errNotInOVS
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// named returns those of names that name a Port or an Interface row of
// the database, asked in one ovs-vsctl call (one find per table and name):
// a splice checks its three tap names before it starts.
func (c cli) named(names []string) ([]string, error) {
	args := []string{"--bare"}
	for _, n := range names {
		for _, table := range []string{"Port", "Interface"} {
			args = append(args, "--", "--columns=name", "find", table, "name="+strconv.Quote(n))
		}
	}
	out, err := c.vsctl(args...)
	if err != nil {
		return nil, err
	}
	var found []string
	for _, f := range strings.Fields(string(out)) {
		if slices.Contains(names, f) && !slices.Contains(found, f) {
			found = append(found, f)
		}
	}
	return found, nil
}

// ofport returns the OpenFlow port number ovs-vswitchd gives the port name
// on bridge (the library's DumpPort): an error if it has none, with the
// Interface row's error column if it says why.
func (c cli) ofport(bridge, name string) (int, error) {
	st, err := c.lib.OpenFlow.DumpPort(bridge, name)
	if err == nil && st.PortID > 0 && st.PortID < 0xff00 {
		return st.PortID, nil
	}
	msg, _ := c.vsctl("--if-exists", "get", "Interface", name, "error")
	err = libErr(err)
	if err == nil {
		err = fmt.Errorf("port number %d", st.PortID)
	}
	return 0, fmt.Errorf("interface %s has no OpenFlow port on %s (%v; error column %s)", name, bridge, err, strings.TrimSpace(string(msg)))
}

// setFlood turns NORMAL's flooding to port on bridge on or off (the
// library's ModPort).
func (c cli) setFlood(bridge, port string, flood bool) error {
	a := ovs.PortActionNoFlood
	if flood {
		a = ovs.PortActionFlood
	}
	return libErr(c.lib.OpenFlow.ModPort(bridge, port, a))
}

// delPort removes port from bridge if it is there (the library's DeletePort).
func (c cli) delPort(bridge, port string) error {
	return libErr(c.lib.VSwitch.DeletePort(bridge, port))
}

// delFlows deletes the flows of bridge whose cookie is exactly cookie, which
// must be a splice generation's (the library's DelFlows, which given a nil
// or table-only match would flush the bridge: it is never given one).
func (c cli) delFlows(bridge string, cookie uint64) error {
	if !isGeneration(cookie) {
		return fmt.Errorf("refusing to delete flows by cookie %#x: not a shaperd splice cookie", cookie)
	}
	return libErr(c.lib.OpenFlow.DelFlows(bridge, &ovs.MatchFlow{Cookie: cookie, Table: ovs.AnyTable}))
}

// bridges lists the bridges (the library's ListBridges).
func (c cli) bridges() ([]string, error) {
	brs, err := c.lib.VSwitch.ListBridges()
	return brs, libErr(err)
}

// flows returns bridge's flows (all, or with cookie exactly cookie if it
// is not 0), without counters.
func (c cli) flows(bridge string, cookie uint64) ([]Flow, error) {
	args := []string{"dump-flows", bridge}
	if cookie != 0 {
		args = append(args, fmt.Sprintf("cookie=%#x/-1", cookie))
	}
	out, err := c.ofctl14(append(args, "--no-stats")...)
	if err != nil {
		return nil, err
	}
	return ParseFlows(out), nil
}

// groups returns bridge's groups by id, each with its description line.
func (c cli) groups(bridge string) (map[uint32]string, error) {
	out, err := c.ofctl14("dump-groups", bridge)
	if err != nil {
		return nil, err
	}
	return parseGroups(out), nil
}

// externalID returns the value of external_ids:key of interface name, "" if unset.
func (c cli) externalID(name, key string) (string, error) {
	out, err := c.vsctl("--if-exists", "get", "Interface", name, "external_ids:"+key)
	if err != nil {
		return "", err
	}
	return unquote(strings.TrimSpace(string(out))), nil
}

// setArgs are the ovs-vsctl arguments setting external_ids kv on interface
// name, with values quoted for the database's string syntax.
func setArgs(name string, kv [][2]string) []string {
	args := []string{"set", "Interface", name}
	for _, p := range kv {
		args = append(args, "external_ids:"+p[0]+"="+strconv.Quote(p[1]))
	}
	return args
}

func unquote(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	return s
}

// row is an Interface row that records a splice: its name (the net tap's)
// and external_ids.
type row struct {
	name string
	ids  map[string]string
}

// spliceRows returns the Interface rows whose external_ids record a splice
// (shaperd-role=net), in one query.
func (c cli) spliceRows() ([]row, error) {
	out, err := c.vsctl("--format=json", "--columns=name,external_ids", "find", "Interface", "external_ids:"+idRole+"=net")
	if err != nil {
		return nil, err
	}
	return parseRows(out)
}

// parseRows parses `ovs-vsctl --format=json --columns=name,external_ids`
// output: {"data":[["NAME",["map",[["K","V"],...]]],...],...}.
func parseRows(out []byte) ([]row, error) {
	var t struct {
		Data [][]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(out, &t); err != nil {
		return nil, fmt.Errorf("parse ovs-vsctl json %q: %w", out, err)
	}
	var rows []row
	for _, d := range t.Data {
		if len(d) != 2 {
			return nil, fmt.Errorf("parse ovs-vsctl json: a row of %d columns, want 2", len(d))
		}
		r := row{ids: map[string]string{}}
		if err := json.Unmarshal(d[0], &r.name); err != nil {
			return nil, fmt.Errorf("parse ovs-vsctl json: name %s: %w", d[0], err)
		}
		var m []json.RawMessage
		if err := json.Unmarshal(d[1], &m); err != nil || len(m) != 2 {
			return nil, fmt.Errorf("parse ovs-vsctl json: external_ids %s: not a map", d[1])
		}
		var kvs [][2]string
		if err := json.Unmarshal(m[1], &kvs); err != nil {
			return nil, fmt.Errorf("parse ovs-vsctl json: external_ids %s: %w", d[1], err)
		}
		for _, kv := range kvs {
			r.ids[kv[0]] = kv[1]
		}
		rows = append(rows, r)
	}
	return rows, nil
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

// LearnedMACs parses `ovs-appctl fdb/show` and returns the unicast MACs
// learned on OpenFlow port ofport (package portpolicy/ovspolicy uses it too).
func LearnedMACs(out []byte, ofport int) []net.HardwareAddr { return learnedMACs(out, ofport) }

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

// Flow is one line of `ovs-ofctl dump-flows`: its cookie, table,
// priority, n_packets (0 with --no-stats) and the whole line, trimmed.
// Package portpolicy/ovspolicy reads its flows with ParseFlows too.
type Flow struct {
	Cookie          uint64
	Table, Priority int
	Packets         uint64
	Text            string
}

var (
	cookieField   = regexp.MustCompile(`(?:^|[ ,])cookie=(0x[0-9a-f]+)`)
	tableField    = regexp.MustCompile(`(?:^|[ ,])table=(\d+)`)
	priorityField = regexp.MustCompile(`(?:^|[ ,])priority=(\d+)`)
	packetsField  = regexp.MustCompile(`(?:^|[ ,])n_packets=(\d+)`)
)

// ParseFlows parses dump-flows output; a missing cookie is 0, a missing
// table 0 and a missing priority OpenFlow's default, 32768. Reply headers
// and empty lines are skipped.
func ParseFlows(out []byte) []Flow {
	var fs []Flow
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "OFPST_") || strings.HasPrefix(line, "NXST_") {
			continue
		}
		head, _, _ := strings.Cut(line, "actions=")
		f := Flow{Priority: 32768, Text: line}
		if m := cookieField.FindStringSubmatch(head); m != nil {
			f.Cookie, _ = strconv.ParseUint(m[1], 0, 64)
		}
		if m := tableField.FindStringSubmatch(head); m != nil {
			f.Table, _ = strconv.Atoi(m[1])
		}
		if m := priorityField.FindStringSubmatch(head); m != nil {
			f.Priority, _ = strconv.Atoi(m[1])
		}
		if m := packetsField.FindStringSubmatch(head); m != nil {
			f.Packets, _ = strconv.ParseUint(m[1], 10, 64)
		}
		fs = append(fs, f)
	}
	return fs
}

// isOurs reports whether cookie is a shaperd splice cookie.
func isOurs(cookie uint64) bool { return cookie&CookieMask == CookieTag }

// isGeneration reports whether cookie is one splice generation's: shaperd's
// tag with a non-zero generation (deleting by CookieTag/-1 would match none
// of them, and by 0/-1 every cookie-less flow).
func isGeneration(cookie uint64) bool { return isOurs(cookie) && cookie != CookieTag }

var (
	markMatch = regexp.MustCompile(`\breg(1[2-5])=0/(0x[0-9a-f]+)`)
	groupID   = regexp.MustCompile(`group_id=(\d+)`)
)

// slotsInUse returns the mark bits that shaperd flows on the bridge match on.
func slotsInUse(flows []Flow) map[uint]bool {
	used := map[uint]bool{}
	for _, f := range flows {
		if !isOurs(f.Cookie) {
			continue
		}
		for _, m := range markMatch.FindAllStringSubmatch(f.Text, -1) {
			reg, _ := strconv.Atoi(m[1])
			v, _ := strconv.ParseUint(m[2], 0, 32)
			for b := uint(0); b < 32; b++ {
				if v&(1<<b) != 0 {
					used[uint(reg-markRegFirst)*32+b] = true
				}
			}
		}
	}
	return used
}

// usesMarkReg reports whether a flow of someone else's matches or sets the
// register shaperd marks frames with.
func usesMarkReg(f Flow) bool {
	return markRegUse.MatchString(strings.ToLower(f.Text))
}

// markRegUse finds a match on, or a load into, one of the mark registers
// (reg12-reg15) or the wider registers made of them (xreg6, xreg7, xxreg3).
var markRegUse = regexp.MustCompile(`\b(reg1[2-5]|xreg[67]|xxreg3)(=|\[|\b)|nxm_nx_(reg1[2-5]|xxreg3|xreg[67])\b`)

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
