package integration

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// demoLine is one second of make demo's view: tick, stage, offered and
// delivered frames per second, the probe's column, and the drops that moved
// (reason=rate), e.g.
//
//	+5s  stage1          312k      10.0k  ok 10/10  0.4ms  backstop=290k  queue_time=10.0k
var demoLine = regexp.MustCompile(`^ *([+-]\d+)s  (\S+) +(\d+(?:\.\d+)?[kM]?) +(\d+(?:\.\d+)?[kM]?)  (ok \d+/\d+  \d+(?:\.\d)?ms|lost \d+/\d+|-)((?: +\S+=\d+(?:\.\d+)?[kM]?)*)$`)

// TestDemo runs make demo's script (scripts/netns/demo.sh, as make demo
// does, with the SVG written to a temporary directory) and checks what it
// promises: one line per second in the compact format from before the flood
// to after the release, the ladder's stages in order, the drops that moved
// shown, the timeline written where it says, well-formed, with the stages
// the lines showed shaded, and the lab removed afterwards.
func TestDemo(t *testing.T) {
	bin := binDir(t)
	for _, tool := range []string{"shaperd", "flood", "sink", "probe", "demoview"} {
		if _, err := os.Stat(filepath.Join(bin, tool)); err != nil {
			t.Fatalf("%v: run make build tools", err)
		}
	}
	name := "it" + randName(4)
	svg := filepath.Join(t.TempDir(), "timeline.svg")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot(), "scripts/netns/demo.sh"))
	cmd.Env = append(os.Environ(), "LAB="+name, "BIN="+bin, "DEMO_SVG="+svg)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("demo.sh (%v):\n%s", time.Since(start).Round(time.Second), out)
	t.Cleanup(func() {
		// demo.sh removes its lab on every exit; if it did not, the test
		// fails and the lab goes anyway.
		if left := labNamespaces(t, name); len(left) > 0 {
			t.Errorf("demo.sh left namespaces %v", left)
			down := exec.Command(filepath.Join(repoRoot(), "scripts/netns/lab.sh"), "down")
			down.Env = append(os.Environ(), "LAB="+name)
			_ = down.Run()
		}
	})
	if err != nil {
		t.Fatalf("demo.sh: %v", err)
	}

	var (
		ticks       []int
		stages      []string // in order, each once per run of seconds
		withDrops   int
		timeline    string
		quarantined bool
	)
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, "== timeline: "):
			timeline = strings.TrimPrefix(l, "== timeline: ")
		case strings.Contains(l, "quarantined automatically"):
			quarantined = true
		}
		m := demoLine.FindStringSubmatch(l)
		if m == nil {
			if strings.HasPrefix(strings.TrimSpace(l), "+") || strings.HasPrefix(strings.TrimSpace(l), "-") {
				t.Errorf("a line that is not in the compact format: %q", l)
			}
			continue
		}
		tick, _ := strconv.Atoi(m[1])
		ticks = append(ticks, tick)
		if len(stages) == 0 || stages[len(stages)-1] != m[2] {
			stages = append(stages, m[2])
		}
		if m[6] != "" {
			withDrops++
		}
	}
	if len(ticks) < 20 {
		t.Fatalf("%d lines in the compact format, want one per second for the whole run", len(ticks))
	}
	for i := 1; i < len(ticks); i++ {
		if ticks[i] != ticks[i-1]+1 {
			t.Errorf("second %+d follows %+d: want one line per second", ticks[i], ticks[i-1])
		}
	}
	if ticks[0] != -1 {
		t.Errorf("the first line is second %+d, want -1 (the quiet second before the flood)", ticks[0])
	}
	// The ladder's order, as the lab config has it. How far the flood
	// drives it depends on how fast the VM can send on a busy machine (the
	// quarantine begins once it passes 50000 pps for 1 s), so the test asks
	// for a quarantine and a release, in order, not for every stage.
	ladder := []string{"watching", "flagged", "stage1", "stage2", "stage3", "probation", "released"}
	for i := 1; i < len(stages); i++ {
		if slices.Index(ladder, stages[i]) <= slices.Index(ladder, stages[i-1]) {
			t.Errorf("stages in order %v: %s after %s is not the ladder's order %v", stages, stages[i], stages[i-1], ladder)
		}
	}
	if !slices.Contains(stages, "stage1") || stages[len(stages)-1] != "released" {
		t.Errorf("stages in order %v: want stage1 and, last, released", stages)
	}
	if !quarantined {
		t.Error(`no "quarantined automatically" line`)
	}
	if withDrops == 0 {
		t.Error("no line shows a drop reason, though the flood was shaped and blocked")
	}

	if timeline != svg {
		t.Fatalf("demo.sh printed the timeline's path as %q, want %q", timeline, svg)
	}
	doc, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	// The picture shades what the lines showed (but watching and released,
	// left white).
	shaded := svgStages(t, doc)
	want := slices.DeleteFunc(slices.Clone(stages), func(s string) bool { return s == "watching" || s == "released" })
	if !slices.Equal(shaded, want) {
		t.Errorf("the timeline shades %v, the lines showed %v", shaded, want)
	}
	if _, err := os.Stat(strings.TrimSuffix(svg, ".svg") + "-samples.json"); err != nil {
		t.Errorf("the samples beside the timeline: %v", err)
	}
}

// svgStages parses doc strictly as XML with an <svg> root and returns the
// stages it shades (rect class="stage"), in order.
func svgStages(t *testing.T, doc []byte) []string {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	var stages []string
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the timeline is not well-formed XML: %v", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if root == "" {
			root = se.Name.Space + " " + se.Name.Local
		}
		attrs := map[string]string{}
		for _, a := range se.Attr {
			if _, dup := attrs[a.Name.Local]; dup {
				t.Fatalf("the timeline's <%s> has attribute %s twice", se.Name.Local, a.Name.Local)
			}
			attrs[a.Name.Local] = a.Value
		}
		if se.Name.Local == "rect" && attrs["class"] == "stage" {
			stages = append(stages, attrs["data-stage"])
		}
	}
	if root != "http://www.w3.org/2000/svg svg" {
		t.Fatalf("the timeline's root element is %q, want an svg element", root)
	}
	return stages
}

// labNamespaces lists the network namespaces named LAB-*.
func labNamespaces(t *testing.T, lab string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Errorf("ip netns list: %v", err)
		return nil
	}
	var left []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], lab+"-") {
			left = append(left, f[0])
		}
	}
	return left
}
