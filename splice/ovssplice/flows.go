package ovssplice

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Cookies. Every flow a splice adds carries its generation's cookie:
// CookieTag in the top 16 bits, a random 48-bit generation below. The
// splice's flows are deleted with cookie=COOKIE/-1 (exactly this
// generation); all shaperd flows of a bridge are cookie=CookieTag/CookieMask.
const (
	CookieTag  uint64 = 0x5351 << 48 // "SQ"
	CookieMask uint64 = 0xffff << 48
	// PolicyCookieTag tags the flows of the port guards and isolations
	// (package portpolicy/ovspolicy): above the splice's priorities on
	// purpose, so Splice does not warn about them.
	PolicyCookieTag uint64 = 0x5350 << 48 // "SP"
)

// Group ids: groupBase | slot<<2 | k, with k one of the group kinds below.
// A splice's slot is unique on its bridge, so are its group ids.
const (
	groupBase   uint32 = 0x53510000
	groupFromVM        = 0 // OVS's copy of a frame from the VM: dropped, or (fail open) the pipeline
	groupToVM          = 1 // frames to the VM: the net tap, or (fail open) the port
	numGroups          = 2
)

// The registers whose bits mark frames a splice has already dealt with:
// the splice's bit is set on a frame that re-enters the pipeline as if from
// the splice's port (or that had its multicast copy made), so the splice's
// flows do not match it again while every other flow, including other
// splices', does. One bit per splice, so that a frame can carry the marks of
// several: slot s is bit s%32 of register 12+s/32, the four registers
// reg12-reg15 (xxreg3) hold maxSlots splices per bridge. Slots 0-30 are
// the bits of reg12 that the backend used before it took four registers.
const (
	markRegFirst = 12
	markRegs     = 4
	maxSlots     = 32 * markRegs
)

// markReg is the register holding slot's bit, and the bit.
func markReg(slot uint) (reg int, bit uint) { return markRegFirst + int(slot/32), slot % 32 }

// Priorities in table 0, above a pipeline's usual ones.
const (
	prioNetTap    = 65000 // frames the forwarder passed from the VM
	prioFromVM    = 64980 // OVS's copy of frames from the VM
	prioToVM      = 64970 // unicast to the VM's MACs
	prioMulticast = 64960 // a copy of every multicast/broadcast for the VM
)

// plan is everything the bundle text of one splice depends on.
type plan struct {
	cookie   uint64
	slot     uint               // its mark bit (markReg), 0..maxSlots-1
	port     int                // the OpenFlow port number of the VM's port
	netTap   int                // the OpenFlow port number of the net tap
	macs     []net.HardwareAddr // the VM's unicast MACs
	failOpen bool
}

func (p plan) group(k int) uint32 { return groupBase | uint32(p.slot)<<2 | uint32(k) }

func (p plan) groups() []uint32 {
	out := make([]uint32, numGroups)
	for k := range out {
		out[k] = p.group(k)
	}
	return out
}

// mark is the match on the splice's mark bit being clear.
func (p plan) mark() string {
	reg, bit := markReg(p.slot)
	return fmt.Sprintf("reg%d=0/%#x", reg, uint32(1)<<bit)
}

// setMark is the action setting the splice's mark bit.
func (p plan) setMark() string {
	reg, bit := markReg(p.slot)
	return fmt.Sprintf("load:1->NXM_NX_REG%d[%d]", reg, bit)
}

// ffGroup is a fast-failover group whose first bucket, live while the
// forwarder holds the net tap (the taps are persistent: they lose carrier
// when their last file descriptor closes, and OVS marks the port
// LINK_DOWN), does live; with fail open, a second bucket does fallback when
// it is not. With fail closed there is no live bucket then: frames are dropped.
func (p plan) ffGroup(k int, live, fallback string) string {
	s := fmt.Sprintf("group add group_id=%d,type=ff,bucket=watch_port:%d,actions=%s", p.group(k), p.netTap, live)
	if p.failOpen {
		s += fmt.Sprintf(",bucket=watch_port:%d,actions=%s", p.port, fallback)
	}
	return s
}

