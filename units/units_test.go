package units

import (
	"math"
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Rate
	}{
		{"0", 0},
		{"0bit", 0},
		{"800", 800},
		{"800bit", 800},
		{"1kbit", 1000},
		{"1.5kbit", 1500},
		{"1500kbit", 1_500_000},
		{"16mbit", 16_000_000},
		{"16Mbit", 16_000_000},
		{"16MBIT", 16_000_000},
		{"2gbit", 2_000_000_000},
		{"1tbit", 1_000_000_000_000},
		{"1kibit", 1024},
		{"1Kibit", 1024},
		{"2mibit", 2 << 20},
		{"1gibit", 1 << 30},
		{"1tibit", 1 << 40},
		{"1bps", 8},
		{"1Bps", 8},
		{"100bps", 800},
		{"1kbps", 8000},
		{"1KBps", 8000},
		{"1mbps", 8_000_000},
		{"1MBps", 8_000_000},
		{"1gbps", 8_000_000_000},
		{"1tbps", 8_000_000_000_000},
		{"1kibps", 8 * 1024},
		{"1KiBps", 8 * 1024},
		{"1mibps", 8 << 20},
		{"1gibps", 8 << 30},
		{"1tibps", 8 << 40},
		{"0.5mbit", 500_000},
		{".5mbit", 500_000},
		{"5.mbit", 5_000_000},
		{"0.3kbit", 300}, // 0.3*1000 is not exact in float; rounded
		{"1e3kbit", 1_000_000},
		{"1E6", 1_000_000},
		{"1e+6bit", 1_000_000},
		{"+10mbit", 10_000_000},
		{"10 mbit", 10_000_000},
		{"  10mbit  ", 10_000_000},
		{"1.4bit", 1},
		{"1.5bit", 2},
		{"18446744073709551615", math.MaxUint64},
		{"18446744073709551615bit", math.MaxUint64},
		{"18446744073709551kbit", 18446744073709551000},
	} {
		got, err := ParseRate(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, nil", tt.in, got, err, tt.want)
		}
	}
}

func TestParseRateErrors(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // fragment of the error message
	}{
		{"", `units: rate "": empty`},
		{"   ", `units: rate "   ": empty`},
		{"10 furlongs", `units: rate "10 furlongs": unknown unit "furlongs" (use bit, kbit, mbit, gbit; bps, kbps, mbps mean bytes per second)`},
		{"10mbit/s", `unknown unit "mbit/s"`},
		{"10kb", `unknown unit "kb"`}, // a size unit, not a rate unit
		{"10mbitmbit", `unknown unit "mbitmbit"`},
		{"-1", `units: rate "-1": negative`},
		{"-1mbit", `negative`},
		{"-0", `negative`},
		{"NaN", `no number`},
		{"nan", `no number`},
		{"Inf", `no number`},
		{"+Inf", `no number`},
		{"mbit", `units: rate "mbit": no number (want e.g. 10mbit)`},
		{".", `no number`},
		{"+", `no number`},
		{"0x10", `unknown unit "x10"`},
		{"1e", `unknown unit "e"`},
		{"18446744073709551616", `out of range`},
		{"18446744073709552kbit", `out of range`},
		{"1e20bit", `out of range`},
		{"1e400", `out of range`},
		{"20000000tibit", `out of range`},
	} {
		got, err := ParseRate(tt.in)
		if err == nil {
			t.Errorf("ParseRate(%q) = %d, nil; want error containing %q", tt.in, got, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseRate(%q) error = %q; want it to contain %q", tt.in, err, tt.want)
		}
	}
}

func TestRateString(t *testing.T) {
	for _, tt := range []struct {
		in   Rate
		want string
	}{
		{0, "0bit"},
		{800, "800bit"},
		{1000, "1kbit"},
		{1_500_000, "1500kbit"},
		{16_000_000, "16mbit"},
		{10_000_000_000, "10gbit"},
		{3_000_000_000_000, "3tbit"},
		{1024, "1kibit"},
		{2048, "2kibit"},
		{1 << 20, "1mibit"},
		{1_024_000, "1024kbit"}, // SI wins when both divide
		{1001, "1001bit"},
		{math.MaxUint64, "18446744073709551615bit"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Rate(%d).String() = %q; want %q", uint64(tt.in), got, tt.want)
		}
	}
}

