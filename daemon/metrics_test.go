package daemon

import (
	"sync"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/daemon/hosttest"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/forward/fakedev"
	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// TestMetricsSnapshotMatchesStatus: the snapshot carries the same counters
// as Status, and the fills of the budgets that the limits configure.
func TestMetricsSnapshotMatchesStatus(t *testing.T) {
	var mu sync.Mutex
	devs := map[string]*fakedev.Device{}
	h := &hosttest.Host{Tap: func(name string) (forward.Device, error) {
		mu.Lock()
		defer mu.Unlock()
		d := fakedev.New(64)
		devs[name] = d
		return d, nil
	}}
	m := NewWithOptions(nil, Options{Host: h}, fakesplice.New("vm-1-00c9", "vm-2-00c9"))
	defer m.Close()

	if got := m.MetricsSnapshot(time.Now()); len(got) != 0 {
		t.Fatalf("no quarantines yet, snapshot has %d", len(got))
	}
	for _, p := range []string{"vm-2-00c9", "vm-1-00c9"} {
		if _, err := quarantineFlags(m, p, api.LimitFlags{"pps": "10", "burst": "5"}, false); err != nil {
			t.Fatal(err)
		}
	}
	// 20 frames of an unknown ethertype from vm-1's VM: "other", 5 pass on
	// the burst, the rest are dropped by the aggregate.
	vmTap, _ := splice.TapNames("vm-1-00c9")
	mu.Lock()
	vm := devs[vmTap]
	mu.Unlock()
	fr := make([]byte, 60)
	fr[12], fr[13] = 0x88, 0xb5 // local experimental ethertype
	for range 20 {
		vm.Inject(fr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := m.Status("vm-1-00c9")
		c := st.Quarantines[0].Directions.FromVM.Classes["other"]
		if c.PassedPackets+c.DroppedPackets == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("frames not counted: %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}

	snap := m.MetricsSnapshot(time.Now())
	if len(snap) != 2 || snap[0].Status.Port != "vm-1-00c9" || snap[1].Status.Port != "vm-2-00c9" {
		t.Fatalf("snapshot ports: %+v, want vm-1-00c9 and vm-2-00c9 in order", snap)
	}
	st, _ := m.Status("vm-1-00c9")
	got, want := snap[0].Status.Directions.FromVM.Classes["other"], st.Quarantines[0].Directions.FromVM.Classes["other"]
	if got.PassedPackets != want.PassedPackets || got.DroppedPackets != want.DroppedPackets || got.Drops["aggregate_budget"] != want.Drops["aggregate_budget"] {
		t.Errorf("snapshot counters %+v, status %+v", got, want)
	}
	if got.PassedPackets < 5 || got.Drops["aggregate_budget"] == 0 {
		t.Errorf("policing not visible: %+v", got)
	}
	f := snap[0]
	if !f.Running || !f.FromVMFill.Aggregate.PacketsLimited || f.FromVMFill.Aggregate.BytesLimited {
		t.Errorf("vm-1 fill: %+v, want a running forwarder with a packet-limited aggregate", f)
	}
	if f.FromVMFill.Aggregate.Packets > 0.5 {
		t.Errorf("vm-1's aggregate was just drained, fill %.2f", f.FromVMFill.Aggregate.Packets)
	}
	if snap[1].FromVMFill.Aggregate.Packets != 1 {
		t.Errorf("vm-2's idle aggregate fill %.2f, want 1", snap[1].FromVMFill.Aggregate.Packets)
	}
	if f.ToVMFill.Aggregate.Limited() {
		t.Errorf("to_vm has no aggregate limit, fill says %+v", f.ToVMFill.Aggregate)
	}
}
