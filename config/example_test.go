package config

import "testing"

// The shipped example config must load.
func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../deploy/shaperd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/shaperd" || c.PendingTTL != "24h" {
		t.Errorf("example config read as %+v", c)
	}
}
