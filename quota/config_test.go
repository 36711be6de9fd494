package quota

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseRejects(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := map[string]string{"commit": "100mbit"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name   string
		tenant string
		set    map[string]string
		want   string // a fragment of the error
	}{
		{"no commit", "t", map[string]string{}, "--commit is required"},
		{"zero commit", "t", base("commit", "0"), "--commit is zero"},
		{"bad commit unit", "t", base("commit", "100mb"), `--commit: units: rate "100mb": unknown unit`},
		{"negative commit", "t", base("commit", "-5mbit"), "negative"},
		{"bad tenant", "../x", base(), `tenant "../x"`},
		{"empty tenant", "", base(), `tenant ""`},
		{"unknown key", "t", base("burst", "5"), `unknown setting "burst"`},
		{"bad period", "t", base("period", "fortnight"), `--period "fortnight"`},
		{"zero period", "t", base("period", "0d"), "--period"},
		{"bad interval", "t", base("interval", "five"), `--interval "five"`},
		{"short interval", "t", base("interval", "500ms"), "--interval 500ms is shorter than 1s"},
		{"interval not dividing a day", "t", base("interval", "7m"), "--interval 7m0s does not divide a day"},
		{"interval not dividing the period", "t", base("period", "1h", "interval", "7m"), "does not divide --period 1h0m0s"},
		{"too many intervals", "t", base("interval", "2s"), "more than 262144"},
		{"percentile zero", "t", base("percentile", "0"), "--percentile 0 is outside"},
		{"percentile above 100", "t", base("percentile", "101"), "--percentile 101 is outside"},
		{"percentile word", "t", base("percentile", "high"), `--percentile "high"`},
		{"direction", "t", base("direction", "both"), `--direction "both"`},
		{"soft above 100%", "t", base("soft", "120%"), "--soft 120% is outside"},
		{"soft word", "t", base("soft", "most"), `--soft "most"`},
		{"exponent zero", "t", base("exponent", "0"), "--exponent 0 is outside"},
		{"exponent NaN", "t", base("exponent", "NaN"), "--exponent NaN is outside"},
		{"ceiling below commit", "t", base("burst-ceiling", "50mbit"), "--burst-ceiling 50mbit is below --commit 100mbit"},
		{"ceiling zero", "t", base("burst-ceiling", "0"), "use none for no ceiling"},
		{"bypass reserve", "t", base("bypass-reserve", "60%"), "--bypass-reserve 60% is outside"},
		{"burst reserve", "t", base("burst-reserve", "-3"), `--burst-reserve "-3"`},
		{"duplicate port", "t", base("ports", "vm-1,vm-1"), "--ports: vm-1 is listed twice"},
		{"bad port", "t", base("ports", "vm-1,,vm-2"), `--ports: "" is not an interface name`},
		{"long port", "t", base("ports", "a-very-long-port-name"), "is not an interface name"},
		{"commit below a byte per interval", "t", base("commit", "1bit", "interval", "1s", "period", "1h"), "less than a byte per --interval"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.tenant, c.set)
			if err == nil {
				t.Fatalf("accepted %v", c.set)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestParseDefaultsAndRoundTrip(t *testing.T) {
	c, err := Parse("acme", map[string]string{"commit": "100mbit", "ports": "vm-1-00c9,vm-2-00c9"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Commit != 100_000_000 || !c.Period.IsMonth() || c.Interval != 5*time.Minute || c.Percentile != 95 ||
		c.Direction != BillMax || c.Soft != 0.75 || c.Exponent != 1 || c.BurstCeiling != 0 || c.BurstReserve != AutoBurstReserve {
		t.Errorf("defaults: %+v", c)
	}
	c2, err := Parse("acme", map[string]string{
		"commit": "12.5MBps", "period": "1d", "interval": "2s", "percentile": "99.5%", "direction": "sum",
		"soft": "0.8", "exponent": "2", "burst-ceiling": "1gbit", "bypass-reserve": "2%", "burst-reserve": "3",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c2.Commit != 100_000_000 { // MBps is megaBYTES per second, as in tc
		t.Errorf("12.5MBps = %d bit/s, want 100000000", c2.Commit)
	}
	if c2.Period.Length != 24*time.Hour || c2.Interval != 2*time.Second || c2.Percentile != 99.5 || c2.Direction != BillSum ||
		c2.Soft != 0.8 || c2.Exponent != 2 || c2.BurstCeiling != 1e9 || c2.BypassReserve != 0.02 || c2.BurstReserve != 3 {
		t.Errorf("parsed: %+v", c2)
	}
	for _, c := range []Config{c, c2} {
		back, err := Parse(c.Tenant, c.Settings())
		if err != nil {
			t.Fatalf("Settings %v do not parse back: %v", c.Settings(), err)
		}
		if back.Settings()["ports"] != c.Settings()["ports"] || back.Commit != c.Commit || back.Period != c.Period ||
			back.Interval != c.Interval || back.Percentile != c.Percentile || back.Direction != c.Direction ||
			back.Soft != c.Soft || back.Exponent != c.Exponent || back.BurstCeiling != c.BurstCeiling ||
			back.BypassReserve != c.BypassReserve || back.BurstReserve != c.BurstReserve {
			t.Errorf("round trip: %+v\nback: %+v", c, back)
		}
	}
}

func TestPeriodBounds(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v.UTC()
	}
	cases := []struct {
		p          Period
		at         string
		start, end string
	}{
		{Month, "2025-02-14T10:00:00Z", "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"},
		{Month, "2024-02-29T23:59:59Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"},
		{Month, "2025-12-31T23:59:59Z", "2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z"},
		// A local time is taken in UTC: 00:30 in Paris on March 1 is still February.
		{Month, "2025-03-01T00:30:00+01:00", "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"},
		{Period{Length: 30 * 24 * time.Hour}, "1970-01-31T00:00:00Z", "1970-01-31T00:00:00Z", "1970-03-02T00:00:00Z"},
		{Period{Length: time.Hour, Anchor: utc("2025-01-01T00:10:00Z")}, "2025-01-01T05:09:59Z", "2025-01-01T04:10:00Z", "2025-01-01T05:10:00Z"},
		{Period{Length: time.Hour, Anchor: utc("2025-01-01T00:10:00Z")}, "2024-12-31T23:59:00Z", "2024-12-31T23:10:00Z", "2025-01-01T00:10:00Z"},
	}
	for _, c := range cases {
		s, e := c.p.Bounds(utc(c.at))
		if !s.Equal(utc(c.start)) || !e.Equal(utc(c.end)) {
			t.Errorf("%s at %s: [%s, %s), want [%s, %s)", c.p, c.at, s, e, c.start, c.end)
		}
	}
	for _, s := range []string{"month", "30d", "1.5d", "12h", "10m"} {
		p, err := ParsePeriod(s)
		if err != nil {
			t.Fatal(err)
		}
		if back, _ := ParsePeriod(p.String()); back != p {
			t.Errorf("%s → %s → %v", s, p, back)
		}
	}
}
