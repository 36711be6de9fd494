package ovssplice

// Fakes for the unit tests: an Open vSwitch that answers the commands the
// backend runs (and refuses any other, so a new command needs a deliberate
// fake), and a kernel of links.

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shaperd/shaperd/splice/steer"
)

type fakePort struct {
	ofport  int
	noFlood bool
	ids     map[string]string
	tag     string // "[]" when unset
}

type fakeFlow struct {
	cookie   uint64
	table    int
	priority int
	rest     string // match,actions=...
}

// fakeOVS is one bridge, "br0", of a fake OVS.
type fakeOVS struct {
	mu      sync.Mutex
	ports   map[string]*fakePort
	flows   []fakeFlow
	groups  map[uint32]string
	fdb     map[string]int // MAC -> ofport
	next    int
	calls   []string
	bundles []string
	// fail, if set, is asked about every command line; an error fails it
	// before it has any effect.
	fail func(line string) error
}

func newFakeOVS() *fakeOVS {
	o := &fakeOVS{ports: map[string]*fakePort{}, groups: map[uint32]string{}, fdb: map[string]int{}, next: 1}
	for _, p := range []string{"vm-1", "ext-1"} {
		o.addPort(p)
	}
	o.ports["vm-1"].ids["attached-mac"] = "02:c6:12:00:00:11"
	o.fdb["02:c6:12:00:00:11"] = o.ports["vm-1"].ofport
	o.fdb["02:c6:12:00:01:00"] = o.ports["ext-1"].ofport
	o.flows = []fakeFlow{
		{cookie: 0, priority: 0, rest: "actions=NORMAL"},
		{cookie: 0x1234, priority: 100, rest: "in_port=1,dl_src=02:66:66:66:66:66,actions=drop"},
		{cookie: 0xffff, table: 1, priority: 10, rest: "actions=drop"},
	}
	o.groups[7] = "group_id=7,type=all,bucket=actions=output:2"
	return o
}

func (o *fakeOVS) addPort(name string) *fakePort {
	p := &fakePort{ofport: o.next, ids: map[string]string{}, tag: "[]"}
	o.next++
	o.ports[name] = p
	return p
}

// state renders everything the fake holds, for before/after comparisons.
func (o *fakeOVS) state() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(o.ports)) {
		p := o.ports[n]
		fmt.Fprintf(&b, "port %s ofport %d noflood %v ids %v\n", n, p.ofport, p.noFlood, p.ids)
	}
	var fs []string
	for _, f := range o.flows {
		fs = append(fs, f.line())
	}
	slices.Sort(fs)
	b.WriteString(strings.Join(fs, "\n") + "\n")
	for _, g := range slices.Sorted(maps.Keys(o.groups)) {
		b.WriteString(o.groups[g] + "\n")
	}
	return b.String()
}

func (f fakeFlow) line() string {
	s := " "
	if f.cookie != 0 {
		s += fmt.Sprintf("cookie=%#x, ", f.cookie)
	}
	if f.table != 0 {
		s += fmt.Sprintf("table=%d, ", f.table)
	}
	m, a, _ := strings.Cut(f.rest, "actions=")
	return s + fmt.Sprintf("priority=%d,%s actions=%s", f.priority, strings.TrimSuffix(m, ","), a)
}

var errNoRow = errors.New("no row")

func (o *fakeOVS) run(stdin []byte, name string, args ...string) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var a []string
	for _, x := range args {
		if strings.HasPrefix(x, "--timeout=") || x == "-O" || x == "OpenFlow14" {
			continue
		}
		a = append(a, x)
	}
	line := name + " " + strings.Join(a, " ")
	o.calls = append(o.calls, line)
	if o.fail != nil {
		if err := o.fail(line); err != nil {
			return nil, err
		}
	}
	switch name {
	case "ovs-vsctl":
		return o.vsctl(a)
	case "ovs-ofctl":
		return o.ofctl(a, stdin)
	case "ovs-appctl":
		if len(a) == 2 && a[0] == "fdb/show" && a[1] == "br0" {
			out := " port  VLAN  MAC                Age\n"
			for _, mac := range slices.Sorted(maps.Keys(o.fdb)) {
				out += fmt.Sprintf("    %d     0  %s    3\n", o.fdb[mac], mac)
			}
			return []byte(out), nil
		}
	}
	return nil, fmt.Errorf("fake ovs: unexpected command %q", line)
}

