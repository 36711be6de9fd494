package daemon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/daemon/auto"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/profile"
)

// The manager's side of the automatic one (package daemon/auto, which
// decides): the watch loop, the ladders and the alerts reach the
// quarantines through autoManager.

// Origins of a quarantine.
const (
	OriginManual      = api.OriginManual      // the command line or the control API
	OriginWatch       = api.OriginWatch       // flagged by the watch loop
	OriginAlert       = api.OriginAlert       // an Alertmanager webhook
	OriginCorrelation = api.OriginCorrelation // a group's router port, limited toward the router
)

// StageManual is the stage of a quarantine with no ladder.
const StageManual = api.StageManual

// WatchConfig is the watch loop's configuration (auto.Config).
type WatchConfig = auto.Config

// Group is a tenant's VM ports and its router port (auto.Group).
type Group = auto.Group

// Events counts what the watch loop, the ladder and the alerts did, and
// the health events, for metrics (auto.Events).
type Events = auto.Events

// DefaultWatchConfig watches nothing, every 500 ms, flags after 1 s, and
// allows 10 automatic quarantines.
func DefaultWatchConfig() WatchConfig { return auto.DefaultConfig() }

// AvgFrameWindow is how long the forwarder measures the average frame size
// of a laddered quarantine that had no watch history.
const AvgFrameWindow = auto.AvgFrameWindow

// HookTimeout bounds an on-block hook's run.
const HookTimeout = auto.HookTimeout

// Errors of Alert (see auto.Engine.Alert).
var (
	ErrUnknownPort = auto.ErrUnknownPort
	ErrNotVMPort   = auto.ErrNotVMPort
)

// Configure sets the profiles and the watch loop's configuration; the daemon
// calls it at start and on SIGHUP. Nothing changes if either is invalid.
// Running ladders keep the profile they started with.
func (m *Manager) Configure(profiles profile.Set, w WatchConfig) error {
	return m.auto.Configure(profiles, w)
}

// CheckProfiles checks that every profile's limits are valid quarantine
// flags.
func CheckProfiles(profiles profile.Set) error { return auto.CheckProfiles(profiles) }

// WatchInterval returns the configured --watch-interval.
func (m *Manager) WatchInterval() time.Duration { return m.auto.Interval() }

// WatchPorts returns the ports among names whose counters the next Observe
// wants: the watched ones, and every quarantined one on a ladder.
func (m *Manager) WatchPorts(names []string) []string {
	return m.auto.WatchPorts(autoManager{m}, names)
}

// RunWatch reads the counters of the watched ports every --watch-interval
// and hands them to Observe, until ctx ends.
func (m *Manager) RunWatch(ctx context.Context) { m.auto.RunWatch(ctx, autoManager{m}) }

// Observe is one step of the watch loop at now (see auto.Engine.Observe).
func (m *Manager) Observe(now time.Time, counters map[string]detect.Sample) {
	m.auto.Observe(autoManager{m}, now, counters)
}

// Alert handles one alert from the webhook (see auto.Engine.Alert).
func (m *Manager) Alert(port string, firing bool) (string, error) {
	return m.auto.Alert(autoManager{m}, port, firing)
}

// Events returns copies of the event counters.
func (m *Manager) Events() Events {
	e := m.auto.Events()
	e.Health = m.health.snapshot()
	return e
}

// autoManager is the Manager as daemon/auto drives it (auto.Manager).
type autoManager struct{ m *Manager }

func (a autoManager) Update(f func(auto.Txn)) error {
	m := a.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	f(txn{m})
	return nil
}

func (a autoManager) View(f func(auto.Txn)) {
	a.m.mu.Lock()
	defer a.m.mu.Unlock()
	f(txn{a.m})
}

func (a autoManager) Now() time.Time              { return a.m.host.Now() }
func (a autoManager) Links() ([]string, error)    { return a.m.host.Links() }
func (a autoManager) PortExists(port string) bool { return a.m.host.PortExists(port) }
func (a autoManager) Save()                       { a.m.save() }
func (a autoManager) VMPort(port string) error    { return a.m.vmPort(port) }
func (a autoManager) RunHook(ctx context.Context, argv []string) ([]byte, error) {
	return a.m.host.RunHook(ctx, argv)
}

func (a autoManager) Quarantine(port string, req api.LimitRequest, origin api.Origin, now time.Time) error {
	_, err := a.m.quarantine(port, req, false, origin, now)
	return err
}

