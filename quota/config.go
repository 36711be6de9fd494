// Package quota enforces percentile-billed traffic commitments for
// burstable tenants: hosting ports billed at the 95th percentile of their
// 5-minute samples, where 5% of a period's intervals may exceed the commit
// for free.
//
// A tenant (Config) is one or more ports with a commit rate, a billing
// period, a sample interval, a percentile and a billed direction. Its
// Account is shared by the forwarders of all its ports: each pipe calls
// Admit per frame after its own budgets (through its own Hook, which
// implements forward.Quota), the daemon calls Tick to close intervals and
// persists Snapshot in a Store, and the control API calls Report. The package is pure
// logic over bytes, counts and times: time and randomness are parameters,
// and it starts no goroutines.
//
// Inside an interval, frames pass at full speed until Soft of the
// interval's byte quota is used; from there a drop probability rises from 0
// to 1 at the quota (linearly by default, with a configurable exponent), and
// the quota is a hard cap. Bypass and control frames are never dropped but
// count towards the bill, so room is reserved for them. Intervals that may
// run above the commit (burst intervals, 5% of the period) are spent by an
// online policy that learns how valuable a burst is from the offered load
// of past intervals and keeps a reserve so that the billed percentile never
// exceeds the commit.
package quota

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/units"
)

// Dir is the way a frame travels relative to the VM. Its values are those
// of classify.Direction (FromVM 0, ToVM 1), so a forwarder converts with
// quota.Dir(dir).
type Dir uint8

const (
	// FromVM is a frame the VM sent.
	FromVM Dir = iota
	// ToVM is a frame destined to the VM.
	ToVM
	numDirs
)

// String returns "from_vm" or "to_vm" ("invalid" out of range).
func (d Dir) String() string {
	switch d {
	case FromVM:
		return "from_vm"
	case ToVM:
		return "to_vm"
	}
	return "invalid"
}

// Billed says which traffic the bill is computed on.
type Billed uint8

const (
	// BillMax bills the larger of the two directions' percentiles: each
	// direction is enforced on its own, with its own burst intervals.
	BillMax Billed = iota
	// BillSum bills the percentile of the per-interval sum of both
	// directions: one quota shared by both.
	BillSum
	// BillToVM bills only traffic to the VM; the other direction passes
	// unmetered (it is still counted).
	BillToVM
	// BillFromVM bills only traffic from the VM.
	BillFromVM
)

var billedNames = [...]string{BillMax: "max", BillSum: "sum", BillToVM: "to_vm", BillFromVM: "from_vm"}

// String returns the direction's name as the --direction flag spells it.
func (b Billed) String() string {
	if int(b) < len(billedNames) {
		return billedNames[b]
	}
	return "invalid"
}

// ParseBilled reads max, sum, to_vm or from_vm.
func ParseBilled(s string) (Billed, error) {
	for i, n := range billedNames {
		if s == n {
			return Billed(i), nil
		}
	}
	return 0, invalid("--direction %q is not a billed direction; use max (the default), sum, to_vm or from_vm", s)
}

// Period is a billing period. The zero value is the calendar month in UTC.
type Period struct {
	// Length is a fixed period length; 0 means the calendar month (UTC).
	Length time.Duration
	// Anchor is where fixed periods start: periods are [Anchor+k·Length,
	// Anchor+(k+1)·Length). The zero value means the Unix epoch. Unused for
	// calendar months.
	Anchor time.Time
}

// Month is the calendar month in UTC, the default period.
var Month = Period{}

// IsMonth reports whether p is the calendar month.
func (p Period) IsMonth() bool { return p.Length == 0 }

// String returns "month" or the fixed length as ParsePeriod reads it back
// ("30d", "12h", "10m0s").
func (p Period) String() string {
	if p.IsMonth() {
		return "month"
	}
	return formatDuration(p.Length)
}

// Bounds returns the period containing t: start <= t < end, in UTC.
func (p Period) Bounds(t time.Time) (start, end time.Time) {
	t = t.UTC()
	if p.IsMonth() {
		start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0)
	}
	anchor := p.anchor()
	d := t.Sub(anchor)
	k := d / p.Length
	if d < 0 && d%p.Length != 0 {
		k--
	}
	// Sub saturates for times far from the anchor; step from there.
	start = anchor.Add(k * p.Length)
	for start.After(t) {
		start = start.Add(-p.Length)
	}
	for !start.Add(p.Length).After(t) {
		start = start.Add(p.Length)
	}
	return start, start.Add(p.Length)
}

func (p Period) anchor() time.Time {
	if p.Anchor.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return p.Anchor.UTC()
}

