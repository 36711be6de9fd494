package portpolicy

import (
	"fmt"
	"log/slog"
	"slices"
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
	ft, log, err := nftutil.Defaults("portpolicy", opts.FlowTimeout, DefaultFlowTimeout, opts.Logger)
	if err != nil {
		return nil, err
	}
	return &Manager{opts: opts, log: log, flowTimeout: ft,
		table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}}, nil
}

func (m *Manager) conn() (*nftables.Conn, error) { return nftutil.Conn("portpolicy", m.opts.NetNS) }

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
	t, err := nftutil.ReadTable(c, m.table)
	if err != nil || !t.Exists {
		return st, wrap(err)
	}
	st.exists, st.chains = true, t.Chains
	st.complete = t.Chains[chainFrom] && t.Chains[chainTo] && t.Sets[setFlows] != nil
	for i, name := range mapNames() {
		if t.Sets[name] == nil {
			st.complete = false
			continue
		}
		if st.ports[i], err = nftutil.VMap(c, t.Sets[name]); err != nil {
			return nil, wrap(err)
		}
	}
	return st, nil
}

func wrap(err error) error {
	if err != nil {
		return fmt.Errorf("portpolicy: %w", err)
	}
	return nil
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
	return m.withState(func(c *nftables.Conn, st *state) error { return m.apply(c, st, desired) })
}

// withState runs f, serialized, with a connection and the kernel's table
// as it is.
func (m *Manager) withState(f func(*nftables.Conn, *state) error) error {
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
	return f(c, st)
}

func (m *Manager) apply(c *nftables.Conn, st *state, desired map[string]Policy) error {
	if len(desired) == 0 {
		return nftutil.RemoveTable(c, m.table, st.exists, m.log, "portpolicy")
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
		ch, err := nftutil.SyncVMap(c, sets[i], st.ports[i], want[i])
		if err != nil {
			return wrap(err)
		}
		changed += len(ch)
		for port := range st.ports[i] {
			if want[i][port] == "" {
				changed++
			}
		}
	}
	// The flows of ports whose isolation goes, so that what stays is what
	// the remaining ports made.
	var gone []string
	for port := range st.ports[1] {
		if want[1][port] == "" {
			gone = append(gone, port)
		}
	}
	if err := m.forgetFlows(c, sk.flows, gone); err != nil {
		return err
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
	out := map[string]map[string]uint64{}
	err := m.withState(func(c *nftables.Conn, st *state) error {
		if !st.complete {
			return nil
		}
		for i := range st.ports {
			for port, ch := range st.ports[i] {
				rules, err := c.GetRules(m.table, &nftables.Chain{Table: m.table, Name: ch})
				if err != nil {
					return fmt.Errorf("portpolicy: rules of %s: %w", ch, err)
				}
				if out[port] == nil {
					out[port] = map[string]uint64{}
				}
				for _, r := range rules {
					reason, ok := userdata.GetString(r.UserData, userdata.TypeComment)
					for _, e := range r.Exprs {
						if ctr, isCtr := e.(*expr.Counter); ok && isCtr {
							out[port][reason] += ctr.Packets
						}
					}
				}
			}
		}
		return nil
	})
	return out, err
}

// Installed lists the ports the kernel's table covers now (any map),
// sorted.
func (m *Manager) Installed() ([]string, error) {
	seen := map[string]bool{}
	err := m.withState(func(_ *nftables.Conn, st *state) error {
		for i := range st.ports {
			for p := range st.ports[i] {
				seen[p] = true
			}
		}
		return nil
	})
	return nftutil.SortedKeys(seen), err
}

// forgetFlows queues the deletion of every flow of the named ports.
func (m *Manager) forgetFlows(c *nftables.Conn, flows *nftables.Set, ports []string) error {
	if len(ports) == 0 {
		return nil
	}
	els, err := c.GetSetElements(flows)
	if err != nil {
		return fmt.Errorf("portpolicy: list %s: %w", setFlows, err)
	}
	var del []nftables.SetElement
	for _, e := range els {
		if len(e.Key) >= 16 && slices.Contains(ports, nftutil.PortOf(e.Key[:16])) {
			del = append(del, nftables.SetElement{Key: e.Key})
		}
	}
	if len(del) == 0 {
		return nil
	}
	return wrap(c.SetDeleteElements(flows, del))
}
