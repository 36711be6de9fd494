package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func newTestMeter(o options) (*meter, *bytes.Buffer) {
	var buf bytes.Buffer
	o.json = true
	return &meter{o: o, out: bufio.NewWriter(&buf)}, &buf
}

const sec = int64(time.Second)

// TestMeterStartAfterFirst: 1000 pps from t=5 s for 10 s; window 8 s from
// the first datagram; the sink reads late (after the window end) but the
// receive stamps keep the count exact.
func TestMeterStartAfterFirst(t *testing.T) {
	m, buf := newTestMeter(options{duration: 8 * time.Second, interval: 2 * time.Second, startAfterFirst: true})
	for i := int64(0); i < 10000 && !m.done; i++ {
		m.packet(5*sec+i*sec/1000, 100)
	}
	if !m.done || m.t.Packets != 8000 || m.t.Seconds != 8 || m.t.PPS != 1000 {
		t.Fatalf("total %+v done=%v, want 8000 packets in 8 s", m.t, m.done)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want 4 interval lines, got %q", lines)
	}
	for i, l := range lines {
		var tk tick
		if err := json.Unmarshal([]byte(l), &tk); err != nil || tk.Packets != 2000 || tk.T != float64(2*(i+1)) {
			t.Errorf("line %d: %s (%v)", i, l, err)
		}
	}
}

func TestMeterIdleStop(t *testing.T) {
	m, _ := newTestMeter(options{idleStop: 500 * time.Millisecond, startAfterFirst: true})
	for i := int64(0); i < 5001; i++ { // 5000 pps for exactly 1 s
		m.packet(sec+i*sec/5000, 10)
	}
	m.drained(2*sec+sec/4, 0)
	if m.done {
		t.Fatal("done before idle-stop elapsed")
	}
	m.drained(3*sec, 0)
	if !m.done || m.t.Packets != 5001 || m.t.Seconds != 1 || m.t.PPS != 5000 {
		t.Fatalf("%+v", m.t)
	}
}

func TestMeterBoundWindow(t *testing.T) {
	m, _ := newTestMeter(options{duration: time.Second})
	m.begin(10 * sec)
	for i := int64(0); i < 300; i++ {
		m.packet(10*sec+sec/2+i*sec/100, 1) // 100 pps from 10.5 s
	}
	if !m.done || m.t.Packets != 50 || m.t.Seconds != 1 {
		t.Fatalf("%+v", m.t)
	}
}

func TestMeterFirstTimeout(t *testing.T) {
	m, _ := newTestMeter(options{startAfterFirst: true, firstTimeout: time.Second})
	m.drained(sec/2, 0)
	if m.done {
		t.Fatal("done before the timeout")
	}
	m.drained(sec, 0)
	if !m.done || m.t.Packets != 0 {
		t.Fatalf("%+v done=%v", m.t, m.done)
	}
}
