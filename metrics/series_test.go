package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon"
)

// manyPorts is n quarantined ports with every class and reason counted,
// in both directions, as a daemon's snapshot has them.
func manyPorts(n int) []daemon.PortMetrics {
	reasons := []string{"aggregate_budget", "class_budget", "bypass_budget", "control_budget", "malformed", "write_error",
		"queue_full", "queue_time", "queue_flush", "guard_mac", "guard_ip", "guard_arp", "guard_nd", "guard_dhcp",
		"guard_ra", "rule", "hashlimit", "top_dest", "sample", "other"}
	classes := []string{"bypass", "control", "tcp", "syn", "udp", "icmp", "other", "fragment"}
	dir := func(seed uint64) api.Direction {
		d := api.Direction{Classes: map[string]api.ClassStats{}, KernelDrops: map[string]uint64{"backstop": seed}}
		for _, c := range classes {
			cs := api.ClassStats{PassedPackets: seed, Drops: map[string]uint64{}}
			for _, r := range reasons {
				cs.Drops[r] = seed
			}
			d.Classes[c] = cs
		}
		return d
	}
	var out []daemon.PortMetrics
	for i := range n {
		q := api.Quarantine{Port: fmt.Sprintf("vm-%d-00c9", i), State: "active", Backend: "tc", Fail: "closed", Since: time.Unix(1e9, 0)}
		q.Directions.FromVM, q.Directions.ToVM = dir(uint64(i)), dir(uint64(i)+1)
		out = append(out, daemon.PortMetrics{Status: q, Running: true})
	}
	return out
}

// A scrape of the per-port series allocates a few small objects per
// series once their label pairs are cached, instead of building the
// pairs again each time; a port that goes is forgotten by the second
// scrape without it.
func TestCollectorCachesSeries(t *testing.T) {
	src := &fakeSource{snap: manyPorts(10)}
	c := NewCollector(src, func() time.Time { return time.Unix(1e9, 0) })
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	gather := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			n += len(mf.Metric)
		}
		return n
	}
	series := gather()
	cached := len(c.series.m)
	if series < 3200 || cached < 3200 {
		t.Fatalf("%d series, %d cached, for 10 ports with 8 classes and 20 reasons each way", series, cached)
	}
	perSeries := testing.AllocsPerRun(5, func() { gather() }) / float64(series)
	t.Logf("%d series, %.1f allocations per series per scrape", series, perSeries)
	if perSeries > 8 {
		t.Errorf("%.1f allocations per series per scrape, want at most 8", perSeries)
	}
	src.set(manyPorts(5))
	gather()
	if len(c.series.m) != cached {
		t.Errorf("one scrape after 5 ports went: %d cached, want %d still", len(c.series.m), cached)
	}
	if got := gather(); len(c.series.m) > cached/2+10 || got > series/2+10 {
		t.Errorf("two scrapes after 5 of 10 ports went: %d cached, %d series; want about %d", len(c.series.m), got, cached/2)
	}
}
