package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// element is one parsed SVG element: its name, attributes and text.
type element struct {
	name  string
	attrs map[string]string
	text  string
}

// parseSVG decodes doc as XML (strict, every token) and returns its
// elements in order. It fails on malformed XML, on an attribute given twice
// (which encoding/xml accepts but SVG renderers refuse), and unless the root
// is an <svg> in the SVG namespace.
func parseSVG(t *testing.T, doc []byte) []element {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	var els []element
	var open []int
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := element{name: tok.Name.Local, attrs: map[string]string{}}
			for _, a := range tok.Attr {
				if _, dup := e.attrs[a.Name.Local]; dup {
					t.Fatalf("<%s> has attribute %s twice", e.name, a.Name.Local)
				}
				e.attrs[a.Name.Local] = a.Value
			}
			if len(els) == 0 && (e.name != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root element is {%s}%s, want an svg element in the SVG namespace", tok.Name.Space, e.name)
			}
			els = append(els, e)
			open = append(open, len(els)-1)
		case xml.EndElement:
			open = open[:len(open)-1]
		case xml.CharData:
			if len(open) > 0 {
				els[open[len(open)-1]].text += string(tok)
			}
		}
	}
	if len(els) == 0 || len(open) != 0 {
		t.Fatalf("SVG has %d elements and %d unclosed", len(els), len(open))
	}
	return els
}

func num(t *testing.T, e element, attr string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.attrs[attr], 64)
	if err != nil {
		t.Fatalf("<%s %s=%q>: %v", e.name, attr, e.attrs[attr], err)
	}
	return v
}

