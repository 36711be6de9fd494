package chart

import (
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

func figure() Figure {
	nan := math.NaN()
	return Figure{
		Title:    "shaperd <bench> & peers",
		Subtitle: []string{"AMD EPYC, 2 cores"},
		Panels: []Panel{
			{
				Title:      "error vs limit",
				Unit:       "%",
				Categories: []string{"nft", "tbf", "ovs"},
				Series: []Series{
					{Name: "64 B", Values: []float64{0.5, -3.2, nan}},
					{Name: "250 B", Values: []float64{0.1, -1, nan}},
				},
				Notes: []string{"", "", "lab ovs mode not available: mode 'ovs' is not implemented yet"},
				Ref:   nan,
			},
			{
				Title:      "delivered",
				Unit:       "pps",
				Log:        true,
				Categories: []string{"bridge", "shaperd"},
				Series:     []Series{{Name: "250 B", Values: []float64{300000, 0}, Labels: []string{"", "0 (probe 0/80)"}}},
				Ref:        5000,
				RefLabel:   "limit 5000 pps",
			},
		},
	}
}

// The SVG is well-formed XML, escapes text, and shows the note of a
// category that has no values.
func TestSVG(t *testing.T) {
	out := figure().SVG()
	d := xml.NewDecoder(strings.NewReader(string(out)))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, out)
		}
	}
	s := string(out)
	for _, want := range []string{
		"shaperd &lt;bench&gt; &amp; peers",
		"lab ovs mode not available",
		"0 (probe 0/80)",
		"limit 5000 pps",
		"(log scale)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if strings.Contains(s, "NaN") || strings.Contains(s, "Inf") {
		t.Errorf("SVG contains NaN or Inf coordinates:\n%s", s)
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{
		{0, "0"}, {0.5, "0.5"}, {3.25, "3.25"}, {-3.2, "-3.2"}, {12.34, "12.3"}, {512, "512"},
		{5000, "5000"}, {12500, "12.5k"}, {296317, "296.3k"}, {2.5e6, "2.5M"}, {math.NaN(), "—"},
	} {
		if got := Format(c.v); got != c.want {
			t.Errorf("Format(%v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestNiceStep(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{{0.3, 0.5}, {1, 1}, {1.1, 2}, {23, 50}, {70, 100}} {
		if got := niceStep(c.in); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("niceStep(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
