package daemon

import (
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/detect"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/internal/version"
	"github.com/shaperd/shaperd/splice"
)

func dirStatus(d intent.DirSpec, s forward.DirStats, qs *forward.QueueStats) api.Direction {
	var controlBurst *int
	if b := intent.DirPolicy(d).Classes[classify.Control].BurstPackets; b > 0 {
		controlBurst = &b
	}
	out := api.Direction{
		Limits:        intent.APILimits(d.PPS, d.BPS, d.Burst, d.BurstBytes),
		BypassLimits:  intent.APILimits(d.BypassPPS, d.BypassBPS, nil, nil),
		ControlLimits: intent.APILimits(d.ControlPPS, nil, controlBurst, nil),
		Classes:       make(map[string]api.ClassStats, classify.NumClasses),
		ReadErrors:    s.ReadErrors,
		Panics:        s.Panics,
		Mode:          "police",
	}
	if d.Mode == "shape" {
		out.Mode = "shape"
	}
	if qs != nil {
		ms := func(t time.Duration) float64 { return float64(t) / float64(time.Millisecond) }
		out.Queue = api.Queue{DelayMS: ms(qs.Delay), MaxBytes: qs.MaxBytes, MaxTimeMS: ms(qs.MaxTime),
			Frames: qs.Frames, Bytes: qs.Bytes, OldestAgeMS: ms(qs.OldestAge)}
	}
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		cs := s.Classes[c]
		drops := make(map[string]uint64)
		for r := forward.Reason(0); r < forward.NumReasons; r++ {
			drops[r.String()] = cs.Drops[r]
		}
		out.Classes[c.String()] = api.ClassStats{
			PassedPackets:  cs.PassedPackets,
			PassedBytes:    cs.PassedBytes,
			DroppedPackets: cs.DroppedPackets,
			DroppedBytes:   cs.DroppedBytes,
			Drops:          drops,
		}
	}
	return out
}

// Status reports every quarantine, or only port's when port is not empty (an
// unknown port is a usage error).
func (m *Manager) Status(port string) (api.Status, error) {
	m.mu.Lock()
	var sps []splice.Splice
	st := api.Status{
		Daemon: api.Daemon{PID: os.Getpid(), Version: version.Version(), Commit: version.Commit(), GoVersion: version.Go(),
			Started: m.started.UTC(), Now: time.Now().UTC(), StateNotSaved: m.stateNotSaved()},
		Quarantines: []api.Quarantine{},
		Flagged:     m.auto.Flagged(txn{m}),
		Quotas:      m.quotaStatusLocked(m.host.Now()),
	}
	if port != "" {
		q, ok := m.q[port]
		if !ok || q.starting {
			m.mu.Unlock()
			return st, notFoundf("%s is not quarantined", port)
		}
		s, sp := m.statusLocked(q)
		st.Quarantines, sps = append(st.Quarantines, s), append(sps, sp)
	} else {
		for _, p := range m.portsLocked() {
			s, sp := m.statusLocked(m.q[p])
			st.Quarantines, sps = append(st.Quarantines, s), append(sps, sp)
		}
	}
	m.mu.Unlock()
	m.flushSnapshots()
	var err error
	if st.Baselines, err = m.BaselineStatus(port); err != nil {
		m.log.Warn("status: cannot read the baseline's counters", "err", err)
	}
	if st.Guards, st.Isolations, err = m.PolicyStatus(port); err != nil {
		m.log.Warn("status: cannot read the guards' and isolations' counters", "err", err)
	}
	for i := range st.Quarantines {
		addOutside(&st.Quarantines[i], sps[i])
	}
	return st, nil
}

// statusOf is port's quarantine as status reports it.
func (m *Manager) statusOf(port string) (api.Quarantine, error) {
	m.mu.Lock()
	q, ok := m.q[port]
	if !ok {
		m.mu.Unlock()
		return api.Quarantine{}, notFoundf("%s is not quarantined", port)
	}
	out, sp := m.statusLocked(q)
	m.mu.Unlock()
	addOutside(&out, sp)
	return out, nil
}

