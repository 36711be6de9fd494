package baseline

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/shaperd/shaperd/internal/nftutil"
	"golang.org/x/sys/unix"
)

// DefaultFlowTimeout is how long a UDP flow is remembered after its last
// packet (the kernel conntrack's UDP default is 30 s too).
const DefaultFlowTimeout = 30 * time.Second

// Options configure a Manager. The zero value is usable.
type Options struct {
	// NetNS is an open file descriptor of the network namespace to manage;
	// 0 means the caller's.
	NetNS int
	// FlowTimeout is how long a UDP flow is remembered after its last
	// packet; 0 means DefaultFlowTimeout. It is fixed when the table is
	// created; a table adopted with another timeout keeps its own.
	FlowTimeout time.Duration
	// Logger receives one line per change; nil means slog.Default().
	Logger *slog.Logger
}

// Counter is a count of dropped frames and their bytes (as the bridge saw
// them, without the Ethernet header).
type Counter struct {
	Packets, Bytes uint64
}

// Manager keeps the table TableName equal to the last desired set of
// ports given to Apply. It holds no state of its own between calls: every
// Apply reads the kernel's table and changes only the difference, so a new
// Manager (after a daemon restart) adopts an existing table instead of
// duplicating it, and counters survive both restarts and limit changes.
//
// A Manager is safe for concurrent use; calls are serialized.
type Manager struct {
	mu          sync.Mutex
	opts        Options
	table       *nftables.Table
	log         *slog.Logger
	flowTimeout time.Duration
}

// New returns a Manager; it changes nothing in the kernel.
func New(opts Options) (*Manager, error) {
	if opts.FlowTimeout < 0 {
		return nil, fmt.Errorf("baseline: flow timeout %v is negative", opts.FlowTimeout)
	}
	ft, log, err := nftutil.Defaults("baseline", opts.FlowTimeout, DefaultFlowTimeout, opts.Logger)
	if err != nil {
		return nil, err
	}
	return &Manager{opts: opts, log: log, flowTimeout: ft,
		table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}}, nil
}

func (m *Manager) conn() (*nftables.Conn, error) { return nftutil.Conn("baseline", m.opts.NetNS) }

// ErrInvalid is wrapped by Apply's validation errors: nothing was changed;
// fix the named port's setting.
var ErrInvalid = errors.New("invalid baseline")

// Validate checks a desired set without touching the kernel.
func Validate(desired map[string]Limits) error {
	if len(desired) > MaxPorts {
		return fmt.Errorf("%w: %d ports: at most %d", ErrInvalid, len(desired), MaxPorts)
	}
	names := nftutil.SortedKeys(desired)
	for _, port := range names {
		if err := validPort(port); err != nil {
			return fmt.Errorf("%w: port %q: %v", ErrInvalid, port, err)
		}
		if err := desired[port].Validate(); err != nil {
			return fmt.Errorf("%w: port %s: %v", ErrInvalid, port, err)
		}
	}
	return nil
}

func validPort(n string) error {
	if n == "" || len(n) > 15 {
		return errors.New("an interface name has 1 to 15 characters")
	}
	if strings.ContainsAny(n, "/ \t\n\x00:") || n == "." || n == ".." {
		return errors.New("not a valid interface name")
	}
	return nil
}

// state is what Apply found in the kernel.
type state struct {
	exists   bool
	complete bool              // the skeleton is all there
	chains   map[string]bool   // chain names
	sets     map[string]bool   // set names
	from, to map[string]string // port -> chain its vmap element jumps to
	fromIx   map[uint32]string // ifindex -> chain its index element goes to
	toIx     map[uint32]string
	drops    map[string][][]byte // port -> keys of its counter elements
}

func newState() *state {
	return &state{chains: map[string]bool{}, sets: map[string]bool{}, from: map[string]string{},
		to: map[string]string{}, fromIx: map[uint32]string{}, toIx: map[uint32]string{}, drops: map[string][][]byte{}}
}

func (m *Manager) read(c *nftables.Conn) (*state, error) {
	st := newState()
	t, err := nftutil.ReadTable(c, m.table)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	if !t.Exists {
		return st, nil
	}
	byName := t.Sets
	st.exists, st.chains = true, t.Chains
	for n := range byName {
		st.sets[n] = true
	}
	st.complete = st.chains[chainFrom] && st.chains[chainTo]
	for _, n := range []string{mapFrom, mapTo, mapFromIx, mapToIx, setFlows4, setFlows6, setDrops} {
		st.complete = st.complete && st.sets[n]
	}
	if !st.complete {
		return st, nil
	}
	if st.from, err = nftutil.VMap(c, byName[mapFrom]); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	if st.to, err = nftutil.VMap(c, byName[mapTo]); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	if st.fromIx, err = indexMap(c, byName[mapFromIx]); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	if st.toIx, err = indexMap(c, byName[mapToIx]); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	els, err := c.GetSetElements(byName[setDrops])
	if err != nil {
		return nil, fmt.Errorf("baseline: list %s: %w", setDrops, err)
	}
	for _, e := range els {
		if len(e.Key) >= 16 {
			p := nftutil.PortOf(e.Key[:16])
			st.drops[p] = append(st.drops[p], e.Key)
		}
	}
	return st, nil
}

