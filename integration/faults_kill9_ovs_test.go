//go:build soak

package integration

// kill -9 at random instants on Open vSwitch (issue 17). It takes about as
// long as all of make test's OVS fault tests together, so it runs in make
// soak (the soak build tag), with the long soak.

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/shaperd/shaperd/api"
)

// TestKill9RandomOVS is TestKill9Random on an OVS bridge: ten ports, 20
// bursts of quarantine, set and release each cut by SIGKILL at a random
// instant. After each restart every port is either quarantined with limits
// it was asked for, its three taps there and the splice's XDP program on
// the port, or untouched (no tap, no program); the bridge holds the flows
// of exactly as many splices as there are quarantines; no splice link is
// left that no quarantine names. Releasing everything then leaves the
// links and the OVS dumps (flows, groups, ports, database) as they were.
func TestKill9RandomOVS(t *testing.T) {
	l := newLab(t, "ovs")
	hv, br := l.get("HV_NS"), l.get("OVS_BRIDGE")
	ports := []string{l.get("VM1_PORT"), l.get("VM2_PORT")}
	for i := range 8 {
		p := fmt.Sprintf("vmo-%d-00c9", i)
		l.sh(hv, fmt.Sprintf(`ip link add %[1]s type veth peer name vmop-%[3]d && ip link set %[1]s up && ip link set vmop-%[3]d up && `+
			`ovs-vsctl --timeout=10 add-port %[2]s %[1]s -- set Interface %[1]s external_ids:attached-mac='"02:c6:14:00:00:%02[3]x"'`, p, br, i))
		ports = append(ports, p)
	}
	l.kill9Rounds(t, ports, 20, l.checkConsistentOVS)
}

var spliceCookie = regexp.MustCompile(`cookie=(0x5351[0-9a-f]{12})`)

// checkConsistentOVS is kill9Check on an OVS bridge: a quarantined port
// has the splice's XDP program, any other none; the bridge holds the flows
// of as many splice cookies as there are quarantines.
func (l *lab) checkConsistentOVS(t *testing.T, round int, d *daemon, ports []string, asked map[string]map[float64]bool) {
	t.Helper()
	l.kill9Check(t, round, d, ports, asked, func(p string, quarantined bool) string {
		if xdp := l.portHasXDP(p); xdp != quarantined {
			return fmt.Sprintf("XDP program on the port: %v", xdp)
		}
		return ""
	}, func(st api.Status) string {
		cookies := map[string]bool{}
		for _, m := range spliceCookie.FindAllStringSubmatch(l.sh(l.get("HV_NS"), "ovs-ofctl dump-flows "+l.get("OVS_BRIDGE")+" --no-stats"), -1) {
			cookies[m[1]] = true
		}
		if len(cookies) != len(st.Quarantines) {
			return fmt.Sprintf("flows of %d splice cookies on the bridge for %d quarantines", len(cookies), len(st.Quarantines))
		}
		return ""
	})
}