// longest is the longest period p can have: 31 days for a month.
func (p Period) longest() time.Duration {
	if p.IsMonth() {
		return 31 * 24 * time.Hour
	}
	return p.Length
}

// ParsePeriod reads "month" (the calendar month, UTC) or a fixed length: a
// Go duration ("720h", "10m") or a number of days ("30d").
func ParsePeriod(s string) (Period, error) {
	if s == "month" {
		return Month, nil
	}
	d, err := parseDuration(s)
	if err != nil || d <= 0 {
		return Period{}, invalid("--period %q is not a period; use month (the calendar month, UTC) or a length such as 30d or 720h", s)
	}
	return Period{Length: d}, nil
}

// parseDuration is time.ParseDuration plus a "d" (24 h) suffix: "30d", "1.5d".
func parseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		f, err := strconv.ParseFloat(n, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 100_000 {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		return time.Duration(f * float64(24*time.Hour)), nil
	}
	return time.ParseDuration(s)
}

func formatDuration(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

// Defaults, as the issue states them.
const (
	DefaultInterval   = 5 * time.Minute
	DefaultPercentile = 95.0
	DefaultSoft       = 0.75
	DefaultExponent   = 1.0
	// DefaultBypassReserve is the share of each interval's quota kept for
	// bypass and control frames.
	DefaultBypassReserve = 0.01
	// AutoBurstReserve asks for the default burst reserve: a fiftieth of
	// the period's free intervals, rounded down.
	AutoBurstReserve = -1
)

// MaxIntervals bounds the intervals of one period (a calendar month of 10 s
// intervals is 267 840: too many; 11 s is the shortest for a month). It
// keeps an Account's memory bounded: 16 bytes per interval and billed
// direction.
const MaxIntervals = 1 << 18

// MinInterval is the shortest sample interval accepted.
const MinInterval = time.Second

// Config is one tenant. Build it with Defaults (or Parse) and set what
// differs: the zero value is not valid (no tenant, no commit).
type Config struct {
	// Tenant names the tenant: 1 to 64 letters, digits, '.', '_' or '-',
	// not starting with '.' or '-'. It names the tenant's state file.
	Tenant string
	// Ports are the switch ports whose traffic the tenant is billed for.
	// The quota package only checks that they are unique interface names;
	// the daemon checks that they exist.
	Ports []string
	// Commit is the committed rate in bits per second; > 0.
	Commit units.Rate
	// Period is the billing period (default the calendar month, UTC).
	Period Period
	// Interval is the sample interval (default 5 min); it must divide the
	// period (a day, for calendar months).
	Interval time.Duration
	// Percentile is the billed percentile, nearest-rank, in (0, 100]
	// (default 95): the period's top 100-Percentile percent of intervals
	// are free.
	Percentile float64
	// Direction is the billed direction (default max).
	Direction Billed
	// Soft is the fraction of an interval's quota passed at full speed
	// before drops start, in [0, 1] (default 0.75). 1 means a hard cap only.
	Soft float64
	// Exponent shapes the drop probability between Soft and the quota:
	// p = ((used-soft)/(quota-soft))^Exponent. 1 is linear; above 1 is
	// gentler at first and steeper near the quota. > 0, at most 16.
	Exponent float64
	// BurstCeiling is the highest average rate, in bits per second, of an
	// interval allowed above the commit; 0 means none (the port's speed).
	// A ceiling equal to Commit disables bursting.
	BurstCeiling units.Rate
	// BypassReserve is the fraction of each interval's quota kept for
	// bypass and control frames, in [0, 0.5] (default 0.01). Other frames
	// stop where they would eat into it; bypass frames beyond it push the
	// others out further.
	BypassReserve float64
	// BurstReserve is the number of burst intervals kept back for
	// intervals pushed above the commit by bypass traffic, never spent on
	// purpose. AutoBurstReserve (the default) means a fiftieth of the
	// period's free intervals.
	BurstReserve int
}

// Defaults returns a Config for tenant with the given commit and every
// other setting at its default.
func Defaults(tenant string, commit units.Rate) Config {
	return Config{
		Tenant:        tenant,
		Commit:        commit,
		Period:        Month,
		Interval:      DefaultInterval,
		Percentile:    DefaultPercentile,
		Direction:     BillMax,
		Soft:          DefaultSoft,
		Exponent:      DefaultExponent,
		BypassReserve: DefaultBypassReserve,
		BurstReserve:  AutoBurstReserve,
	}
}

// ErrInvalidConfig is wrapped by every error that rejects a configuration.
// The message names the setting to fix; report it to the operator as a
// usage error, do not retry.
var ErrInvalidConfig = errors.New("invalid quota config")

type configError struct{ msg string }

func (e *configError) Error() string        { return "quota: " + e.msg }
func (e *configError) Is(target error) bool { return target == ErrInvalidConfig }

func invalid(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// ValidTenant checks a tenant name on its own (the control API checks it
// before anything else).
func ValidTenant(name string) error {
	if !nameRE.MatchString(name) {
		return invalid("tenant %q: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", name)
	}
	return nil
}

// Validate checks c and returns an error naming the setting (as its
// command-line flag) to fix, wrapping ErrInvalidConfig, or nil.
func (c Config) Validate() error {
	if err := ValidTenant(c.Tenant); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, p := range c.Ports {
		if p == "" || len(p) > 15 || strings.ContainsAny(p, "/ \t\n,:") {
			return invalid("--ports: %q is not an interface name (1 to 15 characters, no '/', ',', ':' or spaces)", p)
		}
		if seen[p] {
			return invalid("--ports: %s is listed twice", p)
		}
		seen[p] = true
	}
	if c.Commit == 0 {
		return invalid("--commit is zero; give the committed rate, e.g. 100mbit")
	}
	if c.Commit > 1<<50 {
		return invalid("--commit %s is beyond any port's speed", c.Commit)
	}
	if c.Period.Length < 0 {
		return invalid("--period %v is negative; use month or a length such as 30d", c.Period.Length)
	}
	if c.Interval < MinInterval {
		return invalid("--interval %v is shorter than %v", c.Interval, MinInterval)
	}
	if c.Period.IsMonth() {
		if (24*time.Hour)%c.Interval != 0 {
			return invalid("--interval %v does not divide a day, so it cannot tile a calendar month; use e.g. 5m", c.Interval)
		}
	} else if c.Period.Length%c.Interval != 0 {
		return invalid("--interval %v does not divide --period %s; use an interval that does", c.Interval, c.Period)
	}
	if n := c.Period.longest() / c.Interval; n > MaxIntervals {
		return invalid("--interval %v makes %d intervals in a period of %s, more than %d; use a longer interval or a shorter period", c.Interval, n, c.Period, MaxIntervals)
	}
	if math.IsNaN(c.Percentile) || c.Percentile <= 0 || c.Percentile > 100 {
		return invalid("--percentile %v is outside (0, 100]; the usual is 95", c.Percentile)
	}
	if c.Direction > BillFromVM {
		return invalid("--direction %d is not a billed direction; use max, sum, to_vm or from_vm", c.Direction)
	}
	if math.IsNaN(c.Soft) || c.Soft < 0 || c.Soft > 1 {
		return invalid("--soft %v is outside 0%%..100%%; the default is 75%%", pct(c.Soft))
	}
	if math.IsNaN(c.Exponent) || c.Exponent <= 0 || c.Exponent > 16 {
		return invalid("--exponent %v is outside (0, 16]; 1 is a linear drop curve", c.Exponent)
	}
	if c.BurstCeiling != 0 && c.BurstCeiling < c.Commit {
		return invalid("--burst-ceiling %s is below --commit %s; use at least the commit (equal disables bursting), or none", c.BurstCeiling, c.Commit)
	}
	if math.IsNaN(c.BypassReserve) || c.BypassReserve < 0 || c.BypassReserve > 0.5 {
		return invalid("--bypass-reserve %v is outside 0%%..50%%", pct(c.BypassReserve))
	}
	if c.BurstReserve < AutoBurstReserve {
		return invalid("--burst-reserve %d is negative; use a number of intervals, or auto", c.BurstReserve)
	}
	if c.commitBytes(c.Interval) < 1 {
		return invalid("--commit %s passes less than a byte per --interval %v", c.Commit, c.Interval)
	}
	return nil
}

func pct(f float64) string { return strconv.FormatFloat(f*100, 'g', -1, 64) + "%" }

// commitBytes is the byte quota of an interval of length d at the commit:
// rounded down, so that a sample at the quota never bills above the commit.
func (c Config) commitBytes(d time.Duration) int64 { return rateBytes(c.Commit, d) }

// rateBytes is how many whole bytes rate r passes in d, rounded down.
func rateBytes(r units.Rate, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(r), uint64(d))
	const div = 8 * uint64(time.Second)
	if hi >= div { // beyond int64 bytes anyway
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, div)
	if q > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(q)
}

// Keys lists the settings Set understands, in the order Settings prints them.
var Keys = []string{"ports", "commit", "period", "interval", "percentile", "direction", "soft", "exponent", "burst-ceiling", "bypass-reserve", "burst-reserve"}

// Set parses one setting as the command line spells it (key without the
// dashes): commit and burst-ceiling take tc rates ("100mbit"; kbps means
// kilobytes per second; burst-ceiling also takes none), period "month" or a
// length ("30d"), interval a duration, percentile a number ("95" or "95%"),
// soft and bypass-reserve a percentage or fraction ("75%", "0.75"),
// burst-reserve a count or auto, ports a comma-separated list.
func (c *Config) Set(key, value string) error {
	switch key {
	case "ports":
		ps := strings.Split(value, ",")
		if value == "" {
			ps = nil
		}
		c.Ports = ps
	case "commit":
		r, err := units.ParseRate(value)
		if err != nil {
			return invalid("--commit: %v", err)
		}
		c.Commit = r
	case "burst-ceiling":
		if value == "none" {
			c.BurstCeiling = 0
			return nil
		}
		r, err := units.ParseRate(value)
		if err != nil {
			return invalid("--burst-ceiling: %v (or none)", err)
		}
		if r == 0 {
			return invalid("--burst-ceiling 0: use none for no ceiling, or a rate")
		}
		c.BurstCeiling = r
	case "period":
		p, err := ParsePeriod(value)
		if err != nil {
			return err
		}
		c.Period.Length = p.Length
	case "interval":
		d, err := parseDuration(value)
		if err != nil {
			return invalid("--interval %q is not a duration; use e.g. 5m or 2s", value)
		}
		c.Interval = d
	case "percentile":
		f, err := strconv.ParseFloat(strings.TrimSuffix(value, "%"), 64)
		if err != nil {
			return invalid("--percentile %q is not a number; use e.g. 95", value)
		}
		c.Percentile = f
	case "direction":
		b, err := ParseBilled(value)
		if err != nil {
			return err
		}
		c.Direction = b
	case "soft", "bypass-reserve":
		f, err := parseFraction(value)
		if err != nil {
			return invalid("--%s %q is not a percentage; use e.g. 75%% or 0.75", key, value)
		}
		if key == "soft" {
			c.Soft = f
		} else {
			c.BypassReserve = f
		}
	case "exponent":
		f, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return invalid("--exponent %q is not a number; use e.g. 1 (linear) or 2", value)
		}
		c.Exponent = f
	case "burst-reserve":
		if value == "auto" {
			c.BurstReserve = AutoBurstReserve
			return nil
		}
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 {
			return invalid("--burst-reserve %q is not a count of intervals; use e.g. 8, or auto", value)
		}
		c.BurstReserve = n
	default:
		return invalid("unknown setting %q; known: %s", key, strings.Join(Keys, ", "))
	}
	return nil
}