// Apply has q's owner apply q's spec, which changed from prev under
// Manager.mu; if that fails the spec goes back to prev. A quarantine that
// is not active gets it when it is.
func (a autoManager) Apply(aq auto.Quarantine, prev intent.Spec) error {
	m, q := a.m, aq.(*quarantine)
	o := m.lockOwner(q.port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	live := m.q[q.port] == q && q.state == StateActive
	m.mu.Unlock()
	if !live {
		return nil
	}
	if err := m.reconcile(o); err != nil {
		m.mu.Lock()
		if m.q[q.port] == q {
			q.spec = prev
		}
		m.mu.Unlock()
		return err
	}
	return nil
}

// Release ends q if it is still its port's quarantine.
func (a autoManager) Release(aq auto.Quarantine) error {
	m, q := a.m, aq.(*quarantine)
	o := m.lockOwner(q.port)
	defer m.unlockOwner(o)
	m.mu.Lock()
	same := m.q[q.port] == q
	m.mu.Unlock()
	if !same {
		return nil
	}
	return m.release(o)
}

// txn is the manager's quarantines as auto.Txn; valid while m.mu is held.
type txn struct{ m *Manager }

func (t txn) Ports() []string { return t.m.portsLocked() }

func (t txn) Get(port string) (auto.Quarantine, bool) {
	if q, ok := t.m.q[port]; ok {
		return q, true
	}
	return nil, false
}

func (t txn) Each(f func(auto.Quarantine)) {
	for _, q := range t.m.q {
		f(q)
	}
}

func (t txn) Offered(aq auto.Quarantine, fromVM bool) (pkts, bytes uint64, ok bool) {
	_, fwd := t.m.qSpliceLocked(aq.(*quarantine))
	if fwd == nil {
		return 0, 0, false
	}
	pkts, bytes = offeredOf(fwd, fromVM)
	return pkts, bytes, true
}

// The quarantine as auto.Quarantine; under Manager.mu.
func (q *quarantine) Port() string                 { return q.port }
func (q *quarantine) Active() bool                 { return q.state == StateActive }
func (q *quarantine) Origin() api.Origin           { return q.spec.Origin }
func (q *quarantine) Spec() intent.Spec            { return q.spec }
func (q *quarantine) SetSpec(s intent.Spec)        { q.spec = s }
func (q *quarantine) Escalation() *auto.Escalation { return q.esc }

// vmPort says why port is not a VM port, or nil: a VM's port is a veth or
// a tap, and a member of a bridge or an OVS bridge (a splice backend
// handles it). An uplink or a bond is not. The caller holds no lock.
func (m *Manager) vmPort(port string) error {
	kind, err := m.host.LinkKind(port)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNotVMPort, port, err)
	}
	if kind != "veth" && kind != "tuntap" {
		return fmt.Errorf("%w: %s is a %s, not a veth or a tap", ErrNotVMPort, port, kind)
	}
	for _, b := range m.backends {
		if ok, _ := b.Handles(port); ok {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is on no bridge a splice backend handles", ErrNotVMPort, port)
}

// profileLocked resolves the profile a quarantine request names, if any:
// req.Profile, or the quarantine profile when req names no limit. It
// returns req without Profile.
func (m *Manager) profileLocked(req api.LimitRequest) (*profile.Profile, api.LimitRequest, error) {
	named := req.Profile != nil
	name := ""
	if named {
		name = *req.Profile
	}
	req.Profile = nil
	if !named && !req.HasLimit() {
		name = profile.Quarantine
	}
	if name == "" {
		if named {
			return nil, req, usagef("--profile needs a name")
		}
		return nil, req, nil
	}
	profiles := m.auto.Profiles()
	p, ok := profiles[name]
	if !ok {
		return nil, req, usagef("no profile %q (the config defines %s)", name, strings.Join(slices.Sorted(maps.Keys(profiles)), ", "))
	}
	if p.UseLadder {
		for _, f := range api.AggregateFlags {
			for _, d := range auto.Dirs(&req, p.Threshold.Direction) {
				if d.Change.NamesAggregate(f) {
					return nil, req, usagef("--%s%s conflicts with profile %s, whose ladder sets those limits; omit it, or give limits without a profile",
						d.Prefix, f, name)
				}
			}
		}
	}
	return &p, req, nil
}

// offeredOf sums the frames the forwarder saw in one direction, passed or
// dropped.
func offeredOf(fwd *forward.Forwarder, fromVM bool) (pkts, bytes uint64) {
	st := fwd.ToVM.Stats()
	if fromVM {
		st = fwd.FromVM.Stats()
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		cs := st.Classes[c]
		pkts += cs.PassedPackets + cs.DroppedPackets
		bytes += cs.PassedBytes + cs.DroppedBytes
	}
	return pkts, bytes
}
