// Command sink counts the UDP datagrams and payload bytes arriving on one
// lab address, printing per-interval counts and a final total with the
// packet rate over the measured window.
//
//	ip netns exec LAB-ext sink --listen 198.18.0.100:9 --duration 10s --json
//
// The window starts when the socket is bound, or with --start-after-first
// at the first datagram, and lasts --duration (0 = until SIGINT/SIGTERM).
// With --idle-stop D it also ends once no datagram arrived for D, at the
// last datagram, so a sink started before a flood of unknown length still
// measures the flood's own rate. bytes are UDP payload bytes; datagrams
// are read with recvmmsg(2) in batches into a large SO_RCVBUF.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
	"golang.org/x/sys/unix"
)

type options struct {
	listen          netip.AddrPort
	duration        time.Duration
	interval        time.Duration
	json            bool
	startAfterFirst bool
	idleStop        time.Duration
	firstTimeout    time.Duration
	rcvbuf          int
}

// tick is one --interval line.
type tick struct {
	T       float64 `json:"t"` // seconds from the window start to the end of this interval
	Packets int64   `json:"packets"`
	Bytes   int64   `json:"bytes"`
}

// total is the final line.
type total struct {
	Packets int64   `json:"total_packets"`
	Bytes   int64   `json:"total_bytes"` // UDP payload bytes
	Seconds float64 `json:"seconds"`     // the measured window
	PPS     float64 `json:"pps"`         // total_packets / seconds
	Drops   int64   `json:"drops"`       // UDP receive-buffer and checksum errors in this namespace during the run
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sink:", err)
		os.Exit(1)
	}
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "", "ADDR:PORT to receive on, e.g. 198.18.0.100:9 (required)")
	proto := fs.String("proto", "udp", "udp (the only protocol; count SYNs with nft or interface counters)")
	dur := fs.Duration("duration", 10*time.Second, "measurement window length; 0 = until SIGINT/SIGTERM")
	interval := fs.Duration("interval", time.Second, "print counts every interval; 0 = only the total")
	js := fs.Bool("json", false, "print JSON lines")
	saf := fs.Bool("start-after-first", false, "start the window at the first datagram received")
	idle := fs.Duration("idle-stop", 0, "end the window at the last datagram once none arrived for this long; 0 = off")
	first := fs.Duration("first-timeout", 0, "with --start-after-first: give up (zero totals) if nothing arrives within this; 0 = wait")
	rcvbuf := fs.Int("rcvbuf", 64<<20, "SO_RCVBUF bytes (forced as root)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var o options
	if *proto != "udp" {
		return o, fmt.Errorf("--proto %q: only udp is supported", *proto)
	}
	if *listen == "" {
		return o, errors.New("--listen is required, e.g. --listen 198.18.0.100:9")
	}
	ap, err := labnet.ParseAddrPort("listen", *listen)
	if err != nil {
		return o, err
	}
	if err := labnet.CheckListen(ap.Addr()); err != nil {
		return o, fmt.Errorf("--listen: %w", err)
	}
	o.listen = ap
	if *dur < 0 || *interval < 0 || *idle < 0 || *first < 0 {
		return o, errors.New("--duration, --interval, --idle-stop and --first-timeout must not be negative")
	}
	o.duration, o.interval, o.json, o.startAfterFirst, o.idleStop, o.firstTimeout, o.rcvbuf = *dur, *interval, *js, *saf, *idle, *first, *rcvbuf
	return o, nil
}

type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

