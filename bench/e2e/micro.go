package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// microPackages hold the per-frame microbenchmarks; each op is one frame.
var microPackages = []string{"./classify/", "./bucket/", "./forward/"}

// micro is one microbenchmark's figures (the median over -count runs).
type micro struct {
	Pkg         string  `json:"pkg"`
	Name        string  `json:"name"` // without the -GOMAXPROCS suffix
	NsPerFrame  float64 `json:"ns_per_frame"`
	AllocsFrame float64 `json:"allocs_per_frame"`
	BytesFrame  float64 `json:"bytes_per_frame"`
	PktsPerSec  float64 `json:"pkts_per_sec,omitempty"`
	Runs        int     `json:"runs"`
	// VsBaseline is NsPerFrame ÷ Baseline's, a sibling measured in the same
	// run (policed ÷ unlimited step, two budgets ÷ one).
	Baseline   string  `json:"baseline,omitempty"`
	VsBaseline float64 `json:"vs_baseline,omitempty"`
}

// microBaselines names, for a benchmark, the sibling its cost is a ratio
// against.
var microBaselines = map[string]string{
	"BenchmarkStep/policed":            "BenchmarkStep/unlimited",
	"BenchmarkAdmit/budgets=2":         "BenchmarkAdmit/budgets=1",
	"BenchmarkAdmit/budgets=2/refused": "BenchmarkAdmit/budgets=2",
}

// runMicro runs the microbenchmarks with -benchmem and parses them.
func runMicro(ctx context.Context, root, goBin, benchtime string, count int) ([]micro, string, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime, "-count", strconv.Itoa(count)}, microPackages...)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, lastLines(string(out), 20))
	}
	ms, err := parseBench(string(out))
	return ms, string(out), err
}

var gomaxprocsSuffix = regexp.MustCompile(`-\d+$`)

// parseBench reads `go test -bench -benchmem` output: "pkg:" lines, then
// "BenchmarkX/sub-N  iterations  value unit  value unit ..." lines. Repeated
// names (-count > 1) are reduced to their median ns/op.
func parseBench(out string) ([]micro, error) {
	type key struct{ pkg, name string }
	runs := map[key][]micro{}
	var order []key
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue // a benchmark's log line, not a result
		}
		m := micro{Pkg: pkg, Name: gomaxprocsSuffix.ReplaceAllString(f[0], ""), Runs: 1}
		seen := false
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("bench line %q: value %q: %w", line, f[i], err)
			}
			switch f[i+1] {
			case "ns/op":
				m.NsPerFrame, seen = v, true
			case "allocs/op":
				m.AllocsFrame = v
			case "B/op":
				m.BytesFrame = v
			case "pkts/s":
				m.PktsPerSec = v
			}
		}
		if !seen {
			return nil, fmt.Errorf("bench line %q: no ns/op", line)
		}
		k := key{pkg, m.Name}
		if _, ok := runs[k]; !ok {
			order = append(order, k)
		}
		runs[k] = append(runs[k], m)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("no benchmark results in the output")
	}
	var ms []micro
	for _, k := range order {
		rs := runs[k]
		slices.SortFunc(rs, func(a, b micro) int {
			switch {
			case a.NsPerFrame < b.NsPerFrame:
				return -1
			case a.NsPerFrame > b.NsPerFrame:
				return 1
			}
			return 0
		})
		m := rs[len(rs)/2]
		m.Runs = len(rs)
		ms = append(ms, m)
	}
	byName := map[string]float64{}
	for _, m := range ms {
		byName[m.Name] = m.NsPerFrame
	}
	for i, m := range ms {
		if base, ok := microBaselines[m.Name]; ok && byName[base] > 0 {
			ms[i].Baseline = base
			ms[i].VsBaseline = round(m.NsPerFrame/byName[base], 2)
		}
	}
	return ms, nil
}
