package tcsplice

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The VM tap's ifalias records what a restarted daemon cannot read back from
// the links themselves:
//
//	shaperd splice of PORT[ hq][ bp=22,3389][ out][ fo][ intent=TEXT]
//
// hq: the port already had an ingress qdisc before the splice (so Release
// must leave it). bp, out and fo (fail open): the splice's Options (the
// kernel half is configured from them). TEXT is the daemon's intent, opaque here. The net tap
// carries the port's bridge settings (attributes, VLANs, static FDB entries,
// MAC, MTU) and its master is the port's bridge, so nothing else is needed.
const (
	flagHadQdisc = " hq"
	intentKey    = " intent="
	maxAlias     = 255
)

func (s *spliced) vmAlias() string {
	a := aliasPrefix + s.port
	if s.hadQdisc {
		a += flagHadQdisc
	}
	if len(s.opt.BypassPorts) > 0 {
		ps := make([]string, len(s.opt.BypassPorts))
		for i, p := range s.opt.BypassPorts {
			ps[i] = strconv.Itoa(int(p))
		}
		a += " bp=" + strings.Join(ps, ",")
	}
	if s.opt.BypassOutbound {
		a += " out"
	}
	if s.opt.FailOpen {
		a += " fo"
	}
	if s.intent != "" {
		a += intentKey + s.intent
	}
	return a
}

// parseAlias returns the port, the hq flag and the intent recorded in a
// splice tap's alias; ok is false if alias is not one.
func parseAlias(alias string) (port string, hadQdisc bool, intent string, ok bool) {
	port, hadQdisc, _, intent, ok = parseAliasOpt(alias)
	return port, hadQdisc, intent, ok
}

// parseAliasOpt is parseAlias with the recorded splice Options.
func parseAliasOpt(alias string) (port string, hadQdisc bool, opt splice.Options, intent string, ok bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return "", false, opt, "", false
	}
	rest, intent, _ = strings.Cut(rest, intentKey)
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", false, opt, "", false
	}
	for _, x := range f[1:] {
		switch {
		case x == strings.TrimSpace(flagHadQdisc):
			hadQdisc = true
		case x == "out":
			opt.BypassOutbound = true
		case x == "fo":
			opt.FailOpen = true
		case strings.HasPrefix(x, "bp="):
			for _, p := range strings.Split(strings.TrimPrefix(x, "bp="), ",") {
				if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
					opt.BypassPorts = append(opt.BypassPorts, uint16(n))
				}
			}
		}
	}
	return f[0], hadQdisc, opt, intent, true
}

// SetIntent records intent on the VM tap's alias.
func (s *spliced) SetIntent(intent string) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if len(intent) > splice.MaxIntent || strings.ContainsAny(intent, "\n\x00") {
		return fmt.Errorf("tcsplice: intent of %d bytes does not fit (at most %d, one line)", len(intent), splice.MaxIntent)
	}
	old := s.intent
	s.intent = intent
	if len(s.vmAlias()) > maxAlias {
		s.intent = old
		return fmt.Errorf("tcsplice: intent too long for the alias of %s", s.vmTap)
	}
	l, err := s.ourTap(s.vmTap)
	if err != nil || l == nil {
		s.intent = old
		return fmt.Errorf("tcsplice: record intent on %s: tap missing (%v)", s.vmTap, err)
	}
	if err := netlink.LinkSetAlias(l, s.vmAlias()); err != nil {
		s.intent = old
		return fmt.Errorf("tcsplice: record intent on %s: %w", s.vmTap, err)
	}
	return nil
}

// Found lists the ports whose VM tap exists in this namespace, with their
// recorded intents, sorted by port.
func (b *Backend) Found() ([]splice.Found, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("tcsplice: list links: %w", err)
	}
	var out []splice.Found
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "tuntap" || !strings.HasPrefix(a.Name, splice.TapPrefix) {
			continue
		}
		port, _, intent, ok := parseAlias(a.Alias)
		if !ok {
			continue
		}
		if vm, _ := splice.TapNames(port); vm != a.Name {
			continue
		}
		out = append(out, splice.Found{Port: port, Intent: intent})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out, nil
}

