package profile

import (
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/detect"
)

func ptr[T any](v T) *T { return &v }

func TestBuild(t *testing.T) {
	p, err := Raw{ThresholdPPS: ptr(20000.0), ThresholdBPS: "100mbit", ThresholdDirection: "either",
		Mode: "police", Delay: "0s", TargetPPS: ptr(5000.0), Stage1Duration: "30s", ClearAfter: "1m",
		OnBlock: []string{"true"}, Limits: map[string]string{"to-vm-pps": "100"}}.Build("web")
	if err != nil {
		t.Fatal(err)
	}
	if p.Threshold.PPS != 20000 || p.Threshold.BitsPerSecond != 100e6 || p.Threshold.Direction != detect.Either ||
		p.Shape || p.Ladder.Delay1 != 0 || p.Ladder.TargetPPS != 5000 || p.Ladder.Stage1Duration != 30*time.Second ||
		p.Ladder.ClearAfter != time.Minute || p.Ladder.Threshold != p.Threshold || p.Limits.ToVM.PPS.Value == nil || *p.Limits.ToVM.PPS.Value != 100 || len(p.OnBlock) != 1 {
		t.Fatalf("%+v", p)
	}
	d, err := Raw{}.Build("q")
	if err != nil || !d.UseLadder || !d.Shape || d.Ladder.TargetPPS != 10000 || d.Threshold.PPS != 50000 {
		t.Fatalf("defaults: %+v %v", d, err)
	}
}

func TestBuildErrorsNameTheKey(t *testing.T) {
	for _, c := range []struct {
		r   Raw
		key string
	}{
		{Raw{ThresholdBPS: "fast"}, "profiles.x.threshold_bps"},
		{Raw{ThresholdDirection: "up"}, "profiles.x.threshold_direction"},
		{Raw{Mode: "gentle"}, "profiles.x.mode"},
		{Raw{Delay: "-1s"}, "profiles.x.delay"},
		{Raw{Stage1Duration: "0s"}, "profiles.x.stage1_duration"},
		{Raw{TargetPPS: ptr(-1.0)}, "target_pps"},
		{Raw{Stage2Factor: ptr(2.0)}, "stage2_factor"},
		{Raw{ThresholdPPS: ptr(0.0), ThresholdBPS: "none"}, "threshold_pps"},
		{Raw{OnBlock: []string{"/nonexistent/hook"}}, "profiles.x.on_block"},
		{Raw{Ladder: ptr(false)}, "profiles.x.limits"},
	} {
		_, err := c.r.Build("x")
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%+v: %v; want an error naming %s", c.r, err, c.key)
		}
	}
}

func TestBuildSet(t *testing.T) {
	s, err := BuildSet(nil)
	if err != nil || len(s) != 1 || !s[Quarantine].UseLadder {
		t.Fatalf("empty: %v %v", s, err)
	}
	if _, err := BuildSet(map[string]Raw{"bad name": {}}); err == nil {
		t.Fatal("bad name accepted")
	}
	s, err = BuildSet(map[string]Raw{Quarantine: {TargetPPS: ptr(100.0)}})
	if err != nil || s[Quarantine].Ladder.TargetPPS != 100 {
		t.Fatalf("override: %v %v", s, err)
	}
}