// statusLocked is q as status reports it, but for the tap drops, which are
// read from sysfs, and the kernel half's counters, read from a BPF map,
// both without the lock (addOutside, with the splice returned).
func (m *Manager) statusLocked(q *quarantine) (api.Quarantine, splice.Splice) {
	out := api.Quarantine{
		Port:     q.port,
		State:    q.state,
		Fail:     q.spec.Fail,
		Since:    q.since,
		Bypass:   api.Bypass{Ports: slices.Clone(q.spec.BypassPorts), Outbound: q.spec.BypassOutbound},
		Warnings: []string{},
		Profile:  q.spec.Profile,
		Origin:   q.spec.Origin,
		Stage:    q.spec.Stage,

		TopDestinations: []api.Destination{},
	}
	if out.State == stateReleasing {
		out.State = StateActive
	}
	if out.Origin == "" {
		out.Origin = OriginManual
	}
	if out.Stage == "" {
		out.Stage = StageManual
	}
	if q.esc != nil {
		if t := q.esc.Ladder.NextTransition(); !t.IsZero() {
			t = t.UTC()
			out.NextTransition = &t
		}
	}
	var from, to forward.DirStats
	var fq, tq *forward.QueueStats
	sp, fwd := m.qSpliceLocked(q)
	if sp != nil {
		out.Backend = sp.Backend()
		out.Fail = failString(sp.FailOpen())
		out.Taps = api.Taps{VM: sp.VMTap(), Net: sp.NetTap(), Priority: sp.PriorityTap()}
		out.Warnings = append(out.Warnings, sp.Warnings()...)
	}
	if fwd != nil {
		if fl := fwd.Failure(); fl != nil {
			out.Warnings = append(out.Warnings, fmt.Sprintf("the forwarder panicked (%s, %s) and stopped: the port takes its fail path (%s); release and quarantine it again to resume", fl.Value, fl.Direction, failString(sp != nil && sp.FailOpen())))
		}
		from, to = fwd.FromVM.Stats(), fwd.ToVM.Stats()
		for _, d := range fwd.FromVM.TopDestinations(nil, TopDestinations) {
			out.TopDestinations = append(out.TopDestinations, api.Destination{
				Address: d.Addr.String(), Port: d.Port, Protocol: d.ProtoName(), Packets: d.Packets})
		}
		now := time.Now()
		a, b := fwd.FromVM.Queue(now), fwd.ToVM.Queue(now)
		fq, tq = &a, &b
	}
	if q.state == StatePending {
		e := q.expires.UTC()
		out.Expires = &e
	}
	out.Directions.FromVM = dirStatus(q.spec.FromVM, from, fq)
	out.Directions.ToVM = dirStatus(q.spec.ToVM, to, tq)
	backstopStatus(q, &out)
	return out, sp
}

// addOutside fills in what statusLocked leaves to be read without the
// lock: the tap drops (sysfs) and the kernel half's counters (a BPF map) of
// q's splice sp (nil while pending).
func addOutside(q *api.Quarantine, sp splice.Splice) {
	if sp == nil {
		return
	}
	addKernelStats(q, sp)
	addTapDrops(q)
}

// addTapDrops fills in a spliced quarantine's tap drops: frames from the
// VM queue at the VM tap (and the priority tap), frames to the VM at the
// net tap.
func addTapDrops(q *api.Quarantine) {
	if q.Backend == "" {
		return
	}
	q.Directions.FromVM.TapDrops = tapDrops(q.Taps.VM) + tapDrops(q.Taps.Priority)
	q.Directions.ToVM.TapDrops = tapDrops(q.Taps.Net)
}

// tapDrops reads a tap's tx_dropped: the frames the kernel could not queue
// for the reader of the tap. 0 for no tap, or one that cannot be read.
func tapDrops(tap string) uint64 {
	if tap == "" {
		return 0
	}
	n, _ := detect.ReadAttr(tap, "statistics/tx_dropped")
	return n
}

func failString(open bool) api.FailMode {
	if open {
		return api.FailOpen
	}
	return api.FailClosed
}