// TestTimelineRecordedRun draws a recorded make demo run (testdata/run.json,
// from `make demo` on the lab) and checks that each ladder stage is shaded
// where the run says it was, and labelled with its limit.
func TestTimelineRecordedRun(t *testing.T) {
	rec, err := readJSON("testdata/run.json")
	if err != nil {
		t.Fatal(err)
	}
	els := parseSVG(t, rec.SVG())

	// The recording: the baseline sample at -1.9989 s, the last at
	// +42.0032 s; the quarantine began at +1.3148 s (the daemon's since),
	// stage 2 and stage 3 at the ladder's next_transition, probation
	// likewise, released at the midpoint between two samples.
	const t0, t1 = -1.998894969, 42.003176095
	want := []struct {
		stage, label string
		from, to     float64
	}{
		{"stage1", "stage 1: 10k pps", 1.314841149, 9.314841149},
		{"stage2", "stage 2: 2.5k pps", 9.314841149, 17.814184721},
		{"stage3", "stage 3: blocked but bypass", 17.814184721, 30.313587576},
		{"probation", "probation", 30.313587576, 39.50258715},
	}
	xOf := func(s float64) float64 { return plotLeft + (s-t0)/(t1-t0)*plotW }
	var got []element
	labels := map[string]bool{}
	for _, e := range els {
		if e.name == "rect" && e.attrs["class"] == "stage" {
			got = append(got, e)
		}
		if e.name == "text" && e.attrs["class"] == "stage-label" {
			labels[e.text] = true
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d stages shaded, want %d (%v)", len(got), len(want), got)
	}
	for i, w := range want {
		e := got[i]
		if e.attrs["data-stage"] != w.stage {
			t.Errorf("shaded stage %d is %q, want %q", i, e.attrs["data-stage"], w.stage)
		}
		if f, to := num(t, e, "data-from"), num(t, e, "data-to"); math.Abs(f-w.from) > 1e-3 || math.Abs(to-w.to) > 1e-3 {
			t.Errorf("%s shaded from %.3f to %.3f s, want %.3f to %.3f", w.stage, f, to, w.from, w.to)
		}
		x, wd := num(t, e, "x"), num(t, e, "width")
		if math.Abs(x-xOf(w.from)) > 0.1 || math.Abs(x+wd-xOf(w.to)) > 0.1 {
			t.Errorf("%s drawn from x=%.1f to %.1f, want %.1f to %.1f", w.stage, x, x+wd, xOf(w.from), xOf(w.to))
		}
		if !labels[w.label] {
			t.Errorf("no label %q (labels: %v)", w.label, labels)
		}
	}

	// One step per second for each series, and one probe cell per second.
	var cells int
	for _, e := range els {
		switch {
		case e.name == "path" && (e.attrs["class"] == "offered" || e.attrs["class"] == "delivered"):
			if n := strings.Count(e.attrs["d"], ","); n != 2*(len(rec.Samples)-1) {
				t.Errorf("%s has %d points, want %d", e.attrs["class"], n, 2*(len(rec.Samples)-1))
			}
		case e.name == "rect" && e.attrs["class"] == "probe":
			cells++
			if e.attrs["fill"] != "#009E73" {
				t.Errorf("probe cell %d is %s; the recorded probe lost nothing", cells, e.attrs["fill"])
			}
		}
	}
	if cells != len(rec.Samples)-1 {
		t.Errorf("%d probe cells, want %d", cells, len(rec.Samples)-1)
	}
}

func f(v float64) *float64 { return &v }

func TestSpans(t *testing.T) {
	ss := []Sample{
		{T: -1, Stage: "watching", StageSince: -1},
		{T: 0, Stage: "watching", StageSince: -1},
		{T: 1, Stage: "flagged", StageSince: 0.4},
		{T: 2, Stage: "stage1", StageSince: 1.2, LimitPPS: f(10000)},
		{T: 3, Stage: "stage1", StageSince: 1.2, LimitPPS: f(10000)},
		{T: 4, Stage: "stage2", StageSince: 3.5, LimitPPS: f(2500)},
		// A StageSince outside its sample's interval is clamped to it.
		{T: 5, Stage: "stage3", StageSince: 3.1, LimitPPS: f(0)},
		{T: 6, Stage: "probation", StageSince: 6.5, LimitPPS: f(2500)},
		{T: 7, Stage: "released", StageSince: 6.5},
	}
	want := []span{
		{"watching", -1, 0.4, nil},
		{"flagged", 0.4, 1.2, nil},
		{"stage1", 1.2, 3.5, f(10000)},
		{"stage2", 3.5, 4, f(2500)},
		{"stage3", 4, 6, f(0)},
		{"probation", 6, 6.5, f(2500)},
		{"released", 6.5, 7, nil},
	}
	got := spans(ss)
	if len(got) != len(want) {
		t.Fatalf("spans: %+v\nwant %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Stage != w.Stage || g.From != w.From || g.To != w.To || (g.LimitPPS == nil) != (w.LimitPPS == nil) || (g.LimitPPS != nil && *g.LimitPPS != *w.LimitPPS) {
			t.Errorf("span %d = %+v, want %+v", i, g, w)
		}
	}
	labels := []string{"watching: no pps limit", "flagged", "stage 1: 10k pps", "stage 2: 2.5k pps", "stage 3: blocked but bypass", "probation", "released"}
	for i, l := range labels {
		if got[i].label() != l {
			t.Errorf("span %d label %q, want %q", i, got[i].label(), l)
		}
	}
}

func TestLine(t *testing.T) {
	for _, c := range []struct {
		s    Sample
		want string
	}{
		{Sample{Tick: -1, Stage: "watching", Offered: 12, Delivered: 11.6, ProbeOK: 10, ProbeMax: 0.84},
			"   -1s  watching          12         12  ok 10/10  0.8ms"},
		{Sample{Tick: 5, Stage: "stage1", Offered: 312345, Delivered: 9996, ProbeOK: 10, ProbeMax: 37.4,
			Drops: map[string]float64{"backstop": 290110, "queue_time": 5012, "to_vm:queue_full": 3}},
			"   +5s  stage1          312k      10.0k  ok 10/10  37ms   backstop=290k  queue_time=5.0k  to_vm:queue_full=3"},
		{Sample{Tick: 20, Stage: "stage3", Offered: 1.25e6, Delivered: 0, ProbeOK: 7, ProbeLost: 3},
			"  +20s  stage3         1.25M          0  lost 3/10"},
		{Sample{Tick: 0, Stage: "released"},
			"   +0s  released           0          0  -"},
	} {
		if got := line(c.s); got != c.want {
			t.Errorf("line(%+v)\n got %q\nwant %q", c.s, got, c.want)
		}
	}
}

func TestRate(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999.4: "999", 999.6: "1.0k", 2500: "2.5k", 99949: "99.9k", 99951: "100k", 312499: "312k", 999600: "1.00M", 1.25e6: "1.25M"} {
		if got := rate(v); got != want {
			t.Errorf("rate(%v) = %q, want %q", v, got, want)
		}
	}
}

