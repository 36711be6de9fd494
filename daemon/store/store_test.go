package store

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/shaperd/shaperd/daemon/intent"
	"github.com/shaperd/shaperd/statefile"
)

// oldEntry and oldIntent are a quarantine as the daemon wrote it before
// limits were typed (api.LimitRequest was a map of flag strings), with
// every kind of limit: the state file's entry and the intent kept on the
// plumbing.
const (
	oldEntry  = `{"port":"vm-1","state":"active","backend":"ovs","spec":{"from_vm":{"pps":5000,"burst":30,"mode":"shape","delay":"200ms","queue_time":"220ms","bypass_pps":2000,"bypass_bps":100000000,"control_pps":200,"max_frame":1400,"classes":["dns: proto udp dport 53 pps 1000","ssh-brute: proto tcp dport 22 flags syn,!ack per src pps 5"],"backstop_off":true},"to_vm":{"bps":16000000,"burst_bytes":4096,"bypass_bps":100000000,"control_pps":200,"icmp_bps":64000,"backstop":7000},"bypass_ports":[22,2222],"bypass_outbound":false,"fail":"open","profile":"quarantine","origin":"watch","stage":"stage1","guard":true,"guard_mac":"52:54:00:12:34:56","guard_ip":"198.18.0.11"},"since":"2026-12-01T10:00:00Z"}`
	oldIntent = `pps=5000 burst=30 mode=shape delay=200ms queue-time=220ms max-frame=1400b backstop=none class=dns%3A+proto+udp+dport+53+pps+1000%0Assh-brute%3A+proto+tcp+dport+22+flags+syn%2C%21ack+per+src+pps+5 to-vm-bps=16mbit to-vm-burst-bytes=4kb to-vm-bypass-pps=none to-vm-icmp-bps=64kbit to-vm-backstop=7000 bypass=22,2222 fail=open guard=true guard-mac=52:54:00:12:34:56 guard-ip=198.18.0.11 profile=quarantine origin=watch stage=stage1`
)

// An old state file loads into the typed spec, writes back byte for byte,
// and means what its intent on the plumbing means.
func TestOldStateFileLoads(t *testing.T) {
	dir := t.TempDir()
	body := json.RawMessage(`{"version":1,"written":"2026-12-01T10:00:01Z","quarantines":[` + oldEntry + `]}`)
	if err := statefile.Write(filepath.Join(dir, StateFile), body, true); err != nil {
		t.Fatal(err)
	}
	got, bad, err := LoadQuarantines(dir)
	if err != nil || len(bad) != 0 {
		t.Fatalf("loadState: %v, bad %v", err, bad)
	}
	e, ok := got["vm-1"]
	if !ok {
		t.Fatal("vm-1 not loaded")
	}
	s := e.Spec
	if *s.FromVM.PPS != 5000 || *s.FromVM.Burst != 30 || s.FromVM.Mode != "shape" || s.FromVM.Delay.String() != "200ms" ||
		!s.FromVM.BackstopOff || s.FromVM.Classes.Set().Len() != 2 || *s.ToVM.BPS != 16_000_000 || *s.ToVM.Backstop != 7000 ||
		s.ToVM.BypassPPS != nil || !s.Guard || s.Fail != "open" || s.Stage != "stage1" {
		t.Errorf("loaded spec %+v", s)
	}
	if p := intent.DirPolicy(s.FromVM); p.Rules.Len() != 2 || p.Rules.Class(1).Name != "ssh-brute" {
		t.Errorf("the rule classes did not reach the policy: %v", p.Rules)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != oldEntry {
		t.Errorf("written back as\n%s\nwant\n%s", b, oldEntry)
	}
	if s.Intent() != oldIntent {
		t.Errorf("intent %q, want %q", s.Intent(), oldIntent)
	}
	fromIntent, err := intent.Parse(oldIntent)
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := json.Marshal(fromIntent); string(b2) != string(mustJSON(t, s)) {
		t.Errorf("the old intent gives\n%s\nthe state file\n%s", b2, mustJSON(t, s))
	}
}

// A rule class that does not compile makes its entry bad, not the file.
func TestStateFileBadRuleIsOneBadEntry(t *testing.T) {
	dir := t.TempDir()
	bad := `{"port":"vm-2","state":"active","spec":{"from_vm":{"pps":10,"classes":["dns: udp dport 99999"]},"to_vm":{},"bypass_ports":[22]},"since":"2026-12-01T10:00:00Z"}`
	body := json.RawMessage(`{"version":1,"written":"2026-12-01T10:00:01Z","quarantines":[` + oldEntry + `,` + bad + `]}`)
	if err := statefile.Write(filepath.Join(dir, StateFile), body, true); err != nil {
		t.Fatal(err)
	}
	got, why, err := LoadQuarantines(dir)
	if err != nil || len(got) != 1 || why["vm-2"] == "" {
		t.Fatalf("loadState: %v, kept %d, bad %v", err, len(got), why)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
