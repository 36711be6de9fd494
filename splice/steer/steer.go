// Package steer is the kernel half of a splice, shared by both backends: a
// BPF program, built with github.com/cilium/ebpf's asm package for each
// hook it runs on, and the maps that drive it.
//
// On the VM's port (XDP for Open vSwitch, tc ingress for a Linux bridge) it
// steers frames from the VM: bypass and control candidates (ARP, IPv6
// router and neighbour discovery, TCP from the bypass ports, with
// BypassOutbound also to them) to the priority tap, everything else to the
// VM tap. On the net tap's egress (tc) it sees frames to the VM. In both
// directions it runs the backstop, a pre-policer of packets per second per
// class and per direction that drops what is far beyond the quarantine's
// limits before it reaches a tap, and keeps per-CPU counters.
//
// Liveness: the daemon keeps one socket of its own (an AF_UNIX datagram
// socket) in each kernel half's alive map, a sockmap. The kernel removes a
// socket from every sockmap in the socket's close, so when the daemon dies
// (kill -9 included: the kernel closes its files) the very next frame
// finds the map empty and takes the fail path: with fail open the frame
// goes the direct way in the kernel, with fail closed it is dropped and
// counted. (A one-slot program array, which the kernel empties when its
// last user reference goes, was tried first: it empties from a work queue,
// which under a flood ran 0.3-0.7 s late, and once after a new daemon had
// filled it again.) A daemon that is alive but stuck stops updating the
// heartbeat map; once the heartbeat is older than the staleness the daemon
// armed (Beat), the program takes the same fail path.
//
// Adoption: the programs stay attached (a tc filter or an XDP attachment
// made through netlink lasts as long as the interface), and each uses all
// the maps, so a restarted daemon finds the maps from the attached
// programs' ids (Adopt), puts its own socket in the alive map, and never
// loads a second copy of anything.
//
// The package knows frames; the backends know the plumbing (where to
// attach). Loading needs CAP_BPF and CAP_NET_ADMIN (or root).
package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Dir is a direction of traffic.
type Dir uint8

const (
	FromVM Dir = iota // frames the VM sends
	ToVM              // frames sent to the VM
	numDirs
)

func (d Dir) String() string {
	if d == ToVM {
		return "to_vm"
	}
	return "from_vm"
}

// Hook is where a program runs.
type Hook uint8

const (
	// PortXDP is generic XDP on the VM's port (Open vSwitch): frames from
	// the VM. Fail open passes the frame to OVS.
	PortXDP Hook = iota
	// PortTC is tc ingress (direct action) on the VM's port (Linux
	// bridge): frames from the VM. Fail open redirects the frame into
	// the bridge through Config.Fallback.
	PortTC
	// NetTC is tc egress (direct action) on the net tap: frames to the VM.
	// The fail path lets frames into the net tap's queue, as without the
	// program.
	NetTC
	// FallbackTC is tc ingress on Config.Fallback (Linux bridge): frames
	// from the bridge to the VM while failed open, which it redirects to
	// the port. While the daemon is alive it drops them: they are the
	// bridge's copies of what the net tap gets.
	FallbackTC
	numHooks
)

var hookNames = [numHooks]string{"xdp_port", "tc_port", "tc_net", "tc_fb"}

func (h Hook) String() string {
	if h < numHooks {
		return hookNames[h]
	}
	return fmt.Sprintf("hook%d", uint8(h))
}

// Dir returns the direction of the frames the hook sees.
func (h Hook) Dir() Dir {
	if h == PortXDP || h == PortTC {
		return FromVM
	}
	return ToVM
}

func (h Hook) progType() ebpf.ProgramType {
	if h == PortXDP {
		return ebpf.XDP
	}
	return ebpf.SchedCLS
}

// EntryName is the name of the program attached at hook, by which the
// backends recognise it (the kernel keeps 15 bytes of it).
func (h Hook) EntryName() string { return "shq_" + h.String() }

// Class is a frame's class for the backstop, close to the forwarder's
// (package classify) as far as the headers tell: a frame the program
// cannot parse is ClassOther.
type Class uint8

