package quota_test

import (
	"testing"
	"time"

	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/forward"
	"github.com/shaperd/shaperd/quota"
)

// The forwarder's hook, as the forward package declares it.
var _ forward.Quota = (*quota.Hook)(nil)

func TestHook(t *testing.T) {
	if quota.Dir(classify.FromVM) != quota.FromVM || quota.Dir(classify.ToVM) != quota.ToVM {
		t.Fatal("quota.Dir and classify.Direction disagree")
	}
	c := quota.Defaults("h", 8000) // 1000 bytes per 1 s interval
	c.Period = quota.Period{Length: 100 * time.Second}
	c.Interval = time.Second
	c.Direction = quota.BillFromVM
	c.BurstCeiling = c.Commit
	c.BypassReserve = 0
	t0 := time.Unix(0, 0)
	a, err := quota.New(c, t0)
	if err != nil {
		t.Fatal(err)
	}
	h := a.Hook(1)
	passed := 0
	for range 200 {
		if h.Admit(t0, classify.FromVM, 100, false) {
			passed += 100
		}
	}
	if passed < 750 || passed > 1000 {
		t.Errorf("passed %d bytes of a 1000-byte quota", passed)
	}
	if !h.Admit(t0, classify.FromVM, 1500, true) {
		t.Error("a bypass frame was refused")
	}
	if !h.Admit(t0, classify.ToVM, 100_000, false) {
		t.Error("the unbilled direction was refused")
	}
	k := a.Counters(quota.FromVM)
	if k.PassedBytes != uint64(passed) || k.BypassBytes != 1500 || k.SoftDropPackets+k.CapDropPackets != uint64(200-passed/100) {
		t.Errorf("counters %+v", k)
	}
	if n := testing.AllocsPerRun(100, func() { h.Admit(t0, classify.FromVM, 64, false) }); n != 0 {
		t.Errorf("%v allocations per frame", n)
	}
}
