package ladder

import (
	"testing"
	"time"
)

// A ladder saved mid-period and resumed after the daemon was down for a
// while escalates at the same observed time as one that never stopped: the
// downtime counts as neither calm nor saturated.
func TestResumeContinuesThePeriod(t *testing.T) {
	cfg := DefaultConfig()
	ref := newClock(t, cfg, 250)
	ref.run(2*time.Minute, floodPPS, floodBits)
	saved := ref.l.State()

	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	down := 90 * time.Second
	resumeAt := ref.now.Add(down)
	if err := l.Resume(saved, resumeAt); err != nil {
		t.Fatal(err)
	}
	if l.Stage() != Stage1 || l.AvgFrame() != 250 {
		t.Fatalf("resumed at %s avg %v; want stage1 avg 250", l.Stage(), l.AvgFrame())
	}
	if got, want := l.NextTransition(), ref.l.NextTransition().Add(down); !got.Equal(want) {
		t.Fatalf("next transition %v; want %v (shifted by the downtime)", got, want)
	}
	var tr *Transition
	now := resumeAt
	for i := 0; i < 200 && tr == nil; i++ {
		now = now.Add(time.Second)
		tr = l.Observe(now, floodPPS, floodBits)
	}
	if tr == nil || tr.To != Stage2 {
		t.Fatalf("resumed ladder did not escalate: %+v", tr)
	}
	if got, want := now.Sub(resumeAt), 3*time.Minute; got != want {
		t.Fatalf("escalated %v after resuming; want %v (the rest of the 5 minute period)", got, want)
	}
}

func TestResumeRefusesImpossiblePositions(t *testing.T) {
	l, _ := New(DefaultConfig())
	l.Start(t0, 250)
	before := l.State()
	for _, s := range []State{
		{Stage: Stage2, Rung: 1},
		{Stage: Probation, Rung: 3},
		{Stage: "stage9", Rung: 1},
		{Stage: Stage1, Rung: 1, Observed: time.Second, Saturated: 2 * time.Second},
		{Stage: Released},
	} {
		if err := l.Resume(s, t0.Add(time.Hour)); err == nil {
			t.Errorf("Resume(%+v) accepted", s)
		}
	}
	if l.State() != before {
		t.Fatalf("a refused Resume changed the ladder")
	}
}

// Probation by hand (a resolved alert) steps one rung down at once and then
// releases after ClearAfter of calm, and relapses like calm probation.
func TestProbationByHand(t *testing.T) {
	cfg := DefaultConfig()
	c := newClock(t, cfg, 250)
	c.run(cfg.Stage1Duration+time.Second, floodPPS, floodBits)
	if c.l.Stage() != Stage2 {
		t.Fatalf("stage %s; want stage2", c.l.Stage())
	}
	tr := c.l.Probation(c.now)
	if tr == nil || tr.To != Probation || tr.Limits.PPS != cfg.TargetPPS {
		t.Fatalf("Probation = %+v; want probation with stage 1's limits", tr)
	}
	if c.l.Probation(c.now) != nil {
		t.Fatal("a second Probation moved the ladder again")
	}
	trs := c.run(cfg.ClearAfter, 100, 100*250*8)
	if len(trs) != 1 || trs[0].To != Released {
		t.Fatalf("after ClearAfter of calm: %+v; want one transition to released", trs)
	}
	// And a relapse during hand-started probation returns to the rung.
	c = newClock(t, cfg, 250)
	c.l.Probation(c.now)
	trs = c.run(2*time.Second, floodPPS, floodBits)
	if len(trs) != 1 || trs[0].To != Stage1 || trs[0].Reason != ReasonRelapse {
		t.Fatalf("flood in probation: %+v; want a relapse to stage1", trs)
	}
}