const (
	batch  = 64
	bufLen = 2048
)

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	a := o.listen.Addr()
	fam := unix.AF_INET
	var sa unix.Sockaddr
	if a.Is6() {
		fam = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(o.listen.Port()), Addr: a.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(o.listen.Port()), Addr: a.As4()}
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.rcvbuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.rcvbuf)
	}
	// Wake every 20 ms to print intervals and notice the end.
	tv := unix.NsecToTimeval(int64(20 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind %s: %w", o.listen, err)
	}

	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
	}

	r := newReader(fd)
	var stop atomic.Bool
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			stop.Store(true)
		}
	}()

	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	m := meter{o: o, out: out}
	drops0 := udpErrors(a.Is6())
	fmt.Fprintf(os.Stderr, "sink: listening on %s\n", o.listen)
	bound := time.Now().UnixNano()
	if !o.startAfterFirst {
		m.begin(bound)
	}
	stopping := false
	for !m.done {
		if stop.Load() && !stopping {
			// End the window now, then drain what arrived before it.
			stopping = true
			now := time.Now().UnixNano()
			if !m.started {
				break
			}
			if m.end == 0 || now < m.end {
				m.end = now
			}
		}
		n, err := r.read()
		if err != nil {
			return err
		}
		for i := range n {
			m.packet(r.stamp(i), int64(r.msgs[i].len))
		}
		// A short read emptied the socket queue: every datagram that
		// arrived before now has been seen.
		if n < batch {
			m.drained(time.Now().UnixNano(), bound)
		}
	}
	m.t.Drops = udpErrors(a.Is6()) - drops0
	m.emit(m.t, fmt.Sprintf("sink: total %d packets %d bytes in %.3fs = %.1f pps (%d drops)\n",
		m.t.Packets, m.t.Bytes, m.t.Seconds, m.t.PPS, m.t.Drops))
	return nil
}

// reader receives batches with recvmmsg(2), each datagram with its kernel
// receive timestamp (SO_TIMESTAMPNS), so a sink that is descheduled for a
// while still places every datagram in the right interval and window.
type reader struct {
	fd   int
	bufs []byte
	iovs []unix.Iovec
	msgs []mmsghdr
	oob  []byte
}

const oobLen = 64 // room for one SCM_TIMESTAMPNS (CmsgSpace(16) = 32)

func newReader(fd int) *reader {
	r := &reader{
		fd:   fd,
		bufs: make([]byte, batch*bufLen),
		iovs: make([]unix.Iovec, batch),
		msgs: make([]mmsghdr, batch),
		oob:  make([]byte, batch*oobLen),
	}
	for i := range r.msgs {
		r.iovs[i].Base = &r.bufs[i*bufLen]
		r.iovs[i].SetLen(bufLen)
		r.msgs[i].hdr.Iov = &r.iovs[i]
		r.msgs[i].hdr.SetIovlen(1)
		r.msgs[i].hdr.Control = &r.oob[i*oobLen]
	}
	return r
}

// read waits up to SO_RCVTIMEO for datagrams and returns how many arrived
// (0 on timeout or signal). msg_len is the full datagram length (MSG_TRUNC).
func (r *reader) read() (int, error) {
	for i := range r.msgs {
		r.msgs[i].hdr.SetControllen(oobLen)
	}
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(r.fd), uintptr(unsafe.Pointer(&r.msgs[0])), batch,
		unix.MSG_WAITFORONE|unix.MSG_TRUNC, 0, 0)
	switch e {
	case 0:
		return int(n), nil
	case unix.EAGAIN, unix.EINTR:
		return 0, nil
	}
	return 0, fmt.Errorf("recvmmsg: %w", e)
}

// stamp returns message i's receive time in Unix ns, or now if it has none.
func (r *reader) stamp(i int) int64 {
	h := &r.msgs[i].hdr
	b := r.oob[i*oobLen : i*oobLen+int(h.Controllen)]
	for len(b) >= unix.SizeofCmsghdr {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		if c.Len < unix.SizeofCmsghdr || int(c.Len) > len(b) {
			break
		}
		if c.Level == unix.SOL_SOCKET && c.Type == unix.SCM_TIMESTAMPNS && int(c.Len) >= unix.CmsgLen(16) {
			ts := (*unix.Timespec)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
			return ts.Nano()
		}
		b = b[min(unix.CmsgSpace(int(c.Len)-unix.CmsgLen(0)), len(b)):]
	}
	return time.Now().UnixNano()
}

// meter turns timestamped datagrams into interval lines and a total.
// Times are Unix nanoseconds (kernel receive stamps and time.Now).
type meter struct {
	o   options
	out *bufio.Writer

	started    bool
	start, end int64 // window; end is 0 while open-ended
	ivEnd      int64 // end of the current interval
	ivStart    int64
	ivPk, ivBy int64
	first      int64
	last       int64 // receive time of the last counted datagram
	t          total
	done       bool
}

