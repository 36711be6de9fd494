// Package tcsplice splices a VM's port out of a Linux bridge and through a
// pair of tap devices (and a priority tap); see splice.Backend.
//
// Once spliced:
//
//	VM ─ port ──(port ingress: bpf direct-action, the kernel half)──▶ vmTap (prioTap: ARP/ND/bypass TCP) ─▶ forwarder
//	VM ◀─ port ◀─(vmTap ingress: u32 match-all, mirred egress redirect)── vmTap ◀─ forwarder
//	forwarder ─▶ netTap ─▶ bridge          bridge ─▶ netTap ─▶ forwarder
//
// The kernel half is package steer's program, the one the OVS backend
// attaches as XDP, here as a tc filter: it steers, runs the backstop and
// counts. The filter stays when the daemon dies, with the maps its program
// uses; a restarted daemon takes them over (see Adopt).
//
// The port leaves the bridge, and netTap takes its place with the port's
// MAC address, VLAN entries, bridge port attributes and static FDB entries.
// Until a forwarder takes the taps they have no carrier, so the VM is cut
// off: frames redirected into vmTap are dropped, and the bridge treats
// netTap as a disabled port. The splice holds the files that created its
// taps, each still attached, for the forwarder to take (splice.TapHolder):
// closing them and attaching anew would cost the tap two RCU grace
// periods, which a flood can stretch to hundreds of milliseconds (see
// package tapdev).
//
// The backend works in the network namespace of the calling thread (a caller
// that switches namespaces must lock its goroutine to the thread).
package tcsplice

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
	"github.com/shaperd/shaperd/splice/tapdev"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BackendName is what Name and Splice.Backend return.
const BackendName = "tc"

const (
	// tapTxQLen is the splice taps' transmit queue length in frames: a flood
	// from the VM should overflow the tap queue as late as possible.
	tapTxQLen = 10000
	// aliasPrefix starts the ifalias of both taps, followed by the port name.
	aliasPrefix = "shaperd splice of "
	// vmTapPrio is the tc priority of the redirect filter on vmTap, which
	// the backend creates and owns entirely.
	vmTapPrio = 1
)

// Backend splices ports of Linux bridges. It implements splice.Backend.
// The zero value is not usable; call New. Its methods are safe for
// concurrent use: Splice and Release are serialised.
type Backend struct {
	log *slog.Logger

	mu sync.Mutex // serialises Splice and Release, which check, then change, links
	// hook, if set (by tests), runs after each named step of Splice; an
	// error it returns fails the splice at that point.
	hook func(step string) error
	// others are the backends whose switch may hold a net tap that is on
	// no Linux bridge (see DeferTo); set before use.
	others []splice.Claimer
}

// DeferTo makes Adopt leave a splice whose net tap is on no Linux bridge
// to the backend that claims the tap (an Open vSwitch bridge's port), rather
// than take it for what is left of a splice whose bridge is gone.
func (b *Backend) DeferTo(c ...splice.Claimer) { b.others = append(b.others, c...) }

var _ splice.Deferrer = (*Backend)(nil)

var _ splice.Backend = (*Backend)(nil)

// New returns a Backend that logs to log (nil: discard).
func New(log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{log: log.With("backend", BackendName)}
}

// Name returns "tc".
func (b *Backend) Name() string { return BackendName }

// errOtherMaster means the port is enslaved to something that is not a Linux
// bridge (a bond, a VRF, an OVS datapath): another backend's business.
var errOtherMaster = errors.New("master is not a Linux bridge")

