package detect

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// sysClassNet is where the kernel publishes interface counters.
const sysClassNet = "/sys/class/net"

// ReadCounters reads the counters of the named interfaces from
// /sys/class/net/NAME/statistics (rx_packets, rx_bytes, tx_packets,
// tx_bytes): four small file reads per port, no netlink. A port that does not
// exist, or disappears while being read, is left out of the map, which
// Tracker.Observe takes as the port having gone. Any other failure (an
// invalid name, a file that cannot be read or parsed) returns a nil map and
// an error naming the port.
//
// The four files are read one after the other, not atomically; a frame
// counted between two reads shows up in the next interval.
func ReadCounters(names []string) (map[string]Sample, error) {
	return readCounters(sysClassNet, names)
}

func readCounters(root string, names []string) (map[string]Sample, error) {
	out := make(map[string]Sample, len(names))
	for _, name := range names {
		if err := checkIfName(name); err != nil {
			return nil, err
		}
		dir := filepath.Join(root, name, "statistics")
		var s Sample
		var err error
		for _, f := range []struct {
			file string
			v    *uint64
		}{
			{"rx_packets", &s.RxPackets},
			{"rx_bytes", &s.RxBytes},
			{"tx_packets", &s.TxPackets},
			{"tx_bytes", &s.TxBytes},
		} {
			if *f.v, err = readUint(filepath.Join(dir, f.file)); err != nil {
				break
			}
		}
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return nil, fmt.Errorf("detect: counters of %s: %w", name, err)
		}
		out[name] = s
	}
	return out, nil
}

// ReadAttr reads one numeric attribute of the named interface from
// /sys/class/net/NAME/ATTR, such as "ifindex" or "statistics/tx_dropped".
// A missing interface gives an error wrapping fs.ErrNotExist.
func ReadAttr(name, attr string) (uint64, error) {
	if err := checkIfName(name); err != nil {
		return 0, err
	}
	return readUint(filepath.Join(sysClassNet, name, attr))
}

func readUint(file string) (uint64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		// Reading a removed device's attribute can also fail with ENODEV.
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
			return 0, fs.ErrNotExist
		}
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return v, nil
}

// checkIfName applies the kernel's rule for interface names
// (dev_valid_name), so that a name can never step outside /sys/class/net.
func checkIfName(name string) error {
	const ifNameSize = 16 // IFNAMSIZ, with the terminating NUL
	if name == "" || len(name) >= ifNameSize || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\v\f\r\x00") {
		return fmt.Errorf("detect: invalid interface name %q", name)
	}
	return nil
}