const (
	ClassAggregate Class = iota // the direction's aggregate bucket, not a frame's class
	ClassSyn                    // TCP with SYN set and ACK clear
	ClassTCP                    // other TCP
	ClassUDP
	ClassICMP // ICMP, and ICMPv6 but router and neighbour discovery
	ClassOther
	NumClasses = 6
)

var classNames = [NumClasses]string{"aggregate", "tcp-syn", "tcp", "udp", "icmp", "other"}

func (c Class) String() string {
	if int(c) < NumClasses {
		return classNames[c]
	}
	return fmt.Sprintf("class%d", uint8(c))
}

// Counter is one of the per-CPU counters, kept per direction.
type Counter uint8

const (
	Main          Counter = iota // passed to the VM tap (from the VM) or the net tap's queue (to the VM)
	Priority                     // a bypass or control candidate: to the priority tap, never charged
	DropAggregate                // dropped by the direction's aggregate backstop
	DropClass                    // dropped by its class's backstop
	FailClosed                   // dropped because the daemon is gone or stale, with fail closed
	FailOpen                     // sent the direct way because the daemon is gone or stale, with fail open
	Stale                        // seen with a stale heartbeat (then counted FailOpen or FailClosed too)
	Idle                         // a bridge copy dropped by the fallback hook while the daemon is alive
	numCounters
)

var counterNames = [numCounters]string{"main", "priority", "backstop", "class_backstop", "fail_closed", "fail_open", "stale", "idle"}

func (c Counter) String() string {
	if c < numCounters {
		return counterNames[c]
	}
	return fmt.Sprintf("counter%d", uint8(c))
}

func counterIndex(d Dir, c Counter) uint32 { return uint32(d)*uint32(numCounters) + uint32(c) }

// Layout of the config map's one value.
const (
	cfgVM       = 0  // u32 ifindex of the VM tap
	cfgPrio     = 4  // u32 ifindex of the priority tap
	cfgPort     = 8  // u32 ifindex of the VM's port
	cfgFallback = 12 // u32 ifindex the port's frames go to when failed open (tc)
	cfgFlags    = 16 // u32 flags
	cfgStale    = 24 // u64 ns after which the heartbeat is stale; 0: never
	cfgSize     = 32

	flagFailOpen = 1
	flagOutbound = 2
)

// Layout of a bucket (GCRA, all ns on CLOCK_MONOTONIC).
const (
	bucketInterval = 0  // u64 ns per frame; 0: no limit
	bucketTau      = 8  // u64 ns the tat may run ahead of now
	bucketTAT      = 16 // u64 theoretical arrival time of the next frame
	bucketSize     = 24
)

// Map names, by which Adopt tells an entry program's maps apart.
const (
	nameConfig    = "shq_cfg"
	nameHeartbeat = "shq_hb"
	namePorts     = "shq_ports"
	nameBuckets   = "shq_bs"
	nameStats     = "shq_stats"
	nameAlive     = "shq_alive"
)

// Maps are one splice's maps, shared by all its hooks.
type Maps struct {
	Config    *ebpf.Map // array, 1 value: the layout above
	Heartbeat *ebpf.Map // array, 1 u64: CLOCK_MONOTONIC ns of the daemon's last beat
	Ports     *ebpf.Map // array, 1024 u64: bitmap of the bypass ports
	Buckets   *ebpf.Map // array, 2×NumClasses buckets
	Stats     *ebpf.Map // per-CPU array, 2×numCounters u64
	Alive     *ebpf.Map // sockmap, 1 entry: the daemon's liveness socket
}

func (m *Maps) all() []*ebpf.Map {
	return []*ebpf.Map{m.Config, m.Heartbeat, m.Ports, m.Buckets, m.Stats, m.Alive}
}

var mapSpecs = map[string]*ebpf.MapSpec{
	nameConfig:    {Name: nameConfig, Type: ebpf.Array, KeySize: 4, ValueSize: cfgSize, MaxEntries: 1},
	nameHeartbeat: {Name: nameHeartbeat, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1},
	namePorts:     {Name: namePorts, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1024},
	nameBuckets:   {Name: nameBuckets, Type: ebpf.Array, KeySize: 4, ValueSize: bucketSize, MaxEntries: uint32(numDirs) * NumClasses},
	nameStats:     {Name: nameStats, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(numDirs) * uint32(numCounters)},
	nameAlive:     {Name: nameAlive, Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 1},
}

