package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shaperd/shaperd/bench/chart"
)

// baselineOf is the no-policy row each system's CPU is compared with: the
// same lab's, at the same frame size and load.
func baselineOf(s system) string {
	if s.lab == "ovs" {
		return "ovs"
	}
	return "bridge"
}

func (h *harness) find(key string, size int, load int64) *result {
	for i := range h.results {
		r := &h.results[i]
		if r.System == key && r.FrameBytes == size && r.Load == load {
			return r
		}
	}
	return nil
}

func (h *harness) computeRatios() {
	sys := map[string]system{}
	for _, s := range systems() {
		sys[s.key] = s
	}
	for i := range h.results {
		r := &h.results[i]
		if !r.ok() || r.MachineNsPerFrame == 0 {
			continue
		}
		if b := h.find(baselineOf(sys[r.System]), r.FrameBytes, r.Load); b != nil && b.ok() && b.MachineNsPerFrame > 0 {
			r.BaselineRatio = round(r.MachineNsPerFrame/b.MachineNsPerFrame, 2)
		}
	}
}

// savedRun is the JSON file: everything the Markdown and the chart are
// drawn from, so that -render can draw them again.
type savedRun struct {
	Machine  machine        `json:"machine"`
	Args     []string       `json:"args"`
	Smoke    bool           `json:"smoke,omitempty"`
	Took     float64        `json:"took_seconds"`
	Limit    int64          `json:"limit_pps"`
	Results  []result       `json:"results"`
	Micro    []micro        `json:"micro"`
	MicroErr string         `json:"micro_error,omitempty"`
	Aborted  string         `json:"aborted,omitempty"`
	NoLoad   []noLoadResult `json:"no_load,omitempty"`
	TCP      []tcpResult    `json:"tcp,omitempty"`
}

// load fills h from a saved run (for -render); h.opt comes from the run's
// own arguments.
func (h *harness) load(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var s savedRun
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	opt, err := parse(s.Args)
	if err != nil {
		return fmt.Errorf("%s: its arguments %q: %w", path, s.Args, err)
	}
	opt.out, opt.render = h.opt.out, h.opt.render
	h.opt = opt
	h.machine, h.took, h.results, h.micros, h.microErr, h.aborted = s.Machine, time.Duration(s.Took*1e9), s.Results, s.Micro, s.MicroErr, s.Aborted
	h.noLoad, h.tcp = s.NoLoad, s.TCP
	return nil
}