// restartVswitchd does what a restart of ovs-vswitchd does to the bridge:
// flows, groups and port flags are gone (ofports stay: the database has them),
// and the bridge gets its default flow.
func (o *fakeOVS) restartVswitchd() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flows = []fakeFlow{{cookie: 0, priority: 0, rest: "actions=NORMAL"}}
	o.groups = map[uint32]string{}
	for _, p := range o.ports {
		p.noFlood = false
	}
}

func (o *fakeOVS) vsctl(a []string) ([]byte, error) {
	ifExists := len(a) > 0 && a[0] == "--if-exists"
	if ifExists {
		a = a[1:]
	}
	switch {
	case len(a) > 1 && a[0] == "--bare" && a[1] == "--":
		// One find per table and name, each
		// "-- --columns=name find TABLE name=\"N\"".
		var out strings.Builder
		for i := 1; i < len(a); i += 5 {
			if i+4 >= len(a) || a[i] != "--" || a[i+1] != "--columns=name" || a[i+2] != "find" || (a[i+3] != "Port" && a[i+3] != "Interface") || !strings.HasPrefix(a[i+4], "name=") {
				return nil, fmt.Errorf("fake ovs: unexpected find %q", a[i:])
			}
			n := unquote(strings.TrimPrefix(a[i+4], "name="))
			if _, ok := o.ports[n]; ok {
				out.WriteString(n + "\n\n")
			}
		}
		return []byte(out.String()), nil
	case len(a) == 1 && a[0] == "list-br":
		return []byte("br0\n"), nil
	case len(a) == 2 && a[0] == "port-to-br":
		if _, ok := o.ports[a[1]]; ok {
			return []byte("br0\n"), nil
		}
		return []byte("ovs-vsctl: no port named " + a[1] + "\n"), fmt.Errorf("exit status 1: ovs-vsctl: no port named %s", a[1])
	case len(a) == 5 && a[0] == "--format=json" && a[1] == "--columns=name,external_ids" && a[2] == "find" && a[3] == "Interface" && a[4] == "external_ids:shaperd-role=net":
		var rows []string
		for _, n := range slices.Sorted(maps.Keys(o.ports)) {
			p := o.ports[n]
			if p.ids["shaperd-role"] != "net" {
				continue
			}
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(p.ids)) {
				kv = append(kv, fmt.Sprintf("[%q,%q]", k, p.ids[k]))
			}
			rows = append(rows, fmt.Sprintf(`[%q,["map",[%s]]]`, n, strings.Join(kv, ",")))
		}
		return []byte(`{"data":[` + strings.Join(rows, ",") + `],"headings":["name","external_ids"]}` + "\n"), nil
	case len(a) == 4 && a[0] == "get" && a[1] == "Interface" && a[3] == "error":
		if _, ok := o.ports[a[2]]; !ok && !ifExists {
			return nil, errNoRow
		}
		return []byte("[]\n"), nil
	case len(a) > 12 && a[0] == "--" && a[1] == "--if-exists" && a[2] == "del-port" && a[3] == "br0" && a[5] == "--" && a[6] == "add-port" && a[7] == "br0" && a[8] == a[4] && a[9] == "--" && a[10] == "set" && a[11] == "Interface" && a[12] == a[4]:
		// One transaction: the port goes and comes back as a new row,
		// with a new OpenFlow number.
		delete(o.ports, a[4])
		p := o.addPort(a[4])
		for _, kv := range a[13:] {
			k, v, _ := strings.Cut(strings.TrimPrefix(kv, "external_ids:"), "=")
			p.ids[k] = unquote(v)
		}
		return nil, nil
	case len(a) == 2 && a[0] == "iface-to-br":
		if _, ok := o.ports[a[1]]; ok {
			return []byte("br0\n"), nil
		}
		return nil, fmt.Errorf("ovs-vsctl: no interface named %s", a[1])
	case len(a) == 4 && a[0] == "get" && a[1] == "Interface" && a[3] == "ofport":
		p, ok := o.ports[a[2]]
		if !ok {
			return nil, fmt.Errorf("ovs-vsctl: no row %q in table Interface", a[2])
		}
		return []byte(strconv.Itoa(p.ofport) + "\n"), nil
	case len(a) == 4 && a[0] == "get" && a[1] == "Interface" && strings.HasPrefix(a[3], "external_ids:"):
		p, ok := o.ports[a[2]]
		if !ok {
			if ifExists {
				return nil, nil
			}
			return nil, errNoRow
		}
		v, ok := p.ids[strings.TrimPrefix(a[3], "external_ids:")]
		if !ok {
			return nil, nil
		}
		return []byte(strconv.Quote(v) + "\n"), nil
	case len(a) == 7 && a[0] == "get" && a[1] == "Port":
		p, ok := o.ports[a[2]]
		if !ok {
			return nil, nil
		}
		return []byte(p.tag + "\n[]\n[]\n[6d9a9e3e-0000-0000-0000-000000000000]\n"), nil
	case len(a) >= 4 && a[0] == "set" && a[1] == "Interface" && strings.HasPrefix(a[3], "external_ids:"):
		p, ok := o.ports[a[2]]
		if !ok {
			return nil, errNoRow
		}
		for _, kv := range a[3:] {
			k, v, _ := strings.Cut(strings.TrimPrefix(kv, "external_ids:"), "=")
			p.ids[k] = unquote(v)
		}
		return nil, nil
	case len(a) == 3 && a[0] == "del-port" && a[1] == "br0":
		if _, ok := o.ports[a[2]]; !ok && !ifExists {
			return nil, errNoRow
		}
		delete(o.ports, a[2])
		return nil, nil
	case len(a) > 4 && a[0] == "--" && a[1] == "add-port" && a[2] == "br0" && a[4] == "--" && a[5] == "set" && a[6] == "Interface" && a[7] == a[3]:
		if _, ok := o.ports[a[3]]; ok {
			return nil, fmt.Errorf("ovs-vsctl: cannot create a port named %s because a port named %s already exists", a[3], a[3])
		}
		p := o.addPort(a[3])
		for _, kv := range a[8:] {
			k, v, _ := strings.Cut(strings.TrimPrefix(kv, "external_ids:"), "=")
			p.ids[k] = unquote(v)
		}
		return nil, nil
	}
	return nil, fmt.Errorf("fake ovs-vsctl: unexpected %q", a)
}

