package forward

import (
	"testing"
	"time"

	"github.com/shaperd/shaperd/bucket"
	"github.com/shaperd/shaperd/classify"
)

func TestFill(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var from Policy
	from.Aggregate = bucket.Limits{PPS: 100, BurstPackets: 10}
	from.Classes[classify.Bypass] = bucket.Limits{PPS: 1000, BytesPerSec: 1e6, BurstBytes: 10000}
	pf, _ := newPipes(t, from, Policy{}, t0)

	f := pf.Fill(t0)
	if !f.Aggregate.PacketsLimited || f.Aggregate.BytesLimited || f.Aggregate.Packets != 1 {
		t.Errorf("fresh aggregate: %+v, want packets limited and full", f.Aggregate)
	}
	if b := f.Classes[classify.Bypass]; !b.PacketsLimited || !b.BytesLimited || b.Packets != 1 || b.Bytes != 1 {
		t.Errorf("fresh bypass budget: %+v, want both dimensions limited and full", b)
	}
	if u := f.Classes[classify.UDP]; u.Limited() {
		t.Errorf("udp has no budget of its own, got %+v", u)
	}

	// Four frames take 4 of the 10-packet burst.
	fr := udpFlood(t)
	for range 4 {
		if v := pf.Step(fr, t0); v.Action != Pass {
			t.Fatalf("frame refused: %+v", v)
		}
	}
	if got := pf.Fill(t0).Aggregate.Packets; got < 0.59 || got > 0.61 {
		t.Errorf("after 4 of 10: aggregate packet fill %.3f, want 0.6", got)
	}
	// Drain it: refused frames leave it empty.
	for range 20 {
		pf.Step(fr, t0)
	}
	if got := pf.Fill(t0).Aggregate.Packets; got > 0.01 {
		t.Errorf("drained: fill %.3f, want 0", got)
	}
	// 50 ms at 100 pps refill 5 packets.
	if got := pf.Fill(t0.Add(50 * time.Millisecond)).Aggregate.Packets; got < 0.49 || got > 0.51 {
		t.Errorf("50 ms later: fill %.3f, want 0.5", got)
	}
	// The bypass budget was not charged for UDP.
	if b := pf.Fill(t0).Classes[classify.Bypass]; b.Packets != 1 {
		t.Errorf("bypass budget charged for udp: %+v", b)
	}
}
