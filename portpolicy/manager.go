package portpolicy

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/shaperd/shaperd/internal/nftutil"
)

// DefaultFlowTimeout is how long an isolated port's flow is remembered
// after its last packet: the VM may answer on it until then.
const DefaultFlowTimeout = time.Hour

// Options configure a Manager. The zero value is usable.
type Options struct {
	// NetNS is an open file descriptor of the network namespace to manage;
	// 0 means the caller's.
	NetNS int
	// FlowTimeout is how long an isolation remembers an idle flow; 0 means
	// DefaultFlowTimeout. It is fixed when the table is created.
	FlowTimeout time.Duration
	// Logger receives one line per change; nil means slog.Default().
	Logger *slog.Logger
}

// Manager keeps the table TableName equal to the last desired set given
// to Apply. Like baseline.Manager it keeps no state between calls: every
// Apply reads the kernel's table and changes only the difference, so a new
// Manager (after a daemon restart) adopts the table instead of duplicating
// it. A Manager is safe for concurrent use; calls are serialized.
type Manager struct {
	mu          sync.Mutex
	opts        Options
	table       *nftables.Table
	log         *slog.Logger
	flowTimeout time.Duration
}

// New returns a Manager; it changes nothing in the kernel.
func New(opts Options) (*Manager, error) {
	ft := opts.FlowTimeout
	if ft == 0 {
		ft = DefaultFlowTimeout
	}
	if ft < time.Second {
		return nil, fmt.Errorf("portpolicy: flow timeout %v: use at least 1s", ft)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{opts: opts, log: log, flowTimeout: ft,
		table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}}, nil
}

func (m *Manager) conn() (*nftables.Conn, error) {
	var o []nftables.ConnOption
	if m.opts.NetNS != 0 {
		o = append(o, nftables.WithNetNSFd(m.opts.NetNS))
	}
	c, err := nftables.New(o...)
	if err != nil {
		return nil, fmt.Errorf("portpolicy: netlink: %w", err)
	}
	return c, nil
}

// Validate checks a desired set without touching the kernel.
func Validate(desired map[string]Policy) error {
	for _, port := range nftutil.SortedKeys(desired) {
		if port == "" || len(port) > 15 || strings.ContainsAny(port, "/ \t\n\x00:") {
			return fmt.Errorf("%w: port %q: not an interface name", ErrInvalid, port)
		}
		if err := desired[port].Validate(); err != nil {
			return fmt.Errorf("port %s: %w", port, err)
		}
	}
	return nil
}

// state is what a read found in the kernel.
type state struct {
	exists, complete bool
	chains           map[string]bool
	ports            [3]map[string]string // per map (guard, isolate out, isolate in): port -> chain
}

func mapNames() [3]string { return [3]string{mapGuard, mapIsoOut, mapIsoIn} }

func emptyState() *state {
	return &state{chains: map[string]bool{}, ports: [3]map[string]string{{}, {}, {}}}
}

func (m *Manager) read(c *nftables.Conn) (*state, error) {
	st := emptyState()
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyBridge); err != nil {
		if nftutil.IsNotFound(err) {
			return st, nil
		}
		return nil, fmt.Errorf("portpolicy: list table: %w", err)
	}
	st.exists = true
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		return nil, fmt.Errorf("portpolicy: list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == TableName {
			st.chains[ch.Name] = true
		}
	}
	sets, err := c.GetSets(m.table)
	if err != nil {
		return nil, fmt.Errorf("portpolicy: list sets: %w", err)
	}
	byName := map[string]*nftables.Set{}
	for _, s := range sets {
		byName[s.Name] = s
	}
	st.complete = st.chains[chainFrom] && st.chains[chainTo] && byName[setFlows] != nil
	for i, name := range mapNames() {
		if byName[name] == nil {
			st.complete = false
			continue
		}
		els, err := c.GetSetElements(byName[name])
		if err != nil {
			return nil, fmt.Errorf("portpolicy: list %s: %w", name, err)
		}
		for _, e := range els {
			st.ports[i][nftutil.PortOf(e.Key)] = nftutil.VerdictChain(e.Val)
		}
	}
	return st, nil
}

// chainsOf names the chains of one port's policy, per map (guard, isolate
// out, isolate in); "" where the policy has none.
func chainsOf(port string, p Policy) [3]string {
	var out [3]string
	if p.Guard != nil {
		out[0] = "g_" + chainID(port, p.Guard.String())
	}
	if p.Isolate != nil {
		id := chainID(port, p.Isolate.String())
		out[1], out[2] = "i_"+id+"_out", "i_"+id+"_in"
	}
	return out
}