// Config is what a splice tells its kernel half. Ifindexes of 0 are unset.
type Config struct {
	VMTap, PrioTap int // where frames from the VM go
	Port           int // the VM's port
	Fallback       int // tc: the device the port's frames go to when failed open
	BypassPorts    []uint16
	BypassOutbound bool
	FailOpen       bool
	// Stale is how old the heartbeat may get before the programs take the
	// fail path; 0 never (the tail call still notices a dead daemon).
	Stale time.Duration
}

func (c Config) value() []byte {
	b := make([]byte, cfgSize)
	ne := binary.NativeEndian
	ne.PutUint32(b[cfgVM:], uint32(c.VMTap))
	ne.PutUint32(b[cfgPrio:], uint32(c.PrioTap))
	ne.PutUint32(b[cfgPort:], uint32(c.Port))
	ne.PutUint32(b[cfgFallback:], uint32(c.Fallback))
	var f uint32
	if c.FailOpen {
		f |= flagFailOpen
	}
	if c.BypassOutbound {
		f |= flagOutbound
	}
	ne.PutUint32(b[cfgFlags:], f)
	ne.PutUint64(b[cfgStale:], uint64(c.Stale.Nanoseconds()))
	return b
}

// ErrHeld means another live daemon holds the kernel half (its socket is
// in the alive map): stop it first.
var ErrHeld = errors.New("another shaperd holds this kernel half")

// Half is one splice's kernel half: its maps and, per hook, the program
// (attached by the backend). Its methods are safe for concurrent use.
type Half struct {
	mu     sync.Mutex
	cfg    Config
	maps   Maps
	hooks  map[Hook]*ebpf.Program
	closed bool
}

// liveness is the process's liveness socket: one end of an AF_UNIX
// datagram socket pair (the other end is closed at once), opened on first
// use and kept until the process ends.
var liveness struct {
	once sync.Once
	fd   int
	err  error
}

func liveFD() (int, error) {
	liveness.once.Do(func() {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			liveness.err = fmt.Errorf("steer: the liveness socket: %w", err)
			return
		}
		unix.Close(fds[1])
		liveness.fd = fds[0]
	})
	return liveness.fd, liveness.err
}

// hold puts the process's liveness socket in the alive map.
func (h *Half) hold() error {
	fd, err := liveFD()
	if err != nil {
		return err
	}
	if err := h.maps.Alive.Put(uint32(0), uint64(fd)); err != nil {
		return fmt.Errorf("steer: put the liveness socket in the alive map: %w", err)
	}
	return nil
}

// New creates a splice's maps and writes cfg into them. It loads no
// program yet: see Entry.
func New(cfg Config) (*Half, error) {
	h := &Half{hooks: map[Hook]*ebpf.Program{}}
	var err error
	for _, x := range []struct {
		m    **ebpf.Map
		name string
	}{{&h.maps.Config, nameConfig}, {&h.maps.Heartbeat, nameHeartbeat}, {&h.maps.Ports, namePorts}, {&h.maps.Buckets, nameBuckets}, {&h.maps.Stats, nameStats}, {&h.maps.Alive, nameAlive}} {
		if *x.m, err = ebpf.NewMap(mapSpecs[x.name]); err != nil {
			h.Close()
			return nil, fmt.Errorf("steer: create map %s: %w", x.name, err)
		}
	}
	if err := h.configure(cfg); err != nil {
		h.Close()
		return nil, err
	}
	if err := h.hold(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// configure writes cfg and the bypass port bitmap.
func (h *Half) configure(cfg Config) error {
	var bits [1024]uint64
	for _, p := range cfg.BypassPorts {
		bits[p>>6] |= 1 << (p & 63)
	}
	// The bitmap first: the programs see the ports before the flags.
	old := make([]uint64, 1024)
	for i := range old {
		_ = h.maps.Ports.Lookup(uint32(i), &old[i])
	}
	for i, v := range bits {
		if old[i] == v {
			continue
		}
		if err := h.maps.Ports.Put(uint32(i), v); err != nil {
			return fmt.Errorf("steer: write the bypass ports: %w", err)
		}
	}
	if err := h.maps.Config.Put(uint32(0), cfg.value()); err != nil {
		return fmt.Errorf("steer: write the config: %w", err)
	}
	h.cfg = cfg
	h.cfg.BypassPorts = slices.Clone(cfg.BypassPorts)
	return nil
}

// Configure rewrites the config (a re-created tap has a new ifindex).
func (h *Half) Configure(cfg Config) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errClosed
	}
	return h.configure(cfg)
}

