package quota

import (
	"bytes"
	"cmp"
	"fmt"
	"html"
	"math"
	"slices"
	"strconv"
	"time"
)

// PlotOptions adjusts PlotSVG. The zero value works for a Report read back
// from JSON.
type PlotOptions struct {
	// Interval is the sample interval; 0 derives it from the samples'
	// spacing (5 minutes if there are fewer than two).
	Interval time.Duration
	// End is where the time axis ends, e.g. the period's end; zero ends it
	// with the last sample.
	End time.Time
	// Percentile labels the percentile line (0 means 95).
	Percentile float64
}

// Colours (Okabe–Ito, colour-blind safe).
const (
	colSample  = "#56B4E9"
	colBurst   = "#E69F00"
	colCommit  = "#D55E00"
	colPct     = "#000000"
	colProject = "#777777"
	plotW      = 1000
	plotH      = 500
	marginL    = 86
	marginR    = 24
	marginT    = 96
	marginB    = 64
)

// PlotSVG draws r as a standalone SVG chart a person can read: each
// sample as a bar of its interval's average rate (the part above the commit
// in another colour), the commit, the billed percentile so far and the
// projection as horizontal lines, with labelled axes and a legend. It uses
// the standard library only.
func PlotSVG(r Report, opt PlotOptions) []byte {
	pct := opt.Percentile
	if pct == 0 {
		pct = DefaultPercentile
	}
	iv := opt.Interval
	if iv <= 0 {
		iv = DefaultInterval
		if len(r.Samples) >= 2 {
			iv = r.Samples[1].Start.Sub(r.Samples[0].Start)
		}
	}
	var t0, t1 time.Time
	if len(r.Samples) > 0 {
		t0 = r.Samples[0].Start
		t1 = r.Samples[len(r.Samples)-1].Start.Add(iv)
	}
	if !opt.End.IsZero() && (t0.IsZero() || opt.End.After(t1)) {
		t1 = opt.End
		if t0.IsZero() {
			t0 = t1.Add(-iv)
		}
	}
	if t0.IsZero() || !t1.After(t0) {
		t0 = time.Unix(0, 0).UTC()
		t1 = t0.Add(iv)
	}

	// Value axis.
	top := float64(max(r.CommitBPS, r.PercentileBPS, r.ProjectedBPS))
	for _, s := range r.Samples {
		top = max(top, float64(s.BPS))
	}
	if top <= 0 {
		top = 1
	}
	unit, div := rateUnit(top)
	step := niceStep(top / div / 5)
	ymax := math.Ceil(top/div/step) * step * div
	if ymax < top*1.04 {
		ymax += step * div
	}
	x0, x1 := float64(marginL), float64(plotW-marginR)
	y0, y1 := float64(marginT), float64(plotH-marginB) // top, bottom
	xOf := func(t time.Time) float64 {
		return x0 + (x1-x0)*float64(t.Sub(t0))/float64(t1.Sub(t0))
	}
	yOf := func(v float64) float64 { return y1 - (y1-y0)*v/ymax }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="26" font-size="17" font-weight="bold">Tenant %s: %s percentile billing</text>`+"\n", marginL, esc(r.Tenant), ordinal(pct))
	fmt.Fprintf(&b, `<text x="%d" y="46" fill="#444">commit %s · %s percentile so far %s · projected %s · burst intervals used %d, left %d</text>`+"\n",
		marginL, fmtRate(float64(r.CommitBPS)), ordinal(pct), fmtRate(float64(r.PercentileBPS)), fmtRate(float64(r.ProjectedBPS)), r.BurstIntervalsUsed, r.BurstIntervalsLeft)

	// Legend.
	lx := float64(marginL)
	legendBox := func(col, label string) {
		fmt.Fprintf(&b, `<rect x="%.0f" y="62" width="14" height="12" fill="%s"/><text x="%.0f" y="73">%s</text>`+"\n", lx, col, lx+19, esc(label))
		lx += 19 + 6.6*float64(len(label)) + 22
	}
	legendLine := func(col, dash, label string) {
		fmt.Fprintf(&b, `<line x1="%.0f" y1="68" x2="%.0f" y2="68" stroke="%s" stroke-width="2.5" stroke-dasharray="%s"/><text x="%.0f" y="73">%s</text>`+"\n", lx, lx+22, col, dash, lx+27, esc(label))
		lx += 27 + 6.6*float64(len(label)) + 22
	}
	legendBox(colSample, "sample ("+humanDuration(iv)+" average)")
	legendBox(colBurst, "above the commit")
	legendLine(colCommit, "7 4", "commit")
	legendLine(colPct, "", ordinal(pct)+" percentile so far")
	legendLine(colProject, "2 3", "projected")

	// Grid and value ticks.
	for v := 0.0; v <= ymax*1.0001; v += step * div {
		y := yOf(v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", x0, y, x1, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-6, y+4, trimNum(v/div))
	}
	fmt.Fprintf(&b, `<text transform="translate(20 %.1f) rotate(-90)" text-anchor="middle" fill="#222">rate (%s)</text>`+"\n", (y0+y1)/2, unit)

	// Time ticks.
	tstep, layout := timeStep(t1.Sub(t0))
	for t := firstTick(t0, tstep); !t.After(t1); t = t.Add(tstep) {
		x := xOf(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", x, y0, x, y1)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>`+"\n", x, y1, x, y1+4)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y1+18, esc(t.Format(layout)))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#222">time (UTC), %s to %s</text>`+"\n",
		(x0+x1)/2, plotH-16, t0.Format("2006-01-02 15:04"), t1.Format("2006-01-02 15:04"))

	// Bars: one per sample, or the highest sample of each pixel column
	// when there are more samples than pixels.
	type bar struct{ x, w, v float64 }
	var bars []bar
	cols := int(x1 - x0)
	if len(r.Samples) <= cols/2 {
		for _, s := range r.Samples {
			xa, xb := xOf(s.Start), xOf(s.Start.Add(iv))
			w := xb - xa
			if w > 3 {
				w -= 1 // a hairline gap between wide bars
			}
			bars = append(bars, bar{xa, w, float64(s.BPS)})
		}
	} else {
		colMax := make([]float64, cols)
		for i := range colMax {
			colMax[i] = -1
		}
		for _, s := range r.Samples {
			c := min(max(int(xOf(s.Start)-x0), 0), cols-1)
			colMax[c] = max(colMax[c], float64(s.BPS))
		}
		for c, v := range colMax {
			if v >= 0 {
				bars = append(bars, bar{x0 + float64(c), 1, v})
			}
		}
	}
	commit := float64(r.CommitBPS)
	var low, high bytes.Buffer
	for _, br := range bars {
		if br.v <= 0 {
			continue
		}
		lv := math.Min(br.v, commit)
		if commit == 0 {
			lv = br.v
		}
		fmt.Fprintf(&low, "M%.1f %.1fh%.2fV%.1fh%.2fz", br.x, y1, br.w, yOf(lv), -br.w)
		if commit > 0 && br.v > commit {
			fmt.Fprintf(&high, "M%.1f %.1fh%.2fV%.1fh%.2fz", br.x, yOf(commit), br.w, yOf(br.v), -br.w)
		}
	}
	fmt.Fprintf(&b, `<path d="%s" fill="%s"/>`+"\n", low.String(), colSample)
	fmt.Fprintf(&b, `<path d="%s" fill="%s"/>`+"\n", high.String(), colBurst)

	// Axes frame.
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>`+"\n", x0, y1, x1, y1)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>`+"\n", x0, y0, x0, y1)

	// Reference lines, labelled at the right end, just above each line,
	// the labels pushed apart where lines are close.
	type ref struct {
		v          float64
		col, dash  string
		label      string
		labelY, y0 float64
	}
	refs := []ref{
		{v: commit, col: colCommit, dash: "7 4", label: "commit " + fmtRate(commit)},
		{v: float64(r.PercentileBPS), col: colPct, label: ordinal(pct) + " percentile so far " + fmtRate(float64(r.PercentileBPS))},
		{v: float64(r.ProjectedBPS), col: colProject, dash: "2 3", label: "projected " + fmtRate(float64(r.ProjectedBPS))},
	}
	if r.ProjectedBPS == r.PercentileBPS {
		refs[1].label += ", projected the same"
		refs = refs[:2]
	}
	for i := range refs {
		refs[i].y0 = yOf(refs[i].v)
		refs[i].labelY = refs[i].y0 - 5
	}
	slices.SortStableFunc(refs, func(a, b ref) int { return cmp.Compare(a.labelY, b.labelY) })
	for i := 1; i < len(refs); i++ {
		refs[i].labelY = max(refs[i].labelY, refs[i-1].labelY+14)
	}
	if over := refs[len(refs)-1].labelY - (y1 - 3); over > 0 {
		for i := range refs {
			refs[i].labelY -= over
		}
	}
	for _, rf := range refs {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n", x0, rf.y0, x1, rf.y0, rf.col, rf.dash)
	}
	for _, rf := range refs {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="%s" stroke="white" stroke-width="3" paint-order="stroke">%s</text>`+"\n", x1-4, rf.labelY, rf.col, esc(rf.label))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func esc(s string) string { return html.EscapeString(s) }

// rateUnit picks the unit for an axis reaching v bits per second.
func rateUnit(v float64) (string, float64) {
	switch {
	case v >= 1e9:
		return "Gbit/s", 1e9
	case v >= 1e6:
		return "Mbit/s", 1e6
	case v >= 1e3:
		return "kbit/s", 1e3
	}
	return "bit/s", 1
}

func fmtRate(v float64) string {
	u, d := rateUnit(v)
	return trimNum(v/d) + " " + u
}

func trimNum(v float64) string {
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}

func ordinal(p float64) string {
	s := trimNum(p)
	n := int(p)
	if float64(n) != p {
		return s + "th"
	}
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return s + "th"
	case n%10 == 1:
		return s + "st"
	case n%10 == 2:
		return s + "nd"
	case n%10 == 3:
		return s + "rd"
	}
	return s + "th"
}

// timeStep picks a tick spacing giving at most about ten ticks over span,
// and the label layout that suits it.
func timeStep(span time.Duration) (time.Duration, string) {
	steps := []time.Duration{
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour,
		24 * time.Hour, 2 * 24 * time.Hour, 3 * 24 * time.Hour, 7 * 24 * time.Hour, 14 * 24 * time.Hour,
	}
	st := steps[len(steps)-1]
	for _, s := range steps {
		if span/s <= 10 {
			st = s
			break
		}
	}
	switch {
	case st >= 24*time.Hour:
		return st, "Jan 2"
	case st >= time.Hour:
		return st, "Jan 2 15:04"
	case st >= time.Minute:
		return st, "15:04"
	}
	return st, "15:04:05"
}

// firstTick is the first multiple of step (from the Unix epoch, UTC) at or
// after t.
func firstTick(t time.Time, step time.Duration) time.Time {
	tr := t.Truncate(step)
	if tr.Before(t) {
		tr = tr.Add(step)
	}
	return tr.UTC()
}

// humanDuration prints d for a person: "5 min", "2 s", "1 h", "90 s".
func humanDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + " h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + " min"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + " s"
	}
	return d.String()
}