func (o *fakeOVS) ofctl(a []string, stdin []byte) ([]byte, error) {
	switch {
	case len(a) == 3 && a[0] == "dump-ports" && a[1] == "br0":
		p, ok := o.ports[a[2]]
		if !ok || p.ofport <= 0 {
			return nil, fmt.Errorf("ovs-ofctl: br0: unknown port `%s`", a[2])
		}
		return []byte(fmt.Sprintf("OFPST_PORT reply (xid=0x4): 1 ports\n  port  %d: rx pkts=2, bytes=180, drop=0, errs=0, frame=0, over=0, crc=0\n           tx pkts=5, bytes=442, drop=0, errs=0, coll=0\n", p.ofport)), nil
	case len(a) == 3 && a[0] == "del-flows" && a[1] == "br0":
		c, ok := strings.CutPrefix(a[2], "cookie=")
		if !ok || !strings.HasSuffix(c, "/-1") {
			return nil, fmt.Errorf("fake: del-flows %q: only by exact cookie", a[2])
		}
		cookie, err := strconv.ParseUint(strings.TrimSuffix(c, "/-1"), 0, 64)
		if err != nil {
			return nil, err
		}
		o.flows = slices.DeleteFunc(o.flows, func(f fakeFlow) bool { return f.cookie == cookie })
		return nil, nil
	case (len(a) == 2 || len(a) == 3) && a[0] == "dump-ports-desc" && a[1] == "br0":
		names := slices.Sorted(maps.Keys(o.ports))
		if len(a) == 3 {
			if _, ok := o.ports[a[2]]; !ok {
				return nil, fmt.Errorf("ovs-ofctl: %s: couldn't find port", a[2])
			}
			names = []string{a[2]}
		}
		out := "OFPST_PORT_DESC reply (xid=0x2):\n"
		for _, n := range names {
			p := o.ports[n]
			cfg := "0"
			if p.noFlood {
				cfg = "NO_FLOOD"
			}
			out += fmt.Sprintf(" %d(%s): addr:4a:0a:68:30:1f:d5\n     config:     %s\n     state:      0\n", p.ofport, n, cfg)
		}
		return []byte(out), nil
	case len(a) == 4 && a[0] == "mod-port" && a[1] == "br0":
		p, ok := o.ports[a[2]]
		if !ok {
			return nil, fmt.Errorf("ovs-ofctl: %s: couldn't find port", a[2])
		}
		switch a[3] {
		case "flood":
			p.noFlood = false
		case "no-flood":
			p.noFlood = true
		default:
			return nil, fmt.Errorf("fake: mod-port %s", a[3])
		}
		return nil, nil
	case len(a) >= 2 && a[0] == "dump-flows" && a[1] == "br0":
		var filter uint64
		for _, x := range a[2:] {
			switch {
			case x == "--no-stats":
			case strings.HasPrefix(x, "cookie=") && strings.HasSuffix(x, "/-1"):
				filter, _ = strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(x, "cookie="), "/-1"), 0, 64)
			default:
				return nil, fmt.Errorf("fake: dump-flows %q", x)
			}
		}
		out := "OFPST_FLOW reply (OF1.4) (xid=0x2):\n"
		for _, f := range o.flows {
			if filter == 0 || f.cookie == filter {
				out += f.line() + "\n"
			}
		}
		return []byte(out), nil
	case len(a) == 2 && a[0] == "dump-groups" && a[1] == "br0":
		out := "OFPST_GROUP_DESC reply (OF1.4) (xid=0x2):\n"
		for _, g := range slices.Sorted(maps.Keys(o.groups)) {
			out += " " + o.groups[g] + "\n"
		}
		return []byte(out), nil
	case len(a) == 3 && a[0] == "bundle" && a[1] == "br0" && a[2] == "-":
		o.bundles = append(o.bundles, string(stdin))
		return nil, o.bundle(string(stdin))
	}
	return nil, fmt.Errorf("fake ovs-ofctl: unexpected %q", a)
}