var errClosed = errors.New("steer: the kernel half is closed")

// Entry loads hook's program (once) and returns it for the backend to
// attach.
func (h *Half) Entry(hook Hook) (*ebpf.Program, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errClosed
	}
	if hook >= numHooks {
		return nil, fmt.Errorf("steer: no hook %d", hook)
	}
	if p, ok := h.hooks[hook]; ok {
		return p, nil
	}
	p, err := load(hook, &h.maps)
	if err != nil {
		return nil, err
	}
	h.hooks[hook] = p
	return p, nil
}

// load builds and loads one program.
func load(hook Hook, m *Maps) (*ebpf.Program, error) {
	ins, err := build(hook, m)
	if err != nil {
		return nil, err
	}
	spec := &ebpf.ProgramSpec{
		Name:         hook.EntryName(),
		Type:         hook.progType(),
		Instructions: ins,
		License:      "Dual MIT/GPL", // none of its helpers is GPL-only
	}
	return loadSpec(spec)
}

// loadSpec loads spec; a verifier refusal comes with the last 40 lines of
// the verifier's log.
func loadSpec(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("steer: load %s: the verifier refused it: %-40v", spec.Name, ve)
		}
		return nil, fmt.Errorf("steer: load %s: %w", spec.Name, err)
	}
	return p, nil
}

// Adopt takes over a kernel half a dead daemon left attached: entries maps
// each hook to the id of the program found attached there. It opens the
// programs and their maps (never loading a second copy of either), checks
// that no live daemon holds them (ErrHeld), writes cfg, and puts this
// process's liveness socket in the alive map.
func Adopt(cfg Config, entries map[Hook]ebpf.ProgramID) (*Half, error) {
	h := &Half{hooks: map[Hook]*ebpf.Program{}}
	fail := func(err error) (*Half, error) {
		h.closeLocked(false)
		return nil, err
	}
	byID := map[ebpf.MapID]*ebpf.Map{}
	defer func() {
		// Close the handles no one took.
		for _, m := range byID {
			if !slices.Contains(h.maps.all(), m) {
				m.Close()
			}
		}
	}()
	hooks := make([]Hook, 0, len(entries))
	for hook := range entries {
		hooks = append(hooks, hook)
	}
	slices.Sort(hooks)
	for _, hook := range hooks {
		if hook >= numHooks {
			return fail(fmt.Errorf("steer: adopt: no hook %d", hook))
		}
		prog, err := ebpf.NewProgramFromID(entries[hook])
		if err != nil {
			return fail(fmt.Errorf("steer: adopt %s: open program %d: %w", hook, entries[hook], err))
		}
		h.hooks[hook] = prog
		info, err := prog.Info()
		if err != nil {
			return fail(fmt.Errorf("steer: adopt %s: %w", hook, err))
		}
		if info.Name != hook.EntryName() || info.Type != hook.progType() {
			return fail(fmt.Errorf("steer: adopt %s: program %d is %q (%s), not shaperd's", hook, entries[hook], info.Name, info.Type))
		}
		ids, ok := info.MapIDs()
		if !ok {
			return fail(fmt.Errorf("steer: adopt %s: the kernel does not tell a program's maps", hook))
		}
		for _, id := range ids {
			m, ok := byID[id]
			if !ok {
				if m, err = ebpf.NewMapFromID(id); err != nil {
					return fail(fmt.Errorf("steer: adopt %s: open map %d: %w", hook, id, err))
				}
				byID[id] = m
			}
			mi, err := m.Info()
			if err != nil {
				return fail(fmt.Errorf("steer: adopt %s: read map %d: %w", hook, id, err))
			}
			dst := map[string]**ebpf.Map{nameConfig: &h.maps.Config, nameHeartbeat: &h.maps.Heartbeat,
				namePorts: &h.maps.Ports, nameBuckets: &h.maps.Buckets, nameStats: &h.maps.Stats, nameAlive: &h.maps.Alive}[mi.Name]
			switch {
			case dst == nil:
				return fail(fmt.Errorf("steer: adopt %s: program %d uses a map %q that is not shaperd's", hook, entries[hook], mi.Name))
			case *dst == nil:
				*dst = m
			case *dst != m:
				return fail(fmt.Errorf("steer: adopt %s: program %d uses another %s than the splice's other hooks", hook, entries[hook], mi.Name))
			}
		}
	}
	for _, m := range h.maps.all() {
		if m == nil {
			return fail(errors.New("steer: adopt: the attached programs lack some of the kernel half's maps"))
		}
	}
	var cookie uint64
	if err := h.maps.Alive.Lookup(uint32(0), &cookie); err == nil {
		return fail(fmt.Errorf("steer: adopt: a live daemon's socket is in the alive map: %w", ErrHeld))
	}
	if err := h.configure(cfg); err != nil {
		return fail(err)
	}
	if err := h.hold(); err != nil {
		return fail(err)
	}
	return h, nil
}

