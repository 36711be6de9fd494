package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clkTck is USER_HZ, the unit of /proc/stat and /proc/PID/stat times; it is
// 100 on every Linux architecture the bench runs on.
const clkTck = 100

// tickNs is one USER_HZ tick in nanoseconds.
const tickNs = 1e9 / clkTck

// cpuBusy returns the machine's busy time in ticks from /proc/stat's "cpu"
// line: user + nice + system + irq + softirq + steal (guest time is already
// inside user; idle and iowait are not busy).
func cpuBusy(stat string) (uint64, error) {
	for _, line := range strings.Split(stat, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var busy uint64
		for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
			}
			busy += n
		}
		return busy, nil
	}
	return 0, fmt.Errorf("/proc/stat: no cpu line")
}

// procTimes returns utime and stime in ticks from /proc/PID/stat: the
// process's user and system time, all threads included.
func procTimes(stat string) (user, sys uint64, err error) {
	// comm (field 2) may hold spaces and parentheses: fields count from
	// after the last ')'. Field 3 (state) is then index 0, utime (14) is
	// index 11 and stime (15) index 12.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/PID/stat: no ')' in %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/PID/stat: short line %q", stat)
	}
	if user, err = strconv.ParseUint(f[11], 10, 64); err == nil {
		sys, err = strconv.ParseUint(f[12], 10, 64)
	}
	return user, sys, err
}

// netDev returns the rx and tx packet counts of dev from a /proc/net/dev
// listing (of whichever namespace the file was read for).
func netDev(listing, dev string) (rx, tx uint64, err error) {
	for _, line := range strings.Split(listing, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != dev {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 10 {
			return 0, 0, fmt.Errorf("/proc/net/dev: short line for %s", dev)
		}
		rx, err = strconv.ParseUint(f[1], 10, 64)
		if err == nil {
			tx, err = strconv.ParseUint(f[9], 10, 64)
		}
		return rx, tx, err
	}
	return 0, 0, fmt.Errorf("/proc/net/dev: no %s", dev)
}

// snmp parses /proc/net/snmp's header/value line pairs into
// protocol → counter → value, e.g. ["Tcp"]["RetransSegs"].
func snmp(listing string) map[string]map[string]uint64 {
	out := map[string]map[string]uint64{}
	lines := strings.Split(listing, "\n")
	for i := 0; i+1 < len(lines); i++ {
		hp, hrest, ok1 := strings.Cut(lines[i], ":")
		vp, vrest, ok2 := strings.Cut(lines[i+1], ":")
		if !ok1 || !ok2 || hp != vp {
			continue
		}
		keys, vals := strings.Fields(hrest), strings.Fields(vrest)
		if len(keys) != len(vals) {
			continue
		}
		if _, err := strconv.ParseInt(vals[0], 10, 64); err != nil {
			continue // two header lines in a row: not a pair
		}
		m := map[string]uint64{}
		for j, k := range keys {
			if n, err := strconv.ParseInt(vals[j], 10, 64); err == nil && n >= 0 {
				m[k] = uint64(n)
			}
		}
		out[hp] = m
		i++
	}
	return out
}

// nsCounters are a namespace's counters that the bench needs: its eth0
// packets and its TCP segments (the bypass probe's traffic, to subtract from
// the interface counts and to count retransmissions).
type nsCounters struct {
	rx, tx                    uint64
	tcpIn, tcpOut, tcpRetrans uint64
}

// readNS reads the counters of the namespace that process pid lives in:
// /proc/PID/net shows the network namespace of PID.
func readNS(pid int) (nsCounters, error) {
	var c nsCounters
	dev, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return c, err
	}
	if c.rx, c.tx, err = netDev(string(dev), "eth0"); err != nil {
		return c, err
	}
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return c, err
	}
	tcp := snmp(string(s))["Tcp"]
	c.tcpIn, c.tcpOut, c.tcpRetrans = tcp["InSegs"], tcp["OutSegs"], tcp["RetransSegs"]
	return c, nil
}