// Handles reports whether port exists and is a member of a Linux bridge.
// It returns ErrNoPort for a missing port, ErrNotBridged for a port with no
// master, ErrSpliced if the port's taps exist, and false with no error for a
// port enslaved to something else (a bond, an OVS datapath).
func (b *Backend) Handles(port string) (bool, error) {
	if _, _, err := validate(port); err != nil {
		if errors.Is(err, errOtherMaster) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// validate checks, without side effects, that port can be spliced now, and
// returns it and its bridge.
func validate(port string) (netlink.Link, *netlink.Bridge, error) {
	link, err := lookupPort(port)
	if err != nil {
		return nil, nil, err
	}
	if alias := link.Attrs().Alias; link.Type() == "tuntap" && strings.HasPrefix(alias, aliasPrefix) {
		return nil, nil, fmt.Errorf("tcsplice: %s is a splice tap (%q), not a VM port", port, alias)
	}
	if err := checkNoTaps(port); err != nil {
		return nil, nil, err
	}
	br, err := bridgeOf(link)
	if err != nil {
		return nil, nil, err
	}
	return link, br, nil
}

func lookupPort(port string) (netlink.Link, error) {
	link, err := netlink.LinkByName(port)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, fmt.Errorf("tcsplice: port %s: %w", port, splice.ErrNoPort)
	}
	if err != nil {
		return nil, fmt.Errorf("tcsplice: look up port %s: %w", port, err)
	}
	return link, nil
}

// linkOrNil looks a link up by name; a missing link is (nil, nil).
func linkOrNil(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	return link, err
}

// checkNoTaps returns ErrSpliced if either of port's taps exists.
func checkNoTaps(port string) error {
	vm, nt := splice.TapNames(port)
	fb, fp := splice.FallbackNames(port)
	for _, name := range []string{vm, nt, splice.PriorityTapName(port), fb, fp} {
		l, err := linkOrNil(name)
		if err != nil {
			return fmt.Errorf("tcsplice: look up %s: %w", name, err)
		}
		if l != nil {
			return fmt.Errorf("tcsplice: port %s: %s exists (%s, alias %q): %w", port, name, l.Type(), l.Attrs().Alias, splice.ErrSpliced)
		}
	}
	return nil
}

// bridgeOf returns the Linux bridge link is a member of.
func bridgeOf(link netlink.Link) (*netlink.Bridge, error) {
	name := link.Attrs().Name
	if link.Attrs().MasterIndex == 0 {
		return nil, fmt.Errorf("tcsplice: port %s: %w", name, splice.ErrNotBridged)
	}
	master, err := netlink.LinkByIndex(link.Attrs().MasterIndex)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: port %s: look up master %d: %w", name, link.Attrs().MasterIndex, err)
	}
	br, ok := master.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("tcsplice: port %s: %s is a %s: %w", name, master.Attrs().Name, master.Type(), errOtherMaster)
	}
	return br, nil
}

// Splice splices port out of its bridge; see splice.Backend. It validates
// and records everything it will need to restore before changing anything,
// and on any failure reverts what it did (see Release for the order).
func (b *Backend) Splice(port string, opt splice.Options) (splice.Splice, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	s, err := b.prepare(port, opt)
	if err != nil {
		return nil, err
	}
	if err := s.build(); err != nil {
		err = fmt.Errorf("tcsplice: splice %s: %w", port, err)
		if rerr := s.teardown(); rerr != nil {
			b.log.Error("rollback failed", "port", port, "err", rerr)
			return nil, errors.Join(err, fmt.Errorf("tcsplice: rollback of %s incomplete: %w", port, rerr))
		}
		b.log.Warn("splice failed, rolled back", "port", port, "err", err)
		return nil, err
	}
	b.log.Info("spliced", "port", port, "bridge", s.bridge, "vm_tap", s.vmTap, "net_tap", s.netTap,
		"tc_pref", s.prio, "vlans", len(s.vlans), "static_fdb", len(s.fdb), "warnings", len(s.warnings))
	for _, w := range s.warnings {
		b.log.Warn("splice warning", "port", port, "warning", w)
	}
	return s, nil
}

