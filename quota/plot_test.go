package quota

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"
)

func TestPlotSVG(t *testing.T) {
	c := small()
	c.BurstCeiling = 0
	a := mustNew(t, c, t0)
	rnd := NewRand(4)
	drive(a, 0, 60, &rnd)
	r := a.Report(at(60))
	for _, opt := range []PlotOptions{{}, {Interval: time.Second, End: at(100), Percentile: 95}} {
		svg := PlotSVG(r, opt)
		// Well-formed XML.
		d := xml.NewDecoder(bytes.NewReader(svg))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("not well-formed: %v\n%s", err, svg)
			}
		}
		s := string(svg)
		for _, want := range []string{
			"Tenant t: 95th percentile billing", "rate (kbit/s)", "time (UTC)",
			"sample (1 s average)", "above the commit", "commit 8 kbit/s", "95th percentile so far",
			"burst intervals used",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("options %+v: no %q in the chart", opt, want)
			}
		}
	}
	// More samples than pixels, and none at all, still draw.
	big := Report{Tenant: "x", CommitBPS: 100e6}
	for i := range 8640 {
		big.Samples = append(big.Samples, Sample{Start: t0.Add(time.Duration(i) * 5 * time.Minute), BPS: uint64(i%300) * 1e6})
	}
	if svg := PlotSVG(big, PlotOptions{}); len(svg) > 200_000 {
		t.Errorf("a month of samples makes a %d-byte chart", len(svg))
	}
	if svg := PlotSVG(Report{Tenant: "empty"}, PlotOptions{}); !bytes.Contains(svg, []byte("</svg>")) {
		t.Errorf("empty report: %s", svg)
	}
}
