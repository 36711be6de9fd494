package daemon

// The backstop: the kernel half's pre-policer (package steer), per
// direction, in packets per second. It drops what is far beyond the
// quarantine's budgets before it reaches a tap, so a flood costs the
// forwarder only what the backstop lets through; the forwarder still
// polices exactly. Its ceilings follow the port's budgets whenever they
// change (quarantine, set, the ladder's stages, a tenant's quota level).

import (
	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

// backstopStatus fills in what status says of q's backstop: the ceilings
// its spec asks for (no I/O, under Manager.mu).
func backstopStatus(q *quarantine, out *api.Quarantine) {
	out.Directions.FromVM.Backstop = intent.APIBackstop(intent.BackstopFor(q.spec.FromVM, intent.DirPolicy(q.spec.FromVM)))
	out.Directions.ToVM.Backstop = intent.APIBackstop(intent.BackstopFor(q.spec.ToVM, intent.DirPolicy(q.spec.ToVM)))
	out.Directions.FromVM.KernelDrops, out.Directions.ToVM.KernelDrops = map[string]uint64{}, map[string]uint64{}
	out.Directions.FromVM.KernelPassed, out.Directions.ToVM.KernelPassed = map[string]uint64{}, map[string]uint64{}
}

// addKernelStats fills in the kernel half's counters from sp, which reads
// a BPF map: after Manager.mu is released.
func addKernelStats(out *api.Quarantine, sp splice.Splice) {
	k, ok := sp.(splice.Kernel)
	if !ok {
		return
	}
	st, err := k.KernelStats()
	if err != nil {
		return
	}
	for _, x := range []struct {
		d   steer.Dir
		out *api.Direction
	}{{steer.FromVM, &out.Directions.FromVM}, {steer.ToVM, &out.Directions.ToVM}} {
		x.out.KernelDrops = st.Drops(x.d)
		for _, c := range []steer.Counter{steer.Main, steer.Priority, steer.FailOpen} {
			x.out.KernelPassed[c.String()] = st[x.d][c]
		}
	}
}