// TestDrops reads drop counters out of a status --json quarantine as the
// daemon prints it.
func TestDrops(t *testing.T) {
	const js = `{"daemon":{"now":"2026-12-07T10:33:00Z"},"quarantines":[{"port":"vm-1-00c9","state":"active","stage":"stage1",
	"since":"2026-12-07T10:32:46Z","next_transition":"2026-12-07T10:32:54Z",
	"directions":{"from_vm":{"limits":{"pps":10000},"classes":{"udp":{"drops":{"queue_time":7,"queue_full":2}},"tcp":{"drops":{"queue_time":1}},"bypass":{"drops":{}}},
	"tap_drops":5,"kernel_drops":{"backstop":100}},
	"to_vm":{"limits":{"pps":null},"classes":{"udp":{"drops":{"queue_full":4}}},"tap_drops":0,"kernel_drops":{}}}}],"flagged":[]}`
	var st status
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatal(err)
	}
	q := st.quarantine("vm-1-00c9")
	if q == nil || q.Stage != "stage1" || q.Directions.FromVM.Limits.PPS == nil || *q.Directions.FromVM.Limits.PPS != 10000 || q.NextTransition == nil {
		t.Fatalf("quarantine read as %+v", q)
	}
	got := q.drops()
	want := map[string]uint64{"queue_time": 8, "queue_full": 2, "tap_queue": 5, "backstop": 100, "to_vm:queue_full": 4}
	if len(got) != len(want) {
		t.Fatalf("drops %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("drops[%s] = %d, want %d", k, got[k], v)
		}
	}
	if st.quarantine("vm-2-00c9") != nil || st.flagged("vm-1-00c9") != nil {
		t.Error("found a port that is not there")
	}
}

// TestProber runs the probe against an echo server, a server that never
// answers, and an address nobody listens on.
func TestProber(t *testing.T) {
	serve := func(echo bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
				if echo {
					go io.Copy(c, c)
				} else {
					go io.Copy(io.Discard, c)
				}
			}
		}()
		return ln.Addr().String()
	}
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	for _, c := range []struct {
		name     string
		addr     string
		answered bool // some answered, none lost; else all lost after the timeout
	}{
		{"echo", serve(true), true},
		{"silent", serve(false), false},
		{"refused", closed(), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newProber(c.addr)
			p.interval = 20 * time.Millisecond
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { p.run(ctx); close(done) }()
			time.Sleep(300 * time.Millisecond)
			cancel()
			<-done
			time.Sleep(50 * time.Millisecond) // the last echoes
			now := time.Now()
			w := p.take(now)
			if c.answered {
				if w.Answered < 5 || w.Lost != 0 || w.MaxRTT <= 0 {
					t.Fatalf("echo server: %+v, want at least 5 answered, none lost", w)
				}
				return
			}
			if w.Answered != 0 || w.Lost != 0 {
				t.Fatalf("before the timeout: %+v, want nothing answered and nothing lost yet", w)
			}
			if w := p.take(now.Add(2 * p.timeout)); w.Lost < 5 || w.Answered != 0 {
				t.Fatalf("after the timeout: %+v, want every message lost", w)
			}
			p.mu.Lock()
			tot := p.total
			p.mu.Unlock()
			if tot.Lost < 5 || tot.Answered != 0 {
				t.Fatalf("totals %+v", tot)
			}
		})
	}
}
