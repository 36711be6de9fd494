package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
)

// The timeline's geometry, in SVG user units (pixels).
const (
	svgW       = 960
	svgH       = 450
	plotLeft   = 64
	plotRight  = svgW - 24
	plotTop    = 62
	plotBottom = svgH - 96
	plotW      = plotRight - plotLeft
	zeroBand   = 14 // below the lowest decade: where 0 is drawn
	stripTop   = plotBottom + 8
	stripH     = 10
)

// stageFill is the shading of each stage; a stage not listed (watching,
// released) is not shaded.
var stageFill = map[string]string{
	"flagged":   "#F0E442",
	"pending":   "#DDDDDD",
	"manual":    "#56B4E9",
	"stage1":    "#FBD9A5",
	"stage2":    "#F5B26B",
	"stage3":    "#E8846B",
	"probation": "#A9D8C8",
}

// span is a stretch of time in one stage, in seconds from the flood's
// start; LimitPPS is the from_vm limit when it began.
type span struct {
	Stage    string
	From, To float64
	LimitPPS *float64
}

// spans cuts the recording into stages: each begins at the StageSince of
// the first sample that shows it (within the interval that sample closes)
// and ends where the next begins; the first begins at the first sample, the
// last ends at the last.
func spans(ss []Sample) []span {
	if len(ss) == 0 {
		return nil
	}
	out := []span{{Stage: ss[0].Stage, From: ss[0].T, LimitPPS: ss[0].LimitPPS}}
	for k := 1; k < len(ss); k++ {
		s, cur := ss[k], &out[len(out)-1]
		if s.Stage == cur.Stage {
			continue
		}
		at := math.Min(math.Max(s.StageSince, ss[k-1].T), s.T)
		cur.To = at
		out = append(out, span{Stage: s.Stage, From: at, LimitPPS: s.LimitPPS})
	}
	out[len(out)-1].To = ss[len(ss)-1].T
	return out
}

// label names a stage with its limit, e.g. "stage 1: 10k pps".
func (sp span) label() string {
	name := sp.Stage
	if len(name) == 6 && name[:5] == "stage" {
		name = "stage " + name[5:]
	}
	switch {
	case sp.Stage == "flagged" || sp.Stage == "pending" || sp.Stage == "probation" || sp.Stage == "released":
		return name
	case sp.LimitPPS == nil:
		return name + ": no pps limit"
	case *sp.LimitPPS == 0:
		return name + ": blocked but bypass"
	}
	return name + ": " + tickLabel(*sp.LimitPPS) + " pps"
}

// seg is a value held from one time to another; nil draws nothing.
type seg struct {
	from, to float64
	v        *float64
}

// timeline maps seconds and frames per second to the plot.
type timeline struct {
	t0, t1  float64 // seconds at the left and right edges
	decades float64 // the y axis spans 1 .. 10^decades pps
}

func (tl timeline) x(t float64) float64 {
	return plotLeft + (t-tl.t0)/(tl.t1-tl.t0)*plotW
}

func (tl timeline) y(v float64) float64 {
	if v < 1 {
		return plotBottom
	}
	h := float64(plotBottom - plotTop - zeroBand)
	return plotBottom - zeroBand - math.Min(math.Log10(v)/tl.decades, 1)*h
}

