//go:build soak

package integration

import (
	"testing"
	"time"
)

// TestScale100PortsOVS is TestScale100Ports on an OVS bridge, with the
// issue's bound of 30 s to quarantine or release all 100. On the userspace
// datapath it takes 75 s, so it runs in make soak, not make test.
func TestScale100PortsOVS(t *testing.T) { testScale(t, "ovs", 30*time.Second) }