// spliceBundle returns the `ovs-ofctl bundle` text that installs the
// splice: the groups, then the flows that use them, in one transaction.
//
// From the VM: while the XDP program is attached OVS sees no frame of the
// VM's; when it sees one (the program is gone with the daemon, or not yet
// attached), it drops it while the forwarder holds the net tap, and
// otherwise, with fail open, sends it down the pipeline unchanged.
// What the forwarder passes comes back on the net tap and re-enters the
// pipeline as if from the port: in_port is the port (so the bridge's flows
// keyed on it, such as anti-spoofing, apply, and NORMAL learns the source
// MAC on the port), with the mark set so the splice does not take it again.
//
// To the VM: unicast to its MACs goes to the net tap, as does a copy of
// every multicast (the port is no-flood meanwhile), which then re-enters
// the pipeline marked for everyone else. What the forwarder passes leaves
// through the VM tap, whose tc filter sends it out of the port.
func (p plan) spliceBundle() string {
	c := fmt.Sprintf("%#x", p.cookie)
	flow := func(prio int, match, actions string) string {
		return fmt.Sprintf("flow add table=0,cookie=%s,priority=%d,%s,actions=%s", c, prio, match, actions)
	}
	pipeline := p.setMark() + ",resubmit(,0)"
	lines := []string{
		p.ffGroup(groupFromVM, "drop", pipeline),
		p.ffGroup(groupToVM, fmt.Sprintf("output:%d", p.netTap), fmt.Sprintf("output:%d", p.port)),
		flow(prioNetTap, fmt.Sprintf("in_port=%d", p.netTap), fmt.Sprintf("load:%d->NXM_OF_IN_PORT[],%s", p.port, pipeline)),
		flow(prioFromVM, fmt.Sprintf("in_port=%d,%s", p.port, p.mark()), fmt.Sprintf("group:%d", p.group(groupFromVM))),
	}
	for _, mac := range p.macs {
		lines = append(lines, flow(prioToVM, fmt.Sprintf("%s,dl_dst=%s", p.mark(), mac), fmt.Sprintf("group:%d", p.group(groupToVM))))
	}
	lines = append(lines, flow(prioMulticast, p.mark()+",dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
		fmt.Sprintf("group:%d,%s", p.group(groupToVM), pipeline)))
	return strings.Join(lines, "\n") + "\n"
}

// numFlows is how many flows spliceBundle adds.
func (p plan) numFlows() int { return 2 + len(p.macs) + 1 }

// releaseBundle returns the bundle text that removes a splice: its flows,
// by exact cookie (never an empty match: that would flush the bridge), then
// the given groups, in one transaction.
func releaseBundle(cookie uint64, groups []uint32) (string, error) {
	if !isGeneration(cookie) {
		return "", fmt.Errorf("refusing to delete flows by cookie %#x: not a shaperd splice cookie", cookie)
	}
	lines := []string{fmt.Sprintf("flow delete cookie=%#x/-1", cookie)}
	for _, g := range groups {
		if g&0xffff0000 != groupBase {
			return "", fmt.Errorf("refusing to delete group %d: not a shaperd splice group", g)
		}
		lines = append(lines, fmt.Sprintf("group delete group_id=%d", g))
	}
	return strings.Join(lines, "\n") + "\n", nil
}

// Flows and groups as OVS prints them differ from how the bundle adds them:
// match fields reordered, the cookie and table=0 left out, load values in
// hex. normFlow and normGroup reduce both forms to one, so that Adopt can
// tell whether the bridge still holds exactly a splice's flows and groups.
var loadDecimal = regexp.MustCompile(`load:(\d+)->`)

func normActions(a string) string {
	return loadDecimal.ReplaceAllStringFunc(a, func(m string) string {
		n, _ := strconv.ParseUint(m[len("load:"):len(m)-len("->")], 10, 64)
		return fmt.Sprintf("load:%#x->", n)
	})
}

// normFlow normalises a dump-flows line or a bundle's "flow add" line.
func normFlow(line string) string {
	line = strings.TrimPrefix(strings.TrimSpace(line), "flow add ")
	head, actions, _ := strings.Cut(line, "actions=")
	table := "table=0"
	var match []string
	for _, t := range strings.FieldsFunc(head, func(r rune) bool { return r == ',' || r == ' ' }) {
		switch {
		case strings.HasPrefix(t, "cookie="):
		case strings.HasPrefix(t, "table="):
			table = t
		default:
			match = append(match, strings.ToLower(t))
		}
	}
	slices.Sort(match)
	return table + "," + strings.Join(match, ",") + " actions=" + normActions(strings.TrimSpace(actions))
}

// normGroup normalises a dump-groups line or a bundle's "group add" line.
func normGroup(line string) string {
	return normActions(strings.TrimPrefix(strings.TrimSpace(line), "group add "))
}

// matches reports whether flows (the bridge's with the plan's cookie) and
// groups (all of the bridge's) are exactly what spliceBundle installs.
func (p plan) matches(flows []Flow, groups map[uint32]string) bool {
	var want, have []string
	wantGroups := map[uint32]string{}
	for _, line := range strings.Split(strings.TrimSpace(p.spliceBundle()), "\n") {
		switch {
		case strings.HasPrefix(line, "flow add "):
			want = append(want, normFlow(line))
		case strings.HasPrefix(line, "group add "):
			wantGroups[groupIDOf(line)] = normGroup(line)
		}
	}
	for _, f := range flows {
		have = append(have, normFlow(f.Text))
	}
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(want, have) {
		return false
	}
	for id, g := range wantGroups {
		if normGroup(groups[id]) != g {
			return false
		}
	}
	return true
}

// groupIDOf returns the group_id in a group's text; 0 if none.
func groupIDOf(text string) uint32 {
	m := groupID.FindStringSubmatch(text)
	if m == nil {
		return 0
	}
	id, _ := strconv.ParseUint(m[1], 10, 32)
	return uint32(id)
}