// IsEntry reports whether a program named name (as the kernel keeps it)
// is an entry program of this package, and at which hook.
func IsEntry(name string) (Hook, bool) {
	for h := Hook(0); h < numHooks; h++ {
		if name == h.EntryName() {
			return h, true
		}
	}
	return 0, false
}

// ProgramName returns the name and id of the program id, for a backend
// that found it attached; an error if there is none.
func ProgramName(id ebpf.ProgramID) (string, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", fmt.Errorf("steer: open program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", fmt.Errorf("steer: read program %d: %w", id, err)
	}
	return info.Name, nil
}

// Ceiling is one backstop bucket: PPS frames per second (0: no limit) with
// a burst of Burst frames (at least 1).
type Ceiling struct {
	PPS   float64
	Burst float64
}

// Backstop is one direction's ceilings: the aggregate's and each class's
// (Classes[ClassAggregate] is unused).
type Backstop struct {
	Aggregate Ceiling
	Classes   [NumClasses]Ceiling
}

func (c Ceiling) interval() (interval, tau uint64) {
	if c.PPS <= 0 || math.IsInf(c.PPS, 0) || math.IsNaN(c.PPS) {
		return 0, 0
	}
	iv := math.Max(1, math.Round(1e9/c.PPS))
	burst := math.Max(c.Burst, 1)
	return uint64(iv), uint64(iv * (burst - 1))
}

// SetBackstop writes direction d's ceilings. A bucket keeps its state
// (how far ahead it runs) across changes of its rate.
func (h *Half) SetBackstop(d Dir, b Backstop) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errClosed
	}
	if d >= numDirs {
		return fmt.Errorf("steer: no direction %d", d)
	}
	for c := Class(0); c < NumClasses; c++ {
		ceil := b.Classes[c]
		if c == ClassAggregate {
			ceil = b.Aggregate
		}
		iv, tau := ceil.interval()
		key := uint32(d)*NumClasses + uint32(c)
		v := make([]byte, bucketSize)
		if err := h.maps.Buckets.Lookup(key, &v); err != nil {
			return fmt.Errorf("steer: read bucket %s/%s: %w", d, c, err)
		}
		ne := binary.NativeEndian
		if ne.Uint64(v[bucketInterval:]) == iv && ne.Uint64(v[bucketTau:]) == tau {
			continue
		}
		ne.PutUint64(v[bucketInterval:], iv)
		ne.PutUint64(v[bucketTau:], tau)
		if err := h.maps.Buckets.Put(key, v); err != nil {
			return fmt.Errorf("steer: write bucket %s/%s: %w", d, c, err)
		}
	}
	return nil
}