// claimed returns errOtherSwitch if another backend's switch holds link
// (one of port's splice links, or the port), so that backend adopts or
// releases the splice.
func (b *Backend) claimed(port, link string) error {
	for _, c := range b.others {
		switch ok, err := c.Claims(link); {
		case err != nil:
			return fmt.Errorf("tcsplice: adopt %s: whether another switch holds %s is unknown: %w", port, link, err)
		case ok:
			return fmt.Errorf("tcsplice: adopt %s: %s is a port of another switch; %w", port, link, errOtherSwitch)
		}
	}
	return nil
}

// errOtherSwitch means the splice's net tap is a port of a switch another
// backend runs: that backend adopts or releases it.
var errOtherSwitch = errors.New("its backend adopts it")

// Adopt rebuilds port's splice from the links: the VM and net taps must
// exist (and carry this port's alias); the port itself may be gone, in which
// case Release removes what is left. If the net tap is on no bridge (the
// bridge was deleted, or the splice was cut short before it joined one) and
// no other backend claims it, or the net tap is missing, Adopt returns a
// splice.Remnant, which can only be released.
func (b *Backend) Adopt(port string) (splice.Splice, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	vmName, netName := splice.TapNames(port)
	prioName := splice.PriorityTapName(port)
	tap := func(name string) (netlink.Link, error) {
		l, err := linkOrNil(name)
		if err != nil || l == nil {
			return nil, err
		}
		if p, _, _, ok := parseAlias(l.Attrs().Alias); l.Type() != "tuntap" || !ok || p != port {
			return nil, fmt.Errorf("tcsplice: %s exists but is not %s's splice tap (alias %q)", name, port, l.Attrs().Alias)
		}
		return l, nil
	}
	vmL, err := tap(vmName)
	if err != nil {
		return nil, err
	}
	netL, err := tap(netName)
	if err != nil {
		return nil, err
	}
	if vmL != nil && netL == nil {
		// A splice cut short after its first tap (the daemon killed
		// in Splice): what is left can only be released.
		if err := b.claimed(port, port); err != nil {
			return nil, err
		}
		_, hadQdisc, _, _, _ := parseAliasOpt(vmL.Attrs().Alias)
		return &remnant{b: b, port: port, netTap: netName, hadQdisc: hadQdisc}, nil
	}
	if vmL == nil || netL == nil {
		return nil, fmt.Errorf("tcsplice: %s: %w (taps %s present: %v, %s present: %v)", port, splice.ErrNotSpliced, vmName, vmL != nil, netName, netL != nil)
	}
	prioL, err := tap(prioName)
	if err != nil {
		return nil, err
	}
	_, hadQdisc, opt, intent, _ := parseAliasOpt(vmL.Attrs().Alias)

	na := netL.Attrs()
	if na.MasterIndex == 0 {
		// The bridge was deleted while no daemon ran (a Linux bridge,
		// or an OVS bridge, whose Interface rows went with it): what is
		// left can only be released.
		if err := b.claimed(port, netName); err != nil {
			return nil, err
		}
		return &remnant{b: b, port: port, netTap: netName, hadQdisc: hadQdisc}, nil
	}
	master, err := netlink.LinkByIndex(na.MasterIndex)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: adopt %s: the master of %s: %w", port, netName, err)
	}
	if _, ok := master.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("tcsplice: adopt %s: %s's master %s is not a bridge", port, netName, master.Attrs().Name)
	}
	bp, ok, err := dumpBrPort(na.Index)
	if err != nil || !ok {
		return nil, fmt.Errorf("tcsplice: adopt %s: read bridge settings of %s: %v", port, netName, err)
	}
	fdb, err := staticFDB(na.Index, na.HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: adopt %s: read fdb of %s: %w", port, netName, err)
	}
	s := &spliced{
		b:        b,
		port:     port,
		portMAC:  na.HardwareAddr,
		bridge:   master.Attrs().Name,
		vmTap:    vmName,
		netTap:   netName,
		prioTap:  prioName,
		mtu:      na.MTU,
		attrs:    bp.attrs,
		vlans:    bp.vlans,
		fdb:      fdb,
		hadQdisc: hadQdisc,
		intent:   intent,
		opt:      opt,
		vmIndex:  vmL.Attrs().Index,
		vmMade:   true,
		netMade:  true,
		fdbMoved: len(fdb) > 0,
	}
	if prioL != nil {
		s.prioMade, s.prioIndex = true, prioL.Attrs().Index
	}
	if _, err := s.findFallback(); err != nil {
		return nil, fmt.Errorf("tcsplice: adopt %s: %w", port, err)
	}
	portL, err := linkOrNil(port)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: adopt %s: %w", port, err)
	}
	if portL == nil {
		// The VM went away while no daemon ran: Release removes the taps.
		return s, nil
	}
	s.portIndex = portL.Attrs().Index
	s.portDetached = portL.Attrs().MasterIndex == 0
	if err := s.repair(portL, na.Index); err != nil {
		if h, ok := s.Take(); ok {
			h.Close()
		}
		for name := range s.files { // a priority tap repair made stays, for the next Adopt
			s.dropFile(name)
		}
		return nil, fmt.Errorf("tcsplice: adopt %s: %w", port, err)
	}
	return s, nil
}

