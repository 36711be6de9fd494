package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
)

// header heads the per-second lines; line prints one.
const header = "     t  stage        offered  delivered  ssh probe        drops/s (only those that moved)"

// line is one second: its tick, stage, offered and delivered frames per
// second, the probe's outcomes and the drop reasons that moved, largest
// first, e.g.
//
//	+5s  stage1          312k      10.0k  ok 10/10  0.4ms  backstop=290k  queue_time=5.0k
func line(s Sample) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%+5ds  %-10s %9s %10s  %-15s", s.Tick, s.Stage, rate(s.Offered), rate(s.Delivered), probeCol(s))
	type kv struct {
		k string
		v float64
	}
	var ds []kv
	for k, v := range s.Drops {
		ds = append(ds, kv{k, v})
	}
	slices.SortFunc(ds, func(a, b kv) int { return cmp.Or(cmp.Compare(b.v, a.v), strings.Compare(a.k, b.k)) })
	for _, d := range ds {
		fmt.Fprintf(&b, "  %s=%s", d.k, rate(d.v))
	}
	return strings.TrimRight(b.String(), " ")
}

// probeCol is "ok 10/10  0.4ms" when every outcome was an echo, "lost 3/10"
// when some were lost, "-" when none was due.
func probeCol(s Sample) string {
	n := s.ProbeOK + s.ProbeLost
	switch {
	case n == 0:
		return "-"
	case s.ProbeLost > 0:
		return fmt.Sprintf("lost %d/%d", s.ProbeLost, n)
	}
	return fmt.Sprintf("ok %d/%d  %s", s.ProbeOK, n, millis(s.ProbeMax))
}

func millis(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.0fms", ms)
}

// rate prints a per-second figure in at most five characters: 0, 740,
// 2.5k, 10.0k, 312k, 1.25M.
func rate(v float64) string {
	v = math.Round(v)
	switch {
	case v < 1000:
		return fmt.Sprintf("%.0f", v)
	case v < 99950:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v < 999500:
		return fmt.Sprintf("%.0fk", v/1e3)
	}
	return fmt.Sprintf("%.2fM", v/1e6)
}

// summary prints the ladder's path and the probe's totals.
func summary(rec *Record) string {
	var b strings.Builder
	b.WriteString("== ladder:")
	prev := ""
	for _, s := range rec.Samples {
		if s.Stage != prev {
			if prev != "" {
				b.WriteString(" →")
			}
			fmt.Fprintf(&b, " %s %+.1fs", s.Stage, s.StageSince)
			prev = s.Stage
		}
	}
	b.WriteString("\n== flood: +0.0s")
	if rec.FloodEnd != nil {
		fmt.Fprintf(&b, " to %+.1fs", *rec.FloodEnd)
	}
	fmt.Fprintf(&b, "; ssh-like probe to %s: %d echoes back, %d lost, slowest %s",
		rec.Probe.Addr, rec.Probe.Answered, rec.Probe.Lost, millis(rec.Probe.MaxMS))
	return b.String()
}