// prepare validates port and records its bridge settings; no side effects.
func (b *Backend) prepare(port string, opt splice.Options) (*spliced, error) {
	link, br, err := validate(port)
	if errors.Is(err, errOtherMaster) {
		return nil, fmt.Errorf("%w; the tc backend cannot splice it", err)
	}
	if err != nil {
		return nil, err
	}
	attrs := link.Attrs()
	bp, ok, err := dumpBrPort(attrs.Index)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: read bridge port %s: %w", port, err)
	}
	if !ok {
		return nil, fmt.Errorf("tcsplice: port %s: not in the bridge port dump: %w", port, splice.ErrNotBridged)
	}
	fdb, err := staticFDB(attrs.Index, attrs.HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: read fdb of %s: %w", port, err)
	}
	hadQdisc, err := hasIngressQdisc(link)
	if err != nil {
		return nil, fmt.Errorf("tcsplice: read qdiscs of %s: %w", port, err)
	}
	var existing []netlink.Filter
	if hadQdisc {
		if existing, err = ingressFilters(link); err != nil {
			return nil, fmt.Errorf("tcsplice: read tc filters of %s: %w", port, err)
		}
	}
	prio, shadowed := pickPriority(existing)
	if prio == 0 {
		return nil, fmt.Errorf("tcsplice: port %s: no free tc filter priority on its ingress", port)
	}

	vm, nt := splice.TapNames(port)
	s := &spliced{
		b:         b,
		port:      port,
		portIndex: attrs.Index,
		portMAC:   slices.Clone(attrs.HardwareAddr),
		bridge:    br.Name,
		vmTap:     vm,
		netTap:    nt,
		prioTap:   splice.PriorityTapName(port),
		opt:       splice.Options{BypassPorts: slices.Clone(opt.BypassPorts), BypassOutbound: opt.BypassOutbound, Queues: opt.Queues, FailOpen: opt.FailOpen},
		mtu:       attrs.MTU,
		attrs:     bp.attrs,
		vlans:     bp.vlans,
		fdb:       fdb,
		hadQdisc:  hadQdisc,
		prio:      prio,
	}
	if len(existing) > 0 {
		if shadowed {
			s.warnings = append(s.warnings, fmt.Sprintf("%s has tc ingress filters at a priority before the splice's redirect (pref %d); frames they steal or drop never reach the forwarder", port, prio))
		} else {
			s.warnings = append(s.warnings, fmt.Sprintf("%s has tc ingress filters (e.g. libvirt bandwidth policing); the splice's redirect (pref %d) runs first, so they no longer see the VM's frames", port, prio))
		}
	}
	if _, ok := bp.attrs[unix.IFLA_BRPORT_BACKUP_PORT]; ok {
		s.warnings = append(s.warnings, fmt.Sprintf("%s has a bridge backup port, which is not carried over to %s", port, nt))
	}
	if v, ok := bp.attrs[unix.IFLA_BRPORT_VLAN_TUNNEL]; ok && len(v) > 0 && v[0] != 0 {
		s.warnings = append(s.warnings, fmt.Sprintf("%s has vlan_tunnel on; its VLAN-to-tunnel mappings are not copied to %s", port, nt))
	}
	s.warnings = append(s.warnings, filterWarnings(port, vm, nt)...)
	return s, nil
}

// spliced is one spliced port: what Splice recorded about the port, and
// which of the objects Splice creates exist. Its fields are guarded by b.mu.
type spliced struct {
	b *Backend

	// Recorded before any change.
	port      string
	portIndex int // to tell a re-created port of the same name from ours
	portMAC   net.HardwareAddr
	bridge    string
	vmTap     string
	netTap    string
	prioTap   string
	opt       splice.Options
	mtu       int
	attrs     map[uint16][]byte // raw IFLA_BRPORT_* attributes of the port
	vlans     []vlan
	fdb       []netlink.Neigh // static and user-permanent FDB entries of the port
	hadQdisc  bool            // the port had an ingress or clsact qdisc
	intent    string          // the daemon's intent, kept in vmTap's alias
	prio      uint16          // tc priority of the redirect filter on the port; the steering filters sit at prio-1
	warnings  []string

	// Progress: set as objects are created, cleared as they are removed.
	vmIndex     int  // ifindex of vmTap, the port filter's redirect target
	vmMade      bool // vmTap was created by this splice
	netMade     bool // netTap was created by this splice
	prioIndex   int  // ifindex of prioTap, the steering filters' target
	prioMade    bool // prioTap was created by this splice
	fbMade      bool // the fallback pair was created by this splice
	fbIndex     int  // ifindex of the fallback pair's peer (see fallback.go)
	qdiscAdded  bool // the port's ingress qdisc was added by this splice
	filterAdded bool // the port's steering filter (the kernel half) may exist
	// The kernel half, while this splice holds it; SetBackstop, Beat and
	// KernelStats (splice.Kernel) are the slot's.
	steer.Slot[*steer.Half]
	fdbMoved     bool // the port's static FDB entries were (maybe) moved to netTap
	portDetached bool // the port was (maybe) taken out of its bridge
	released     bool
	// files are the files that created the taps, by tap name, until
	// TakeTap hands them over or the tap is deleted.
	files map[string]*os.File
}

var (
	_ splice.Splice    = (*spliced)(nil)
	_ splice.TapHolder = (*spliced)(nil)
)

