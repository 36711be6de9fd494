// Package chart draws horizontal grouped bar charts as SVG, with the standard
// library only. It serves bench/e2e's results page; the product never imports
// it.
//
// A Figure is a title and a column of Panels. A Panel has one row per
// category (a system, say) and, in each row, one bar per Series (a frame
// size, say). A row whose values are all missing shows its Note instead, so
// a system that could not run keeps its place with the reason.
package chart

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// Series is one bar per category, drawn in one colour.
type Series struct {
	Name string
	// Values holds one value per category, in the panel's unit; NaN means
	// no bar.
	Values []float64
	// Labels optionally replaces the number printed after a bar ("" keeps
	// the number). A label with a NaN value is printed where the bar would be.
	Labels []string
}

// Panel is one chart: rows of grouped horizontal bars on a shared axis.
type Panel struct {
	Title      string
	Unit       string // printed under the axis, e.g. "ns per frame"
	Categories []string
	Series     []Series
	// Notes optionally holds one note per category, printed in grey when
	// that category has no value in any series.
	Notes []string
	// Log draws a logarithmic axis; values <= 0 are drawn as missing.
	Log bool
	// Ref, when not NaN, draws a dashed vertical line at that value with
	// RefLabel in the legend (a configured limit, say). The zero Panel has Ref == 0: set
	// it to math.NaN() for no line.
	Ref      float64
	RefLabel string
	// Include lists values the axis must span even without a bar there
	// (±5 for a percentage error, say, so that tiny errors look tiny).
	Include []float64
}

// Figure is a stack of panels with a title and subtitle lines.
type Figure struct {
	Title    string
	Subtitle []string
	Panels   []Panel
}

// Palette is the series colours, in order (colour-blind safe, Okabe–Ito).
var Palette = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"}

const (
	width     = 980
	labelW    = 250 // category labels on the left
	rightPad  = 150 // room for value labels after the longest bar
	barH      = 12
	barGap    = 2
	groupGap  = 10
	titleH    = 24
	legendH   = 20
	axisH     = 40
	panelGap  = 26
	fontSize  = 12
	smallFont = 10
)