// Apply makes the kernel's port policies equal to desired (port name ->
// policy) in one netlink transaction: every change lands or none does.
// Ports are matched by name at packet time, so a port that does not exist
// yet is covered when it appears. An empty desired set removes the table.
// Invalid input returns an error wrapping ErrInvalid and changes nothing.
func (m *Manager) Apply(desired map[string]Policy) error {
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
		if !st.exists {
			return nil
		}
		c.DelTable(m.table)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("portpolicy: remove table: %w", err)
		}
		m.log.Info("portpolicy: table removed", "table", TableName)
		return nil
	}
	sk := newSkeleton(m.table, m.flowTimeout)
	if st.exists && !st.complete {
		m.log.Warn("portpolicy: existing table is incomplete; replacing it", "table", TableName)
		c.DelTable(m.table)
		st = emptyState()
		st.exists = false
	}
	if !st.exists {
		if err := sk.add(c); err != nil {
			return fmt.Errorf("portpolicy: %w", err)
		}
	}
	want := [3]map[string]string{{}, {}, {}}
	wantChain := map[string]bool{chainFrom: true, chainTo: true}
	for _, port := range nftutil.SortedKeys(desired) {
		p := desired[port]
		names := chainsOf(port, p)
		for i, n := range names {
			if n != "" {
				want[i][port] = n
				wantChain[n] = true
			}
		}
		mk := func(n string) *chain {
			return &chain{c: c, sk: sk, ch: c.AddChain(&nftables.Chain{Table: m.table, Name: n})}
		}
		if p.Guard != nil && !st.chains[names[0]] {
			addGuard(mk(names[0]), *p.Guard)
		}
		if p.Isolate != nil && !st.chains[names[1]] {
			if st.chains[names[2]] { // half of a pair: replace it whole
				c.DelChain(&nftables.Chain{Table: m.table, Name: names[2]})
			}
			addIsolate(mk(names[1]), mk(names[2]), *p.Isolate)
		}
	}
	sets := [3]*nftables.Set{sk.guard, sk.isoOut, sk.isoIn}
	changed := 0
	for i := range sets {
		var del, add []nftables.SetElement
		for port, ch := range st.ports[i] {
			if want[i][port] != ch {
				del = append(del, nftables.SetElement{Key: nftutil.IfName(port)})
			}
		}
		for _, port := range nftutil.SortedKeys(want[i]) {
			if ch := want[i][port]; st.ports[i][port] != ch {
				add = append(add, nftables.SetElement{Key: nftutil.IfName(port), VerdictData: nftutil.Jump(ch)})
			}
		}
		changed += len(del) + len(add)
		if len(del) > 0 {
			if err := c.SetDeleteElements(sets[i], del); err != nil {
				return fmt.Errorf("portpolicy: %w", err)
			}
		}
		if len(add) > 0 {
			if err := c.SetAddElements(sets[i], add); err != nil {
				return fmt.Errorf("portpolicy: %w", err)
			}
		}
	}
	for name := range st.chains {
		if !wantChain[name] {
			c.DelChain(&nftables.Chain{Table: m.table, Name: name})
			changed++
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("portpolicy: apply: %w", err)
	}
	if changed > 0 || !st.exists {
		m.log.Info("portpolicy: applied", "ports", len(desired), "changed", changed)
	}
	return nil
}

// Stats reads the drop counters: port -> reason -> dropped frames, for
// every port with a policy (a reason absent from a port's map dropped
// nothing). A changed policy starts its counters at 0.
func (m *Manager) Stats() (map[string]map[string]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.conn()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	st, err := m.read(c)
	if err != nil || !st.complete {
		return map[string]map[string]uint64{}, err
	}
	out := map[string]map[string]uint64{}
	for i := range st.ports {
		for port, ch := range st.ports[i] {
			rules, err := c.GetRules(m.table, &nftables.Chain{Table: m.table, Name: ch})
			if err != nil {
				return nil, fmt.Errorf("portpolicy: rules of %s: %w", ch, err)
			}
			if out[port] == nil {
				out[port] = map[string]uint64{}
			}
			for _, r := range rules {
				reason, ok := userdata.GetString(r.UserData, userdata.TypeComment)
				if !ok {
					continue
				}
				for _, e := range r.Exprs {
					if ctr, ok := e.(*expr.Counter); ok {
						out[port][reason] += ctr.Packets
					}
				}
			}
		}
	}
	return out, nil
}

// Installed lists the ports the kernel's table covers now (any map),
// sorted.
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
	for i := range st.ports {
		for p := range st.ports[i] {
			seen[p] = true
		}
	}
	return nftutil.SortedKeys(seen), nil
}