// TakeTap hands over the file that created the tap name, attached as its
// first queue with IFF_VNET_HDR (see splice.TapHolder); nil if the splice
// holds none for it (taken already, or a tap an earlier daemon made).
func (s *spliced) TakeTap(name string) *os.File {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	f := s.files[name]
	delete(s.files, name)
	return f
}

// dropFile closes the file that created the tap name, if the splice still
// holds it. Called once the tap is deleted: closing the file of a tap
// that is gone waits for nothing.
func (s *spliced) dropFile(name string) {
	if f := s.files[name]; f != nil {
		f.Close()
		delete(s.files, name)
	}
}

func (s *spliced) Port() string    { return s.port }
func (s *spliced) Backend() string { return BackendName }
func (s *spliced) VMTap() string   { return s.vmTap }
func (s *spliced) NetTap() string  { return s.netTap }

// FailOpen reports whether the port's traffic goes the direct way, in the
// kernel, when the daemon dies or stalls (through the fallback pair, see
// fallback.go); otherwise the VM is cut off until the splice is adopted or
// released.
func (s *spliced) FailOpen() bool { return s.opt.FailOpen }

// FailOpenByDefault is false: without --fail, a Linux-bridge splice fails
// closed, as it did before it could fail open.
func (b *Backend) FailOpenByDefault() bool { return false }

var _ splice.FailDefaulter = (*Backend)(nil)

// PriorityTap is the tap that frames steered by the splice's Options arrive on.
func (s *spliced) PriorityTap() string { return s.prioTap }

// Offloads reports true: the Linux bridge takes GSO segments from the net
// tap and hands them on (see splice.Offloader).
func (s *spliced) Offloads() bool { return true }

// Warnings returns a copy of the warnings collected by Splice.
func (s *spliced) Warnings() []string { return slices.Clone(s.warnings) }

// Step names, in order; the test hook sees them.
const (
	stepVMTap      = "create vm tap"
	stepNetTap     = "create net tap"
	stepJoin       = "net tap joins bridge"
	stepVLANs      = "copy vlans"
	stepAttrs      = "copy port attributes"
	stepFDB        = "copy static fdb"
	stepFallback   = "create the fallback pair (fail open)"
	stepVMRedirect = "redirect vm tap to port"
	stepPrioTap    = "create priority tap"
	stepQdisc      = "add port ingress qdisc"
	stepSteer      = "steer the port to the taps (tc bpf)"
	stepLeave      = "port leaves bridge"
	stepVerify     = "verify net tap"
	stepRecord     = "record splice on the vm tap"
)

// build creates the splice. The order keeps the VM's outage short and makes
// every step before the last two invisible to traffic: the taps have no
// carrier until a forwarder takes them, so netTap joins the bridge as a
// disabled port and is configured before anything is sent to it. Only then
// are the VM's frames redirected (from here the VM is cut off until the
// forwarder runs) and the port taken out of the bridge, last, so that the
// bridge never floods to the VM twice.
func (s *spliced) build() error {
	var vmTap, netTap netlink.Link
	steps := []struct {
		name string
		do   func() error
	}{
		{stepVMTap, func() (err error) {
			vmTap, err = s.createTap(s.vmTap, nil, s.opt.Queues > 1, &s.vmMade)
			if vmTap != nil {
				s.vmIndex = vmTap.Attrs().Index
			}
			return err
		}},
		{stepNetTap, func() (err error) {
			// netTap wears the port's MAC: the bridge's own address (the
			// lowest port MAC unless set) and its local FDB entry stay put.
			netTap, err = s.createTap(s.netTap, s.portMAC, s.opt.Queues > 1, &s.netMade)
			return err
		}},
		{stepJoin, func() error {
			br, err := s.lookupBridge()
			if err != nil {
				return err
			}
			return netlink.LinkSetMasterByIndex(netTap, br.Attrs().Index)
		}},
		{stepVLANs, func() error { return syncVLANs(kernelVLANs{}, netTap, s.vlans) }},
		{stepAttrs, func() error { return copyBrPortAttrs(netTap.Attrs().Index, s.attrs) }},
		{stepFDB, func() error {
			s.fdbMoved = len(s.fdb) > 0 // teardown moves them back
			return moveFDB(netTap.Attrs().Index, s.fdb)
		}},
		{stepFallback, func() error {
			if !s.opt.FailOpen {
				return nil
			}
			br, err := s.lookupBridge()
			if err != nil {
				return err
			}
			return s.createFallback(br)
		}},
		{stepVMRedirect, func() error {
			if err := netlink.QdiscAdd(ingressQdisc(s.vmIndex)); err != nil {
				return fmt.Errorf("add ingress qdisc on %s: %w", s.vmTap, err)
			}
			if err := netlink.FilterAdd(redirectFilter(s.vmIndex, vmTapPrio, s.portIndex)); err != nil {
				return fmt.Errorf("add redirect filter on %s: %w", s.vmTap, err)
			}
			return nil
		}},
		{stepPrioTap, func() error {
			l, err := s.createTap(s.prioTap, nil, false, &s.prioMade)
			if l != nil {
				s.prioIndex = l.Attrs().Index
			}
			return err
		}},
		{stepQdisc, func() error {
			if s.hadQdisc {
				return nil
			}
			if err := netlink.QdiscAdd(ingressQdisc(s.portIndex)); err != nil {
				return err
			}
			s.qdiscAdded = true
			return nil
		}},
		{stepSteer, s.attachSteer},
		{stepLeave, func() error {
			s.portDetached = true // teardown checks whether it left
			return netlink.LinkSetNoMaster(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: s.portIndex}})
		}},
		{stepVerify, func() error { return s.verify(netTap) }},
		{stepRecord, func() error {
			// What a restarted daemon cannot read back from the links.
			return netlink.LinkSetAlias(vmTap, s.vmAlias())
		}},
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