// bundle applies text atomically, with OVS's checks that matter here.
func (o *fakeOVS) bundle(text string) error {
	flows := slices.Clone(o.flows)
	groups := maps.Clone(o.groups)
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		verb, rest, _ := strings.Cut(line, " ")
		op, spec, _ := strings.Cut(rest, " ")
		switch verb + " " + op {
		case "group add":
			id := groupIDOf(spec)
			if _, ok := groups[id]; ok {
				return fmt.Errorf("Error OFPGMFC_GROUP_EXISTS")
			}
			groups[id] = spec
		case "group delete":
			delete(groups, groupIDOf(spec))
		case "flow add":
			var f fakeFlow
			var rest []string
			for _, kv := range strings.Split(spec, ",") {
				switch k, v, _ := strings.Cut(kv, "="); k {
				case "table":
					f.table, _ = strconv.Atoi(v)
				case "cookie":
					f.cookie, _ = strconv.ParseUint(v, 0, 64)
				case "priority":
					f.priority, _ = strconv.Atoi(v)
				default:
					rest = append(rest, kv)
				}
			}
			f.rest = strings.Join(rest, ",")
			if m := groupID.FindStringSubmatch(strings.ReplaceAll(f.rest, "group:", "group_id=")); m != nil {
				id, _ := strconv.ParseUint(m[1], 10, 32)
				if _, ok := groups[uint32(id)]; !ok {
					return fmt.Errorf("Error OFPBAC_BAD_OUT_GROUP")
				}
			}
			flows = append(flows, f)
		case "flow delete":
			c, ok := strings.CutPrefix(spec, "cookie=")
			if !ok || !strings.HasSuffix(c, "/-1") {
				return fmt.Errorf("fake: flow delete %q: only by exact cookie", spec)
			}
			cookie, _ := strconv.ParseUint(strings.TrimSuffix(c, "/-1"), 0, 64)
			flows = slices.DeleteFunc(flows, func(f fakeFlow) bool { return f.cookie == cookie })
		default:
			return fmt.Errorf("fake: bundle line %q", line)
		}
	}
	o.flows, o.groups = flows, groups
	return nil
}

