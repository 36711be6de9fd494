// Package ovssplice splices a VM's port on an Open vSwitch bridge through
// a pair of tap devices (and a priority tap); see splice.Backend. It drives
// OVS through github.com/digitalocean/go-openvswitch's client where that has
// the API, and otherwise through the same exec hook (see cli): either way
// the command-line tools (ovs-vsctl, ovs-ofctl, ovs-appctl), which find the
// daemons through OVS_RUNDIR. It drives the kernel through netlink and
// package steer (the BPF kernel half, built with cilium/ebpf).
//
// Once spliced:
//
//	VM ─ port ─(XDP: bpf_redirect)─▶ vmTap (prioTap: ARP/ND/bypass TCP) ─▶ forwarder
//	forwarder ─▶ netTap ─(OVS: in_port:=port, mark, resubmit)─▶ the bridge's own flows
//	bridge ─(OVS: dl_dst=VM MAC; a copy of multicast)─▶ netTap ─▶ forwarder
//	forwarder ─▶ vmTap ─(tc ingress: mirred)─▶ port ─▶ VM
//
// Only netTap joins the bridge (no-flood). Frames from the VM are taken by
// an XDP program before OVS reads them (see xdp.go for why). What the
// forwarder passes re-enters OVS's pipeline as if from the port: the
// bridge's flows keyed on the port (anti-spoofing) apply, and NORMAL keeps
// the VM's MAC learned on the port. Frames to the VM are steered into the
// forwarder by destination MAC, plus a copy of every multicast; the port is
// no-flood meanwhile, so they reach the VM once. One OpenFlow 1.4 bundle
// adds the flows and fast-failover groups (see plan.spliceBundle).
//
// Every flow carries the splice's cookie (CookieTag and a random
// generation), every group an id from the splice's slot; both, what the
// splice changed, its options and the daemon's intent are recorded in
// external_ids of netTap's Interface row. Release deletes by exact cookie; a
// failed Splice leaves the bridge as it was. A restarted daemon finds the
// splices from those rows and adopts them, repairing what a restart of
// ovs-vswitchd lost (see adopt.go).
//
// Fail open: the groups' first bucket watches netTap, which the forwarder
// holds. The taps are persistent: when the daemon dies they lose carrier,
// OVS marks netTap LINK_DOWN, and the XDP program, whose liveness slot
// the kernel empties when the daemon's file descriptors close (package
// steer), passes the VM's frames to OVS again (fail open) or drops them
// (fail closed). With Options.FailOpen the groups' second bucket then
// sends them, and frames to the VM, the direct way, with no daemon
// involved. Fail closed has no second bucket: the VM stays cut off.
//
// The backend works in the network namespace of the calling thread, which
// must be the one ovs-vswitchd runs in.
package ovssplice

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

// BackendName is what Name and Splice.Backend return.
const BackendName = "ovs"

// aliasPrefix starts the ifalias of the taps, followed by the port name; the
// tc backend uses the same, so neither splices the other's taps.
const aliasPrefix = "shaperd splice of "

// Keys in external_ids of the taps' Interface rows: what a restarted daemon
// needs to find, adopt or remove the splice from the plumbing alone.
const (
	idPort        = "shaperd-port"         // the VM's port
	idRole        = "shaperd-role"         // "net": the tap in the bridge
	idCookie      = "shaperd-cookie"       // the flows' cookie, 0x...
	idSlot        = "shaperd-slot"         // the mark bit (markReg)
	idGroups      = "shaperd-groups"       // the group ids, comma-separated
	idFail        = "shaperd-fail"         // open or closed
	idOFPort      = "shaperd-port-ofport"  // the port's OpenFlow number at splice time
	idMACs        = "shaperd-macs"         // the VM MACs steered to the forwarder
	idPortNoFlood = "shaperd-port-noflood" // "false": Splice set no-flood on the port, release clears it
	idVMTap       = "shaperd-vm-tap"       // the VM tap (and, with "p" for "v", the priority tap)
	idBypass      = "shaperd-bypass"       // Options.BypassPorts, comma-separated ("" for none)
	idBypassOut   = "shaperd-bypass-out"   // Options.BypassOutbound: true or false
	idNetOFPort   = "shaperd-net-ofport"   // the net tap's OpenFlow number (the groups watch it)
	idIntent      = "shaperd-intent"       // the daemon's intent (limits, options): see SetIntent
)

