package detect

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadCountersLoopback(t *testing.T) {
	if _, err := os.Stat("/sys/class/net/lo/statistics/rx_packets"); err != nil {
		t.Skipf("no sysfs counters for lo: %v", err)
	}
	before, err := ReadCounters([]string{"lo", "shqnosuchport0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := before["shqnosuchport0"]; ok || len(before) != 1 {
		t.Fatalf("ReadCounters = %v; want lo only (a missing port is left out)", before)
	}
	// Send datagrams over lo; each is counted as sent and received.
	const n = 20
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	defer conn.Close()
	payload := make([]byte, 100)
	for range n {
		if _, err := conn.WriteTo(payload, conn.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	after, err := ReadCounters([]string{"lo"})
	if err != nil {
		t.Fatal(err)
	}
	b, a := before["lo"], after["lo"]
	// Other traffic on lo may add to the counts, never subtract. lo counts
	// the IP packet (100 + 8 + 20 bytes): its counters leave out the
	// Ethernet header that a tap's include.
	const size = 100 + 8 + 20
	if a.RxPackets-b.RxPackets < n || a.TxPackets-b.TxPackets < n ||
		a.RxBytes-b.RxBytes < n*size || a.TxBytes-b.TxBytes < n*size {
		t.Errorf("lo counters %+v -> %+v; want at least %d more packets of %d bytes each way", b, a, n, size)
	}
}

func TestReadCountersFake(t *testing.T) {
	root := t.TempDir()
	write := func(port, file, v string) {
		dir := filepath.Join(root, port, "statistics")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for f, v := range map[string]string{"rx_packets": "1\n", "rx_bytes": "2\n", "tx_packets": "3\n", "tx_bytes": "18446744073709551615\n"} {
		write("vm-1", f, v)
	}
	write("vm-half", "rx_packets", "1\n") // disappeared while being read
	got, err := readCounters(root, []string{"vm-1", "vm-half", "vm-none"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["vm-1"] != (Sample{1, 2, 3, 1<<64 - 1}) {
		t.Errorf("readCounters = %v", got)
	}

	for f, v := range map[string]string{"rx_packets": "1\n", "rx_bytes": "lots\n", "tx_packets": "3\n", "tx_bytes": "4\n"} {
		write("vm-bad", f, v)
	}
	if _, err := readCounters(root, []string{"vm-1", "vm-bad"}); err == nil || !strings.Contains(err.Error(), "counters of vm-bad") {
		t.Errorf("unparsable counter: %v; want an error naming vm-bad", err)
	}
	for _, name := range []string{"", ".", "..", "../etc", "a/b", "with space", "sixteen-chars-xx", "a:1"} {
		if _, err := readCounters(root, []string{name}); err == nil || !strings.Contains(err.Error(), "invalid interface name") {
			t.Errorf("name %q: %v; want invalid interface name", name, err)
		}
	}
	if got, err := readCounters(root, nil); err != nil || len(got) != 0 {
		t.Errorf("no names: %v, %v", got, err)
	}
}

func TestReadAttr(t *testing.T) {
	if _, err := os.Stat("/sys/class/net/lo/ifindex"); err != nil {
		t.Skip("no /sys/class/net/lo here")
	}
	if n, err := ReadAttr("lo", "ifindex"); err != nil || n == 0 {
		t.Errorf("ifindex of lo: %d, %v", n, err)
	}
	if _, err := ReadAttr("lo", "statistics/tx_dropped"); err != nil {
		t.Errorf("tx_dropped of lo: %v", err)
	}
	if _, err := ReadAttr("nosuch0x", "ifindex"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing interface: %v, want fs.ErrNotExist", err)
	}
	if _, err := ReadAttr("../lo", "ifindex"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("invalid name: %v, want a name error", err)
	}
}