type fakeLink struct {
	linkInfo
	redirect int    // ifindex its tc filter redirects to
	xdp      bool   // an XDP program steers the port's frames: attached, and held by a live daemon
	xdpID    int    // which attachment is attached (0: none); it stays when its daemon dies
	xdpName  string // its name; "" is shaperd's entry program
	prog     []byte // what its kernel half was configured with
}

type fakeKernel struct {
	mu       sync.Mutex
	links    map[string]*fakeLink
	next     int
	fail     func(op, name string) error
	attached int // XDP attachments so far
}

func newFakeKernel() *fakeKernel {
	k := &fakeKernel{links: map[string]*fakeLink{}, next: 10}
	for _, n := range []string{"vm-1", "ext-1"} {
		k.add(n, "veth", "")
	}
	return k
}

func (k *fakeKernel) add(name, kind, alias string) *fakeLink {
	l := &fakeLink{linkInfo: linkInfo{index: k.next, kind: kind, mtu: 1500, alias: alias}}
	k.next++
	k.links[name] = l
	return l
}

func (k *fakeKernel) state() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(k.links)) {
		l := k.links[n]
		fmt.Fprintf(&b, "%s %+v redirect %d xdp %v attached %d %q\n", n, l.linkInfo, l.redirect, l.xdp, l.xdpID, l.xdpName)
	}
	return b.String()
}

func (k *fakeKernel) check(op, name string) error {
	if k.fail != nil {
		return k.fail(op, name)
	}
	return nil
}

func (k *fakeKernel) lookup(name string) (linkInfo, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.links[name]
	if !ok {
		return linkInfo{}, false, nil
	}
	return l.linkInfo, true, nil
}

func (k *fakeKernel) createTap(name string, mtu int, alias string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.links[name]; ok {
		return fmt.Errorf("create tap %s: file exists", name)
	}
	if err := k.check("createTap", name); err != nil {
		return err
	}
	k.add(name, "tuntap", alias).mtu = mtu
	return nil
}

func (k *fakeKernel) deleteTap(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.links, name)
	return nil
}

func (k *fakeKernel) byIndex(i int) (string, *fakeLink) {
	for n, l := range k.links {
		if l.index == i {
			return n, l
		}
	}
	return "", nil
}

func (k *fakeKernel) redirectOf(ifindex int) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, l := k.byIndex(ifindex)
	if l == nil {
		return 0, fmt.Errorf("redirectOf: no ifindex %d", ifindex)
	}
	return l.redirect, nil
}