// Now returns CLOCK_MONOTONIC in ns: the programs' clock (bpf_ktime_get_ns).
func Now() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// Beat writes the heartbeat, now in ns on CLOCK_MONOTONIC (see Now), and
// arms it: from then on the programs take the fail path when the
// heartbeat is older than stale (0: never; the config's Stale until the
// first beat). The heartbeat is written before the staleness, so arming
// never meets an old beat.
func (h *Half) Beat(now uint64, stale time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errClosed
	}
	if err := h.maps.Heartbeat.Put(uint32(0), now); err != nil {
		return fmt.Errorf("steer: heartbeat: %w", err)
	}
	if stale != h.cfg.Stale {
		cfg := h.cfg
		cfg.Stale = stale
		if err := h.maps.Config.Put(uint32(0), cfg.value()); err != nil {
			return fmt.Errorf("steer: arm the heartbeat: %w", err)
		}
		h.cfg.Stale = stale
	}
	return nil
}

// Stats are the counters summed over CPUs: Stats[d][c].
type Stats [numDirs][numCounters]uint64

// Drops returns direction d's kernel drops by reason (the Counter names):
// backstop, class_backstop and fail_closed.
func (s Stats) Drops(d Dir) map[string]uint64 {
	return map[string]uint64{
		DropAggregate.String(): s[d][DropAggregate],
		DropClass.String():     s[d][DropClass],
		FailClosed.String():    s[d][FailClosed],
	}
}

// Stats reads the counters.
func (h *Half) Stats() (Stats, error) {
	var s Stats
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return s, errClosed
	}
	for d := Dir(0); d < numDirs; d++ {
		for c := Counter(0); c < numCounters; c++ {
			var per []uint64
			if err := h.maps.Stats.Lookup(counterIndex(d, c), &per); err != nil {
				return s, fmt.Errorf("steer: read counter %s/%s: %w", d, c, err)
			}
			for _, v := range per {
				s[d][c] += v
			}
		}
	}
	return s, nil
}

// Maps returns the half's maps (for tests and tools; the programs own
// their layout).
func (h *Half) Maps() Maps { return h.maps }

// Hooks lists the hooks with programs loaded, sorted.
func (h *Half) Hooks() []Hook {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Hook
	for k := range h.hooks {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Close takes this process's socket out of the alive map and releases
// every handle: programs still attached take the fail path from then on,
// until the backend detaches them. Safe to call twice.
func (h *Half) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closeLocked(true)
	return nil
}

func (h *Half) closeLocked(release bool) {
	if h.closed {
		return
	}
	h.closed = true
	if release && h.maps.Alive != nil {
		_ = h.maps.Alive.Delete(uint32(0))
	}
	for _, p := range h.hooks {
		p.Close()
	}
	for _, m := range h.maps.all() {
		m.Close()
	}
}

// String describes the half for logs.
func (h *Half) String() string {
	var hs []string
	for _, k := range h.Hooks() {
		hs = append(hs, k.String())
	}
	return "steer[" + strings.Join(hs, ",") + "]"
}

// NotPermitted reports whether err says this process may not open a
// kernel half by id: BPF_PROG_GET_FD_BY_ID and BPF_MAP_GET_FD_BY_ID need
// CAP_SYS_ADMIN, which the service unit does not grant (loading needs only
// CAP_BPF and CAP_NET_ADMIN). A backend then replaces the kernel half
// instead of taking it over: the splice is the same, its counters and
// bucket states start again.
func NotPermitted(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission)
}

// Held reports whether a live daemon holds the kernel half of program
// id: its liveness socket is in the alive map. A backend checks it before
// it changes anything in an adoption (Adopt checks again).
func Held(id ebpf.ProgramID) (bool, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false, fmt.Errorf("steer: open program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false, fmt.Errorf("steer: read program %d: %w", id, err)
	}
	ids, _ := info.MapIDs()
	for _, mid := range ids {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			return false, fmt.Errorf("steer: open map %d: %w", mid, err)
		}
		mi, err := m.Info()
		if err == nil && mi.Name == nameAlive {
			var cookie uint64
			lerr := m.Lookup(uint32(0), &cookie)
			m.Close()
			return lerr == nil, nil
		}
		m.Close()
	}
	return false, fmt.Errorf("steer: program %d has no alive map", id)
}
