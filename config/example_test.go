package config

import (
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// The shipped configs load, and say what their comments say.
func TestShippedConfigs(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..")
	c, err := Load(filepath.Join(root, "deploy", "shaperd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/shaperd" || c.PendingTTL != "24h" {
		t.Errorf("example config read as %+v", c)
	}
	ps := c.ProfileSet()
	q := ps["quarantine"]
	if len(c.Watch) != 1 || c.Watch[0] != "vm-*" || !q.UseLadder || q.Ladder.Stage1Duration != 5*time.Minute || q.Threshold.PPS != 50000 {
		t.Fatalf("deploy/shaperd.yaml: watch %v, quarantine %+v", c.Watch, q)
	}
	if p := ps["police-10k"]; p.UseLadder || p.Limits.FromVM.PPS.Value == nil || *p.Limits.FromVM.PPS.Value != 10000 {
		t.Fatalf("police-10k: %+v", p)
	}
	lab, err := Load(filepath.Join(root, "scripts", "netns", "lab.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if q := lab.ProfileSet()["quarantine"]; q.Ladder.Stage1Duration != 8*time.Second || len(q.OnBlock) != 4 {
		t.Fatalf("lab.yaml quarantine: %+v", q)
	}
}
