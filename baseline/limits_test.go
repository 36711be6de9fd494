package baseline

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestValidateRejects(t *testing.T) {
	ok := Limits{NewTCPFromVM: PerSecond(100, 0)}
	for _, tc := range []struct {
		name    string
		desired map[string]Limits
		want    string
	}{
		{"no limits", map[string]Limits{"vm-1": {}}, "port vm-1: no limit set"},
		{"empty port name", map[string]Limits{"": ok}, `port "": an interface name has 1 to 15 characters`},
		{"long port name", map[string]Limits{"a-very-long-port-name": ok}, "1 to 15 characters"},
		{"slash in name", map[string]Limits{"vm/1": ok}, "not a valid interface name"},
		{"odd period", map[string]Limits{"vm-1": {NewTCPFromVM: Rate{Count: 5, Per: 3 * time.Second}}}, "new-tcp-from-vm: period 3s: use 1s, 1m, 1h or 24h"},
		{"burst without count", map[string]Limits{"vm-1": {PPSToVM: Rate{Burst: 10}, PPSFromVM: PerSecond(1, 0)}}, "pps-to-vm: burst or period set without a count"},
		{"burst too big", map[string]Limits{"vm-1": {NewPerSourceToVM: PerMinute(10, MaxBurst+1)}}, "new-per-source-to-vm: burst 1048577 is above the maximum"},
		{"faster than 1/ns", map[string]Limits{"vm-1": {PPSFromVM: PerSecond(2e9, 0)}}, "pps-from-vm: 2000000000 per 1s is more than one per nanosecond"},
		{"too many ports", tooMany(), "16385 ports: at most 16384"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.desired)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalid with %q", err, tc.want)
			}
			// Apply validates before it touches the kernel: a Manager
			// without a usable namespace still returns the same error.
			m, _ := New(Options{NetNS: -1})
			if err2 := m.Apply(tc.desired); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("Apply = %v, want %v", err2, err)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	d := map[string]Limits{
		"vm-1":           {NewPerSourceToVM: PerMinute(10, 10)},
		"tap0123456789a": {PPSFromVM: PerSecond(1e6, 10000), PPSToVM: Rate{Count: 100, Per: time.Hour}},
	}
	if err := Validate(d); err != nil {
		t.Fatal(err)
	}
	if err := Validate(nil); err != nil {
		t.Fatal(err)
	}
}

func TestProfileID(t *testing.T) {
	a := Limits{NewTCPFromVM: PerSecond(100, 0)}
	b := Limits{NewTCPFromVM: Rate{Count: 100, Per: time.Second, Burst: DefaultBurst}}
	c := Limits{NewTCPFromVM: Rate{Count: 100}} // Per 0 means 1s
	if a.profileID() != b.profileID() || a.profileID() != c.profileID() {
		t.Errorf("equal limits, different profiles: %s %s %s", a.profileID(), b.profileID(), c.profileID())
	}
	// The same rate in another field is another profile.
	if d := (Limits{NewTCPToVM: PerSecond(100, 0)}); d.profileID() == a.profileID() {
		t.Errorf("different limits share profile %s", a.profileID())
	}
	if e := (Limits{NewTCPFromVM: PerSecond(100, 6)}); e.profileID() == a.profileID() {
		t.Errorf("different bursts share profile %s", a.profileID())
	}
}

func TestRefill(t *testing.T) {
	if got := PerMinute(10, 10).refill(); got != time.Minute {
		t.Errorf("10/min burst 10 refills in %v, want 1m", got)
	}
	if got := PerSecond(2000, 200).refill(); got != 100*time.Millisecond {
		t.Errorf("2000/s burst 200 refills in %v, want 100ms", got)
	}
}

func TestNeeds(t *testing.T) {
	for _, tc := range []struct {
		l        Limits
		from, to bool
	}{
		{Limits{NewTCPFromVM: PerSecond(1, 0)}, true, false},
		{Limits{NewTCPToVM: PerSecond(1, 0)}, false, true},
		{Limits{PPSToVM: PerSecond(1, 0)}, false, true},
		// A UDP limit in one direction tracks flows in both (a reply is
		// part of the flow it answers).
		{Limits{NewUDPFromVM: PerSecond(1, 0)}, true, true},
		{Limits{NewPerSourceToVM: PerMinute(1, 0)}, true, true},
	} {
		p := newProfile(tc.l)
		if p.needs(fromVM) != tc.from || p.needs(toVM) != tc.to {
			t.Errorf("%v: needs from=%v to=%v, want %v %v", tc.l, p.needs(fromVM), p.needs(toVM), tc.from, tc.to)
		}
	}
}

// tooMany is a desired set one port over MaxPorts.
func tooMany() map[string]Limits {
	d := map[string]Limits{}
	for i := 0; i <= MaxPorts; i++ {
		d[fmt.Sprintf("vm-%d", i)] = Limits{PPSFromVM: PerSecond(1000, 0)}
	}
	return d
}
