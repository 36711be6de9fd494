package api

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shaperd/shaperd/units"
)

// A request in the control socket's JSON, as clients sent it before limits
// were typed, decodes and parses into the typed request, and encodes back
// to the same bytes.
func TestOldRequestJSON(t *testing.T) {
	const old = `{"port":"vm-1","limits":{"bypass":"22,2222","class":"dns: udp dport 53 pps 1000\nweb: tcp dport 80","delay":"200ms","fail":"closed","guard":"true","mode":"shape","pps":"5000","profile":"strict","to-vm-backstop":"none","to-vm-block":"true","to-vm-bps":"16mbit","to-vm-burst-bytes":"4kb","to-vm-bypass-pps":"none"},"pending":true}`
	var req QuarantineRequest
	dec := json.NewDecoder(strings.NewReader(old))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(req); string(b) != old {
		t.Errorf("encoded as\n%s\nwant\n%s", b, old)
	}
	r, err := ParseRequest(req.Limits)
	if err != nil {
		t.Fatal(err)
	}
	f, to := r.FromVM, r.ToVM
	switch {
	case *f.PPS.Value != 5000 || !f.BPS.IsZero() || *f.Mode != ModeShape || *f.Delay.Value != Duration(200*time.Millisecond):
		t.Errorf("from_vm: %+v", f)
	case f.Classes.Value.Len() != 2 || f.Classes.Value.Set().Class(0).Name != "dns":
		t.Errorf("classes: %v", f.Classes.Value.Lines())
	case *to.BPS.Value != 16*units.Rate(1e6) || *to.BurstBytes.Value != 4096 || !to.BypassPPS.Set || to.BypassPPS.Value != nil ||
		!*to.Block || !to.Backstop.Off:
		t.Errorf("to_vm: %+v", to)
	case len(*r.Bypass) != 2 || (*r.Bypass)[1] != 2222 || *r.Fail != FailClosed || !*r.Guard || *r.Profile != "strict":
		t.Errorf("request: %+v", r)
	}
}

// Errors name the flag to fix, in the words the daemon has always used.
func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		flags LimitFlags
		want  string
	}{
		{LimitFlags{"pps": "lots"}, `--pps "lots": want a number of packets per second, or none`},
		{LimitFlags{"to-vm-pps": "20000000"}, `--to-vm-pps "20000000": at most 10000000 packets per second`},
		{LimitFlags{"pps": "0"}, `--pps 0 would drop everything but the bypass and control classes: say so with --block`},
		{LimitFlags{"to-vm-bps": "0kbit"}, `--to-vm-bps 0kbit would drop everything but the bypass and control classes: say so with --to-vm-block`},
		{LimitFlags{"burst": "0"}, `--burst "0": want a whole number of packets, at least 1, or none for the default (10 ms of --pps)`},
		{LimitFlags{"mode": "fast"}, `--mode "fast": want police or shape`},
		{LimitFlags{"delay": "-1s"}, `--delay "-1s": want a duration such as 200ms, or none`},
		{LimitFlags{"fail": "maybe"}, `--fail "maybe": want open or closed`},
		{LimitFlags{"bypass": "22,22"}, `--bypass "22,22": port 22 given twice`},
		{LimitFlags{"max-frame": "2gb"}, `--max-frame "2gb": at most 1gb`},
		{LimitFlags{"backstop": "0.5"}, `--backstop "0.5": want a ceiling in packets per second (at least 1), none (no backstop) or auto (the default, from the budgets)`},
		{LimitFlags{"class": "ok: udp\nbad: udp dport 99999"}, `--class (rule 2) "bad: udp dport 99999"`},
		{LimitFlags{"speed": "1"}, `unknown limit --speed`},
	} {
		_, err := ParseRequest(c.flags)
		if !errors.Is(err, ErrUsage) || !strings.HasPrefix(err.Error(), "usage: "+c.want) {
			t.Errorf("%v: %v\nwant usage: %s", c.flags, err, c.want)
		}
	}
	if _, err := ParseLimits(LimitFlags{"profile": "x"}); err == nil {
		t.Error("a profile's limits may not name a profile")
	}
	if r, err := ParseLimits(LimitFlags{"pps": "0"}); err != nil || *r.FromVM.PPS.Value != 0 {
		t.Errorf("an intent's zero rate: %v", err)
	}
}

func TestApply(t *testing.T) {
	r, err := ParseLimits(LimitFlags{"block": "true", "pps": "5", "to-vm-pps": "100", "to-vm-burst": "none"})
	if err != nil {
		t.Fatal(err)
	}
	bps, burst := units.Rate(8000), 7
	from := DirLimits{BPS: &bps}.Apply(r.FromVM)
	if *from.PPS != 5 || from.BPS != nil {
		t.Errorf("block then pps: %+v", from)
	}
	to := DirLimits{Burst: &burst}.Apply(r.ToVM)
	if *to.PPS != 100 || to.Burst != nil {
		t.Errorf("to_vm: %+v", to)
	}
	if got := (DirLimits{Burst: &burst}).Apply(DirChange{}); got.Burst != &burst {
		t.Errorf("an empty change changed %+v", got)
	}
}

// Flags writes limits in the words ParseLimits reads: the round trip gives
// the limits back, whatever differs from the defaults.
func TestFlagsRoundTrip(t *testing.T) {
	r, err := ParseLimits(LimitFlags{"pps": "2500.5", "bps": "16mbit", "burst": "30", "burst-bytes": "4kb", "mode": "shape", "delay": "200ms",
		"queue-bytes": "1mb", "queue-time": "1s", "bypass-pps": "none", "bypass-bps": "1mbit", "control-pps": "50", "syn-pps": "200",
		"udp-pps": "1000", "icmp-bps": "64kbit", "max-frame": "1400", "bypass-conn-per-source": "10", "backstop": "7000",
		"class": "dns: udp dport 53 pps 1000\nssh-brute: tcp dport 22 syn per src pps 5"})
	if err != nil {
		t.Fatal(err)
	}
	bp, bb := 2000.0, units.Rate(100e6)
	def := DirLimits{BypassPPS: &bp, BypassBPS: &bb}
	d := def.Apply(r.FromVM)
	flags := LimitFlags{}
	for _, f := range d.Flags("to-vm-", def) {
		flags[f.Name] = f.Value
	}
	if len(flags) != 18 {
		t.Errorf("%d flags, want 18: %v", len(flags), flags)
	}
	back, err := ParseLimits(flags)
	if err != nil {
		t.Fatal(err)
	}
	got := def.Apply(back.ToVM)
	a, _ := json.Marshal(d)
	b, _ := json.Marshal(got)
	if string(a) != string(b) {
		t.Errorf("round trip:\n%s\n%s", a, b)
	}
	if (DirLimits{BackstopOff: true}).Flags("", DirLimits{})[0] != (Flag{"backstop", "none"}) {
		t.Error("--backstop none lost")
	}
}