// Apply makes the kernel's baseline equal to desired (port name -> limits)
// in one netlink transaction: every change lands or none does. Ports are
// matched by name at packet time, so a port named here that does not exist
// yet is covered from the moment it appears, with no further call; the
// ports that exist when Apply runs are also indexed by ifindex (a cheaper
// lookup per frame), so call Apply again when a named port appears,
// changes or goes to keep that index current (see index.go). An empty
// desired set removes the table. Invalid input returns an error wrapping
// ErrInvalid and changes nothing.
func (m *Manager) Apply(desired map[string]Limits) error {
	if err := Validate(desired); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	st, err := m.read(c)
	if err != nil {
		return err
	}
	if len(desired) == 0 {
		return nftutil.RemoveTable(c, m.table, st.exists, m.log, "baseline")
	}

	sk := newSkeleton(m.table, m.flowTimeout)
	if st.exists && !st.complete {
		// Not a table this version built (or one left half-made by hand):
		// replace it, in the same transaction.
		m.log.Warn("baseline: existing table is incomplete; replacing it", "table", TableName)
		c.DelTable(m.table)
		st = newState()
	}
	if !st.exists || !st.complete {
		if err := sk.add(c); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}

	// The ports' ifindexes as they are now, for the index maps.
	index, err := m.linkIndexes()
	if err != nil {
		return err
	}

	// Profiles: one per distinct Limits value.
	profiles := map[string]*profile{}
	want := map[direction]map[string]string{fromVM: {}, toVM: {}}   // port -> chain
	wantIx := map[direction]map[uint32]string{fromVM: {}, toVM: {}} // ifindex -> chain
	for _, port := range nftutil.SortedKeys(desired) {
		p := newProfile(desired[port])
		if q, ok := profiles[p.id]; ok {
			p = q
		} else {
			profiles[p.id] = p
			if !st.chains[p.chainName(fromVM)] && !st.chains[p.chainName(toVM)] {
				if err := p.add(c, sk); err != nil {
					return fmt.Errorf("baseline: %w", err)
				}
			}
		}
		for _, d := range []direction{fromVM, toVM} {
			if p.needs(d) {
				want[d][port] = p.chainName(d)
				if ix, ok := index[port]; ok {
					wantIx[d][ix] = p.chainName(d)
				}
			}
		}
	}

	// Port elements: delete what differs, add what is missing.
	var changed []string
	for _, x := range []struct {
		d   direction
		set *nftables.Set
		has map[string]string
	}{{fromVM, sk.mapFrom, st.from}, {toVM, sk.mapTo, st.to}} {
		ch, err := nftutil.SyncVMap(c, x.set, x.has, want[x.d])
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		changed = append(changed, ch...)
	}
	for _, x := range []struct {
		d   direction
		set *nftables.Set
		has map[uint32]string
	}{{fromVM, sk.mapFromIx, st.fromIx}, {toVM, sk.mapToIx, st.toIx}} {
		if err := syncIndexMap(c, x.set, x.has, wantIx[x.d]); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}
	// Counters of ports no longer named go with them.
	var gone []string
	for port, keys := range st.drops {
		if _, ok := desired[port]; ok {
			continue
		}
		gone = append(gone, port)
		els := make([]nftables.SetElement, len(keys))
		for i, k := range keys {
			els[i] = nftables.SetElement{Key: k}
		}
		if err := c.SetDeleteElements(sk.drops, els); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}
	// Profiles no longer used: their chains (with their rules), then their
	// meters.
	for name := range st.chains {
		if name == chainFrom || name == chainTo {
			continue
		}
		if id, ok := profileOfChain(name); !ok || profiles[id] == nil {
			c.DelChain(&nftables.Chain{Table: m.table, Name: name})
		}
	}
	for name := range st.sets {
		if id, ok := profileOfSet(name); ok && profiles[id] == nil {
			c.DelSet(&nftables.Set{Table: m.table, Name: name})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("baseline: apply: %w", err)
	}
	if len(changed) > 0 || len(gone) > 0 || !st.exists {
		m.log.Info("baseline: applied", "ports", len(desired), "profiles", len(profiles), "changed", len(changed), "removed_counters", len(gone))
	}
	return nil
}

func profileOfChain(name string) (string, bool) {
	if !strings.HasPrefix(name, "p") {
		return "", false
	}
	for _, s := range []string{"_out", "_in"} {
		if strings.HasSuffix(name, s) {
			return strings.TrimSuffix(name[1:], s), true
		}
	}
	return "", false
}

func profileOfSet(name string) (string, bool) {
	if !strings.HasPrefix(name, "p") {
		return "", false
	}
	id, _, ok := strings.Cut(name[1:], "_")
	return id, ok
}

// Stats reads the drop counters: port -> reason -> dropped frames and
// bytes, for every port that has dropped anything (a port absent from the
// result dropped nothing). Counters start when a port is first named and
// survive limit changes and restarts; they go when the port is removed.
func (m *Manager) Stats() (map[string]map[Reason]Counter, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	out := map[string]map[Reason]Counter{}
	els, err := c.GetSetElements(&nftables.Set{Table: m.table, Name: setDrops, KeyType: mustConcat(nftables.TypeIFName, nftables.TypeMark)})
	if err != nil {
		if nftutil.IsNotFound(err) || errors.Is(err, unix.ENOENT) {
			return out, nil
		}
		return nil, fmt.Errorf("baseline: read counters: %w", err)
	}
	for _, e := range els {
		if len(e.Key) < 20 || e.Counter == nil {
			continue
		}
		port := nftutil.PortOf(e.Key[:16])
		r := Reason(binaryutil.NativeEndian.Uint32(e.Key[16:20]))
		if out[port] == nil {
			out[port] = map[Reason]Counter{}
		}
		out[port][r] = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
	}
	return out, nil
}

// Installed lists the ports the kernel's table covers now, sorted (what a
// restarted daemon finds before its first Apply).
func (m *Manager) Installed() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	st, err := m.read(c)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for p := range st.from {
		seen[p] = true
	}
	for p := range st.to {
		seen[p] = true
	}
	return nftutil.SortedKeys(seen), nil
}