// Backend splices ports of Open vSwitch bridges. It implements
// splice.Backend. The zero value is not usable; call New. Its methods are
// safe for concurrent use: Splice and Release are serialised.
type Backend struct {
	log     *slog.Logger
	ovs     cli
	links   kernel
	running func() bool   // whether OVS can be asked at all (cheap)
	cookie  func() uint64 // a new generation cookie

	mu sync.Mutex // guards what follows; Release holds it throughout, Splice only to choose a slot (see Splice)
	// hook, if set (by tests), runs after each named step of Splice; an
	// error it returns fails the splice at that point.
	hook func(step string) error
	// watch is the backend's client of the ovs-vswitchd Watcher (nil:
	// restarts are not watched; see restart.go). live are the splices
	// made or adopted and not released. Guarded by mu.
	watch *WatchClient
	live  map[*spliced]bool
	// pending are the splices whose slot is chosen and that are not live
	// yet; splicing, the ports a Splice call is working on.
	pending  map[*spliced]bool
	splicing map[string]bool
}

var _ splice.Backend = (*Backend)(nil)

// New returns a Backend that runs the real OVS tools and logs to log (nil: discard).
func New(log *slog.Logger) *Backend {
	b := newBackend(log, Exec, netlinkLinks{}, ovsRunning)
	b.watch = DefaultWatcher(log).Register("splices", b.active, b.repairAll)
	return b
}

func newBackend(log *slog.Logger, run ExecFunc, l kernel, running func() bool) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{
		log:     log.With("backend", BackendName),
		ovs:     newCLI(run),
		links:   l,
		running: running,
		cookie:  randomCookie,
	}
}

// randomCookie returns CookieTag with a random, non-zero 48-bit generation.
func randomCookie() uint64 {
	for {
		var b [8]byte
		rand.Read(b[:])
		if g := binary.BigEndian.Uint64(b[:]) &^ CookieMask; g != 0 {
			return CookieTag | g
		}
	}
}

// Name returns "ovs".
func (b *Backend) Name() string { return BackendName }

// Handles reports whether port is an interface of an Open vSwitch bridge. It
// returns ErrNoPort for a missing link, and false with no error when OVS is
// not installed or not running, or does not know the port (a Linux bridge
// port: the tc backend's). It runs at most one ovs-vsctl.
func (b *Backend) Handles(port string) (bool, error) {
	l, ok, err := b.links.lookup(port)
	if err != nil {
		return false, fmt.Errorf("ovssplice: %w", err)
	}
	if !ok {
		return false, fmt.Errorf("ovssplice: port %s: %w", port, splice.ErrNoPort)
	}
	if !b.running() {
		return false, nil
	}
	if _, err := b.ovs.ifaceBridge(port); errors.Is(err, errNotInOVS) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("ovssplice: ask ovsdb about %s: %w", port, err)
	}
	if isTap(l) {
		return false, fmt.Errorf("ovssplice: %s is a splice tap (%q), not a VM port", port, l.alias)
	}
	return true, nil
}

func isTap(l linkInfo) bool { return l.kind == "tuntap" && strings.HasPrefix(l.alias, aliasPrefix) }