func (m *meter) begin(at int64) {
	m.started = true
	m.start, m.ivStart = at, at
	if m.o.duration > 0 {
		m.end = at + int64(m.o.duration)
	}
	if m.o.interval > 0 {
		m.ivEnd = at + int64(m.o.interval)
	}
}

// packet counts one datagram received at ts (Unix ns) with n payload bytes.
func (m *meter) packet(ts, n int64) {
	if m.done {
		return
	}
	if !m.started {
		m.begin(ts)
		m.first = ts
	}
	if ts < m.start {
		return // queued before the window opened
	}
	if m.end > 0 && ts >= m.end {
		m.finish(m.end, false) // FIFO: everything before the end was seen
		return
	}
	m.closeIntervals(ts)
	m.ivPk++
	m.ivBy += n
	m.t.Packets++
	m.t.Bytes += n
	m.last = ts
}

// drained is called when the socket queue was empty at now.
func (m *meter) drained(now, bound int64) {
	switch {
	case !m.started:
		if m.o.firstTimeout > 0 && now-bound >= int64(m.o.firstTimeout) {
			m.done = true // nothing arrived: zero totals
		}
	case m.end > 0 && now >= m.end:
		m.finish(m.end, false)
	case m.o.idleStop > 0 && m.t.Packets > 0 && now-m.last >= int64(m.o.idleStop):
		m.finish(m.last, true)
	default:
		m.closeIntervals(now)
	}
}

// closeIntervals prints every interval that ended at or before now.
func (m *meter) closeIntervals(now int64) {
	for m.o.interval > 0 && m.ivEnd > 0 && now >= m.ivEnd && (m.end == 0 || m.ivEnd <= m.end) {
		m.tick(m.ivEnd)
	}
}

func (m *meter) tick(at int64) {
	t := float64(at-m.start) / 1e9
	secs := float64(at-m.ivStart) / 1e9
	pps := 0.0
	if secs > 0 {
		pps = float64(m.ivPk) / secs
	}
	m.emit(tick{T: t, Packets: m.ivPk, Bytes: m.ivBy},
		fmt.Sprintf("sink: t=%.3fs %d packets %d bytes (%.0f pps)\n", t, m.ivPk, m.ivBy, pps))
	m.ivPk, m.ivBy = 0, 0
	m.ivStart = at
	m.ivEnd = at + int64(m.o.interval)
}

// finish closes the window at end. atLast means the window ends at the
// last datagram (--idle-stop): with --start-after-first both ends are
// datagrams, so the rate is (packets-1) over the span between them.
func (m *meter) finish(end int64, atLast bool) {
	if m.done {
		return
	}
	m.done = true
	if !m.started {
		return
	}
	m.closeIntervals(end)
	if m.o.interval > 0 && m.ivPk > 0 && end > m.ivStart {
		m.tick(end) // partial last interval
	}
	m.t.Seconds = float64(end-m.start) / 1e9
	n := float64(m.t.Packets)
	if atLast && m.o.startAfterFirst {
		n--
	}
	if m.t.Seconds > 0 {
		m.t.PPS = n / m.t.Seconds
	}
}

func (m *meter) emit(v any, human string) {
	if m.o.json {
		b, _ := json.Marshal(v)
		m.out.Write(b)
		m.out.WriteByte('\n')
	} else {
		m.out.WriteString(human)
	}
	m.out.Flush()
}

// udpErrors returns RcvbufErrors+InCsumErrors for UDP (or UDP6) in this
// network namespace, or 0 if unreadable.
func udpErrors(v6 bool) int64 {
	if v6 {
		b, err := os.ReadFile("/proc/net/snmp6")
		if err != nil {
			return 0
		}
		var n int64
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && (f[0] == "Udp6RcvbufErrors" || f[0] == "Udp6InCsumErrors") {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				n += v
			}
		}
		return n
	}
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		var n int64
		for i := 1; i < len(f) && i < len(names); i++ {
			if names[i] == "RcvbufErrors" || names[i] == "InCsumErrors" {
				v, _ := strconv.ParseInt(f[i], 10, 64)
				n += v
			}
		}
		return n
	}
	return 0
}