// SVG renders the figure as a standalone SVG document.
func (f Figure) SVG() []byte {
	var body bytes.Buffer
	y := 10.0
	if f.Title != "" {
		y += 18
		fmt.Fprintf(&body, `<text x="10" y="%.0f" font-size="16" font-weight="bold">%s</text>`+"\n", y, esc(f.Title))
	}
	for _, s := range f.Subtitle {
		y += 16
		fmt.Fprintf(&body, `<text x="10" y="%.0f" font-size="%d" fill="#444">%s</text>`+"\n", y, smallFont+1, esc(s))
	}
	y += 10
	for _, p := range f.Panels {
		y = p.draw(&body, y) + panelGap
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="sans-serif" font-size="%d">`+"\n",
		width, y, width, y, fontSize)
	fmt.Fprintf(&out, `<rect x="0" y="0" width="%d" height="%.0f" fill="white"/>`+"\n", width, y)
	out.Write(body.Bytes())
	out.WriteString("</svg>\n")
	return out.Bytes()
}

// axis maps values to x pixels.
type axis struct {
	lo, hi float64 // in value space (log10 space when log)
	log    bool
	x0, x1 float64 // pixels
}

func (a axis) pos(v float64) float64 {
	if a.log {
		v = math.Log10(v)
	}
	if a.hi == a.lo {
		return a.x0
	}
	t := (v - a.lo) / (a.hi - a.lo)
	return a.x0 + t*(a.x1-a.x0)
}

func (p Panel) usable(v float64) bool {
	return !math.IsNaN(v) && !math.IsInf(v, 0) && (!p.Log || v > 0)
}

// scale chooses the axis range and tick values.
func (p Panel) scale() (axis, []float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range p.Series {
		for _, v := range s.Values {
			if p.usable(v) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	for _, v := range append([]float64{p.Ref}, p.Include...) {
		if p.usable(v) {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	a := axis{log: p.Log, x0: labelW, x1: width - rightPad}
	if math.IsInf(lo, 1) { // nothing to draw
		lo, hi = 1, 10
		if !p.Log {
			lo = 0
		}
	}
	if p.Log {
		a.lo, a.hi = math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if a.hi == a.lo {
			a.hi++
		}
		var ticks []float64
		for e := a.lo; e <= a.hi; e++ {
			ticks = append(ticks, math.Pow(10, e))
		}
		return a, ticks
	}
	lo, hi = math.Min(lo, 0), math.Max(hi, 0)
	if lo == hi {
		hi = 1
	}
	step := niceStep((hi - lo) / 5)
	a.lo, a.hi = math.Floor(lo/step)*step, math.Ceil(hi/step)*step
	var ticks []float64
	for v := a.lo; v <= a.hi+step/2; v += step {
		ticks = append(ticks, math.Round(v/step)*step)
	}
	return a, ticks
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= x {
			return m * e
		}
	}
	return 10 * e
}

func (p Panel) draw(b *bytes.Buffer, y float64) float64 {
	fmt.Fprintf(b, `<text x="10" y="%.0f" font-size="14" font-weight="bold">%s</text>`+"\n", y+16, esc(p.Title))
	y += titleH
	// Legend.
	lx := float64(labelW)
	for i, s := range p.Series {
		fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/>`, lx, y, color(i))
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f">%s</text>`+"\n", lx+16, y+10, esc(s.Name))
		lx += 16 + float64(7*len(s.Name)) + 18
	}
	if p.usable(p.Ref) && p.RefLabel != "" {
		fmt.Fprintf(b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#c00" stroke-dasharray="4 3"/>`, lx, y+6, lx+14, y+6)
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f" fill="#c00">%s</text>`+"\n", lx+18, y+10, esc(p.RefLabel))
	}
	y += legendH
	a, ticks := p.scale()
	nser := max(len(p.Series), 1)
	groupH := float64(nser*(barH+barGap)) - barGap
	top := y
	bottom := top + float64(len(p.Categories))*(groupH+groupGap)
	// Grid and ticks.
	for _, t := range ticks {
		x := a.pos(t)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#ddd"/>`+"\n", x, top, x, bottom)
		fmt.Fprintf(b, `<text x="%.1f" y="%.0f" text-anchor="middle" font-size="%d">%s</text>`+"\n", x, bottom+14, smallFont, esc(Format(t)))
	}
	zero := a.x0
	if !p.Log && a.lo < 0 {
		zero = a.pos(0)
	}
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#888"/>`+"\n", zero, top, zero, bottom)
	for ci, cat := range p.Categories {
		gy := top + float64(ci)*(groupH+groupGap)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", labelW-8, gy+groupH/2+4, esc(cat))
		any := false
		for si, s := range p.Series {
			v := at(s.Values, ci)
			label := atS(s.Labels, ci)
			by := gy + float64(si*(barH+barGap))
			if !p.usable(v) {
				if label != "" {
					fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="%d" fill="#666">%s</text>`+"\n", a.x0+4, by+barH-2, smallFont, esc(label))
					any = true
				}
				continue
			}
			any = true
			x := a.pos(v)
			x0, w := zero, x-zero
			if w < 0 {
				x0, w = x, -w
			}
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x0, by, math.Max(w, 1), barH, color(si), esc(cat), esc(s.Name), esc(Format(v)))
			if label == "" {
				label = Format(v)
			}
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="%d">%s</text>`+"\n", math.Max(x, zero)+4, by+barH-2, smallFont, esc(label))
		}
		if !any {
			note := atS(p.Notes, ci)
			if note == "" {
				note = "no figures"
			}
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="%d" fill="#888" font-style="italic">%s</text>`+"\n", a.x0+4, gy+groupH/2+4, smallFont, esc(truncate(note, 110)))
		}
	}
	if p.usable(p.Ref) {
		x := a.pos(p.Ref)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#c00" stroke-dasharray="4 3"/>`+"\n", x, top, x, bottom)
	}
	unit := p.Unit
	if p.Log {
		unit += " (log scale)"
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%.0f" text-anchor="middle" font-size="%d" fill="#444">%s</text>`+"\n", (a.x0+a.x1)/2, bottom+30, smallFont+1, esc(unit))
	return bottom + axisH
}

func at(v []float64, i int) float64 {
	if i < len(v) {
		return v[i]
	}
	return math.NaN()
}

func atS(v []string, i int) string {
	if i < len(v) {
		return v[i]
	}
	return ""
}

func color(i int) string { return Palette[i%len(Palette)] }

func esc(s string) string { return html.EscapeString(s) }

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// Format prints v compactly: 3 significant digits, with k and M suffixes
// from 10 000 up.
func Format(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "—"
	case a >= 1e6:
		return trim(strconv.FormatFloat(v/1e6, 'f', 2, 64)) + "M"
	case a >= 1e4:
		return trim(strconv.FormatFloat(v/1e3, 'f', 1, 64)) + "k"
	case a >= 100 || a == 0:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return trim(strconv.FormatFloat(v, 'f', 1, 64))
	case a >= 0.01:
		return trim(strconv.FormatFloat(v, 'f', 2, 64))
	default:
		return strconv.FormatFloat(v, 'g', 2, 64)
	}
}

func trim(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