// Splice splices port; see splice.Backend and the package comment. It
// validates and records everything it needs before changing anything, and on
// any failure reverts what it did (see Release).
func (b *Backend) Splice(port string, opt splice.Options) (splice.Splice, error) {
	// Only the choice of the slot and cookie runs under b.mu: the reads
	// before it and the build after it run the OVS tools, about 0.5 s a
	// splice on a bridge of 100 ports, and splices of different ports
	// overlap (the daemon runs at most one change per port at a time).
	// A slot chosen and not yet in the bridge's flows is held in
	// b.pending until the splice is live or rolled back.
	if !b.claim(port) {
		return nil, fmt.Errorf("ovssplice: port %s is being spliced: %w", port, splice.ErrSpliced)
	}
	defer b.unclaim(port)
	s, flows, groups, err := b.prepare(port, opt)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	err = s.choose(flows, groups, b.slotsTakenLocked(s.bridge))
	if err == nil {
		b.pendingLocked(s, true)
	}
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	err = s.build()
	if err != nil {
		err = fmt.Errorf("ovssplice: splice %s: %w", port, err)
		rerr := s.teardown()
		b.mu.Lock()
		b.pendingLocked(s, false)
		b.mu.Unlock()
		if rerr != nil {
			b.log.Error("rollback failed", "port", port, "err", rerr)
			return nil, errors.Join(err, fmt.Errorf("ovssplice: rollback of %s incomplete: %w", port, rerr))
		}
		b.log.Warn("splice failed, rolled back", "port", port, "err", err)
		return nil, err
	}
	b.log.Info("spliced", "port", port, "bridge", s.bridge, "cookie", fmt.Sprintf("%#x", s.plan.cookie),
		"slot", s.plan.slot, "ofport", s.plan.port, "net_tap_ofport", s.plan.netTap,
		"vm_tap", s.vmTap, "net_tap", s.netTap, "prio_tap", s.prioTap, "macs", macList(s.plan.macs), "fail_open", opt.FailOpen)
	for _, w := range s.warnings {
		b.log.Warn("splice warning", "port", port, "warning", w)
	}
	b.mu.Lock()
	b.pendingLocked(s, false)
	b.trackLocked(s)
	b.mu.Unlock()
	return s, nil
}

// claim marks port as being spliced, reporting false if it already is.
func (b *Backend) claim(port string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.splicing[port] {
		return false
	}
	if b.splicing == nil {
		b.splicing = map[string]bool{}
	}
	b.splicing[port] = true
	return true
}

func (b *Backend) unclaim(port string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.splicing, port)
}

// pendingLocked adds s to, or removes it from, the splices whose slot is
// chosen and not yet live. The caller holds b.mu.
func (b *Backend) pendingLocked(s *spliced, on bool) {
	if !on {
		delete(b.pending, s)
		return
	}
	if b.pending == nil {
		b.pending = map[*spliced]bool{}
	}
	b.pending[s] = true
}

// slotsTakenLocked are the slots on bridge of the splices this backend
// made or adopted and has not released, and of those being made: a slot
// whose flows a dump taken before they went in would not show. The caller
// holds b.mu.
func (b *Backend) slotsTakenLocked(bridge string) map[uint]bool {
	taken := map[uint]bool{}
	for _, set := range []map[*spliced]bool{b.live, b.pending} {
		for s := range set {
			if s.bridge == bridge {
				taken[s.plan.slot] = true
			}
		}
	}
	return taken
}

// prepare validates port and records what the splice needs, with the
// bridge's flows and groups for choose; no side effects.
func (b *Backend) prepare(port string, opt splice.Options) (*spliced, []Flow, map[uint32]string, error) {
	l, ok, err := b.links.lookup(port)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: %w", err)
	}
	if !ok {
		return nil, nil, nil, fmt.Errorf("ovssplice: port %s: %w", port, splice.ErrNoPort)
	}
	if isTap(l) {
		return nil, nil, nil, fmt.Errorf("ovssplice: %s is a splice tap (%q), not a VM port", port, l.alias)
	}
	vm, nt := splice.TapNames(port)
	s := &spliced{
		b:         b,
		port:      port,
		portIndex: l.index,
		vmTap:     vm,
		netTap:    nt,
		prioTap:   splice.PriorityTapName(port),
		mtu:       l.mtu,
		alias:     aliasPrefix + port,
		opt:       splice.Options{BypassPorts: slices.Clone(opt.BypassPorts), BypassOutbound: opt.BypassOutbound, FailOpen: opt.FailOpen},
		made:      map[string]bool{},
	}
	s.plan.failOpen = opt.FailOpen
	if err := s.checkNoTaps(); err != nil {
		return nil, nil, nil, err
	}
	br, err := b.ovs.ifaceBridge(port)
	if errors.Is(err, errNotInOVS) {
		return nil, nil, nil, fmt.Errorf("ovssplice: port %s is %w: %w", port, err, splice.ErrNotBridged)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: look up the bridge of %s: %w", port, err)
	}
	s.bridge = br
	if s.plan.port, err = b.ovs.ofport(br, port); err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: %w", err)
	}
	if err := s.checkPortRow(); err != nil {
		return nil, nil, nil, err
	}
	flags, err := b.ovs.portConfig(br, port)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: read the OpenFlow config of %s: %w", port, err)
	}
	s.hadNoFlood = slices.Contains(flags, "NO_FLOOD")
	// An isolated port is no-flood for its isolation: its own flag is
	// the one the isolation recorded (see policy.go).
	if was, isolated, err := b.ovs.isolatedFlag(port); err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: %w", err)
	} else if isolated {
		s.hadNoFlood = was
	}

	flows, err := b.ovs.flows(br, 0)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: read the flows of %s: %w", br, err)
	}
	groups, err := b.ovs.groups(br)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ovssplice: read the groups of %s: %w", br, err)
	}
	if s.plan.macs, err = s.vmMACs(); err != nil {
		return nil, nil, nil, err
	}
	return s, flows, groups, nil
}