// tickLabel prints a decade or a limit: 1, 10, 100, 1k, 2.5k, 10k, 1M.
func tickLabel(v float64) string {
	switch {
	case v >= 1e6:
		return trimFloat(v/1e6) + "M"
	case v >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}

func trimFloat(v float64) string { return fmt.Sprintf("%.4g", v) }

func newTimeline(rec *Record) timeline {
	ss := rec.Samples
	tl := timeline{t0: ss[0].T, t1: ss[len(ss)-1].T, decades: 5}
	if tl.t1 <= tl.t0 {
		tl.t1 = tl.t0 + 1
	}
	for _, s := range ss {
		for _, v := range []float64{s.Offered, s.Delivered} {
			if v >= 1 {
				tl.decades = math.Max(tl.decades, math.Ceil(math.Log10(v)+1e-9))
			}
		}
	}
	return tl
}

// SVG draws the recording: offered and delivered frames per second (log
// axis) as steps over each sample's second, the from_vm limit dashed, the
// stages shaded and labelled, the flood's start and end marked, and the
// probe's outcome per second as a strip under the plot.
func (rec *Record) SVG() []byte {
	var b bytes.Buffer
	tl := newTimeline(rec)
	ss := rec.Samples
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...); b.WriteByte('\n') }
	esc := html.EscapeString

	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`, svgW, svgH, svgW, svgH)
	p(`<rect width="100%%" height="100%%" fill="#FFFFFF"/>`)
	p(`<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`, plotLeft, esc("make demo: "+rec.Port+" floods, is quarantined, walks the ladder and is released"))
	sub := "frames per second, log scale: offered by the VM, delivered to the external host"
	if rec.Quarantined != nil {
		sub += fmt.Sprintf("; quarantined %.2f s after the flood started", *rec.Quarantined)
	}
	p(`<text x="%d" y="42" fill="#444444">%s</text>`, plotLeft, esc(sub))

	// Stages, behind everything.
	for _, sp := range spans(ss) {
		x0, x1 := tl.x(sp.From), tl.x(sp.To)
		fill, ok := stageFill[sp.Stage]
		if ok {
			p(`<rect class="stage" data-stage="%s" data-from="%.3f" data-to="%.3f" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="0.55"/>`,
				esc(sp.Stage), sp.From, sp.To, x0, plotTop, x1-x0, plotBottom-plotTop, fill)
		} else if sp.Stage != "released" {
			continue // watching: nothing to say
		}
		if lab := sp.label(); float64(len(lab))*6.6+6 < x1-x0 {
			p(`<text class="stage-label" x="%.1f" y="%d" text-anchor="middle">%s</text>`, (x0+x1)/2, plotTop+14, esc(lab))
		}
	}

	// Axes and grid.
	for d := 0; d <= int(tl.decades); d++ {
		v := math.Pow(10, float64(d))
		y := tl.y(v)
		p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#CCCCCC" stroke-width="0.5"/>`, plotLeft, y, plotRight, y)
		p(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`, plotLeft-6, y+4, tickLabel(v))
	}
	p(`<text x="%d" y="%d" text-anchor="end">0</text>`, plotLeft-6, plotBottom)
	p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#000000"/>`, plotLeft, plotTop, plotLeft, plotBottom)
	p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#000000"/>`, plotLeft, plotBottom, plotRight, plotBottom)
	for t := math.Ceil(tl.t0/5) * 5; t <= tl.t1; t += 5 {
		x := tl.x(t)
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000000"/>`, x, stripTop+stripH, x, stripTop+stripH+4)
		p(`<text x="%.1f" y="%d" text-anchor="middle">%+.0fs</text>`, x, stripTop+stripH+17, t+0) // +0: no "-0s"
	}
	p(`<text x="%d" y="%d" text-anchor="middle" fill="#444444">seconds from the flood's start</text>`, (plotLeft+plotRight)/2, stripTop+stripH+33)

	// The flood's start and end.
	mark := func(t float64, text string) {
		x := tl.x(t)
		p(`<line class="flood" x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000000" stroke-dasharray="2 3"/>`, x, plotTop-4, x, plotBottom)
		p(`<text x="%.1f" y="%d" text-anchor="middle" font-size="11">%s</text>`, x, plotTop-8, esc(text))
	}
	mark(0, "flood starts")
	if rec.FloodEnd != nil && *rec.FloodEnd <= tl.t1 {
		mark(*rec.FloodEnd, "flood stops")
	}

	// The series, as steps: each sample's rate over the second it closes;
	// the limit changes with the stage, where the shading does.
	path := func(class, colour, style string, segs []seg) {
		var d bytes.Buffer
		pen := false
		for _, s := range segs {
			if s.v == nil {
				pen = false
				continue
			}
			cmd := 'L'
			if !pen {
				cmd = 'M'
			}
			fmt.Fprintf(&d, "%c%.1f,%.1f L%.1f,%.1f ", cmd, tl.x(s.from), tl.y(*s.v), tl.x(s.to), tl.y(*s.v))
			pen = true
		}
		p(`<path class="%s" d="%s" fill="none" stroke="%s" %s/>`, class, bytes.TrimSpace(d.Bytes()), colour, style)
	}
	var offered, delivered, limit []seg
	for k := 1; k < len(ss); k++ {
		a, s := ss[k-1], ss[k]
		offered = append(offered, seg{a.T, s.T, &s.Offered})
		delivered = append(delivered, seg{a.T, s.T, &s.Delivered})
		cut := a.T
		if s.Stage != a.Stage {
			cut = math.Min(math.Max(s.StageSince, a.T), s.T)
			limit = append(limit, seg{a.T, cut, a.LimitPPS})
		}
		limit = append(limit, seg{cut, s.T, s.LimitPPS})
	}
	path("limit", "#555555", `stroke-width="1.5" stroke-dasharray="6 4"`, limit)
	path("offered", "#0072B2", `stroke-width="2"`, offered)
	path("delivered", "#D55E00", `stroke-width="2"`, delivered)

	// The probe, one cell per second.
	p(`<text x="%d" y="%d" text-anchor="end" font-size="11">ssh</text>`, plotLeft-6, stripTop+stripH-1)
	for k := 1; k < len(ss); k++ {
		s := ss[k]
		fill := "#CCCCCC"
		switch {
		case s.ProbeLost > 0:
			fill = "#D55E00"
		case s.ProbeOK > 0:
			fill = "#009E73"
		}
		x0, x1 := tl.x(ss[k-1].T), tl.x(s.T)
		p(`<rect class="probe" x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" stroke="#FFFFFF" stroke-width="0.5"/>`, x0, stripTop, x1-x0, stripH, fill)
	}

	// Legend.
	ly := svgH - 32
	x := plotLeft
	item := func(draw, text string) {
		p(draw, x, ly-4, x+22, ly-4)
		p(`<text x="%d" y="%d">%s</text>`, x+28, ly, esc(text))
		x += 34 + int(float64(len(text))*6.4)
	}
	item(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#0072B2" stroke-width="2"/>`, "offered (VM's tx)")
	item(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#D55E00" stroke-width="2"/>`, "delivered (external host's rx)")
	item(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#555555" stroke-width="1.5" stroke-dasharray="6 4"/>`, "the stage's pps limit")
	probeSum := fmt.Sprintf("ssh probe: green all echoed, red some lost (%d echoed, %d lost)", rec.Probe.Answered, rec.Probe.Lost)
	x, ly = plotLeft, svgH-12
	p(`<rect x="%d" y="%d" width="22" height="%d" fill="#009E73"/>`, x, ly-9, stripH)
	p(`<text x="%d" y="%d">%s</text>`, x+28, ly, esc(probeSum))
	p(`</svg>`)
	return b.Bytes()
}