func (k *fakeKernel) xdpProgram(ifindex int) (xdpProg, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, l := k.byIndex(ifindex)
	if l == nil {
		return xdpProg{}, false, fmt.Errorf("xdpProgram: no ifindex %d", ifindex)
	}
	if l.xdpID == 0 {
		return xdpProg{}, false, nil
	}
	name := l.xdpName
	if name == "" {
		name = steer.PortXDP.EntryName()
	}
	return xdpProg{id: uint32(l.xdpID), name: name}, true, nil
}

func (k *fakeKernel) steerHeld(id uint32) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, l := range k.links {
		if l.xdpID == int(id) {
			return l.xdp, nil
		}
	}
	return false, fmt.Errorf("steerHeld: no program %d", id)
}

func (k *fakeKernel) detachXDP(ifindex int, id uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, l := k.byIndex(ifindex); l != nil && l.xdpID == int(id) {
		l.xdp, l.prog, l.xdpID, l.xdpName = false, nil, 0, ""
	}
	return nil
}

func (k *fakeKernel) taps() (map[string]linkInfo, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]linkInfo{}
	for n, l := range k.links {
		if l.kind == "tuntap" && strings.HasPrefix(n, "shq") {
			out[n] = l.linkInfo
		}
	}
	return out, nil
}

// daemonDied does what the death of the daemon does to the kernel: the
// liveness slots of its kernel halves empty, so no XDP program steers any
// more; the programs stay attached.
func (k *fakeKernel) daemonDied() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, l := range k.links {
		l.xdp = false
	}
}

func (k *fakeKernel) redirectTap(ifindex, to int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	n, l := k.byIndex(ifindex)
	if l == nil || l.kind != "tuntap" {
		return fmt.Errorf("redirectTap: ifindex %d is no tap", ifindex)
	}
	if err := k.check("redirectTap", n); err != nil {
		return err
	}
	l.redirect = to
	return nil
}

func (k *fakeKernel) attachSteer(port, _ int, cfg steer.Config) (kernelHalf, uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	n, l := k.byIndex(port)
	if l == nil {
		return nil, 0, fmt.Errorf("attachXDP: no ifindex %d", port)
	}
	if err := k.check("attachXDP", n); err != nil {
		return nil, 0, err
	}
	if l.xdpID != 0 {
		return nil, 0, errors.New("attachXDP: busy")
	}
	k.attached++
	l.xdp, l.xdpID, l.prog = true, k.attached, []byte(fmt.Sprintf("%+v", cfg))
	return &fakeHalf{k: k, l: l, id: l.xdpID}, uint32(l.xdpID), nil
}

func (k *fakeKernel) adoptSteer(port int, id uint32, _ int, cfg steer.Config) (kernelHalf, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	n, l := k.byIndex(port)
	if l == nil {
		return nil, fmt.Errorf("adoptSteer: no ifindex %d", port)
	}
	if err := k.check("attachXDP", n); err != nil {
		return nil, err
	}
	switch {
	case l.xdpID != int(id):
		return nil, fmt.Errorf("adoptSteer: program %d is not attached to %s", id, n)
	case l.xdp:
		return nil, steer.ErrHeld
	}
	l.xdp, l.prog = true, []byte(fmt.Sprintf("%+v", cfg))
	return &fakeHalf{k: k, l: l, id: l.xdpID}, nil
}

// fakeHalf is a kernel half held by a (fake) daemon.
type fakeHalf struct {
	k  *fakeKernel
	l  *fakeLink
	id int
}

func (h *fakeHalf) Beat(uint64, time.Duration) error            { return nil }
func (h *fakeHalf) SetBackstop(steer.Dir, steer.Backstop) error { return nil }
func (h *fakeHalf) Stats() (steer.Stats, error)                 { return steer.Stats{}, nil }

// Close empties the liveness slot: the program, if still attached, no
// longer steers.
func (h *fakeHalf) Close() error {
	h.k.mu.Lock()
	defer h.k.mu.Unlock()
	if h.l.xdpID == h.id {
		h.l.xdp = false
	}
	return nil
}
