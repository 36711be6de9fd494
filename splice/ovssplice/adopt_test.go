package ovssplice

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/shaperd/shaperd/splice"
)

// restarted returns a Backend on the same fake OVS and kernel, as a daemon
// started again would have, and its log.
func restarted(o *fakeOVS, k *fakeKernel) (*Backend, *bytes.Buffer) {
	var buf bytes.Buffer
	b := newBackend(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), o.run, k, func() bool { return true })
	b.cookie = func() uint64 { panic("adoption must not draw a new cookie") }
	return b, &buf
}

// spliceAndDie splices vm-1 with opts and an intent, then kills the daemon:
// the taps, flows and record stay, the XDP program goes.
func spliceAndDie(t *testing.T) (o *fakeOVS, k *fakeKernel, before string, sp *spliced) {
	t.Helper()
	b, o, k := newTestBackend(t)
	before = state(o, k)
	s, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.(splice.IntentRecorder).SetIntent("pps=5000 to-vm-bps=16mbit"); err != nil {
		t.Fatal(err)
	}
	k.daemonDied()
	return o, k, before, s.(*spliced)
}

// splicePart lists what makes the splice on the bridge: its flows and groups
// normalised, the no-flood flags of the port and the net tap, and the record.
func splicePart(o *fakeOVS) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var lines []string
	for _, f := range o.flows {
		if isOurs(f.cookie) {
			lines = append(lines, normFlow(f.line()))
		}
	}
	for _, id := range (plan{slot: 0}).groups() { // vm-1's splice is the first: slot 0
		if g, ok := o.groups[id]; ok {
			lines = append(lines, normGroup(g))
		}
	}
	_, nt := splice.TapNames("vm-1")
	for _, n := range []string{"vm-1", nt} {
		if p := o.ports[n]; p != nil {
			lines = append(lines, fmt.Sprintf("%s ofport %d noflood %v ids %v", n, p.ofport, p.noFlood, p.ids))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func foreignFlows(o *fakeOVS) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var lines []string
	for _, f := range o.flows {
		if !isOurs(f.cookie) {
			lines = append(lines, f.line())
		}
	}
	for id, g := range o.groups {
		if id&0xffff0000 != groupBase {
			lines = append(lines, g)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// addForeign puts back what a cloud agent keeps on the bridge (after a
// restart of ovs-vswitchd, it re-adds them).
func addForeign(o *fakeOVS) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flows = append(o.flows,
		fakeFlow{cookie: 0x1234, priority: 100, rest: "in_port=1,dl_src=02:66:66:66:66:66,actions=drop"},
		fakeFlow{cookie: 0xffff, table: 1, priority: 10, rest: "actions=drop"})
	o.groups[7] = "group_id=7,type=all,bucket=actions=output:2"
}

func TestFoundAndAdoptComplete(t *testing.T) {
	o, k, before, old := spliceAndDie(t)
	ovsBefore, prog := o.state(), slices.Clone(k.links["vm-1"].prog)
	bundles := len(o.bundles)

	b, log := restarted(o, k)
	found, err := b.Found()
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Port != "vm-1" || found[0].Intent != "pps=5000 to-vm-bps=16mbit" {
		t.Fatalf("Found = %+v", found)
	}
	sp, err := b.Adopt("vm-1")
	if err != nil {
		t.Fatal(err)
	}
	s := sp.(*spliced)
	if s.Cookie() != old.Cookie() || s.VMTap() != old.VMTap() || s.NetTap() != old.NetTap() || s.PriorityTap() != old.PriorityTap() ||
		!s.FailOpen() || !slices.Equal(s.opt.BypassPorts, opts.BypassPorts) || s.plan.slot != old.plan.slot {
		t.Errorf("adopted %+v\nwant the splice of %+v", s.plan, old.plan)
	}
	if after := o.state(); after != ovsBefore || len(o.bundles) != bundles {
		t.Errorf("adopting a complete splice changed OVS (%d bundles sent):\nbefore:\n%s\nafter:\n%s", len(o.bundles)-bundles, ovsBefore, after)
	}
	if l := k.links["vm-1"]; !l.xdp || !bytes.Equal(l.prog, prog) {
		t.Errorf("the XDP program was not re-attached as it was: attached %v", l.xdp)
	}
	if strings.Contains(log.String(), "recreated") {
		t.Errorf("a complete splice was repaired:\n%s", log)
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
	if after := state(o, k); after != before {
		t.Errorf("release of the adopted splice left changes:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	checkDeletes(t, o)
}

// TestAdoptAfterVswitchdRestart: ovs-vswitchd restarted while no daemon ran,
// so the flows, groups and no-flood flags are gone; Adopt puts back exactly
// what the splice had, in one bundle, and leaves the agent's flows alone.
func TestAdoptAfterVswitchdRestart(t *testing.T) {
	o, k, _, _ := spliceAndDie(t)
	want := splicePart(o)
	o.restartVswitchd()
	addForeign(o)
	foreign := foreignFlows(o)
	bundles := len(o.bundles)

	b, log := restarted(o, k)
	sp, err := b.Adopt("vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := splicePart(o); got != want {
		t.Errorf("after repair:\n%s\nwant as spliced:\n%s", got, want)
	}
	if n := len(o.bundles) - bundles; n != 1 {
		t.Errorf("%d bundles, want the flows and groups in one", n)
	}
	if !strings.Contains(log.String(), "recreated") || !strings.Contains(log.String(), "flows and groups") {
		t.Errorf("the repair was not logged:\n%s", log)
	}
	if got := foreignFlows(o); got != foreign {
		t.Errorf("other parties' flows changed:\n%s\nwant\n%s", got, foreign)
	}
	if !k.links["vm-1"].xdp {
		t.Error("no XDP program on the port")
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
	if got := foreignFlows(o); got != foreign {
		t.Errorf("release changed other parties' flows:\n%s\nwant\n%s", got, foreign)
	}
	if got := splicePart(o); got != "vm-1 ofport 1 noflood false ids map[attached-mac:02:c6:12:00:00:11]" {
		t.Errorf("after release:\n%s", got)
	}
	for n := range k.links {
		if strings.HasPrefix(n, splice.TapPrefix) {
			t.Errorf("tap %s left", n)
		}
	}
	checkDeletes(t, o)
}

// TestAdoptPortRecreated: the VM restarted while no daemon ran: its port is
// a new link with a new OpenFlow number. Adopt re-points the VM tap's
// redirect, reinstalls the flows for the new number, records it, and
// attaches XDP to the new link.
func TestAdoptPortRecreated(t *testing.T) {
	o, k, _, _ := spliceAndDie(t)
	delete(k.links, "vm-1")
	newPort := k.add("vm-1", "veth", "")
	o.ports["vm-1"].ofport = 9

	b, _ := restarted(o, k)
	sp, err := b.Adopt("vm-1")
	if err != nil {
		t.Fatal(err)
	}
	s := sp.(*spliced)
	if s.plan.port != 9 || o.ports[s.netTap].ids[idOFPort] != "9" {
		t.Errorf("port number %d, recorded %q; want 9", s.plan.port, o.ports[s.netTap].ids[idOFPort])
	}
	if k.links[s.vmTap].redirect != newPort.index || !newPort.xdp {
		t.Errorf("vm tap redirects to %d (want %d), XDP on the new port %v", k.links[s.vmTap].redirect, newPort.index, newPort.xdp)
	}
	var ins []string
	for _, f := range o.flows {
		if f.cookie == s.Cookie() && strings.Contains(f.rest, "in_port=") {
			ins = append(ins, f.rest)
		}
	}
	if len(ins) != 2 || !strings.Contains(strings.Join(ins, " "), "in_port=9,") {
		t.Errorf("flows keyed on ports: %q", ins)
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
	if o.ports["vm-1"].noFlood {
		t.Error("release left the port no-flood")
	}
	checkDeletes(t, o)
}

// TestAdoptRecreatesTaps: the taps are gone (a reboot of the host; the
// database keeps the record): Adopt creates them again, replaces the net
// tap's port row with the same record (and intent), and reinstalls the
// flows for its new number.
func TestAdoptRecreatesTaps(t *testing.T) {
	o, k, before, old := spliceAndDie(t)
	for _, n := range old.taps() {
		delete(k.links, n)
	}
	o.restartVswitchd()
	addForeign(o)
	wasNet := o.ports[old.netTap].ofport

	b, log := restarted(o, k)
	found, err := b.Found()
	if err != nil || len(found) != 1 || found[0].Intent != "pps=5000 to-vm-bps=16mbit" {
		t.Fatalf("Found = %+v, %v", found, err)
	}
	sp, err := b.Adopt("vm-1")
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	s := sp.(*spliced)
	for _, n := range s.taps() {
		if l := k.links[n]; l == nil || l.alias != aliasPrefix+"vm-1" {
			t.Errorf("tap %s: %+v", n, l)
		}
	}
	p := o.ports[s.netTap]
	if p.ofport == wasNet || s.plan.netTap != p.ofport || p.ids[idNetOFPort] != fmt.Sprint(p.ofport) || p.ids[idIntent] != "pps=5000 to-vm-bps=16mbit" || !p.noFlood {
		t.Errorf("net tap port %+v (was ofport %d), plan %d", p, wasNet, s.plan.netTap)
	}
	if err := s.verify(); err != nil {
		t.Error(err)
	}
	if !strings.Contains(o.groups[groupBase], fmt.Sprintf("watch_port:%d,", p.ofport)) {
		t.Errorf("group watches %q, want the new net tap %d", o.groups[groupBase], p.ofport)
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
	// The restart lost the agent's group-less state only; compare what we made.
	if got := k.state(); !strings.Contains(before, got) {
		t.Errorf("kernel after release:\n%s\nbefore the splice:\n%s", got, before)
	}
	checkDeletes(t, o)
}

// TestAdoptPortGone: the VM was destroyed while no daemon ran. Adopt
// repairs nothing and attaches nothing; Release removes the rest.
func TestAdoptPortGone(t *testing.T) {
	o, k, _, old := spliceAndDie(t)
	delete(k.links, "vm-1")
	delete(o.ports, "vm-1")
	b, _ := restarted(o, k)
	calls := len(o.calls)
	sp, err := b.Adopt("vm-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range o.calls[calls:] {
		if strings.Contains(c, "bundle") || strings.Contains(c, "mod-port") || strings.Contains(c, " set ") {
			t.Errorf("adopting the splice of a vanished port ran %q", c)
		}
	}
	if len(sp.Warnings()) == 0 {
		t.Error("no warning about the vanished port")
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
	for _, f := range o.flows {
		if isOurs(f.cookie) {
			t.Errorf("flow left: %s", f.line())
		}
	}
	if len(o.groups) != 1 || o.ports[old.netTap] != nil {
		t.Errorf("left: groups %v, net tap port %v", o.groups, o.ports[old.netTap])
	}
	for n := range k.links {
		if strings.HasPrefix(n, splice.TapPrefix) {
			t.Errorf("tap %s left", n)
		}
	}
}

// TestAdoptRefusals: what Adopt must not take over, it leaves exactly as it
// is, and says why.
func TestAdoptRefusals(t *testing.T) {
	_, nt := splice.TapNames("vm-1")
	tests := []struct {
		name  string
		setup func(o *fakeOVS, k *fakeKernel)
		want  string
	}{
		{"no record", func(o *fakeOVS, _ *fakeKernel) { delete(o.ports[nt].ids, idRole) }, "not spliced"},
		{"another daemon holds the port", func(_ *fakeOVS, k *fakeKernel) { k.links["vm-1"].xdp = true }, "XDP program"},
		{"someone else's XDP program", func(_ *fakeOVS, k *fakeKernel) { k.links["vm-1"].xdpName = "xdp_lb" }, "not shaperd's"},
		{"cookie not ours", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idCookie] = "0x1234" }, idCookie},
		{"cookie without generation", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idCookie] = "0x5351000000000000" }, idCookie},
		{"slot out of range", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idSlot] = "128" }, idSlot},
		{"groups not the slot's", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idGroups] = "7,8" }, idGroups},
		{"fail mode", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idFail] = "maybe" }, idFail},
		{"no MAC", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idMACs] = "" }, idMACs},
		{"multicast MAC", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idMACs] = "01:00:5e:00:00:01" }, idMACs},
		{"bypass ports", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idBypass] = "22,0" }, idBypass},
		{"vm tap", func(o *fakeOVS, _ *fakeKernel) { o.ports[nt].ids[idVMTap] = "eth0" }, idVMTap},
		{"tap taken by someone else", func(_ *fakeOVS, k *fakeKernel) {
			vm, _ := splice.TapNames("vm-1")
			k.links[vm].alias = "an operator's tap"
		}, "not the splice's tap"},
		{"someone else's group under the splice's id", func(o *fakeOVS, _ *fakeKernel) {
			o.restartVswitchd()
			o.groups[groupBase] = "group_id=1397817344,type=ff,bucket=watch_port:2,actions=output:2"
		}, "not the splice's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, k, _, _ := spliceAndDie(t)
			tt.setup(o, k)
			before := state(o, k)
			b, _ := restarted(o, k)
			_, err := b.Adopt("vm-1")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Adopt: %v, want an error about %q", err, tt.want)
			}
			if tt.name == "no record" && !errors.Is(err, splice.ErrNotSpliced) {
				t.Errorf("Adopt: %v, want ErrNotSpliced", err)
			}
			if after := state(o, k); after != before {
				t.Errorf("a refused adoption changed things:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestAdoptFailureAtEveryStep fails each command and kernel operation of a
// full repair (taps, port row, flags, bundle, record, XDP) in turn. Each
// time: Adopt fails, no XDP program is left on the port, other parties'
// flows and group are untouched, no flow or group is deleted but by the
// splice's cookie; then a second Adopt completes the splice, and Release
// removes it all.
func TestAdoptFailureAtEveryStep(t *testing.T) {
	setup := func(t *testing.T) (*fakeOVS, *fakeKernel, *spliced) {
		o, k, _, old := spliceAndDie(t)
		for _, n := range old.taps() {
			delete(k.links, n)
		}
		o.restartVswitchd()
		addForeign(o)
		return o, k, old
	}
	// A run without failure counts the commands and kernel operations.
	o, k, _ := setup(t)
	b, _ := restarted(o, k)
	start := len(o.calls)
	if _, err := b.Adopt("vm-1"); err != nil {
		t.Fatal(err)
	}
	ncmd := len(o.calls) - start
	if ncmd < 8 {
		t.Fatalf("a full repair ran only %d commands: %q", ncmd, o.calls[start:])
	}
	fails := []string{"createTap", "redirectTap", "attachXDP"}
	for i := 1; i <= ncmd; i++ {
		fails = append(fails, fmt.Sprint(i))
	}
	for _, f := range fails {
		t.Run("fail "+f, func(t *testing.T) {
			o, k, _ := setup(t)
			foreign := foreignFlows(o)
			b, _ := restarted(o, k)
			var failed string
			n := 0
			o.fail = func(line string) error {
				if n++; fmt.Sprint(n) == f {
					failed = line
					return errors.New("injected")
				}
				return nil
			}
			k.fail = func(op, name string) error {
				if op == f {
					failed = op + " " + name
					return errors.New("injected")
				}
				return nil
			}
			_, err := b.Adopt("vm-1")
			o.fail, k.fail = nil, nil
			if err == nil {
				if failed == "" {
					return // the failure hit a step this run did not take
				}
				t.Fatalf("adopt succeeded despite the failure of %q", failed)
			}
			t.Logf("failed at %q: %v", failed, err)
			if k.links["vm-1"].xdp {
				t.Error("a failed adoption left the XDP program on the port")
			}
			if got := foreignFlows(o); got != foreign {
				t.Errorf("other parties' flows changed:\n%s\nwant\n%s", got, foreign)
			}
			checkDeletes(t, o)
			b2, _ := restarted(o, k)
			sp, err := b2.Adopt("vm-1")
			if err != nil {
				t.Fatalf("adopting again: %v", err)
			}
			if err := sp.(*spliced).verify(); err != nil {
				t.Errorf("the second adoption left the splice incomplete: %v", err)
			}
			if err := sp.Release(); err != nil {
				t.Fatal(err)
			}
			if got := foreignFlows(o); got != foreign {
				t.Errorf("after release, other parties' flows changed:\n%s\nwant\n%s", got, foreign)
			}
			if got := splicePart(o); got != "vm-1 ofport 1 noflood false ids map[attached-mac:02:c6:12:00:00:11]" {
				t.Errorf("after release:\n%s", got)
			}
			for n := range k.links {
				if strings.HasPrefix(n, splice.TapPrefix) {
					t.Errorf("tap %s left", n)
				}
			}
			checkDeletes(t, o)
		})
	}
}

// TestRemoveOrphans: after the sync, what shaperd made and no record names
// goes; recorded splices, other parties' flows and groups, a shaperd group
// another party's flow uses, and splice taps of a port that is not on OVS
// (the tc backend's to judge) stay.
func TestRemoveOrphans(t *testing.T) {
	b, o, k := newTestBackend(t)
	k.add("vm-2", "veth", "")
	o.addPort("vm-2").ids["attached-mac"] = "02:c6:12:00:00:12"
	k.add("br-port", "veth", "") // a Linux bridge's port
	sp, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	kept := splicePart(o)
	foreign := foreignFlows(o)

	// A splice of vm-2 whose record was lost (its row's external_ids
	// cleared), a stale generation's flows and groups, a shaperd group an
	// agent's flow uses, and taps of a Linux bridge port.
	b.cookie = func() uint64 { return testCookie + 1 }
	if _, err := b.Splice("vm-2", splice.Options{}); err != nil {
		t.Fatal(err)
	}
	_, nt2 := splice.TapNames("vm-2")
	o.ports[nt2].ids = map[string]string{}
	o.flows = append(o.flows, fakeFlow{cookie: testCookie + 2, priority: 64000, rest: "in_port=2,actions=drop"})
	o.groups[groupBase|8] = "group_id=1397817352,type=ff,bucket=watch_port:5,actions=drop"
	o.groups[groupBase|12] = "group_id=1397817356,type=ff,bucket=watch_port:6,actions=drop"
	o.flows = append(o.flows, fakeFlow{cookie: 0x77, priority: 5, rest: "in_port=2,actions=group:1397817356"})
	foreign = foreignFlows(o)
	for _, n := range []string{"v", "n"} {
		vm, _ := splice.TapNames("br-port")
		k.add(vm[:len(vm)-1]+n, "tuntap", aliasPrefix+"br-port")
	}

	removed, err := b.RemoveOrphans()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %q", removed)
	if got := splicePart(o); got != kept {
		t.Errorf("the recorded splice changed:\n%s\nwant\n%s", got, kept)
	}
	if got := foreignFlows(o); got != foreign {
		t.Errorf("other parties' flows changed:\n%s\nwant\n%s", got, foreign)
	}
	for _, f := range o.flows {
		if isOurs(f.cookie) && f.cookie != testCookie {
			t.Errorf("orphan flow left: %s", f.line())
		}
	}
	if _, ok := o.groups[groupBase|12]; !ok {
		t.Error("a shaperd group that another party's flow uses was deleted")
	}
	for _, g := range []uint32{groupBase | 4, groupBase | 5, groupBase | 8} {
		if _, ok := o.groups[g]; ok {
			t.Errorf("orphan group %d left", g)
		}
	}
	if o.ports[nt2] != nil {
		t.Errorf("the unrecorded net tap %s is still on the bridge", nt2)
	}
	taps := slices.Sorted(maps.Keys(k.links))
	for _, n := range taps {
		if strings.HasPrefix(n, splice.TapPrefix) && strings.Contains(k.links[n].alias, "vm-2") {
			t.Errorf("orphan tap %s left", n)
		}
	}
	brv, _ := splice.TapNames("br-port")
	if k.links[brv] == nil {
		t.Error("the taps of a port not on OVS were deleted")
	}
	checkDeletes(t, o)

	// Nothing left to remove: a second run changes nothing.
	st := state(o, k)
	if removed, err := b.RemoveOrphans(); err != nil || len(removed) != 0 || state(o, k) != st {
		t.Errorf("second run: removed %q, %v", removed, err)
	}
	if err := sp.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestFoundIgnoresOthers(t *testing.T) {
	b, o, _ := newTestBackend(t)
	p := o.addPort("shq00000000n")
	p.ids = map[string]string{idRole: "net", idPort: "vm-1"} // not vm-1's net tap
	if found, err := b.Found(); err != nil || len(found) != 0 {
		t.Errorf("Found = %+v, %v; want nothing", found, err)
	}
	b.running = func() bool { return false }
	if found, err := b.Found(); err != nil || found != nil {
		t.Errorf("Found with OVS not running = %+v, %v", found, err)
	}
}

func TestSetIntentRefusals(t *testing.T) {
	b, o, _ := newTestBackend(t)
	sp, err := b.Splice("vm-1", opts)
	if err != nil {
		t.Fatal(err)
	}
	r := sp.(splice.IntentRecorder)
	for _, bad := range []string{strings.Repeat("x", splice.MaxIntent+1), "pps=5000\nx", "pps=\"5000\"\x00", "pps=5000 ü"} {
		if err := r.SetIntent(bad); err == nil {
			t.Errorf("SetIntent(%q) accepted", bad)
		}
	}
	if _, ok := o.ports[sp.NetTap()].ids[idIntent]; ok {
		t.Error("a refused intent was recorded")
	}
	ok := `pps=5000 profile="a b\c"`
	if err := r.SetIntent(ok); err != nil {
		t.Fatal(err)
	}
	found, _ := b.Found()
	if len(found) != 1 || found[0].Intent != ok {
		t.Errorf("Found = %+v, want intent %q", found, ok)
	}
}

// TestPlanMatches compares a bundle with what OVS 3.1 printed for it
// (reordered matches, hex load values, no table=0).
func TestPlanMatches(t *testing.T) {
	p := plan{cookie: testCookie, slot: 3, port: 1, netTap: 7, failOpen: true, macs: mustMACs("02:c6:12:00:00:11")}
	flows := ParseFlows([]byte(`OFPST_FLOW reply (OF1.4) (xid=0x2):
 cookie=0x535100000000abcd, priority=65000,in_port=7 actions=load:0x1->NXM_OF_IN_PORT[],load:0x1->NXM_NX_REG12[3],resubmit(,0)
 cookie=0x535100000000abcd, priority=64960,reg12=0/0x8,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=group:1397817357,load:0x1->NXM_NX_REG12[3],resubmit(,0)
 cookie=0x535100000000abcd, priority=64970,reg12=0/0x8,dl_dst=02:c6:12:00:00:11 actions=group:1397817357
 cookie=0x535100000000abcd, priority=64980,reg12=0/0x8,in_port=1 actions=group:1397817356
`))
	groups := parseGroups([]byte(`OFPST_GROUP_DESC reply (OF1.4) (xid=0x2):
 group_id=1397817356,type=ff,bucket=watch_port:7,actions=drop,bucket=watch_port:1,actions=load:0x1->NXM_NX_REG12[3],resubmit(,0)
 group_id=1397817357,type=ff,bucket=watch_port:7,actions=output:7,bucket=watch_port:1,actions=output:1
 group_id=7,type=all,bucket=actions=output:2
`))
	if !p.matches(flows, groups) {
		t.Fatalf("the bundle does not match what OVS printed for it:\n%s", p.spliceBundle())
	}
	for name, q := range map[string]plan{
		"another port":    {cookie: testCookie, slot: 3, port: 2, netTap: 7, failOpen: true, macs: p.macs},
		"fail closed":     {cookie: testCookie, slot: 3, port: 1, netTap: 7, macs: p.macs},
		"another net tap": {cookie: testCookie, slot: 3, port: 1, netTap: 8, failOpen: true, macs: p.macs},
		"another MAC":     {cookie: testCookie, slot: 3, port: 1, netTap: 7, failOpen: true, macs: mustMACs("02:c6:12:00:00:12")},
	} {
		if q.matches(flows, groups) {
			t.Errorf("%s: matches", name)
		}
	}
	if p.matches(flows[:3], groups) {
		t.Error("a missing flow matches")
	}
	if p.matches(append(flows, flows[0]), groups) {
		t.Error("a duplicate flow matches")
	}
	delete(groups, 1397817357)
	if p.matches(flows, groups) {
		t.Error("a missing group matches")
	}
}

func mustMACs(ss ...string) []net.HardwareAddr {
	var out []net.HardwareAddr
	for _, s := range ss {
		m, err := net.ParseMAC(s)
		if err != nil {
			panic(err)
		}
		out = append(out, m)
	}
	return out
}
