package tcsplice

import (
	"fmt"
	"sort"
	"strings"

	"github.com/shaperd/shaperd/splice"
	"github.com/vishvananda/netlink"
)

// The VM tap's ifalias records what a restarted daemon cannot read back from
// the links themselves:
//
//	shaperd splice of PORT[ hq][ intent=TEXT]
//
// hq: the port already had an ingress qdisc before the splice (so Release
// must leave it). TEXT is the daemon's intent, opaque here. The net tap
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
	if s.intent != "" {
		a += intentKey + s.intent
	}
	return a
}

// parseAlias returns the port, the hq flag and the intent recorded in a
// splice tap's alias; ok is false if alias is not one.
func parseAlias(alias string) (port string, hadQdisc bool, intent string, ok bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return "", false, "", false
	}
	rest, intent, _ = strings.Cut(rest, intentKey)
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", false, "", false
	}
	for _, x := range f[1:] {
		if x == strings.TrimSpace(flagHadQdisc) {
			hadQdisc = true
		}
	}
	return f[0], hadQdisc, intent, true
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

// Adopt rebuilds port's splice from the links: the VM and net taps must
// exist (and carry this port's alias); the port itself may be gone, in which
// case Release removes what is left.
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
	if vmL == nil || netL == nil {
		return nil, fmt.Errorf("tcsplice: %s: %w (taps %s present: %v, %s present: %v)", port, splice.ErrNotSpliced, vmName, vmL != nil, netName, netL != nil)
	}
	prioL, err := tap(prioName)
	if err != nil {
		return nil, err
	}
	_, hadQdisc, intent, _ := parseAlias(vmL.Attrs().Alias)

	na := netL.Attrs()
	master, err := netlink.LinkByIndex(na.MasterIndex)
	if err != nil || na.MasterIndex == 0 {
		return nil, fmt.Errorf("tcsplice: adopt %s: %s is on no bridge, so the port's bridge is unknown", port, netName)
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
		vmIndex:  vmL.Attrs().Index,
		vmMade:   true,
		netMade:  true,
		fdbMoved: len(fdb) > 0,
	}
	if prioL != nil {
		s.prioMade, s.prioIndex = true, prioL.Attrs().Index
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
	fs, err := ingressFilters(portL)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: adopt %s: read tc filters: %w", port, err)
	}
	for _, f := range fs {
		p := f.Attrs().Priority
		if isRedirect(f, p, s.vmIndex) && s.vmIndex != 0 {
			s.prio, s.filterAdded = p, true
		}
	}
	if s.filterAdded && s.prioIndex != 0 {
		for _, f := range fs {
			if isRedirect(f, s.prio-1, s.prioIndex) {
				s.steerAdded = true
			}
		}
	}
	if !hadQdisc {
		if q, err := hasIngressQdisc(portL); err == nil && q {
			s.qdiscAdded = true
		}
	}
	if !s.filterAdded {
		return s, fmt.Errorf("tcsplice: adopt %s: no redirect to %s on the port: %w", port, vmName, splice.ErrNotSpliced)
	}
	return s, nil
}

var (
	_ splice.Adopter        = (*Backend)(nil)
	_ splice.IntentRecorder = (*spliced)(nil)
)
