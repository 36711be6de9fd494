// Package nftutil holds the small helpers that shaperd's nftables engines
// (baseline/, portpolicy/) share: port names as the kernel compares them,
// verdict-map values, and telling "no such table" from a real failure.
package nftutil

import (
	"errors"
	"sort"
	"strings"

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