// createTap creates a persistent tap of exactly IFF_TAP|IFF_NO_PI|
// IFF_VNET_HDR (the forwarder opens a tc splice's taps with offloads),
// plus IFF_MULTI_QUEUE when multi, and keeps the file that created it for
// TakeTap. A forwarder that takes no file attaches with the same flags
// (forward.OpenTapQueues). IFF_TUN_EXCL makes creation fail rather than
// attach if the name was taken since validation. The tap carries the
// port's alias from the instant it persists (tapdev), so a daemon killed
// here leaves nothing a restart cannot recognise. *made is set once the
// tap exists; on error none is left.
func (s *spliced) createTap(name string, mac net.HardwareAddr, multi bool, made *bool) (netlink.Link, error) {
	link, f, err := tapdev.Create(tapdev.Spec{Name: name, Alias: aliasPrefix + s.port, MAC: mac, MTU: s.mtu, TxQLen: tapTxQLen, MultiQueue: multi, VnetHdr: true})
	if err != nil {
		return nil, err
	}
	*made = true
	if s.files == nil {
		s.files = make(map[string]*os.File)
	}
	s.dropFile(name) // none: a tap of that name did not exist
	s.files[name] = f
	return link, nil
}

// disableIPv6 sets net.ipv6.conf.NAME.disable_ipv6; without IPv6 there is nothing to do.
func disableIPv6(name string) error {
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("disable ipv6 on %s: %w", name, err)
	}
	return nil
}

func (s *spliced) lookupBridge() (netlink.Link, error) {
	l, err := linkOrNil(s.bridge)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s: %w", s.bridge, err)
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("bridge %s: %w", s.bridge, errBridgeGone)
	}
	return l, nil
}

// errBridgeGone means the port's bridge was deleted (or replaced by a
// non-bridge of the same name) while the port was spliced.
var errBridgeGone = errors.New("the bridge is gone")

// verify checks that netTap carries exactly the port's recorded settings.
func (s *spliced) verify(netTap netlink.Link) error {
	cur, ok, err := dumpBrPort(netTap.Attrs().Index)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is not a bridge port", s.netTap)
	}
	if !slices.Equal(cur.vlans, s.vlans) {
		return fmt.Errorf("%s has vlans %v, want %v", s.netTap, cur.vlans, s.vlans)
	}
	if d := attrsDiff(s.attrs, cur.attrs); len(d) > 0 {
		return fmt.Errorf("%s differs from %s in bridge port attributes %v", s.netTap, s.port, slices.Sorted(maps.Keys(d)))
	}
	if cur.mtu != s.mtu {
		return fmt.Errorf("%s has mtu %d, want %d", s.netTap, cur.mtu, s.mtu)
	}
	return nil
}