func TestRateBytesPerSecond(t *testing.T) {
	if got := Rate(8_000_000).BytesPerSecond(); got != 1_000_000 {
		t.Errorf("8mbit = %v bytes/s; want 1e6", got)
	}
	if got := Rate(12).BytesPerSecond(); got != 1.5 {
		t.Errorf("12bit = %v bytes/s; want 1.5", got)
	}
}

func TestRateRoundTrip(t *testing.T) {
	vals := []Rate{0, 1, 7, 8, 999, 1000, 1001, 1024, 1500, 12_345, 1_500_000, 16_000_000,
		1 << 20, 3 << 30, 5 << 40, 1e9, 25e9, 1e12, 7e12, 1e15, 1 << 53, 1<<53 + 1,
		math.MaxUint64 / 1000 * 1000, math.MaxUint64 - 1, math.MaxUint64}
	for i := uint64(1); i < 1<<63; i *= 3 {
		vals = append(vals, Rate(i), Rate(i*8))
	}
	for _, v := range vals {
		s := v.String()
		got, err := ParseRate(s)
		if err != nil || got != v {
			t.Errorf("ParseRate(%q) = %d, %v; want %d (round trip)", s, got, err, uint64(v))
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Size
	}{
		{"0", 0},
		{"1522", 1522},
		{"1522b", 1522},
		{"1522B", 1522},
		{"1k", 1024},
		{"1kb", 1024},
		{"1KB", 1024},
		{"1.5k", 1536},
		{"64kb", 64 << 10},
		{"1m", 1 << 20},
		{"16mb", 16 << 20},
		{"16MB", 16 << 20},
		{"1g", 1 << 30},
		{"2gb", 2 << 30},
		{"1kbit", 128}, // tc's get_size: 1024 bits
		{"8kbit", 1024},
		{"1mbit", 128 << 10},
		{"1gbit", 128 << 20},
		{"12 kbit", 1536},
		{"0.5kb", 512},
		{"1.3k", 1331}, // 1331.2 rounded
		{"1e3", 1000},
		{" 100b ", 100},
		{"18446744073709551615", math.MaxUint64},
		{"18446744073709551615b", math.MaxUint64},
	} {
		got, err := ParseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, nil", tt.in, got, err, tt.want)
		}
	}
}

func TestParseSizeErrors(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string
	}{
		{"", `units: size "": empty`},
		{"10 furlongs", `units: size "10 furlongs": unknown unit "furlongs" (use b, kb, mb, gb; kbit, mbit, gbit mean bits)`},
		{"10bit", `unknown unit "bit"`},
		{"10tb", `unknown unit "tb"`},
		{"10kbps", `unknown unit "kbps"`},
		{"-1", `units: size "-1": negative`},
		{"-1k", `negative`},
		{"NaN", `no number`},
		{"inf", `no number`},
		{"kb", `units: size "kb": no number (want e.g. 1522b)`},
		{"18446744073709551616", `out of range`},
		{"18014398509481984k", `out of range`},
		{"1e30g", `out of range`},
	} {
		got, err := ParseSize(tt.in)
		if err == nil {
			t.Errorf("ParseSize(%q) = %d, nil; want error containing %q", tt.in, got, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSize(%q) error = %q; want it to contain %q", tt.in, err, tt.want)
		}
	}
}

func TestSizeString(t *testing.T) {
	for _, tt := range []struct {
		in   Size
		want string
	}{
		{0, "0b"},
		{100, "100b"},
		{1522, "1522b"},
		{1024, "1kb"},
		{1536, "1536b"},
		{64 << 10, "64kb"},
		{16 << 20, "16mb"},
		{1 << 30, "1gb"},
		{1 << 40, "1024gb"},
		{math.MaxUint64, "18446744073709551615b"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q; want %q", uint64(tt.in), got, tt.want)
		}
	}
}

func TestSizeRoundTrip(t *testing.T) {
	vals := []Size{0, 1, 100, 1500, 1522, 1024, 1536, 9000, 64 << 10, 1<<20 + 1, 16 << 20,
		3 << 30, 1 << 40, 1 << 53, 1<<53 + 1, math.MaxUint64 - 1, math.MaxUint64}
	for i := uint64(1); i < 1<<63; i *= 5 {
		vals = append(vals, Size(i), Size(i*1024))
	}
	for _, v := range vals {
		s := v.String()
		got, err := ParseSize(s)
		if err != nil || got != v {
			t.Errorf("ParseSize(%q) = %d, %v; want %d (round trip)", s, got, err, uint64(v))
		}
	}
}
