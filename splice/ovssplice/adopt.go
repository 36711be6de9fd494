package ovssplice

// Adoption: a restarted daemon finds the splices an earlier one left (Found),
// rebuilds each from the net tap's Interface row and the links (Adopt),
// recreating what is missing, and removes what shaperd created that no
// splice records (RemoveOrphans, after its full sync).
//
// The Interface row is the record: ovsdb-server keeps it across restarts of
// ovs-vswitchd, of the daemon and of the host. What ovs-vswitchd keeps only
// in memory (flows, groups, the ports' no-flood flag) is gone after it
// restarts: Adopt puts those back. The XDP program stays attached when
// the daemon dies, with its maps (package steer): Adopt takes them over,
// or attaches a new one if the port has none.

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/shaperd/shaperd/splice"
)

var (
	_ splice.Adopter        = (*Backend)(nil)
	_ splice.IntentRecorder = (*spliced)(nil)
)

// Found lists the ports whose splice an Interface row records (external_ids
// shaperd-role=net on the port's net tap), with the intent recorded there,
// sorted by port. With no Open vSwitch running it finds nothing.
func (b *Backend) Found() ([]splice.Found, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running() {
		return nil, nil
	}
	rows, err := b.ovs.spliceRows()
	if err != nil {
		return nil, fmt.Errorf("ovssplice: list recorded splices: %w", err)
	}
	var out []splice.Found
	for _, r := range rows {
		port := r.ids[idPort]
		if _, nt := splice.TapNames(port); port == "" || nt != r.name {
			b.log.Warn("an Interface row records a splice of another port than its name says; ignoring it",
				"interface", r.name, "port", port)
			continue
		}
		out = append(out, splice.Found{Port: port, Intent: r.ids[idIntent]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out, nil
}

// Adopt rebuilds port's splice from its Interface row and the links, and
// repairs it: it recreates missing taps (re-adding the net tap to the
// bridge if it had to recreate it), the VM tap's redirect to the port, the
// no-flood flags, and the flows and groups of the recorded cookie when the
// bridge does not hold exactly them (one bundle deletes what is left of
// them and adds them again); then it takes over the XDP program and its
// maps (or attaches a new one if the port has none). A splice found
// complete is changed in nothing.
//
// Everything is checked before the first change: the record, the taps'
// names and aliases, that the port's XDP program, if any, is shaperd's and
// no live daemon holds it, that group ids the splice would delete are its
// own. A failure after that detaches the XDP program and leaves what Adopt
// recreated in place: it belongs to the recorded splice, which a later
// Adopt or Release (or `release --offline`) then finds more complete.
//
// If the port is gone, or on no bridge of Open vSwitch, Adopt repairs
// nothing and returns the splice for Release, which removes what is left.
// ErrNotSpliced if no Interface row records a splice of port.
func (b *Backend) Adopt(port string) (splice.Splice, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running() {
		return nil, fmt.Errorf("ovssplice: adopt %s: Open vSwitch is not running (no database socket)", port)
	}
	rows, err := b.ovs.spliceRows()
	if err != nil {
		return nil, fmt.Errorf("ovssplice: adopt %s: list recorded splices: %w", port, err)
	}
	_, nt := splice.TapNames(port)
	i := slices.IndexFunc(rows, func(r row) bool { return r.name == nt && r.ids[idPort] == port })
	if i < 0 {
		return nil, fmt.Errorf("ovssplice: %s: %w (no Interface row records one)", port, splice.ErrNotSpliced)
	}
	s, err := b.fromRecord(rows[i])
	if err != nil {
		return nil, err
	}
	if s.bridge, err = b.ovs.ifaceBridge(nt); err != nil {
		return nil, fmt.Errorf("ovssplice: adopt %s: the bridge of %s: %w", port, nt, err)
	}
	repaired, err := s.adopt()
	if err != nil {
		if repaired != nil {
			if derr := s.dropXDP(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		return nil, fmt.Errorf("ovssplice: adopt %s: %w", port, err)
	}
	if len(repaired) > 0 {
		b.log.Warn("adopted splice was incomplete; recreated the missing pieces", "port", port, "bridge", s.bridge,
			"cookie", fmt.Sprintf("%#x", s.plan.cookie), "recreated", repaired)
	}
	b.log.Info("adopted", "port", port, "bridge", s.bridge, "cookie", fmt.Sprintf("%#x", s.plan.cookie), "slot", s.plan.slot,
		"ofport", s.plan.port, "net_tap_ofport", s.plan.netTap, "fail_open", s.plan.failOpen, "port_present", s.portIndex != 0)
	if s.portIndex != 0 {
		b.trackLocked(s)
	}
	return s, nil
}

// fromRecord returns the splice row records, validated; nothing is read
// but the row.
func (b *Backend) fromRecord(r row) (*spliced, error) {
	ids := r.ids
	port := ids[idPort]
	vm, nt := splice.TapNames(port)
	bad := func(key, why string) error {
		return fmt.Errorf("ovssplice: the record of %s's splice on %s is unusable: external_ids:%s=%q %s", port, r.name, key, ids[key], why)
	}
	if port == "" || r.name != nt {
		return nil, bad(idPort, "does not name the port whose net tap this is")
	}
	if ids[idVMTap] != vm {
		return nil, bad(idVMTap, "is not the port's VM tap "+vm)
	}
	s := &spliced{
		b:       b,
		port:    port,
		vmTap:   vm,
		netTap:  nt,
		prioTap: splice.PriorityTapName(port),
		alias:   aliasPrefix + port,
		made:    map[string]bool{},
		intent:  ids[idIntent],
	}
	var err error
	if s.plan.cookie, err = strconv.ParseUint(ids[idCookie], 0, 64); err != nil || !isGeneration(s.plan.cookie) {
		return nil, bad(idCookie, "is not a shaperd splice cookie")
	}
	slot, err := strconv.ParseUint(ids[idSlot], 10, 8)
	if err != nil || slot >= maxSlots {
		return nil, bad(idSlot, fmt.Sprintf("is not a slot (0-%d)", maxSlots-1))
	}
	s.plan.slot = uint(slot)
	var gs []string
	for _, g := range s.plan.groups() {
		gs = append(gs, strconv.FormatUint(uint64(g), 10))
	}
	if ids[idGroups] != strings.Join(gs, ",") {
		return nil, bad(idGroups, "are not the slot's groups "+strings.Join(gs, ","))
	}
	switch ids[idFail] {
	case "open":
		s.plan.failOpen = true
	case "closed":
	default:
		return nil, bad(idFail, "is neither open nor closed")
	}
	s.opt.FailOpen = s.plan.failOpen
	if s.plan.port, err = strconv.Atoi(ids[idOFPort]); err != nil || s.plan.port <= 0 {
		return nil, bad(idOFPort, "is not a port number")
	}
	s.portWas = s.plan.port
	for _, m := range strings.Split(ids[idMACs], ",") {
		mac, err := net.ParseMAC(m)
		if err != nil || !isUnicast(mac) {
			return nil, bad(idMACs, "is not a list of unicast MAC addresses")
		}
		s.plan.macs = addMAC(s.plan.macs, mac)
	}
	if s.hadNoFlood, err = strconv.ParseBool(ids[idPortNoFlood]); err != nil {
		return nil, bad(idPortNoFlood, "is not true or false")
	}
	if v, ok := ids[idBypass]; !ok {
		s.warnings = append(s.warnings, fmt.Sprintf("the splice of %s records no bypass ports (made by an older shaperd): frames are not steered to the priority tap", port))
	} else if v != "" {
		for _, p := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil || n == 0 {
				return nil, bad(idBypass, "is not a list of TCP ports")
			}
			s.opt.BypassPorts = append(s.opt.BypassPorts, uint16(n))
		}
	}
	if v, ok := ids[idBypassOut]; ok {
		if s.opt.BypassOutbound, err = strconv.ParseBool(v); err != nil {
			return nil, bad(idBypassOut, "is not true or false")
		}
	}
	if v, ok := ids[idNetOFPort]; ok {
		if s.netWas, err = strconv.Atoi(v); err != nil || s.netWas <= 0 {
			return nil, bad(idNetOFPort, "is not a port number")
		}
	}
	// What the record says exists; teardown checks each before removing it.
	s.portAdded, s.bundleSent, s.floodChanged = true, true, !s.hadNoFlood
	s.plan.netTap = s.netWas
	return s, nil
}

// adopt finds the splice's pieces and recreates the missing ones, in
// build's order; it returns what it recreated. See Adopt.
func (s *spliced) adopt() (repaired []string, err error) {
	// Read only, up to the first change.
	type tap struct {
		name  string
		index *int
	}
	taps := []tap{{s.vmTap, &s.vmIndex}, {s.netTap, &s.netIndex}, {s.prioTap, &s.prioIndex}}
	var missing []tap
	for _, t := range taps {
		l, ok, err := s.b.links.lookup(t.name)
		if err != nil {
			return nil, err
		}
		if !ok {
			missing = append(missing, t)
			continue
		}
		if l.kind != "tuntap" || l.alias != s.alias {
			return nil, fmt.Errorf("%s exists but is not the splice's tap (a %s with alias %q); leaving it", t.name, l.kind, l.alias)
		}
		s.made[t.name] = true
		if t.index != nil {
			*t.index = l.index
		}
	}
	l, ok, err := s.b.links.lookup(s.port)
	if err != nil {
		return nil, err
	}
	br, berr := s.b.ovs.ifaceBridge(s.port)
	if berr != nil && !errors.Is(berr, errNotInOVS) {
		return nil, fmt.Errorf("look up the bridge of %s: %w", s.port, berr)
	}
	if !ok || berr != nil || br != s.bridge {
		// The VM went away while no daemon ran: nothing to repair, and
		// Release removes what is left (with the port's index unknown,
		// it restores no flooding).
		s.warnings = append(s.warnings, fmt.Sprintf("port %s is gone from bridge %s: the splice can only be released", s.port, s.bridge))
		if nt, err := s.b.ovs.ofport(s.bridge, s.netTap); err == nil {
			s.plan.netTap = nt
		}
		return nil, nil
	}
	s.portIndex, s.mtu = l.index, l.mtu
	var xdp uint32     // the dead daemon's XDP program to take over
	var replace uint32 // or to replace, unable to take it over
	if p, on, err := s.b.links.xdpProgram(l.index); err != nil {
		return nil, err
	} else if on && p.unknown {
		// On the port of a recorded splice: taken for the dead daemon's.
		s.b.log.Warn("cannot read the port's XDP program without CAP_SYS_ADMIN; replacing it as the dead daemon's (its counters and buckets start again)", "port", s.port, "program", p.id)
		replace = p.id
	} else if on && !p.ours() {
		return nil, fmt.Errorf("%s already has an XDP program (id %d, %q) that is not shaperd's; remove it first", s.port, p.id, p.name)
	} else if on {
		held, err := s.b.links.steerHeld(p.id)
		if err != nil {
			return nil, err
		}
		if held {
			return nil, fmt.Errorf("%s's XDP program (id %d) is held by another shaperd, which still runs this splice; stop it first", s.port, p.id)
		}
		xdp = p.id
	}
	if s.plan.port, err = s.b.ovs.ofport(s.bridge, s.port); err != nil {
		return nil, err
	}
	netMissing := !s.made[s.netTap]
	netNow := 0
	if !netMissing {
		if netNow, err = s.b.ovs.ofport(s.bridge, s.netTap); err != nil {
			return nil, err
		}
	}
	groups, err := s.b.ovs.groups(s.bridge)
	if err != nil {
		return nil, fmt.Errorf("read the groups of %s: %w", s.bridge, err)
	}
	s.plan.netTap = netNow // 0 if the tap is missing: its groups watch netWas
	for _, g := range s.plan.groups() {
		line, ok := groups[g]
		if ok && !slices.Contains(s.ownGroups(groups), g) {
			return nil, fmt.Errorf("bridge %s has a group %d that is not the splice's (%q); leaving the splice as it is", s.bridge, g, line)
		}
	}

	// Changes, in build's order. From here a failure detaches the XDP
	// program (repaired is not nil).
	repaired = []string{}
	s.xdpID = xdp
	for _, t := range missing {
		s.made[t.name] = true // teardown checks whether it exists
		if err := s.b.links.createTap(t.name, s.mtu, s.alias); err != nil {
			return repaired, err
		}
		l, ok, err := s.b.links.lookup(t.name)
		if err != nil || !ok {
			return repaired, fmt.Errorf("look up new tap %s: %v", t.name, err)
		}
		if t.index != nil {
			*t.index = l.index
		}
		repaired = append(repaired, "tap "+t.name)
	}
	if to, err := s.b.links.redirectOf(s.vmIndex); err != nil {
		return repaired, err
	} else if to != s.portIndex {
		if err := s.b.links.redirectTap(s.vmIndex, s.portIndex); err != nil {
			return repaired, fmt.Errorf("%s: %w", s.vmTap, err)
		}
		repaired = append(repaired, "vm tap redirect")
	}
	if netMissing {
		// A new tap of the name: ovs-vswitchd still holds the old one's
		// socket. One transaction replaces the port with the same record.
		kv := append(s.externalIDs(), [2]string{idIntent, s.intent})
		args := append([]string{"--", "--if-exists", "del-port", s.bridge, s.netTap, "--", "add-port", s.bridge, s.netTap, "--"}, setArgs(s.netTap, kv)...)
		if _, err := s.b.ovs.vsctl(args...); err != nil {
			return repaired, fmt.Errorf("re-add %s to %s: %w", s.netTap, s.bridge, err)
		}
		repaired = append(repaired, "net tap port")
		if s.plan.netTap, err = s.b.ovs.ofport(s.bridge, s.netTap); err != nil {
			return repaired, err
		}
	}
	more, complete, err := s.repairOpenFlow(groups)
	repaired = append(repaired, more...)
	if err != nil {
		return repaired, err
	}
	if replace != 0 {
		s.xdpID = replace
		if err := s.b.links.detachXDP(s.portIndex, replace); err != nil {
			return repaired, err
		}
		s.xdpID = 0
		repaired = append(repaired, "kernel half (replaced: no CAP_SYS_ADMIN to take it over)")
	}
	if xdp != 0 {
		h, err := s.b.links.adoptSteer(s.portIndex, xdp, s.netIndex, s.steerConfig())
		if err != nil {
			return repaired, err
		}
		s.Hold(h)
	} else if err := s.attachSteer(); err != nil {
		return repaired, err
	}
	if complete {
		return repaired, nil // just read: no need to read them again
	}
	return repaired, s.verify()
}

// repairOpenFlow puts back what ovs-vswitchd keeps only in memory: the
// no-flood flags of the net tap and the port, and the flows and groups of
// the splice's cookie when the bridge does not hold exactly them (one
// bundle deletes what is left of them and adds them again); then it
// records the port numbers if they changed. groups are the bridge's, as
// read; s.plan.port and s.plan.netTap are the port numbers now. complete
// reports that the flows and groups were all there.
func (s *spliced) repairOpenFlow(groups map[uint32]string) (repaired []string, complete bool, err error) {
	desc, err := s.b.ovs.ofctl("dump-ports-desc", s.bridge)
	if err != nil {
		return repaired, false, fmt.Errorf("read the OpenFlow config of %s's ports: %w", s.bridge, err)
	}
	for _, p := range []struct {
		name string
		want bool // must be no-flood
	}{{s.netTap, true}, {s.port, !s.hadNoFlood}} {
		if !p.want {
			continue
		}
		flags, ok := parsePortConfig(desc, p.name)
		if !ok {
			return repaired, false, fmt.Errorf("ovs-ofctl dump-ports-desc %s shows no port %s", s.bridge, p.name)
		}
		if !slices.Contains(flags, "NO_FLOOD") {
			if err := s.b.ovs.setFlood(s.bridge, p.name, false); err != nil {
				return repaired, false, err
			}
			repaired = append(repaired, "no-flood on "+p.name)
		}
	}
	flows, err := s.b.ovs.flows(s.bridge, s.plan.cookie)
	if err != nil {
		return repaired, false, fmt.Errorf("read the flows of %s: %w", s.bridge, err)
	}
	complete = s.plan.matches(flows, groups)
	if !complete {
		text, err := releaseBundle(s.plan.cookie, s.ownGroups(groups))
		if err != nil {
			return repaired, false, err
		}
		if err := s.b.ovs.bundle(s.bridge, text+s.plan.spliceBundle()); err != nil {
			return repaired, false, fmt.Errorf("reinstall the flows and groups: %w", err)
		}
		repaired = append(repaired, fmt.Sprintf("flows and groups (%d flows of the cookie were there)", len(flows)))
	}
	if s.portWas != s.plan.port || s.netWas != s.plan.netTap {
		kv := [][2]string{{idOFPort, strconv.Itoa(s.plan.port)}, {idNetOFPort, strconv.Itoa(s.plan.netTap)}}
		if _, err := s.b.ovs.vsctl(setArgs(s.netTap, kv)...); err != nil {
			return repaired, complete, fmt.Errorf("record the port numbers on %s: %w", s.netTap, err)
		}
		s.portWas, s.netWas = s.plan.port, s.plan.netTap
	}
	return repaired, complete, nil
}

// RemoveOrphans removes what shaperd's OVS splices leave behind that no
// splice records: on every bridge, flows with a shaperd cookie that no
// Interface row records (deleted by that exact cookie, never by an empty
// match), and shaperd fast-failover groups that no row records and no other
// party's flow uses; and taps named and aliased as a splice's whose port is
// an OVS interface (so not a Linux bridge's: those are the tc backend's)
// with no row recording its splice, with their Port row if they have one.
// Recorded splices are left to Found, Adopt and Release.
//
// Call it once the daemon has adopted, or released, every splice it wants:
// a splice whose Splice is running in another process would look orphaned.
// It returns what it removed.
func (b *Backend) RemoveOrphans() ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running() {
		return nil, nil
	}
	rows, err := b.ovs.spliceRows()
	if err != nil {
		return nil, fmt.Errorf("ovssplice: list recorded splices: %w", err)
	}
	cookies := map[uint64]bool{}
	groups := map[uint32]bool{} // on any bridge: group ids are per bridge, but a row's bridge may be unknown
	ports := map[string]bool{}
	for _, r := range rows {
		ports[r.ids[idPort]] = true
		if c, err := strconv.ParseUint(r.ids[idCookie], 0, 64); err == nil {
			cookies[c] = true
		}
		for _, g := range strings.Split(r.ids[idGroups], ",") {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				groups[uint32(n)] = true
			}
		}
	}
	brs, err := b.ovs.bridges()
	if err != nil {
		return nil, fmt.Errorf("ovssplice: list bridges: %w", err)
	}
	var removed []string
	var errs []error
	for _, br := range brs {
		fs, err := b.ovs.flows(br, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("read the flows of %s: %w", br, err))
			continue
		}
		used := map[uint32]bool{} // groups other parties' flows use
		stale := map[uint64]bool{}
		for _, f := range fs {
			switch {
			case !isOurs(f.Cookie):
				for _, m := range groupAction.FindAllStringSubmatch(f.Text, -1) {
					n, _ := strconv.ParseUint(m[1], 10, 32)
					used[uint32(n)] = true
				}
			case isGeneration(f.Cookie) && !cookies[f.Cookie]:
				stale[f.Cookie] = true
			}
		}
		for _, c := range slices.Sorted(maps.Keys(stale)) {
			if err := b.ovs.delFlows(br, c); err != nil {
				errs = append(errs, fmt.Errorf("delete the flows with cookie %#x from %s: %w", c, br, err))
				continue
			}
			removed = append(removed, fmt.Sprintf("flows with cookie %#x on %s", c, br))
		}
		gs, err := b.ovs.groups(br)
		if err != nil {
			errs = append(errs, fmt.Errorf("read the groups of %s: %w", br, err))
			continue
		}
		var del []uint32
		for _, g := range slices.Sorted(maps.Keys(gs)) {
			if g&0xffff0000 != groupBase || groups[g] || !strings.Contains(gs[g], ",type=ff,") {
				continue
			}
			if used[g] {
				b.log.Warn("a shaperd group no splice records is used by another party's flow; leaving it", "bridge", br, "group", g)
				continue
			}
			del = append(del, g)
		}
		if len(del) > 0 {
			var lines []string
			for _, g := range del {
				lines = append(lines, fmt.Sprintf("group delete group_id=%d", g))
			}
			if err := b.ovs.bundle(br, strings.Join(lines, "\n")+"\n"); err != nil {
				errs = append(errs, fmt.Errorf("delete groups %v from %s: %w", del, br, err))
			} else {
				removed = append(removed, fmt.Sprintf("groups %v on %s", del, br))
			}
		}
	}

	links, err := b.links.taps()
	if err != nil {
		return removed, errors.Join(append(errs, err)...)
	}
	judged := map[string]bool{} // port -> its taps are orphans
	for _, name := range slices.Sorted(maps.Keys(links)) {
		port, ok := strings.CutPrefix(links[name].alias, aliasPrefix)
		if !ok || ports[port] {
			continue
		}
		vm, nt := splice.TapNames(port)
		if name != vm && name != nt && name != splice.PriorityTapName(port) {
			continue
		}
		orphan, seen := judged[port]
		if !seen {
			orphan = b.orphanTaps(port, nt, &removed, &errs)
			judged[port] = orphan
		}
		if !orphan {
			continue
		}
		if err := b.links.deleteTap(name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "tap "+name)
	}
	if len(removed) > 0 {
		b.log.Warn("removed orphans of earlier splices", "removed", removed)
	}
	return removed, errors.Join(errs...)
}

var groupAction = regexp.MustCompile(`group:(\d+)`)

// orphanTaps reports whether port's splice taps, which no row records, are
// the OVS backend's to remove: the net tap is still an OVS port (its row
// lost its record), which it removes, or the port is an OVS interface.
func (b *Backend) orphanTaps(port, nt string, removed *[]string, errs *[]error) bool {
	if br, err := b.ovs.ifaceBridge(nt); err == nil {
		if err := b.ovs.delPort(br, nt); err != nil {
			*errs = append(*errs, fmt.Errorf("remove %s from %s: %w", nt, br, err))
			return false
		}
		*removed = append(*removed, fmt.Sprintf("port %s on %s", nt, br))
		return true
	}
	_, err := b.ovs.ifaceBridge(port)
	return err == nil
}

var _ splice.Claimer = (*Backend)(nil)

// Claims reports whether link is a port of one of Open vSwitch's bridges
// (false if Open vSwitch is not running), so that the tc backend leaves its
// splice taps, which are on no Linux bridge, to this one.
func (b *Backend) Claims(link string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running() {
		return false, nil
	}
	switch _, err := b.ovs.ifaceBridge(link); {
	case err == nil:
		return true, nil
	case errors.Is(err, errNotInOVS):
		return false, nil
	default:
		return false, fmt.Errorf("ovssplice: is %s an Open vSwitch port: %w", link, err)
	}
}