// Release reverts the splice; see splice.Splice. The order:
//
//  1. netTap goes down: the bridge stops sending to the forwarder, and frames
//     the forwarder writes into it are dropped.
//  2. The port rejoins its bridge and gets back its VLAN entries, bridge port
//     attributes, static FDB entries and MTU. Its frames are still redirected
//     to vmTap (and go nowhere), so the VM does not reach the bridge with the
//     bridge's default VLAN and flags; the bridge may send it flooded frames
//     of the default VLAN for the few milliseconds this takes.
//  3. The steering filter on the port goes, and with it the kernel half's
//     program and maps, then the ingress qdisc if Splice added it and no
//     one else's filters hang on it.
//  4. Both taps are deleted (with them, their qdiscs and FDB entries).
//
// If step 2 fails, Release stops there and returns the error: the VM stays
// cut off rather than reaching the bridge with the wrong VLANs or flags, and
// Release may be called again. A port that vanished (or whose name now
// belongs to another link) skips steps 2 and 3; a vanished bridge skips step
// 2 and is reported after the rest is cleaned up. Safe to call twice.
func (s *spliced) Release() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.released {
		return nil
	}
	if err := s.teardown(); err != nil {
		return fmt.Errorf("tcsplice: release %s: %w", s.port, err)
	}
	s.released = true
	s.b.log.Info("released", "port", s.port, "bridge", s.bridge)
	return nil
}

// teardown removes whatever build created, as recorded in the progress
// fields, and restores the port. Each step checks the links' actual state,
// so it is safe to repeat after a partial failure. See Release.
func (s *spliced) teardown() error {
	var errs []error
	log := s.b.log.With("port", s.port)

	if s.netMade {
		if l, err := s.ourTap(s.netTap); err != nil {
			errs = append(errs, err)
		} else if l != nil {
			if err := netlink.LinkSetDown(l); err != nil {
				errs = append(errs, fmt.Errorf("set %s down: %w", s.netTap, err))
			}
		}
	}

	port, err := linkOrNil(s.port)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("look up %s: %w", s.port, err))...)
	}
	if port != nil && port.Attrs().Index != s.portIndex {
		log.Warn("port name now belongs to another link; leaving it alone", "ifindex", port.Attrs().Index, "was", s.portIndex)
		port = nil
	}
	if port == nil {
		if s.portDetached || s.filterAdded || s.qdiscAdded {
			log.Info("port vanished while spliced; removing the taps")
		}
		s.portDetached, s.fdbMoved, s.filterAdded, s.qdiscAdded = false, false, false, false
	}

	if port != nil && (s.portDetached || s.fdbMoved) {
		switch err := s.restorePort(port); {
		case errors.Is(err, errBridgeGone):
			log.Error("bridge vanished; port left out of any bridge", "bridge", s.bridge)
			errs = append(errs, fmt.Errorf("port left unbridged: %w", err))
			s.portDetached, s.fdbMoved = false, false
		case err != nil:
			return errors.Join(append(errs, fmt.Errorf("restore port (the VM stays cut off; retry): %w", err))...)
		default:
			s.portDetached, s.fdbMoved = false, false
		}
	}

	if port != nil && s.filterAdded {
		if err := delSteer(port, s.prio); err != nil {
			errs = append(errs, err)
		} else {
			s.filterAdded = false
		}
	}
	if port != nil && s.qdiscAdded && !s.filterAdded {
		fs, err := ingressFilters(port)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("list tc filters of %s: %w", s.port, err))
		case len(fs) > 0:
			log.Warn("leaving the ingress qdisc the splice added: others' filters now hang on it", "filters", len(fs))
			s.qdiscAdded = false
		default:
			if err := netlink.QdiscDel(ingressQdisc(s.portIndex)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("delete ingress qdisc of %s: %w", s.port, err))
			} else {
				s.qdiscAdded = false
			}
		}
	}

	delTap := func(name string, made *bool) {
		if !*made {
			return
		}
		l, err := s.ourTap(name)
		if err != nil {
			errs = append(errs, err)
			return
		}
		if l != nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
				return
			}
		}
		s.dropFile(name)
		*made = false
	}
	delTap(s.netTap, &s.netMade)
	delTap(s.prioTap, &s.prioMade)
	if s.fbMade {
		if err := s.deleteFallback(); err != nil {
			errs = append(errs, err)
		}
	}
	// The VM tap last: it is the splice's record (Found lists a splice by
	// it), so a daemon killed part way leaves the rest findable.
	delTap(s.vmTap, &s.vmMade)
	if !s.filterAdded && !s.netMade && !s.fbMade {
		// Once its filters are gone: closing first would empty the
		// liveness slots under frames still arriving.
		if h, ok := s.Take(); ok {
			h.Close()
		}
	}
	return errors.Join(errs...)
}

