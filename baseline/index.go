package baseline

import (
	"errors"
	"fmt"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/shaperd/shaperd/internal/nftutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The index maps (from_index, to_index) hold, for every port of the desired
// set that existed when Apply last ran, its ifindex -> goto its profile's
// chain. They are an accelerator: a frame's port is looked up by ifindex
// first (4 bytes, from the device), and only a port missing there by name
// (16 bytes, copied from the device name). The name maps stay the truth: a
// port that appears after Apply, or is deleted and recreated with a new
// ifindex, is covered by name at once; the next Apply indexes it. An
// element for an ifindex that no longer exists matches nothing (the kernel
// does not reuse an ifindex until its counter wraps); a port renamed keeps
// its ifindex, so the caller must Apply again when a named port appears,
// goes or is renamed (the daemon does, from its link watch).

// linkIndexes returns name -> ifindex of the links in the Manager's
// namespace now.
func (m *Manager) linkIndexes() (map[string]uint32, error) {
	var h *netlink.Handle
	var err error
	if m.opts.NetNS != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(m.opts.NetNS), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("baseline: netlink: %w", err)
	}
	defer h.Close()
	var links []netlink.Link
	for try := 0; ; try++ {
		links, err = h.LinkList()
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || try == 3 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("baseline: list links: %w", err)
	}
	out := make(map[string]uint32, len(links))
	for _, l := range links {
		a := l.Attrs()
		out[a.Name] = uint32(a.Index)
	}
	return out, nil
}

// indexMap reads an index map: ifindex -> the chain its element goes to.
func indexMap(c *nftables.Conn, s *nftables.Set) (map[uint32]string, error) {
	els, err := c.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.Name, err)
	}
	out := make(map[uint32]string, len(els))
	for _, e := range els {
		if len(e.Key) == 4 {
			out[binaryutil.NativeEndian.Uint32(e.Key)] = nftutil.VerdictChain(e.Val)
		}
	}
	return out, nil
}

// syncIndexMap queues on c the changes that turn index map s from have
// into want (ifindex -> chain to go to).
func syncIndexMap(c *nftables.Conn, s *nftables.Set, have, want map[uint32]string) error {
	var del, add []nftables.SetElement
	for ix, ch := range have {
		if want[ix] != ch {
			del = append(del, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(ix)})
		}
	}
	keys := make([]uint32, 0, len(want))
	for ix := range want {
		keys = append(keys, ix)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for _, ix := range keys {
		if ch := want[ix]; have[ix] != ch {
			add = append(add, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(ix),
				VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: ch}})
		}
	}
	if len(del) > 0 {
		if err := c.SetDeleteElements(s, del); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(s, add); err != nil {
			return err
		}
	}
	return nil
}
