package tcsplice

import (
	"reflect"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMentions(t *testing.T) {
	tests := []struct {
		line, name string
		want       bool
	}{
		{`iifname "vnet1" counter drop`, "vnet1", true},
		{`iifname "vnet10" counter drop`, "vnet1", false},
		{`iifname "myvnet1" counter drop`, "vnet1", false},
		{`-A libvirt-I-vnet1 -j ACCEPT`, "vnet1", true},
		{`-m physdev --physdev-in vnet1 -j DROP`, "vnet1", true},
		{`vnet1`, "vnet1", true},
		{`vnet1_x vnet1`, "vnet1", true},
		{`vnet1_x`, "vnet1", false},
		{`tap-a.b`, "tap-a", true}, // a following '.' is no word character: a warning too many, never one too few
		{`anything`, "", false},
	}
	for _, tt := range tests {
		if got := mentions(tt.line, tt.name); got != tt.want {
			t.Errorf("mentions(%q, %q) = %v, want %v", tt.line, tt.name, got, tt.want)
		}
	}
	n, first := linesNaming("table bridge x {\n  iifname \"vnet1\" drop\n  oifname \"vnet1\" drop\n  iifname \"vnet11\"\n}", "vnet1")
	if n != 2 || first != `iifname "vnet1" drop` {
		t.Errorf("linesNaming = %d, %q", n, first)
	}
}

func TestRuns(t *testing.T) {
	tests := []struct {
		in   []vlan
		want []vlanRun
	}{
		{nil, nil},
		{[]vlan{{VID: 1, PVID: true, Untagged: true}}, []vlanRun{{1, 1, true, true}}},
		{
			[]vlan{{VID: 10}, {VID: 11}, {VID: 12}, {VID: 14}, {VID: 15, Untagged: true}, {VID: 16, Untagged: true}},
			[]vlanRun{{10, 12, false, false}, {14, 14, false, false}, {15, 16, false, true}},
		},
		{ // a PVID entry never joins a range
			[]vlan{{VID: 99, Untagged: true}, {VID: 100, PVID: true, Untagged: true}, {VID: 101, Untagged: true}},
			[]vlanRun{{99, 99, false, true}, {100, 100, true, true}, {101, 101, false, true}},
		},
	}
	for _, tt := range tests {
		if got := runs(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("runs(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestAttrsDiff(t *testing.T) {
	want := map[uint16][]byte{
		unix.IFLA_BRPORT_LEARNING:    {0},
		unix.IFLA_BRPORT_ISOLATED:    {1},
		unix.IFLA_BRPORT_COST:        {42, 0, 0, 0},
		unix.IFLA_BRPORT_STATE:       {3},       // not writable: never copied
		unix.IFLA_BRPORT_ID:          {1, 0x80}, // read-only
		unix.IFLA_BRPORT_MCAST_FLOOD: {1},
	}
	have := map[uint16][]byte{
		unix.IFLA_BRPORT_LEARNING: {1},
		unix.IFLA_BRPORT_ISOLATED: {1},
		unix.IFLA_BRPORT_COST:     {100, 0, 0, 0},
		unix.IFLA_BRPORT_STATE:    {0},
		unix.IFLA_BRPORT_ID:       {2, 0x80},
	}
	got := attrsDiff(want, have)
	exp := map[uint16][]byte{
		unix.IFLA_BRPORT_LEARNING:    {0},
		unix.IFLA_BRPORT_COST:        {42, 0, 0, 0},
		unix.IFLA_BRPORT_MCAST_FLOOD: {1}, // missing on the target: written
	}
	if !reflect.DeepEqual(got, exp) {
		t.Errorf("attrsDiff = %v, want %v", got, exp)
	}
}

func TestPickPriority(t *testing.T) {
	f := func(prios ...uint16) []netlink.Filter {
		var fs []netlink.Filter
		for _, p := range prios {
			fs = append(fs, &netlink.U32{FilterAttrs: netlink.FilterAttrs{Priority: p}})
		}
		return fs
	}
	tests := []struct {
		existing []netlink.Filter
		prio     uint16
		shadowed bool
	}{
		{nil, 2, false},
		{f(49152), 49151, false},
		{f(10, 10, 20), 9, false},
		{f(3), 2, false},
		{f(1), 3, true},
		{f(2), 4, true},
		{f(1, 2, 3, 5), 7, true},
	}
	for _, tt := range tests {
		prio, shadowed := pickPriority(tt.existing)
		if prio != tt.prio || shadowed != tt.shadowed {
			t.Errorf("pickPriority(%d filters) = %d, %v; want %d, %v", len(tt.existing), prio, shadowed, tt.prio, tt.shadowed)
		}
	}
}
