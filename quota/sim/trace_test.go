package sim

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseTrace(t *testing.T) {
	in := `# a comment
seconds_from_start,offered_rate

0,100mbit
60.5, 12.5MBps
120,250000000
3600 , 0
`
	tr, err := ParseTrace(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Trace{
		{At: 0, Rate: 100e6, Line: 4},
		{At: 60500 * time.Millisecond, Rate: 100e6, Line: 5}, // MBps: megabytes per second
		{At: 120 * time.Second, Rate: 250e6, Line: 6},        // plain bits per second
		{At: time.Hour, Rate: 0, Line: 7},
	}
	if !reflect.DeepEqual(tr, want) {
		t.Errorf("parsed %+v\nwant   %+v", tr, want)
	}
	// WriteCSV reads back.
	var b bytes.Buffer
	if err := tr.WriteCSV(&b); err != nil {
		t.Fatal(err)
	}
	back, err := ParseTrace(&b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tr {
		if back[i].At != tr[i].At || back[i].Rate != tr[i].Rate {
			t.Errorf("round trip line %d: %+v, want %+v", i, back[i], tr[i])
		}
	}
}

func TestParseTraceErrors(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"empty", "", "no data lines"},
		{"only a header", "seconds_from_start,offered_rate\n", "no data lines"},
		{"one field", "0,1mbit\n60\n", "line 2: \"60\" has 1 fields"},
		{"three fields", "0,1mbit,x\n", "line 1: \"0,1mbit,x\" has 3 fields"},
		{"bad seconds", "0,1mbit\n1x,2mbit\n", `line 2: seconds "1x" is not a number`},
		{"header after data", "0,1mbit\nseconds,rate\n", `line 2: seconds "seconds" is not a number`},
		{"negative seconds", "-1,1mbit\n", `line 1: seconds "-1" is out of range`},
		{"infinite seconds", "Inf,1mbit\n", `line 1: seconds "Inf" is out of range`},
		{"not increasing", "0,1mbit\n# c\n60,2mbit\n60,3mbit\n", "line 4: 60s is not after the previous line's 60s (line 3)"},
		{"going back", "0,1mbit\n60,2mbit\n30,3mbit\n", "line 3: 30s is not after the previous line's 60s (line 2)"},
		{"bad unit", "0,100mb\n", `line 1: units: rate "100mb": unknown unit "mb"`},
		{"negative rate", "0,-5mbit\n", `line 1: units: rate "-5mbit": negative`},
		{"no rate", "0,\n", `line 1: no rate after "0,"`},
		{"no number", "0,mbit\n", `line 1: units: rate "mbit": no number`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseTrace(strings.NewReader(c.in))
			if !errors.Is(err, ErrBadTrace) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want ErrBadTrace mentioning %q", err, c.want)
			}
		})
	}
}

func TestGenerate(t *testing.T) {
	g := GenConfig{Commit: 100e6, Seed: 42}
	a, b := Generate(g), Generate(g)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed gave two traces")
	}
	g.Seed = 43
	if reflect.DeepEqual(a, Generate(g)) {
		t.Fatal("two seeds gave the same trace")
	}
	if a[0].At != 0 || a[len(a)-1].At >= 30*24*time.Hour {
		t.Errorf("trace spans %v to %v", a[0].At, a[len(a)-1].At)
	}
	for i := 1; i < len(a); i++ {
		if a[i].At <= a[i-1].At || a[i].Rate == a[i-1].Rate {
			t.Fatalf("step %d: %+v after %+v", i, a[i], a[i-1])
		}
	}
	// The CSV holds it exactly (whole seconds, whole bits per second).
	var buf bytes.Buffer
	if err := a.WriteCSV(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := ParseTrace(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if back[i].At != a[i].At || back[i].Rate != a[i].Rate {
			t.Fatalf("CSV round trip step %d: %+v, want %+v", i, back[i], a[i])
		}
	}
}