// ourTap looks up one of the splice's taps: nil if it is gone, an error if
// the name now belongs to something that is not a tap.
func (s *spliced) ourTap(name string) (netlink.Link, error) {
	l, err := linkOrNil(name)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if l != nil && l.Type() != "tuntap" {
		return nil, fmt.Errorf("%s is now a %s, not the splice's tap; leaving it", name, l.Type())
	}
	return l, nil
}

// restorePort puts port back into its bridge with its recorded settings
// and static FDB entries. Every step compares before it changes (or
// replaces), so it can be repeated, and is a no-op on a port that never left.
func (s *spliced) restorePort(port netlink.Link) error {
	br, err := s.lookupBridge()
	if err != nil {
		return err
	}
	switch m := port.Attrs().MasterIndex; m {
	case br.Attrs().Index:
	case 0:
		if err := netlink.LinkSetMasterByIndex(port, br.Attrs().Index); err != nil {
			return fmt.Errorf("rejoin %s: %w", s.bridge, err)
		}
	default:
		return fmt.Errorf("%s was moved to master ifindex %d meanwhile; not moving it back to %s", s.port, m, s.bridge)
	}
	if err := syncVLANs(kernelVLANs{}, port, s.vlans); err != nil {
		return fmt.Errorf("restore vlans: %w", err)
	}
	if err := copyBrPortAttrs(port.Attrs().Index, s.attrs); err != nil {
		return fmt.Errorf("restore bridge port attributes: %w", err)
	}
	if err := moveFDB(port.Attrs().Index, s.fdb); err != nil {
		return fmt.Errorf("restore fdb: %w", err)
	}
	if port.Attrs().MTU != s.mtu {
		if err := netlink.LinkSetMTU(port, s.mtu); err != nil {
			return fmt.Errorf("restore mtu %d: %w", s.mtu, err)
		}
	}
	return nil
}

// steerConfig is what the splice tells its kernel half.
func (s *spliced) steerConfig() steer.Config {
	return steer.Config{
		VMTap:          s.vmIndex,
		PrioTap:        s.prioIndex,
		Port:           s.portIndex,
		BypassPorts:    s.opt.BypassPorts,
		BypassOutbound: s.opt.BypassOutbound,
		FailOpen:       s.opt.FailOpen,
		Fallback:       s.fbIndex,
	}
}

// attachSteer creates the kernel half and attaches its entry programs: to
// the net tap's egress (frames to the VM), then to the port's ingress at
// s.prio (frames from the VM).
func (s *spliced) attachSteer() error {
	h, err := steer.New(s.steerConfig())
	if err != nil {
		return err
	}
	s.Hold(h)
	if err := s.attachNetSteer(h); err != nil {
		return err
	}
	if s.fbIndex != 0 {
		if err := s.attachFallback(h); err != nil {
			return err
		}
	}
	entry, err := h.Entry(steer.PortTC)
	if err != nil {
		return err
	}
	s.filterAdded = true // teardown checks whether it is there
	if err := netlink.FilterAdd(steerFilter(s.portIndex, s.prio, entry.FD(), steer.PortTC.EntryName())); err != nil {
		return fmt.Errorf("add the steering filter on %s: %w", s.port, err)
	}
	return nil
}

// attachNetSteer attaches h's to-VM program to the net tap's egress.
func (s *spliced) attachNetSteer(h *steer.Half) error {
	entry, err := h.Entry(steer.NetTC)
	if err != nil {
		return err
	}
	netL, err := linkOrNil(s.netTap)
	if err != nil || netL == nil {
		return fmt.Errorf("look up %s: %v", s.netTap, err)
	}
	if err := steer.AttachNetTap(netL.Attrs().Index, entry.FD(), steer.NetTC.EntryName()); err != nil {
		return fmt.Errorf("%s: %w", s.netTap, err)
	}
	return nil
}

var _ splice.Kernel = (*spliced)(nil)