func parseFraction(s string) (float64, error) {
	if n, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(n, 64)
		return f / 100, err
	}
	return strconv.ParseFloat(s, 64)
}

// Parse builds a validated Config for tenant from settings as the command
// line spells them (see Set); unnamed settings keep their defaults. commit
// is required. It applies the settings in the order of Keys, so errors are
// deterministic.
func Parse(tenant string, settings map[string]string) (Config, error) {
	c := Defaults(tenant, 0)
	for k := range settings {
		if !slices.Contains(Keys, k) {
			return Config{}, invalid("unknown setting %q; known: %s", k, strings.Join(Keys, ", "))
		}
	}
	if _, ok := settings["commit"]; !ok {
		return Config{}, invalid("--commit is required, e.g. --commit 100mbit")
	}
	for _, k := range Keys {
		if v, ok := settings[k]; ok {
			if err := c.Set(k, v); err != nil {
				return Config{}, err
			}
		}
	}
	return c, c.Validate()
}

// Settings returns c in Set's words, every key of Keys; Parse reads it back
// to an equal Config (Anchor aside).
func (c Config) Settings() map[string]string {
	ceil := "none"
	if c.BurstCeiling != 0 {
		ceil = c.BurstCeiling.String()
	}
	br := "auto"
	if c.BurstReserve >= 0 {
		br = strconv.Itoa(c.BurstReserve)
	}
	return map[string]string{
		"ports":          strings.Join(c.Ports, ","),
		"commit":         c.Commit.String(),
		"period":         c.Period.String(),
		"interval":       formatDuration(c.Interval),
		"percentile":     strconv.FormatFloat(c.Percentile, 'g', -1, 64),
		"direction":      c.Direction.String(),
		"soft":           pct(c.Soft),
		"exponent":       strconv.FormatFloat(c.Exponent, 'g', -1, 64),
		"burst-ceiling":  ceil,
		"bypass-reserve": pct(c.BypassReserve),
		"burst-reserve":  br,
	}
}