// write saves the Markdown, JSON and SVG results, dated and as latest.*.
func (h *harness) write() ([]string, error) {
	h.computeRatios()
	if err := os.MkdirAll(h.opt.out, 0o755); err != nil {
		return nil, err
	}
	base := "bench-" + h.machine.Date.Format("20060102-150405")
	js, err := json.MarshalIndent(struct {
		savedRun
	}{savedRun{h.machine, h.opt.args, h.opt.smoke, h.took.Seconds(), h.opt.limit, h.results, h.micros, h.microErr, h.aborted, h.noLoad, h.tcp}}, "", "  ")
	if err != nil {
		return nil, err
	}
	svg := h.chart()
	files := []struct {
		name string
		data []byte
	}{
		{base + ".md", []byte(h.markdown(base + ".svg"))},
		{base + ".svg", svg},
		{base + ".json", append(js, '\n')},
		{"latest.md", []byte(h.markdown("latest.svg"))},
		{"latest.svg", svg},
	}
	var paths []string
	for _, f := range files {
		p := filepath.Join(h.opt.out, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	return paths[:3], nil
}

func (h *harness) stamp() string { return h.stampMachine() + "; " + h.stampRun() }

func (h *harness) stampMachine() string {
	m := h.machine
	return fmt.Sprintf("%s, %d logical CPUs, Linux %s, %s", m.CPU, m.Cores, m.Kernel, m.OS)
}

func (h *harness) stampRun() string {
	m := h.machine
	return fmt.Sprintf("%s; commit %s; load average %s at the start, %s at the end", m.Go, orDash(m.Commit), m.LoadStart, m.LoadEnd)
}

// pct prints a signed percentage with one decimal, without "-0.0%".
func pct(v float64) string {
	if math.Abs(v) < 0.05 {
		v = 0
	}
	return fmt.Sprintf("%+.1f%%", v)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func sizesLoads(h *harness) string {
	var s, l []string
	for _, n := range h.opt.sizes {
		s = append(s, fmt.Sprint(n))
	}
	for _, n := range h.opt.loads {
		l = append(l, loadName(n))
	}
	return fmt.Sprintf("frames of %s bytes, offered at %s (pps)", strings.Join(s, ", "), strings.Join(l, ", "))
}

func loadTitle(load int64) string {
	if load == 0 {
		return "offered at the generator's maximum"
	}
	return fmt.Sprintf("offered at %d pps", load)
}

func cellText(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

func num(v float64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%.0f", v)
}

func (h *harness) markdown(svgName string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# shaperd benchmark, %s\n\n", h.machine.Date.Format("2006-01-02 15:04 UTC"))
	w("- **Machine:** %s.\n", h.stamp())
	mode := "make bench"
	if h.opt.smoke {
		mode = "make bench-smoke"
	}
	w("- **Run:** `%s` (flags: `%s`), took %s. %s; the policers' limit is %d pps (byte policers: %d pps × the frame size in bytes per second), with a burst of 10 ms of the rate everywhere. Per measurement: %s of flood first, then a %s window while the bypass probe sends every %s (timeout %s).\n",
		mode, strings.Join(h.opt.args, " "), h.took.Round(1e9), sizesLoads(h), h.opt.limit, h.opt.limit,
		h.opt.warmup, h.opt.window, h.opt.probeInterval, h.opt.probeTimeout)
	if h.aborted != "" {
		w("- **Incomplete:** %s.\n", cellText(h.aborted))
	}
	w("\n![chart](%s)\n\n", svgName)
	w("%s\n", readingGuide)

	// Systems.
	w("## Systems\n\n| system | lab | configured as | status |\n|---|---|---|---|\n")
	for _, s := range h.selected() {
		status, config := h.systemStatus(s)
		w("| %s | %s | %s | %s |\n", s.title, s.lab, cellText(config), cellText(status))
	}
	w("\n")

	// One table per frame size and load.
	for _, size := range h.opt.sizes {
		for _, load := range h.opt.loads {
			w("## %d-byte frames, %s\n\n", size, loadTitle(load))
			w("| system | offered pps | delivered pps | expected pps | error | machine CPU ns/frame | × no policy | shaperd's own ns/frame (user + sys) | probe p50 / p99 ms | probe lost | TCP retrans |\n")
			w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
			for _, s := range h.selected() {
				r := h.find(s.key, size, load)
				if r == nil {
					continue
				}
				if !r.ok() {
					what := "not run"
					if r.Status == "failed" {
						what = "**FAILED**"
					}
					w("| %s | %s: %s | | | | | | | | | |\n", s.title, what, cellText(firstLine(r.Reason, "")))
					continue
				}
				own := ""
				if r.ProcUserNsFrame+r.ProcSysNsFrame > 0 {
					own = fmt.Sprintf("%s + %s", num(r.ProcUserNsFrame), num(r.ProcSysNsFrame))
				}
				ratio := ""
				if r.BaselineRatio > 0 {
					ratio = fmt.Sprintf("%.2f", r.BaselineRatio)
				}
				probe := "—"
				if r.ProbeCompleted > 0 {
					probe = fmt.Sprintf("%.2f / %.2f", r.ProbeP50ms, r.ProbeP99ms)
				}
				w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d | %d |\n", s.title, num(r.OfferedPPS), num(r.DeliveredPPS), num(r.ExpectedPPS),
					pct(r.ErrorPct), num(r.MachineNsPerFrame), ratio, own, probe, r.ProbeFailed, r.ProbeSent, r.Retransmits)
			}
			w("\n")
		}
	}

	if lines := h.versusPeers(); len(lines) > 0 {
		w("## shaperd police against the best peer\n\n")
		for _, l := range lines {
			w("- %s\n", l)
		}
		w("\n")
	}

	for _, sec := range []struct {
		title string
		lines []string
	}{
		{"shaperd's own CPU against the bare tap pair", h.versusBare()},
		{"Coalescing: own CPU per frame against ping p99 (ICMP from VM 1 through the system during the window)", h.coalesceCurve()},
		{"Latency at no load (ICMP from VM 1, 500 pings 10 ms apart, no flood)", h.noLoadLines()},
		{"Bulk TCP (iperf3, one stream, 10 s, VM 1 to the external host, no flood, the VMs' offloads on)", h.tcpLines()},
	} {
		if len(sec.lines) == 0 {
			continue
		}
		w("## %s\n\n", sec.title)
		for _, l := range sec.lines {
			w("- %s\n", l)
		}
		w("\n")
	}

	w("## Microbenchmarks\n\n")
	if h.microErr != "" {
		w("**FAILED:** %s\n\n", cellText(firstLine(h.microErr, "")))
	}
	if len(h.micros) > 0 {
		ref, refName := h.shaperdOwnRef()
		w("`go test -run '^$' -bench . -benchmem -benchtime %s -count %d %s`, median of the runs; one op is one frame. ",
			h.opt.microBenchtime, h.opt.microCount, strings.Join(microPackages, " "))
		w("\"vs sibling\" is ns/frame ÷ the named benchmark's, from the same run")
		if ref > 0 {
			w("; \"share of shaperd\" is ns/frame ÷ shaperd's own CPU per frame end to end (%s: %.0f ns)", refName, ref)
		}
		w(".\n\n| benchmark | ns/frame | allocs/frame | B/frame | vs sibling | share of shaperd |\n|---|--:|--:|--:|--:|--:|\n")
		for _, m := range h.micros {
			vs := ""
			if m.VsBaseline > 0 {
				vs = fmt.Sprintf("%.2f× %s", m.VsBaseline, strings.TrimPrefix(m.Baseline, "Benchmark"))
			}
			share := ""
			if ref > 0 {
				share = fmt.Sprintf("%.1f%%", 100*m.NsPerFrame/ref)
			}
			w("| %s %s | %.1f | %g | %g | %s | %s |\n", filepath.Base(m.Pkg), strings.TrimPrefix(m.Name, "Benchmark"), m.NsPerFrame, m.AllocsFrame, m.BytesFrame, vs, share)
		}
		w("\n")
	}

	var failed []result
	for _, r := range h.results {
		if r.Status == "failed" {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		w("## Failures\n\n")
		for _, r := range failed {
			w("- %s, %d B, %s:\n\n```\n%s\n```\n", r.System, r.FrameBytes, loadName(r.Load), strings.TrimSpace(r.Reason))
		}
	}
	return b.String()
}

const readingGuide = `**How to read.** Each table is one frame size and offered load; every system ran in the same run, one after the other, on the same lab.
*offered* is what VM 1's interface sent and *delivered* what the external host's received, flood frames only (the probe's TCP segments are subtracted), over the window.
*expected* is min(limit, offered) for a policer and offered for no policy; *error* is delivered against expected.
*machine CPU ns/frame* is the whole machine's busy time (/proc/stat: user, nice, system, irq, softirq, steal; the generator, the sink and the probe included) per offered frame; *× no policy* divides it by the no-policy row of the same lab, frame size and load (at the generator's maximum every system saturates the cores, so it is the inverse of the offered rate; at fixed loads the generator's pacing, a timer wake-up every few frames, is a large and equal share of every row, so compare differences rather than ratios there).
*shaperd's own* is the daemon's process time (/proc/PID/stat utime and stime, all threads) per offered frame.
The *probe* is an ssh-like TCP echo from the external host to VM 1's port 22 during the window; *lost* counts messages without an echo within the timeout, or never sent because timeouts put the probe behind its schedule (a failed connect loses them all), and *TCP retrans* the TCP retransmissions in VM 1 and the external host, i.e. bypass frames lost on the way.
Peer policers police everything from the port, as an operator's one-line rule would; only shaperd exempts the bypass.
`

// systemStatus summarises a system's rows and gives one configuration.
func (h *harness) systemStatus(s system) (status, config string) {
	var ok, failed int
	var reason string
	for _, r := range h.results {
		if r.System != s.key {
			continue
		}
		switch r.Status {
		case "ok":
			ok++
			if config == "" || r.FrameBytes == 250 {
				config = r.Config
			}
		case "failed":
			failed++
			if reason == "" {
				reason = firstLine(r.Reason, "")
			}
		default:
			if reason == "" {
				reason = r.Reason
			}
		}
	}
	switch {
	case ok > 0 && failed == 0:
		return fmt.Sprintf("ran (%d %s)", ok, plural(ok, "measurement")), config
	case failed > 0:
		return fmt.Sprintf("**FAILED** in %d of %d: %s", failed, ok+failed, reason), config
	case reason != "":
		return "not run: " + reason, config
	}
	return "not run", config
}

// shaperdOwnRef is shaperd police's own CPU per frame (user + sys), at
// 250-byte frames (or the first size) and the first fixed load (or max).
func (h *harness) shaperdOwnRef() (float64, string) {
	size := h.opt.sizes[0]
	for _, s := range h.opt.sizes {
		if s == 250 {
			size = 250
		}
	}
	load := h.opt.loads[0]
	for _, l := range h.opt.loads {
		if l != 0 {
			load = l
			break
		}
	}
	r := h.find("shaperd-police", size, load)
	if r == nil || !r.ok() || r.ProcUserNsFrame+r.ProcSysNsFrame == 0 {
		return 0, ""
	}
	return r.ProcUserNsFrame + r.ProcSysNsFrame, fmt.Sprintf("%d B, %s", size, loadName(load))
}

// versusPeers compares each shaperd police row (Linux bridge, OVS) with the
// best peer policer of its cell, on accuracy, CPU and the bypass probe.
func (h *harness) versusPeers() []string {
	var lines, behind []string
	for _, key := range []string{"shaperd-police", "shaperd-police-ovs"} {
		for _, size := range h.opt.sizes {
			for _, load := range h.opt.loads {
				l, b := h.versus(key, size, load)
				if l != "" {
					lines = append(lines, l)
				}
				behind = append(behind, b...)
			}
		}
	}
	if len(behind) > 0 {
		lines = append(lines, "**Behind the best peer:** "+strings.Join(behind, "; ")+".")
	} else if len(lines) > 0 {
		lines = append(lines, "**Behind the best peer:** nowhere by these thresholds (error 1 point, CPU 10%, probe answers).")
	}
	return lines
}

func (h *harness) versus(key string, size int, load int64) (line string, behind []string) {
	sh := h.find(key, size, load)
	if sh == nil || !sh.ok() {
		return "", nil
	}
	var peers []*result
	for _, s := range systems() {
		if !s.policed || strings.HasPrefix(s.key, "shaperd") {
			continue
		}
		if r := h.find(s.key, size, load); r != nil && r.ok() {
			peers = append(peers, r)
		}
	}
	if len(peers) == 0 {
		return "", nil
	}
	acc, cpu, prb := peers[0], peers[0], peers[0]
	for _, p := range peers[1:] {
		if math.Abs(p.ErrorPct) < math.Abs(acc.ErrorPct) {
			acc = p
		}
		if p.MachineNsPerFrame < cpu.MachineNsPerFrame {
			cpu = p
		}
		if p.ProbeCompleted > prb.ProbeCompleted || (p.ProbeCompleted == prb.ProbeCompleted && p.ProbeP99ms < prb.ProbeP99ms) {
			prb = p
		}
	}
	cell := fmt.Sprintf("%s at %d B, %s", key, size, loadName(load))
	cpuRatio := sh.MachineNsPerFrame / math.Max(cpu.MachineNsPerFrame, 1)
	line = fmt.Sprintf("%s: error %s (most accurate peer %s %s); machine CPU %.0f ns/frame, %.2f× the cheapest peer %s (%.0f); offered %.0f pps (%s: %.0f); probe %d/%d answered, p99 %.1f ms (best peer %s: %d/%d, p99 %.1f ms)",
		cell, pct(sh.ErrorPct), acc.System, pct(acc.ErrorPct), sh.MachineNsPerFrame, cpuRatio, cpu.System, cpu.MachineNsPerFrame,
		sh.OfferedPPS, cpu.System, cpu.OfferedPPS, sh.ProbeCompleted, sh.ProbeSent, sh.ProbeP99ms, prb.System, prb.ProbeCompleted, prb.ProbeSent, prb.ProbeP99ms)
	if math.Abs(sh.ErrorPct) > math.Abs(acc.ErrorPct)+1 {
		behind = append(behind, fmt.Sprintf("accuracy (%s): %s vs %s %s", cell, pct(sh.ErrorPct), acc.System, pct(acc.ErrorPct)))
	}
	if cpuRatio > 1.1 {
		behind = append(behind, fmt.Sprintf("CPU (%s): %.2f× %s", cell, cpuRatio, cpu.System))
	}
	if sh.ProbeCompleted < prb.ProbeCompleted {
		behind = append(behind, fmt.Sprintf("bypass (%s): %d/%d answered vs %s %d/%d", cell, sh.ProbeCompleted, sh.ProbeSent, prb.System, prb.ProbeCompleted, prb.ProbeSent))
	}
	return line, behind
}

// chart draws the figure: delivered rate and error at the generator's
// maximum, machine CPU per frame at a fixed load, and the probe's p99.
func (h *harness) chart() []byte {
	syss := h.selected()
	maxLoad := h.opt.loads[0]
	for _, l := range h.opt.loads {
		if l == 0 {
			maxLoad = 0
		}
	}
	cpuLoad := h.opt.loads[0]
	for _, l := range h.opt.loads {
		if l != 0 {
			cpuLoad = l
			break
		}
	}
	type pick func(r *result) (float64, string)
	panel := func(title, unit string, load int64, log, policedOnly bool, f pick) chart.Panel {
		p := chart.Panel{Title: title, Unit: unit, Log: log, Ref: math.NaN()}
		for _, s := range syss {
			if policedOnly && !s.policed {
				continue
			}
			p.Categories = append(p.Categories, s.title)
			note := ""
			for _, size := range h.opt.sizes {
				r := h.find(s.key, size, load)
				if r != nil && !r.ok() && note == "" {
					note = r.Status + ": " + firstLine(r.Reason, "")
				}
			}
			p.Notes = append(p.Notes, note)
		}
		for _, size := range h.opt.sizes {
			ser := chart.Series{Name: fmt.Sprintf("%d B", size)}
			for _, s := range syss {
				if policedOnly && !s.policed {
					continue
				}
				v, label := math.NaN(), ""
				if r := h.find(s.key, size, load); r != nil && r.ok() {
					v, label = f(r)
				}
				ser.Values = append(ser.Values, v)
				ser.Labels = append(ser.Labels, label)
			}
			p.Series = append(p.Series, ser)
		}
		return p
	}
	delivered := panel("Delivered pps, "+loadTitle(maxLoad), "packets per second at the external host", maxLoad, true, false,
		func(r *result) (float64, string) { return r.DeliveredPPS, "" })
	delivered.Ref, delivered.RefLabel = float64(h.opt.limit), fmt.Sprintf("limit %d pps", h.opt.limit)
	errPanel := panel("Error against the limit, "+loadTitle(maxLoad), "% (delivered ÷ min(limit, offered) − 1)", maxLoad, false, true,
		func(r *result) (float64, string) { return r.ErrorPct, pct(r.ErrorPct) })
	errPanel.Include = []float64{-5, 5}
	cpu := panel("Machine CPU per offered frame, "+loadTitle(cpuLoad), "ns per frame (/proc/stat busy time ÷ offered frames)", cpuLoad, false, false,
		func(r *result) (float64, string) {
			if r.BaselineRatio > 0 {
				return r.MachineNsPerFrame, fmt.Sprintf("%s (%.2f×)", chart.Format(r.MachineNsPerFrame), r.BaselineRatio)
			}
			return r.MachineNsPerFrame, ""
		})
	probe := panel("Bypass probe p99 RTT, "+loadTitle(maxLoad), "ms (TCP echo to VM 1's port 22 during the flood)", maxLoad, true, false,
		func(r *result) (float64, string) {
			lost := fmt.Sprintf("%d/%d lost", r.ProbeFailed, r.ProbeSent)
			if r.ProbeCompleted == 0 {
				return math.NaN(), "all " + lost
			}
			return math.Max(r.ProbeP99ms, 0.01), fmt.Sprintf("%.2f ms, %s", r.ProbeP99ms, lost)
		})
	fig := chart.Figure{
		Title:    "shaperd benchmark, " + h.machine.Date.Format("2006-01-02 15:04 UTC"),
		Subtitle: []string{h.stampMachine(), h.stampRun(), sizesLoads(h) + fmt.Sprintf("; limit %d pps", h.opt.limit)},
		Panels:   []chart.Panel{delivered, errPanel, cpu, probe},
	}
	return fig.SVG()
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