// repair finds the splice's filters on the port and recreates whatever is
// missing: the priority tap, the VM tap's redirect to the port, the port's
// ingress qdisc and steering filter, and the port's leaving the bridge. It
// takes over the kernel half a dead daemon left (the filter's program and
// its maps), and replaces the u32 filters of earlier versions with it. It
// runs in build's order, so the VM is never flooded twice, and records
// what it creates so Release removes it.
func (s *spliced) repair(portL netlink.Link, netIndex int) error {
	fs, err := ingressFilters(portL)
	if err != nil {
		return fmt.Errorf("read tc filters: %w", err)
	}
	var steerID uint32
	replace := false // the kernel half cannot be taken over: replace it
	if p, id, ok := steerOf(fs); ok {
		held, err := steer.Held(ebpf.ProgramID(id))
		switch {
		case steer.NotPermitted(err):
			s.b.log.Warn("cannot take the kernel half over without CAP_SYS_ADMIN; replacing it (its counters and buckets start again)", "port", s.port, "program", id)
			s.prio, replace = p, true
		case err != nil:
			return err
		case held:
			return fmt.Errorf("%s's steering filter (program %d) is held by another shaperd, which still runs this splice; stop it first", s.port, id)
		default:
			s.prio, s.filterAdded, steerID = p, true, id
		}
	}
	oldU32 := uint16(0) // an earlier version's redirect filter
	if !s.filterAdded && !replace {
		for _, f := range fs {
			if p := f.Attrs().Priority; isRedirect(f, p, s.vmIndex) {
				oldU32 = p
			}
		}
	}
	if !s.hadQdisc {
		if q, err := hasIngressQdisc(portL); err == nil && q {
			s.qdiscAdded = true
		}
	}
	var repaired []string
	if !s.prioMade {
		l, err := s.createTap(s.prioTap, nil, false, &s.prioMade)
		if err != nil {
			return fmt.Errorf("recreate %s: %w", s.prioTap, err)
		}
		s.prioIndex = l.Attrs().Index
		repaired = append(repaired, "priority tap")
	}
	vmL, err := netlink.LinkByIndex(s.vmIndex)
	if err != nil {
		return err
	}
	vfs, err := ingressFilters(vmL)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(vfs, func(f netlink.Filter) bool { return isRedirect(f, vmTapPrio, s.portIndex) }) {
		if ok, _ := hasIngressQdisc(vmL); !ok {
			if err := netlink.QdiscAdd(ingressQdisc(s.vmIndex)); err != nil {
				return fmt.Errorf("recreate ingress qdisc on %s: %w", s.vmTap, err)
			}
		}
		// The port may have been re-created with a new ifindex.
		for _, f := range vfs {
			if f.Attrs().Priority == vmTapPrio {
				netlink.FilterDel(redirectFilter(s.vmIndex, vmTapPrio, 0))
			}
		}
		if err := netlink.FilterAdd(redirectFilter(s.vmIndex, vmTapPrio, s.portIndex)); err != nil {
			return fmt.Errorf("recreate redirect on %s: %w", s.vmTap, err)
		}
		repaired = append(repaired, "vm tap redirect")
	}
	if s.opt.FailOpen && !s.fbMade {
		br, err := s.lookupBridge()
		if err != nil {
			return err
		}
		if err := s.createFallback(br); err != nil {
			return fmt.Errorf("recreate the fallback pair: %w", err)
		}
		repaired = append(repaired, "fallback pair")
	}
	switch {
	case replace:
		// Its maps stay with the old program, which goes: the new one is
		// attached in its place (the net tap's and the fallback peer's
		// filters are replaced as they are attached).
		if err := delSteer(portL, s.prio); err != nil {
			return err
		}
		if err := s.attachSteer(); err != nil {
			return err
		}
		repaired = append(repaired, "kernel half (replaced: no CAP_SYS_ADMIN to take it over)")
	case s.filterAdded:
		entries := map[steer.Hook]ebpf.ProgramID{steer.PortTC: ebpf.ProgramID(steerID)}
		netID, onNet, err := steer.NetTapProg(netIndex)
		if err != nil {
			return err
		}
		if onNet {
			entries[steer.NetTC] = ebpf.ProgramID(netID)
		}
		onFB := false
		if s.fbIndex != 0 {
			fbID, ok, err := s.fallbackSteerOf()
			if err != nil {
				return err
			}
			if onFB = ok; ok {
				entries[steer.FallbackTC] = ebpf.ProgramID(fbID)
			}
		}
		h, err := steer.Adopt(s.steerConfig(), entries)
		if err != nil {
			return err
		}
		s.Hold(h)
		if !onNet {
			if err := s.attachNetSteer(h); err != nil {
				return err
			}
			repaired = append(repaired, "net tap filter")
		}
		if s.fbIndex != 0 && !onFB {
			if err := s.attachFallback(h); err != nil {
				return err
			}
			repaired = append(repaired, "fallback filter")
		}
	case oldU32 != 0:
		// An earlier version's splice: its u32 redirect at prio and
		// steering filters at prio-1 give way to the kernel half.
		s.prio = oldU32
		for _, p := range []uint16{oldU32, oldU32 - 1} {
			for _, f := range fs {
				if u, ok := f.(*netlink.U32); ok && u.Priority == p && slices.ContainsFunc(u.Actions, isMirred) {
					if err := netlink.FilterDel(redirectFilter(s.portIndex, p, 0)); err != nil && !errors.Is(err, unix.ENOENT) {
						return fmt.Errorf("delete the earlier version's u32 filters at pref %d on %s: %w", p, s.port, err)
					}
					break
				}
			}
		}
		if err := s.attachSteer(); err != nil {
			return err
		}
		repaired = append(repaired, "steering filter (in place of an earlier version's u32 filters)")
	default:
		if !s.hadQdisc && !s.qdiscAdded {
			if err := netlink.QdiscAdd(ingressQdisc(s.portIndex)); err != nil {
				return fmt.Errorf("recreate ingress qdisc on %s: %w", s.port, err)
			}
			s.qdiscAdded = true
		}
		s.prio, _ = pickPriority(fs)
		if s.prio == 0 {
			return fmt.Errorf("no free tc priority on %s", s.port)
		}
		if err := s.attachSteer(); err != nil {
			return err
		}
		repaired = append(repaired, "steering filter")
	}
	if !s.portDetached {
		s.portDetached = true
		if err := netlink.LinkSetNoMaster(portL); err != nil {
			return fmt.Errorf("take %s out of its bridge: %w", s.port, err)
		}
		repaired = append(repaired, "port left the bridge")
	}
	if len(repaired) > 0 {
		s.b.log.Warn("adopted splice was incomplete; recreated the missing pieces", "port", s.port, "recreated", repaired)
	}
	return nil
}

func isMirred(a netlink.Action) bool { _, ok := a.(*netlink.MirredAction); return ok }

var (
	_ splice.Adopter        = (*Backend)(nil)
	_ splice.IntentRecorder = (*spliced)(nil)
)