// checkNoTaps returns ErrSpliced if a link or an OVS port or interface
// with one of the splice's tap names exists.
func (s *spliced) checkNoTaps() error {
	for _, name := range s.taps() {
		l, ok, err := s.b.links.lookup(name)
		if err != nil {
			return fmt.Errorf("ovssplice: %w", err)
		}
		if ok {
			return fmt.Errorf("ovssplice: port %s: %s exists (%s, alias %q): %w", s.port, name, l.kind, l.alias, splice.ErrSpliced)
		}
	}
	found, err := s.b.ovs.named(s.taps())
	if err != nil {
		return fmt.Errorf("ovssplice: look for the splice's taps in OVS: %w", err)
	}
	if len(found) > 0 {
		br, _ := s.b.ovs.ifaceBridge(found[0])
		return fmt.Errorf("ovssplice: port %s: bridge %q has an interface %s: %w", s.port, br, found[0], splice.ErrSpliced)
	}
	return nil
}

// checkPortRow refuses ports the flows would get wrong: an interface of a
// bond (its Port row has another name), and ports with VLAN settings (the
// flows steer by MAC and copy multicast without regard to VLANs).
func (s *spliced) checkPortRow() error {
	out, err := s.b.ovs.vsctl("--if-exists", "get", "Port", s.port, "tag", "trunks", "vlan_mode", "interfaces")
	if err != nil {
		return fmt.Errorf("ovssplice: read the Port row of %s: %w", s.port, err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(f) != 4 {
		return fmt.Errorf("ovssplice: %s is an interface of a bond or of a port with another name; the OVS backend splices single-interface ports only", s.port)
	}
	for i, col := range []string{"tag", "trunks", "vlan_mode"} {
		if v := strings.TrimSpace(f[i]); v != "[]" {
			return fmt.Errorf("ovssplice: port %s has %s %s; the OVS backend does not splice ports with VLAN settings yet", s.port, col, v)
		}
	}
	if n := len(strings.Fields(strings.Trim(f[3], "[]"))); n != 1 {
		return fmt.Errorf("ovssplice: port %s has %d interfaces (a bond); the OVS backend splices single-interface ports only", s.port, n)
	}
	return nil
}

// choose picks the splice's slot (its mark bit and group ids) and cookie,
// and collects warnings about the bridge's flows. A slot in taken, or
// used by the flows or groups, is not free.
func (s *spliced) choose(flows []Flow, groups map[uint32]string, taken map[uint]bool) error {
	high := 0
	for _, f := range flows {
		if isOurs(f.Cookie) {
			continue
		}
		if usesMarkReg(f) {
			return fmt.Errorf("ovssplice: bridge %s has a flow that uses reg12-reg15, which the OVS backend needs for its marks: %q", s.bridge, f.Text)
		}
		if f.Table == 0 && f.Priority >= prioMulticast && f.Cookie&CookieMask != PolicyCookieTag {
			high++
		}
	}
	if high > 0 {
		s.warnings = append(s.warnings, fmt.Sprintf("bridge %s has %d flow(s) in table 0 at priority %d or above; they may take frames before the splice's flows do", s.bridge, high, prioMulticast))
	}
	used := slotsInUse(flows)
	s.plan.slot = maxSlots
	for slot := uint(0); slot < maxSlots; slot++ {
		p := plan{slot: slot}
		if used[slot] || taken[slot] || slices.ContainsFunc(p.groups(), func(g uint32) bool { _, ok := groups[g]; return ok }) {
			continue
		}
		s.plan.slot = slot
		break
	}
	if s.plan.slot == maxSlots {
		return fmt.Errorf("ovssplice: bridge %s already has %d splices (or their groups); release one first", s.bridge, maxSlots)
	}
	for {
		c := s.b.cookie()
		if !slices.ContainsFunc(flows, func(f Flow) bool { return f.Cookie == c }) {
			s.plan.cookie = c
			return nil
		}
	}
}

// vmMACs returns the VM's MAC addresses: the interface's
// external_ids:attached-mac (set by libvirt and OpenStack) and the MACs the
// bridge has learned on the port.
func (s *spliced) vmMACs() ([]net.HardwareAddr, error) {
	var macs []net.HardwareAddr
	v, err := s.b.ovs.externalID(s.port, "attached-mac")
	if err != nil {
		return nil, fmt.Errorf("ovssplice: read external_ids of %s: %w", s.port, err)
	}
	if mac, err := net.ParseMAC(v); err == nil && isUnicast(mac) {
		macs = addMAC(macs, mac)
	}
	if out, err := s.b.ovs.appctl("fdb/show", s.bridge); err != nil {
		s.b.log.Debug("cannot read the bridge's MAC table", "bridge", s.bridge, "err", err)
	} else {
		for _, mac := range learnedMACs(out, s.plan.port) {
			macs = addMAC(macs, mac)
		}
	}
	if len(macs) == 0 {
		return nil, fmt.Errorf("ovssplice: cannot tell the MAC address of the VM on %s: the interface has no external_ids:attached-mac and bridge %s has learned none on it; set attached-mac, or retry once the VM has sent a frame", s.port, s.bridge)
	}
	return macs, nil
}

func macList(macs []net.HardwareAddr) string {
	var ss []string
	for _, m := range macs {
		ss = append(ss, m.String())
	}
	return strings.Join(ss, ",")
}

// spliced is one spliced port. Its fields are guarded by b.mu.
type spliced struct {
	b *Backend

	// Recorded before any change.
	port                   string
	portIndex              int // to tell a re-created port of the same name from ours
	bridge                 string
	vmTap, netTap, prioTap string
	mtu                    int
	alias                  string
	opt                    splice.Options
	plan                   plan // the net tap's ofport is filled in by build
	hadNoFlood             bool // the port was no-flood before the splice
	warnings               []string
	intent                 string // as SetIntent recorded it
	portWas, netWas        int    // the port's and the net tap's OpenFlow numbers as recorded (0: unknown)

	// Progress: set as objects are created, cleared as they are removed.
	made         map[string]bool // taps created by this splice
	vmIndex      int             // ifindex of vmTap
	prioIndex    int             // ifindex of prioTap
	netIndex     int             // ifindex of netTap
	portAdded    bool            // netTap (may) have joined the bridge
	floodChanged bool            // the port (may) have been set no-flood
	bundleSent   bool            // the flows and groups (may) exist
	// The kernel half, while this splice holds it; SetBackstop, Beat and
	// KernelStats (splice.Kernel) are the slot's.
	steer.Slot[kernelHalf]
	xdpID    uint32 // the id of its XDP program on the port, while attached
	released bool
}

var _ splice.Splice = (*spliced)(nil)

func (s *spliced) Port() string        { return s.port }
func (s *spliced) Backend() string     { return BackendName }
func (s *spliced) VMTap() string       { return s.vmTap }
func (s *spliced) NetTap() string      { return s.netTap }
func (s *spliced) PriorityTap() string { return s.prioTap }

// FailOpen reports whether OVS falls back to the direct path when the
// forwarder's taps lose carrier.
func (s *spliced) FailOpen() bool { return s.plan.failOpen }

// Warnings returns a copy of the warnings collected by Splice.
func (s *spliced) Warnings() []string { return slices.Clone(s.warnings) }

var _ splice.IntentRecorder = (*spliced)(nil)

// SetIntent keeps intent (at most splice.MaxIntent bytes of printable
// ASCII) in external_ids of netTap's Interface row, for a daemon that lost
// its state file; Found returns it.
func (s *spliced) SetIntent(intent string) error {
	if len(intent) > splice.MaxIntent {
		return fmt.Errorf("ovssplice: intent of %d bytes, at most %d", len(intent), splice.MaxIntent)
	}
	for i := 0; i < len(intent); i++ {
		if c := intent[i]; c < ' ' || c > '~' {
			return fmt.Errorf("ovssplice: intent %q: only printable ASCII is kept", intent)
		}
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.released {
		return fmt.Errorf("ovssplice: %s is released", s.port)
	}
	if _, err := s.b.ovs.vsctl(setArgs(s.netTap, [][2]string{{idIntent, intent}})...); err != nil {
		return fmt.Errorf("ovssplice: record the intent on %s: %w", s.netTap, err)
	}
	s.intent = intent
	return nil
}

// Cookie is the cookie of every flow of the splice.
func (s *spliced) Cookie() uint64 { return s.plan.cookie }

func (s *spliced) taps() []string { return []string{s.vmTap, s.netTap, s.prioTap} }

// Step names, in order; the test hook sees them.
const (
	stepTaps       = "create taps"
	stepVMRedirect = "redirect vm tap to port"
	stepAddPort    = "net tap joins the bridge"
	stepNoFlood    = "net tap and port no-flood"
	stepBundle     = "install groups and flows"
	stepXDP        = "redirect port to the taps (XDP)"
	stepVerify     = "verify flows and groups"
)

// externalIDs are what records the splice on netTap's Interface row: all
// that Adopt needs to rebuild it (see fromRecord), but the net tap's own port
// number, known only once it joined the bridge, and the intent.
func (s *spliced) externalIDs() [][2]string {
	var gs []string
	for _, g := range s.plan.groups() {
		gs = append(gs, strconv.FormatUint(uint64(g), 10))
	}
	fail := "closed"
	if s.plan.failOpen {
		fail = "open"
	}
	var bp []string
	for _, p := range s.opt.BypassPorts {
		bp = append(bp, strconv.Itoa(int(p)))
	}
	return [][2]string{
		{idPort, s.port},
		{idRole, "net"},
		{idCookie, fmt.Sprintf("%#x", s.plan.cookie)},
		{idSlot, strconv.FormatUint(uint64(s.plan.slot), 10)},
		{idGroups, strings.Join(gs, ",")},
		{idFail, fail},
		{idOFPort, strconv.Itoa(s.plan.port)},
		{idMACs, macList(s.plan.macs)},
		{idPortNoFlood, strconv.FormatBool(s.hadNoFlood)},
		{idVMTap, s.vmTap},
		{idBypass, strings.Join(bp, ",")},
		{idBypassOut, strconv.FormatBool(s.opt.BypassOutbound)},
	}
}

// build creates the splice. Everything before the bundle is invisible to
// traffic: the taps have no carrier until a forwarder attaches, and netTap
// is no-flood before any frame could be flooded to it. The port goes
// no-flood just before the bundle, so that for the moment in between the VM
// misses broadcasts rather than getting them twice. The bundle switches
// OVS's side at once (until a forwarder holds netTap, the groups take their
// fallback: the direct path with fail open, nowhere with fail closed); the
// XDP program, last, hands the VM's frames to the taps, where they wait for
// the forwarder.
func (s *spliced) build() error {
	steps := []struct {
		name string
		do   func() error
	}{
		{stepTaps, func() error {
			for _, t := range []struct {
				name  string
				index *int
			}{{s.vmTap, &s.vmIndex}, {s.netTap, &s.netIndex}, {s.prioTap, &s.prioIndex}} {
				s.made[t.name] = true // teardown checks whether it exists
				if err := s.b.links.createTap(t.name, s.mtu, s.alias); err != nil {
					return err
				}
				l, ok, err := s.b.links.lookup(t.name)
				if err != nil || !ok {
					return fmt.Errorf("look up new tap %s: %v", t.name, err)
				}
				if t.index != nil {
					*t.index = l.index
				}
			}
			return nil
		}},
		{stepVMRedirect, func() error {
			// On the splice's own tap: it goes with the tap.
			if err := s.b.links.redirectTap(s.vmIndex, s.portIndex); err != nil {
				return fmt.Errorf("%s: %w", s.vmTap, err)
			}
			return nil
		}},
		{stepAddPort, func() error {
			// One transaction adds the port and records the splice on it
			// (the library's AddPort cannot set columns, and a port added
			// unrecorded would be invisible to Found and Adopt).
			s.portAdded = true
			args := append([]string{"--", "add-port", s.bridge, s.netTap, "--"}, setArgs(s.netTap, s.externalIDs())...)
			if _, err := s.b.ovs.vsctl(args...); err != nil {
				return err
			}
			var err error
			if s.plan.netTap, err = s.b.ovs.ofport(s.bridge, s.netTap); err != nil {
				return err
			}
			_, err = s.b.ovs.vsctl(setArgs(s.netTap, [][2]string{{idNetOFPort, strconv.Itoa(s.plan.netTap)}})...)
			s.portWas, s.netWas = s.plan.port, s.plan.netTap
			return err
		}},
		{stepNoFlood, func() error {
			if err := s.b.ovs.setFlood(s.bridge, s.netTap, false); err != nil {
				return err
			}
			if s.hadNoFlood {
				return nil
			}
			s.floodChanged = true
			return s.b.ovs.setFlood(s.bridge, s.port, false)
		}},
		{stepBundle, func() error {
			s.bundleSent = true
			return s.b.ovs.bundle(s.bridge, s.plan.spliceBundle())
		}},
		{stepXDP, s.attachSteer},
		{stepVerify, s.verify},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		s.b.log.Debug("splice step done", "port", s.port, "step", st.name)
		if s.b.hook != nil {
			if err := s.b.hook(st.name); err != nil {
				return fmt.Errorf("%s: %w", st.name, err)
			}
		}
	}
	return nil
}

// verify checks that the bridge holds the splice's flows and groups.
func (s *spliced) verify() error {
	fs, err := s.b.ovs.flows(s.bridge, s.plan.cookie)
	if err != nil {
		return err
	}
	if n, want := len(fs), s.plan.numFlows(); n != want {
		return fmt.Errorf("bridge %s has %d flows with cookie %#x, want %d", s.bridge, n, s.plan.cookie, want)
	}
	gs, err := s.b.ovs.groups(s.bridge)
	if err != nil {
		return err
	}
	for _, g := range s.plan.groups() {
		if _, ok := gs[g]; !ok {
			return fmt.Errorf("bridge %s lacks group %d", s.bridge, g)
		}
	}
	return nil
}

// Release reverts the splice; see splice.Splice. The order:
//
//  1. The XDP program is detached and the kernel half closed: OVS sees the
//     VM's frames again, and its flows still decide (the fallback, or
//     nothing, as the forwarder has stopped).
//  2. One bundle deletes the splice's flows (by exact cookie) and groups:
//     the port's traffic takes the bridge's own path again at once.
//  3. The port's flooding is restored (if Splice turned it off): until then
//     the VM misses broadcasts, never gets them twice.
//  4. netTap leaves the bridge (only if its row carries the splice's cookie).
//  5. The taps are deleted, with the filter on vmTap.
//
// If step 2 fails, Release stops there and returns the error (the VM is on
// the fallback, or cut off, rather than half reverted), and may be called
// again. A port that vanished skips step 3. Safe to call twice.
func (s *spliced) Release() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.released {
		return nil
	}
	if err := s.teardown(); err != nil {
		return fmt.Errorf("ovssplice: release %s: %w", s.port, err)
	}
	s.released = true
	s.b.untrackLocked(s)
	s.b.log.Info("released", "port", s.port, "bridge", s.bridge, "cookie", fmt.Sprintf("%#x", s.plan.cookie))
	return nil
}

// teardown removes whatever build created, as recorded in the progress
// fields. Each step checks the actual state, so it is safe to repeat after
// a partial failure. See Release.
func (s *spliced) teardown() error {
	log := s.b.log.With("port", s.port)

	if err := s.dropXDP(); err != nil {
		return err
	}
	l, ok, err := s.b.links.lookup(s.port)
	if err != nil {
		return err
	}
	portHere := ok && l.index == s.portIndex
	if !portHere && s.floodChanged {
		log.Info("port vanished while spliced; removing the rest")
	}

	if s.bundleSent {
		gs, err := s.b.ovs.groups(s.bridge)
		if err != nil {
			return fmt.Errorf("read the groups of %s (the splice's flows stay; retry): %w", s.bridge, err)
		}
		text, err := releaseBundle(s.plan.cookie, s.ownGroups(gs))
		if err != nil {
			return err
		}
		if err := s.b.ovs.bundle(s.bridge, text); err != nil {
			return fmt.Errorf("delete the splice's flows and groups (they stay; retry): %w", err)
		}
		s.bundleSent = false
	}

	var errs []error
	if s.floodChanged {
		n, err := 0, error(nil)
		if portHere {
			n, err = s.b.ovs.ofport(s.bridge, s.port)
		}
		switch {
		case !portHere || err != nil || n != s.plan.port:
			log.Info("port left the bridge while spliced; no flooding to restore", "ofport", n, "was", s.plan.port)
			s.floodChanged = false
		default:
			// An isolation keeps the port no-flood: it restores the
			// flag when it goes (see policy.go).
			if _, isolated, err := s.b.ovs.isolatedFlag(s.port); err != nil {
				errs = append(errs, err)
				break
			} else if isolated {
				log.Info("port isolated: left no-flood for its isolation")
				s.floodChanged = false
				break
			}
			if err := s.b.ovs.setFlood(s.bridge, s.port, true); err != nil {
				errs = append(errs, fmt.Errorf("restore flooding on %s: %w", s.port, err))
			} else {
				s.floodChanged = false
			}
		}
	}

	if s.portAdded {
		switch c, err := s.b.ovs.externalID(s.netTap, idCookie); {
		case err != nil:
			errs = append(errs, fmt.Errorf("read external_ids of %s: %w", s.netTap, err))
		case c == fmt.Sprintf("%#x", s.plan.cookie):
			if err := s.b.ovs.delPort(s.bridge, s.netTap); err != nil {
				errs = append(errs, fmt.Errorf("remove %s from %s: %w", s.netTap, s.bridge, err))
			} else {
				s.portAdded = false
			}
		case c == "":
			s.portAdded = false // never joined, or gone
		default:
			errs = append(errs, fmt.Errorf("%s on %s belongs to another splice (cookie %s); leaving it", s.netTap, s.bridge, c))
		}
	}

	for _, name := range s.taps() {
		if !s.made[name] {
			continue
		}
		l, ok, err := s.b.links.lookup(name)
		switch {
		case err != nil:
			errs = append(errs, err)
			continue
		case ok && (l.kind != "tuntap" || l.alias != s.alias):
			errs = append(errs, fmt.Errorf("%s is now a %s with alias %q, not the splice's tap; leaving it", name, l.kind, l.alias))
			continue
		case ok:
			if err := s.b.links.deleteTap(name); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		delete(s.made, name)
	}
	return errors.Join(errs...)
}

// ownGroups returns the splice's group ids among the bridge's groups: those
// whose first bucket watches the splice's net tap (by its port number now,
// or as recorded). A group of anyone else's that happens to use the id is
// never deleted.
func (s *spliced) ownGroups(have map[uint32]string) []uint32 {
	var out []uint32
	for _, g := range s.plan.groups() {
		line, ok := have[g]
		if !ok {
			continue
		}
		for _, n := range []int{s.plan.netTap, s.netWas} {
			if n > 0 && strings.Contains(line, fmt.Sprintf(",type=ff,bucket=watch_port:%d,", n)) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
