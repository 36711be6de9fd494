// Package nftutil holds the small helpers that shaperd's nftables engines
// (baseline/, portpolicy/) share: port names as the kernel compares them,
// verdict-map values, and telling "no such table" from a real failure.
package nftutil

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// IfName is a port name as the kernel compares it (iifname, oifname, an
// ifname set key): 16 bytes, NUL padded.
func IfName(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// PortOf is the name in an IfName key (up to its first NUL).
func PortOf(key []byte) string {
	if i := strings.IndexByte(string(key), 0); i >= 0 {
		key = key[:i]
	}
	return string(key)
}

// VerdictChain is the chain a verdict map element's value jumps to ("" if
// none).
func VerdictChain(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(string(ad.Bytes()), "\x00")
		}
	}
	return ""
}

// Jump is the verdict "jump chain".
func Jump(chain string) *expr.Verdict {
	return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}
}

// IsNotFound reports whether a netlink answer means "no such object".
func IsNotFound(err error) bool {
	if errors.Is(err, unix.ENOENT) {
		return true
	}
	var oe *netlink.OpError
	return errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOENT)
}

// SortedKeys returns m's keys in order.
func SortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// Conn opens a netlink connection to nftables in the network namespace
// whose open file descriptor is netns (0: the caller's); what names the
// caller in the error.
func Conn(what string, netns int) (*nftables.Conn, error) {
	var o []nftables.ConnOption
	if netns != 0 {
		o = append(o, nftables.WithNetNSFd(netns))
	}
	c, err := nftables.New(o...)
	if err != nil {
		return nil, fmt.Errorf("%s: netlink: %w", what, err)
	}
	return c, nil
}

// Table is what ReadTable found of one table.
type Table struct {
	Exists bool
	Chains map[string]bool          // chain names
	Sets   map[string]*nftables.Set // by name
}

// ReadTable lists table t's chains and sets; a table that does not exist
// is Exists false, not an error.
func ReadTable(c *nftables.Conn, t *nftables.Table) (Table, error) {
	out := Table{Chains: map[string]bool{}, Sets: map[string]*nftables.Set{}}
	if _, err := c.ListTableOfFamily(t.Name, t.Family); err != nil {
		if IsNotFound(err) {
			return out, nil
		}
		return out, fmt.Errorf("list table: %w", err)
	}
	out.Exists = true
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return out, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == t.Name {
			out.Chains[ch.Name] = true
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return out, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		out.Sets[s.Name] = s
	}
	return out, nil
}

// VMap reads a verdict map keyed by port name: port -> the chain its
// element jumps to.
func VMap(c *nftables.Conn, m *nftables.Set) (map[string]string, error) {
	els, err := c.GetSetElements(m)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", m.Name, err)
	}
	out := make(map[string]string, len(els))
	for _, e := range els {
		out[PortOf(e.Key)] = VerdictChain(e.Val)
	}
	return out, nil
}

// SyncVMap queues on c the changes that turn the verdict map m from have
// into want (port -> chain to jump to): an element that differs is deleted
// and added again. It returns the ports added or changed.
func SyncVMap(c *nftables.Conn, m *nftables.Set, have, want map[string]string) ([]string, error) {
	var del, add []nftables.SetElement
	var changed []string
	for port, ch := range have {
		if want[port] != ch {
			del = append(del, nftables.SetElement{Key: IfName(port)})
		}
	}
	for _, port := range SortedKeys(want) {
		if ch := want[port]; have[port] != ch {
			add = append(add, nftables.SetElement{Key: IfName(port), VerdictData: Jump(ch)})
			changed = append(changed, port)
		}
	}
	if len(del) > 0 {
		if err := c.SetDeleteElements(m, del); err != nil {
			return nil, err
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(m, add); err != nil {
			return nil, err
		}
	}
	return changed, nil
}

// Defaults fills in an engine's options: a flow timeout of 0 is def, and
// one under a second is refused (naming what); a nil logger is
// slog.Default().
func Defaults(what string, timeout, def time.Duration, log *slog.Logger) (time.Duration, *slog.Logger, error) {
	if timeout == 0 {
		timeout = def
	}
	if timeout < time.Second {
		return 0, nil, fmt.Errorf("%s: flow timeout %v: use at least 1s", what, timeout)
	}
	if log == nil {
		log = slog.Default()
	}
	return timeout, log, nil
}

// RemoveTable deletes table t, if it exists, in a transaction of its own,
// and logs it; what names the engine.
func RemoveTable(c *nftables.Conn, t *nftables.Table, exists bool, log *slog.Logger, what string) error {
	if !exists {
		return nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("%s: remove table: %w", what, err)
	}
	log.Info(what+": table removed", "table", t.Name)
	return nil
}
