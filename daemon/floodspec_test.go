package daemon

import (
	"errors"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/guard"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// The issue 7 flags land in the forwarder's policy, survive the intent,
// and bad values are refused naming the flag.
func TestFloodFlags(t *testing.T) {
	req := api.LimitFlags{
		"syn-pps": "200", "to-vm-udp-pps": "1000", "icmp-bps": "2kbit", "max-frame": "1400",
		"to-vm-bypass-conn-per-source": "30",
		"class":                        "dns: udp dport 53 pps 100\nbig: size >1200 block",
		"guard":                        "true", "guard-mac": "52:54:00:12:34:56", "guard-ip": "198.18.0.11,2001:2::11",
	}
	s, err := applyFlags(intent.New(), req, false)
	if err != nil {
		t.Fatal(err)
	}
	from, to := s.FromVMPolicy(), intent.DirPolicy(s.ToVM)
	if from.Classes[classify.TCPSyn].PPS != 200 || to.Classes[classify.UDP].PPS != 1000 ||
		from.Classes[classify.ICMP].BytesPerSec != 250 || from.MaxFrame != 1400 || to.BypassConnPerSource != 30 ||
		from.Rules.Len() != 2 || from.Guard == nil || to.Guard != nil {
		t.Fatalf("policies: from %+v to %+v", from, to)
	}
	back, err := intent.Parse(s.Intent())
	if err != nil {
		t.Fatalf("intent.Parse(%q): %v", s.Intent(), err)
	}
	if back.Intent() != s.Intent() {
		t.Fatalf("intent round trip:\n%s\n%s", s.Intent(), back.Intent())
	}
	for _, c := range []struct {
		req  api.LimitFlags
		want string
	}{
		{api.LimitFlags{"syn-pps": "-1"}, "--syn-pps"},
		{api.LimitFlags{"icmp-bps": "lots"}, "--icmp-bps"},
		{api.LimitFlags{"max-frame": "10"}, "--max-frame"},
		{api.LimitFlags{"to-vm-bypass-conn-per-source": "0"}, "--to-vm-bypass-conn-per-source"},
		{api.LimitFlags{"class": "dns: udp dport 99999"}, "--class"},
		{api.LimitFlags{"pps": "1", "guard-mac": "52:54:00:12:34:56"}, "need --guard"},
		{api.LimitFlags{"guard": "true", "guard-mac": "ff:ff:ff:ff:ff:ff", "guard-ip": "198.18.0.11"}, "guard"},
	} {
		if _, err := applyFlags(intent.New(), c.req, false); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v; want a usage error naming %s", c.req, err, c.want)
		}
	}
	if _, err := applyFlags(s, api.LimitFlags{"guard": "false"}, true); err == nil {
		t.Error("set --guard accepted; it cannot change in place")
	}
}

// --syn-pps alone is a quarantine by hand, not the quarantine profile.
func TestClassLimitAloneIsManual(t *testing.T) {
	fb := fakesplice.New("vm-1")
	m := newTestManager(t, t.TempDir(), fb)
	q, err := quarantineFlags(m, "vm-1", api.LimitFlags{"syn-pps": "200"}, false)
	if err != nil || q.Stage != StageManual || q.Profile != "" || q.Directions.FromVM.Limits.PPS != nil {
		t.Fatalf("%+v %v", q, err)
	}
}

// The guard's addresses: the request's, else what the learner finds when
// the profile allows; a manual quarantine with none is refused and changes
// nothing; an automatic one goes ahead without the guard.
func TestGuardAddresses(t *testing.T) {
	fb := fakesplice.New("vm-1", "vm-2")
	m := newTestManager(t, t.TempDir(), fb)
	var asked []bool
	testHost(m).Learn = func(port string, bridge bool) (guard.Config, []string) {
		asked = append(asked, bridge)
		if !bridge {
			return guard.Config{}, []string{"libvirt (not installed)"}
		}
		macs, _ := guard.ParseMACs("52:54:00:00:00:02")
		ips, _ := guard.ParseIPs("198.18.0.12")
		return guard.Config{MACs: macs, IPs: ips}, []string{"bridge"}
	}
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100", "guard": "true"}, false); !errors.Is(err, ErrUsage) || fb.Spliced("vm-1") {
		t.Fatalf("manual --guard without addresses: %v, spliced %v", err, fb.Spliced("vm-1"))
	}
	if len(asked) != 1 || asked[0] {
		t.Fatalf("a manual quarantine without a profile asked the bridge: %v", asked)
	}
	if _, err := quarantineFlags(m, "vm-1", api.LimitFlags{"pps": "100", "guard": "true", "guard-mac": "52:54:00:00:00:01", "guard-ip": "198.18.0.11"}, false); err != nil {
		t.Fatal(err)
	}
	// The quarantine profile guards and may learn: an alert's quarantine
	// gets the learnt addresses.
	if _, err := m.Alert("vm-2", true); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	spec := m.q["vm-2"].spec
	m.mu.Unlock()
	if !spec.Guard || spec.GuardMAC != "52:54:00:00:00:02" || spec.GuardIP != "198.18.0.12" {
		t.Fatalf("alert quarantine's guard: %v %q %q", spec.Guard, spec.GuardMAC, spec.GuardIP)
	}
}
