package metrics

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shaperd/shaperd/api"
)

// baselineSource is a fakeSource with kernel baselines.
type baselineSource struct {
	fakeSource
	list []api.Baseline
	err  error
}

func (b *baselineSource) BaselineStatus(port string) ([]api.Baseline, error) { return b.list, b.err }

func TestCollectorBaselineDrops(t *testing.T) {
	src := &baselineSource{list: []api.Baseline{{Port: "vm-1", Origin: "cli",
		Drops: map[string]uint64{"per_source_to_vm": 989, "pps_to_vm": 0}}}}
	const want = `
# HELP shaperd_baseline_drops_total Frames the kernel baseline (nftables) dropped on a port, by reason; a quarantined port's splice counts under the port. Every reason is present from the start at 0.
# TYPE shaperd_baseline_drops_total counter
shaperd_baseline_drops_total{port="vm-1",reason="per_source_to_vm"} 989
shaperd_baseline_drops_total{port="vm-1",reason="pps_to_vm"} 0
`
	if err := testutil.CollectAndCompare(NewCollector(src, nil), strings.NewReader(want), "shaperd_baseline_drops_total"); err != nil {
		t.Error(err)
	}
	// A failed read of the kernel's counters leaves the series out.
	src.err = errors.New("netlink: gone")
	if n := testutil.CollectAndCount(NewCollector(src, nil), "shaperd_baseline_drops_total"); n != 0 {
		t.Errorf("%d series after a failed read, want none", n)
	}
}

// policySource is a fakeSource with port guards and isolations.
type policySource struct {
	fakeSource
	guards []api.Guard
	isos   []api.Isolation
	err    error
}

func (p *policySource) PolicyStatus(string) ([]api.Guard, []api.Isolation, error) {
	return p.guards, p.isos, p.err
}

func TestCollectorGuardIsolateDrops(t *testing.T) {
	src := &policySource{
		guards: []api.Guard{{Port: "vm-1", Drops: map[string]uint64{"guard_ra": 80, "guard_mac": 0}}},
		isos:   []api.Isolation{{Port: "gwm-1", Drops: map[string]uint64{"isolate_udp": 20, "isolate_new_from_vm": 3}}},
	}
	const want = `
# HELP shaperd_guard_drops_total Frames a kernel port guard (shaperd guard: nftables on a Linux bridge, OpenFlow flows on Open vSwitch) dropped from the VM, by reason; a quarantined port's splice counts under the port. Every reason is present from the start at 0.
# TYPE shaperd_guard_drops_total counter
shaperd_guard_drops_total{port="vm-1",reason="guard_mac"} 0
shaperd_guard_drops_total{port="vm-1",reason="guard_ra"} 80
# HELP shaperd_isolate_drops_total Frames a one-way isolation (shaperd isolate) dropped to or from the VM, by reason; a quarantined port's splice counts under the port. Every reason is present from the start at 0.
# TYPE shaperd_isolate_drops_total counter
shaperd_isolate_drops_total{port="gwm-1",reason="isolate_new_from_vm"} 3
shaperd_isolate_drops_total{port="gwm-1",reason="isolate_udp"} 20
`
	if err := testutil.CollectAndCompare(NewCollector(src, nil), strings.NewReader(want), "shaperd_guard_drops_total", "shaperd_isolate_drops_total"); err != nil {
		t.Error(err)
	}
	src.err = errors.New("ovs-ofctl: gone")
	if n := testutil.CollectAndCount(NewCollector(src, nil), "shaperd_guard_drops_total", "shaperd_isolate_drops_total"); n != 0 {
		t.Errorf("%d series after a failed read, want none", n)
	}
}
