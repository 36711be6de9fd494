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
