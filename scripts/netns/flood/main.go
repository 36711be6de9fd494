// Command flood generates a UDP or TCP SYN flood towards one lab address,
// at the maximum rate or paced to a packets-per-second target, and prints
// what it sent.
//
// It only sends to 198.18.0.0/15 and 2001:2::/48, only from inside a
// network namespace other than the initial one, and only over an on-link
// route. Run it with `ip netns exec LAB-vm1 flood --dst 198.18.0.100 ...`.
//
// Methods (--method):
//
//	socket  connected UDP socket + sendmmsg; the kernel builds the headers (UDP only)
//	raw     raw IP socket (IP_HDRINCL) + sendmmsg; flood builds IP and L4 headers
//	packet  AF_PACKET + PACKET_QDISC_BYPASS + sendmmsg; flood builds whole Ethernet frames
//
// auto (the default) is packet, the fastest measured here. UDP frames are
// exactly --size bytes including the 14-byte Ethernet header (no FCS);
// SYN frames are 58 (IPv4) or 78 (IPv6) bytes: a 24-byte TCP header with
// an MSS option. Each SYN has a random source port from --src-port-range
// and a random sequence number; UDP uses one source port from the range.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type options struct {
	dst      netip.Addr
	dport    uint16
	proto    string
	size     int
	pps      int64
	duration time.Duration
	sportLo  uint16
	sportHi  uint16
	json     bool
	method   method
	batch    int
	burst    int64
	seed     uint64
}

// summary is the final report (--json prints it as one JSON object).
type summary struct {
	Sent      int64   `json:"sent"`    // packets accepted by the kernel
	Seconds   float64 `json:"seconds"` // from the first send to the end
	PPS       float64 `json:"pps"`     // sent / seconds
	Errors    int64   `json:"errors"`  // transient send errors (packet not sent)
	Behind    int64   `json:"behind"`  // paced packets forgiven because flood fell behind
	Proto     string  `json:"proto"`
	Method    string  `json:"method"`
	FrameSize int     `json:"frame_bytes"`
	TargetPPS int64   `json:"target_pps"` // 0 = maximum rate
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	dst := fs.String("dst", "", "destination address in 198.18.0.0/15 or 2001:2::/48 (required)")
	dport := fs.Uint("dport", 9, "destination port")
	proto := fs.String("proto", "udp", "udp or syn")
	size := fs.Int("size", 250, "UDP frame size in bytes on the wire, including the 14-byte Ethernet header (udp only)")
	pps := fs.Int64("pps", 0, "target packets per second; 0 = maximum rate")
	dur := fs.Duration("duration", 10*time.Second, "how long to send; 0 = until SIGINT/SIGTERM")
	sports := fs.String("src-port-range", "1024-65535", "source ports, LO-HI or one port")
	js := fs.Bool("json", false, "print the summary as JSON")
	meth := fs.String("method", "auto", "auto, socket (udp only), raw or packet")
	batch := fs.Int("batch", 64, "packets per sendmmsg call at most (1-1024)")
	burst := fs.Int64("burst", 0, "paced mode: most packets sent back to back when catching up; 0 = 2 ms worth, 1-64")
	seed := fs.Uint64("seed", 0, "random seed for SYN ports and sequence numbers; 0 = from the clock")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: flood --dst ADDR [--dport 9] [--proto udp|syn] [--size 250] [--pps 0] [--duration 10s] [--src-port-range 1024-65535] [--json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var o options
	if *dst == "" {
		return o, errors.New("--dst is required, e.g. --dst 198.18.0.100")
	}
	a, err := netip.ParseAddr(*dst)
	if err != nil {
		return o, fmt.Errorf("--dst %q: %w", *dst, err)
	}
	o.dst = a.Unmap()
	if err := labnet.CheckAddr(o.dst); err != nil {
		return o, fmt.Errorf("--dst: %w", err)
	}
	if *dport == 0 || *dport > 65535 {
		return o, fmt.Errorf("--dport %d: want 1-65535", *dport)
	}
	o.dport = uint16(*dport)
	o.proto = *proto
	if o.proto != "udp" && o.proto != "syn" {
		return o, fmt.Errorf("--proto %q: want udp or syn", o.proto)
	}
	sizeSet := false
	fs.Visit(func(f *flag.Flag) { sizeSet = sizeSet || f.Name == "size" })
	if o.proto == "syn" && sizeSet {
		return o, errors.New("--size applies to --proto udp only; SYN frames are 58 bytes (IPv4) or 78 (IPv6)")
	}
	o.size = *size
	if o.proto == "udp" {
		lo := ethLen + ipLen(o.dst) + udpLen
		if o.size < lo || o.size > ethLen+1500 {
			return o, fmt.Errorf("--size %d: want %d-1514 bytes (Ethernet+IP+UDP headers are %d)", o.size, lo, lo)
		}
	} else {
		o.size = ethLen + ipLen(o.dst) + synLen
	}
	if *pps < 0 {
		return o, fmt.Errorf("--pps %d: want 0 (maximum) or a positive rate", *pps)
	}
	o.pps = *pps
	if *dur < 0 {
		return o, fmt.Errorf("--duration %v: want 0 (until a signal) or positive", *dur)
	}
	o.duration = *dur
	if o.sportLo, o.sportHi, err = parsePortRange(*sports); err != nil {
		return o, err
	}
	o.json = *js
	switch m := method(*meth); m {
	case "auto":
		o.method = methodPacket
	case methodSocket, methodRaw, methodPacket:
		o.method = m
	default:
		return o, fmt.Errorf("--method %q: want auto, socket, raw or packet", *meth)
	}
	if o.method == methodSocket && o.proto != "udp" {
		return o, errors.New("--method socket sends UDP only; use raw or packet for --proto syn")
	}
	if *batch < 1 || *batch > 1024 {
		return o, fmt.Errorf("--batch %d: want 1-1024", *batch)
	}
	o.batch = *batch
	if *burst < 0 || *burst > 64 {
		return o, fmt.Errorf("--burst %d: want 0 (auto) or 1-64", *burst)
	}
	o.burst = *burst
	if o.burst == 0 {
		o.burst = min(max(o.pps/500, 1), 64)
	}
	o.seed = *seed
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	return o, nil
}

func parsePortRange(s string) (lo, hi uint16, err error) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		b = a
	}
	l, err1 := strconv.ParseUint(a, 10, 16)
	h, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || l > h {
		return 0, 0, fmt.Errorf("--src-port-range %q: want LO-HI with 1 <= LO <= HI <= 65535, or one port", s)
	}
	return uint16(l), uint16(h), nil
}

