package tcsplice

import (
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/steer"
)

func TestParseAlias(t *testing.T) {
	tests := []struct {
		alias, port, intent string
		hq, ok              bool
	}{
		{"shaperd splice of vm-1", "vm-1", "", false, true},
		{"shaperd splice of vm-1 hq", "vm-1", "", true, true},
		{"shaperd splice of vm-1 hq intent=pps=5 bps=1mbit", "vm-1", "pps=5 bps=1mbit", true, true},
		{"shaperd splice of vm-1 intent=x hq", "vm-1", "x hq", false, true},
		{"something else", "", "", false, false},
		{"shaperd splice of ", "", "", false, false},
	}
	for _, tt := range tests {
		port, hq, intent, ok := parseAlias(tt.alias)
		if port != tt.port || hq != tt.hq || intent != tt.intent || ok != tt.ok {
			t.Errorf("parseAlias(%q) = %q %v %q %v", tt.alias, port, hq, intent, ok)
		}
	}
}

// TestAdopt: a daemon splices a port and dies (the Splice value is lost); a
// new Backend finds the splice with its intent, adopts it, and its Release
// restores the host exactly.
func TestAdopt(t *testing.T) {
	l := newLab(t, labOpts{portFlags: []string{"learning", "off", "isolated", "on"}, staticFDB: true})
	before := l.snapshot()
	first := New(testLogger(t))
	sp, err := first.Splice(portName, splice.Options{BypassPorts: []uint16{22}})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	if err := sp.(splice.IntentRecorder).SetIntent("pps=5000 to-vm-bps=16mbit"); err != nil {
		t.Fatalf("SetIntent: %v", err)
	}
	spliced := l.snapshot()
	daemonDies(t, sp)

	b := New(testLogger(t))
	if _, err := b.Adopt("no-such-port"); !errors.Is(err, splice.ErrNotSpliced) {
		t.Errorf("Adopt of an unspliced port: %v, want ErrNotSpliced", err)
	}
	found, err := b.Found()
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Port != portName || found[0].Intent != "pps=5000 to-vm-bps=16mbit" {
		t.Fatalf("Found = %+v, want %s with its intent", found, portName)
	}
	ad, err := b.Adopt(portName)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	requireSame(t, "adopting changes nothing", spliced, l.snapshot())
	if ad.VMTap() != sp.VMTap() || ad.NetTap() != sp.NetTap() || ad.PriorityTap() != sp.PriorityTap() {
		t.Errorf("adopted taps %s/%s/%s, spliced %s/%s/%s", ad.VMTap(), ad.NetTap(), ad.PriorityTap(), sp.VMTap(), sp.NetTap(), sp.PriorityTap())
	}
	if err := ad.Release(); err != nil {
		t.Fatalf("Release of the adopted splice: %v", err)
	}
	requireSame(t, "after releasing the adopted splice", before, l.snapshot())
	if found, _ := b.Found(); len(found) != 0 {
		t.Errorf("Found after release = %+v", found)
	}
}

// TestAdoptRecreatesMissingPieces: while no daemon ran, someone deleted the
// port's filters and the priority tap. Adopt recreates them, and the later
// Release still restores the host exactly.
func TestAdoptRecreatesMissingPieces(t *testing.T) {
	l := newLab(t, labOpts{})
	before := l.snapshot()
	first := New(testLogger(t))
	sp, err := first.Splice(portName, splice.Options{BypassPorts: []uint16{22, 3389}})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	spliced := l.snapshot()
	daemonDies(t, sp)
	l.cmd("ip", "-n", l.ns, "link", "del", sp.PriorityTap())
	l.cmd("tc", "-n", l.ns, "filter", "del", "dev", portName, "ingress")
	b := New(testLogger(t))
	ad, err := b.Adopt(portName)
	if err != nil {
		t.Fatalf("Adopt of an incomplete splice: %v", err)
	}
	// A recreated tap gets a new ifindex and MAC, and recreated tc actions
	// new indexes; everything else must be as Splice made it.
	norm := func(s string) string {
		for _, re := range []*regexp.Regexp{
			regexp.MustCompile(`(?m)^\s*\d+: `), regexp.MustCompile(`index \d+ ref \d+ bind \d+`),
			regexp.MustCompile(`link/ether \S+`), regexp.MustCompile(`\S+ dev shq\w+p self permanent`),
			regexp.MustCompile(`(filter parent ffff: protocol all pref \d+ u32 chain 0 fh )\S+`),
			regexp.MustCompile(`direct-action not_in_hw id \d+`),
		} {
			s = re.ReplaceAllString(s, "X")
		}
		return s
	}
	if got := l.snapshot(); norm(got) != norm(spliced) {
		t.Errorf("repaired splice differs from the original:\n--- original\n%s\n--- repaired\n%s", spliced, got)
	}
	if err := ad.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	requireSame(t, "after releasing the repaired splice", before, l.snapshot())
}

// TestAdoptFallbackCutShort: a daemon killed in createFallback, after the
// pair was made and before its aliases were set, leaves a pair of the
// splice's names with no alias. A new daemon adopts the splice (taking the
// pair over), and its Release restores the host exactly.
func TestAdoptFallbackCutShort(t *testing.T) {
	l := newLab(t, labOpts{})
	before := l.snapshot()
	first := New(testLogger(t))
	sp, err := first.Splice(portName, splice.Options{BypassPorts: []uint16{22}, FailOpen: true})
	if err != nil {
		t.Fatalf("Splice: %v", err)
	}
	daemonDies(t, sp)
	f, g := splice.FallbackNames(portName)
	for _, n := range []string{f, g} {
		l.cmd("ip", "-n", l.ns, "link", "set", "dev", n, "alias", "")
	}
	b := New(testLogger(t))
	ad, err := b.Adopt(portName)
	if err != nil {
		t.Fatalf("Adopt of a splice whose fallback pair has no alias: %v", err)
	}
	if err := ad.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	requireSame(t, "after releasing the adopted splice", before, l.snapshot())
}

// daemonDies does to sp's kernel half what the death of its daemon does:
// its handles close, and the kernel empties the liveness slot (from a work
// queue, within milliseconds), so another daemon may adopt it. The files
// that created its taps close too.
func daemonDies(t *testing.T, sp splice.Splice) {
	t.Helper()
	s := sp.(*spliced)
	for _, name := range []string{s.vmTap, s.netTap, s.prioTap} {
		if f := s.TakeTap(name); f != nil {
			f.Close()
		}
	}
	half, _ := s.Half()
	entry, err := half.Entry(steer.PortTC)
	if err != nil {
		t.Fatal(err)
	}
	info, err := entry.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	half.Close()
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		held, err := steer.Held(id)
		if err != nil {
			t.Fatal(err)
		}
		if !held {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the liveness slot is still filled 1 s after the handles closed")
		}
	}
}
