package integration

// Faults (issue 17): kill -9 of the daemon at random instants while it
// quarantines, sets and releases ten ports. Linux bridge only.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/splice"
)

// TestKill9Random: ten bridge ports (the lab's two VMs and eight more
// veths); 20 times, the daemon gets a burst of quarantine, set and release
// commands for all ten and is killed (SIGKILL) at a random instant in it,
// then started again on the same state. After each restart every port is
// either quarantined with limits it was asked for, with exactly its three
// taps and its steering filter and out of the bridge, or untouched: a
// member of the bridge with no tap and no filter. No splice link is left
// that no quarantine names. Releasing everything then leaves the host as
// it was before the first quarantine.
func TestKill9Random(t *testing.T) {
	l := newLab(t, "bridge")
	hv, br := l.get("HV_NS"), l.get("BRIDGE")
	ports := []string{l.get("VM1_PORT"), l.get("VM2_PORT")}
	for i := range 8 {
		p := fmt.Sprintf("vmk-%d-00c9", i)
		l.sh(hv, fmt.Sprintf("ip link add %s type veth peer name vmkp-%d && ip link set vmkp-%d up && ip link set %s master %s up", p, i, i, p, br))
		ports = append(ports, p)
	}
	l.kill9Rounds(t, ports, 20, l.checkConsistent)
}

// kill9Rounds quarantines, sets and releases ports at random and kills the
// daemon at a random instant in each of rounds bursts, checking the host
// with check after each restart; then it releases everything and compares
// the host with how it was before the first quarantine.
func (l *lab) kill9Rounds(t *testing.T, ports []string, rounds int, check func(*testing.T, int, *daemon, []string, map[string]map[float64]bool)) {
	dir := t.TempDir()
	d := l.startDaemonIn(dir)
	before := l.snapshot()
	rng := rand.New(rand.NewPCG(17, uint64(time.Now().UnixNano())))
	asked := map[string]map[float64]bool{} // port -> every --pps asked of it
	var worst time.Duration
	for round := range rounds {
		// A burst: each port gets one command, in parallel.
		var wg sync.WaitGroup
		for _, p := range ports {
			pps := float64(1000 * (1 + rng.IntN(5)))
			var args []string
			switch rng.IntN(3) {
			case 0:
				args = []string{"quarantine", p, "--pps", fmt.Sprint(pps)}
			case 1:
				args = []string{"set", p, "--pps", fmt.Sprint(pps)}
			default:
				args = []string{"release", p}
			}
			if args[0] != "release" {
				if asked[p] == nil {
					asked[p] = map[float64]bool{}
				}
				asked[p][pps] = true
			}
			wg.Add(1)
			go func() { defer wg.Done(); d.cli(args...) }()
		}
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		d.kill9()
		wg.Wait()
		start := time.Now()
		d = l.startDaemonIn(dir)
		if took := time.Since(start); took > worst {
			worst = took
		}
		check(t, round, d, ports, asked)
	}
	t.Logf("%d kills; the slowest restart answered after %v", rounds, worst.Round(time.Millisecond))
	if code, out, errs := d.cli("release", "--all"); code != 0 && code != 3 {
		t.Fatalf("release --all: exit %d %s%s", code, out, errs)
	}
	if after := l.snapshot(); after != before {
		t.Errorf("after releasing everything the host differs from before:\n%s", diffLines(before, after))
	}
}

// kill9Check checks the host against the restarted daemon's status after
// a round: each port is active with a --pps it was asked for or not
// quarantined, and plumbed as its state says (portOK: "" if so, else what
// is wrong); no splice link is left that no quarantine names; and extra,
// if not nil, holds for the whole status.
func (l *lab) kill9Check(t *testing.T, round int, d *daemon, ports []string, asked map[string]map[float64]bool,
	portOK func(port string, quarantined bool) string, extra func(api.Status) string) {
	t.Helper()
	var st api.Status
	if err := json.Unmarshal([]byte(d.must("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	q := map[string]api.Quarantine{}
	for _, x := range st.Quarantines {
		q[x.Port] = x
	}
	links := l.spliceLinks()
	sort.Strings(links)
	var want, summary []string
	for _, p := range ports {
		vm, nt := splice.TapNames(p)
		x, quarantined := q[p]
		if quarantined {
			summary = append(summary, p+"="+string(x.State))
			if x.State != "active" {
				t.Errorf("round %d: %s is %s after the restart, want active (its port is there)", round, p, x.State)
				continue
			}
			if pps := x.Directions.FromVM.Limits.PPS; pps == nil || !asked[p][*pps] {
				t.Errorf("round %d: %s quarantined with %v pps, never asked for", round, p, x.Directions.FromVM.Limits.PPS)
			}
			want = append(want, vm, nt, splice.PriorityTapName(p))
		}
		if bad := portOK(p, quarantined); bad != "" {
			t.Errorf("round %d: %s (quarantined: %v): %s", round, p, quarantined, bad)
		}
	}
	sort.Strings(want)
	if strings.Join(links, " ") != strings.Join(want, " ") {
		t.Errorf("round %d: splice links %v, want %v (those of the quarantines)", round, links, want)
	}
	if extra != nil {
		if bad := extra(st); bad != "" {
			t.Errorf("round %d: %s", round, bad)
		}
	}
	t.Logf("round %d: %d quarantined %v", round, len(summary), summary)
	if t.Failed() {
		t.Fatalf("daemon log:\n%s", d.logBuf.String())
	}
}

// checkConsistent is kill9Check on a Linux bridge: a quarantined port has
// its steering filter and is out of the bridge; any other is a member
// with no filter.
func (l *lab) checkConsistent(t *testing.T, round int, d *daemon, ports []string, asked map[string]map[float64]bool) {
	t.Helper()
	hv := l.get("HV_NS")
	members := l.sh(hv, "bridge link show")
	l.kill9Check(t, round, d, ports, asked, func(p string, quarantined bool) string {
		filters, _ := inNS(hv, "tc", "filter", "show", "dev", p, "ingress").CombinedOutput()
		steering := strings.Contains(string(filters), "shq_tc_port")
		member := regexp.MustCompile(`(?m)^\d+: ` + regexp.QuoteMeta(p) + `@\S+ .*master ` + l.get("BRIDGE")).MatchString(members)
		if steering != quarantined || member == quarantined {
			return fmt.Sprintf("steering filter %v, in the bridge %v", steering, member)
		}
		return ""
	}, nil)
}
