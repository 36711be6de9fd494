package baseline

import (
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/api"
)

func TestParseRate(t *testing.T) {
	for _, c := range []struct {
		in   string
		def  time.Duration
		want Rate
	}{
		{"", time.Second, Rate{}},
		{"100", time.Second, PerSecond(100, 100)},
		{"10", time.Minute, PerMinute(10, 10)},
		{"10/min", time.Second, PerMinute(10, 10)},
		{"10/min:5", time.Second, PerMinute(10, 5)},
		{"2000/s:1000", time.Minute, PerSecond(2000, 1000)},
		{"3/h", time.Second, Rate{Count: 3, Per: time.Hour, Burst: 3}},
		{"5000000", time.Second, PerSecond(5000000, MaxBurst)},
	} {
		got, err := ParseRate(c.in, c.def)
		if err != nil || got != c.want {
			t.Errorf("ParseRate(%q): %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"0", "above 0"}, {"-1", "above 0"}, {"x", "above 0"}, {"10/week", `unit "week"`},
		{"10:0", "burst"}, {"10:x", "burst"}, {"10:2000000", "above the maximum"},
		{"2000000000/s", "more than one per nanosecond"},
	} {
		if _, err := ParseRate(c.in, time.Second); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseRate(%q): %v, want an error with %q", c.in, err, c.want)
		}
	}
}

func TestParseLimits(t *testing.T) {
	l, err := ParseLimits(api.BaselineLimits{NewConnRate: "100", ToVMNewConnRate: "200", ToVMNewConnPerSource: "10", PPS: "5000", ToVMPPS: "6000"})
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{NewTCPFromVM: PerSecond(100, 100), NewUDPFromVM: PerSecond(100, 100),
		NewTCPToVM: PerSecond(200, 200), NewUDPToVM: PerSecond(200, 200),
		NewPerSourceToVM: PerMinute(10, 10), PPSFromVM: PerSecond(5000, 5000), PPSToVM: PerSecond(6000, 6000)}
	if l != want {
		t.Fatalf("got %v\nwant %v", l, want)
	}
	if _, err := ParseLimits(api.BaselineLimits{}); err == nil || !strings.Contains(err.Error(), "--new-conn-rate") {
		t.Errorf("no limit: %v", err)
	}
	if _, err := ParseLimits(api.BaselineLimits{ToVMPPS: "1/fortnight"}); err == nil || !strings.HasPrefix(err.Error(), "--to-vm-pps ") {
		t.Errorf("bad to-vm-pps: %v", err)
	}
}