func run(args []string) error {
	o, err := parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	route, err := labnet.CheckDestination(o.dst)
	if err != nil {
		return err
	}
	if !route.Src.IsValid() {
		return fmt.Errorf("route to %s has no source address", o.dst)
	}
	if o.proto == "udp" {
		if l, err := netlink.LinkByIndex(route.Ifindex); err == nil && o.size > ethLen+l.Attrs().MTU {
			return fmt.Errorf("--size %d exceeds %s's MTU %d + 14", o.size, route.Ifname, l.Attrs().MTU)
		}
	}
	rng := rand.New(rand.NewPCG(o.seed, o.seed^0x9e3779b97f4a7c15))
	span := uint32(o.sportHi-o.sportLo) + 1
	f := flow{src: route.Src, dst: o.dst, sport: o.sportLo + uint16(rng.Uint32N(span)), dport: o.dport}
	s, err := newSender(genConfig{proto: o.proto, method: o.method, f: f, route: route, size: o.size, batch: o.batch})
	if err != nil {
		return err
	}
	defer s.close()

	var prepare func(n int)
	if o.proto == "syn" {
		ps := pseudoSum(f, protoTCP, synLen)
		prepare = func(n int) {
			for i := range n {
				setSYN(s.bufs[i][s.l4:], ps, o.sportLo+uint16(rng.Uint32N(span)), rng.Uint32())
			}
		}
	}

	var stop atomic.Bool
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		if _, ok := <-sig; ok {
			stop.Store(true)
		}
	}()

	// Pacing sleeps with nanosleep on a locked thread with 1 ns timer
	// slack: Go timers can overshoot sub-millisecond sleeps.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)

	sum := summary{Proto: o.proto, Method: string(o.method), FrameSize: o.size, TargetPPS: o.pps}
	start := time.Now()
	deadline := start.Add(o.duration)
	var p *pacer
	if o.pps > 0 {
		p = newPacer(o.pps, o.burst, start)
	}
	for !stop.Load() {
		now := time.Now()
		if o.duration > 0 && !now.Before(deadline) {
			break
		}
		n := o.batch
		if p != nil {
			var wait time.Duration
			n, wait = p.next(now, o.batch)
			if n == 0 {
				if o.duration > 0 {
					wait = min(wait, deadline.Sub(now))
				}
				sleep(min(wait, 50*time.Millisecond))
				continue
			}
		}
		if prepare != nil {
			prepare(n)
		}
		k, err := s.send(n)
		sum.Sent += int64(k)
		if p != nil {
			p.sent(k)
		}
		if err != nil {
			if !isTransient(err) {
				return fmt.Errorf("send: %w", err)
			}
			sum.Errors++
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EHOSTUNREACH) {
				sleep(20 * time.Microsecond)
			}
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	if p != nil {
		sum.Behind = p.behind
	}
	if sum.Seconds > 0 {
		sum.PPS = float64(sum.Sent) / sum.Seconds
	}
	if o.json {
		return json.NewEncoder(os.Stdout).Encode(sum)
	}
	fmt.Printf("flood: sent %d %s packets (%d-byte frames, method %s) in %.3fs = %.0f pps",
		sum.Sent, sum.Proto, sum.FrameSize, sum.Method, sum.Seconds, sum.PPS)
	if o.pps > 0 {
		fmt.Printf(" (target %d, %+.2f%%)", o.pps, 100*(sum.PPS-float64(o.pps))/float64(o.pps))
	}
	fmt.Printf("; %d send errors, %d behind\n", sum.Errors, sum.Behind)
	return nil
}

func sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil)
}
