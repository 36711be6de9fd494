package labnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"
)

// Pinger sends ICMP echo requests to one lab destination over a raw socket
// (needs CAP_NET_RAW). It is not safe for concurrent use.
type Pinger struct {
	dst  netip.Addr
	conn *net.IPConn
	id   uint16
	buf  []byte
}

// NewPinger checks dst with CheckDestination and opens the raw socket.
func NewPinger(dst netip.Addr) (*Pinger, error) {
	dst = dst.Unmap()
	if _, err := CheckDestination(dst); err != nil {
		return nil, err
	}
	network, laddr := "ip4:icmp", "0.0.0.0"
	if dst.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
	}
	c, err := net.ListenPacket(network, laddr)
	if err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	return &Pinger{dst: dst, conn: c.(*net.IPConn), id: uint16(rand.Uint32()), buf: make([]byte, 1500)}, nil
}

// Close releases the socket. Safe to call twice.
func (p *Pinger) Close() error {
	if p.conn == nil {
		return nil
	}
	err := p.conn.Close()
	p.conn = nil
	return err
}

// ErrTimeout means no echo reply arrived within the timeout.
var ErrTimeout = errors.New("no echo reply before the timeout")

// Echo sends one echo request with sequence number seq and waits up to
// timeout for the matching reply; it returns the round-trip time.
func (p *Pinger) Echo(seq uint16, timeout time.Duration) (time.Duration, error) {
	req := make([]byte, 8+16)
	reqType, replyType := byte(8), byte(0)
	if p.dst.Is6() {
		reqType, replyType = 128, 129
	}
	req[0] = reqType
	binary.BigEndian.PutUint16(req[4:], p.id)
	binary.BigEndian.PutUint16(req[6:], seq)
	copy(req[8:], "shaperd-lab-ping")
	if p.dst.Is4() { // the kernel fills in the ICMPv6 checksum, not ICMPv4's
		binary.BigEndian.PutUint16(req[2:], ^Fold(Sum(req, 0)))
	}
	start := time.Now()
	if err := p.conn.SetReadDeadline(start.Add(timeout)); err != nil {
		return 0, err
	}
	if _, err := p.conn.WriteToIP(req, &net.IPAddr{IP: p.dst.AsSlice()}); err != nil {
		return 0, fmt.Errorf("ping %s: %w", p.dst, err)
	}
	for {
		n, from, err := p.conn.ReadFromIP(p.buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return 0, fmt.Errorf("ping %s seq %d: %w", p.dst, seq, ErrTimeout)
			}
			return 0, fmt.Errorf("ping %s: %w", p.dst, err)
		}
		b := p.buf[:n]
		if n < 8 || b[0] != replyType || binary.BigEndian.Uint16(b[4:]) != p.id || binary.BigEndian.Uint16(b[6:]) != seq {
			continue
		}
		if a, ok := netip.AddrFromSlice(from.IP); !ok || a.Unmap() != p.dst {
			continue
		}
		return time.Since(start), nil
	}
}

// Paced sends count echo requests with sequence numbers 1..count, one
// every interval whatever the replies (as ping -i does), and reports which
// were answered within timeout of their sending: an outage of d loses
// about d/interval of them. It reads replies on its own goroutine.
func (p *Pinger) Paced(count int, interval, timeout time.Duration) (answered []bool, err error) {
	reqType, replyType := byte(8), byte(0)
	if p.dst.Is6() {
		reqType, replyType = 128, 129
	}
	sent := make([]time.Time, count+1)
	answered = make([]bool, count+1)
	type reply struct {
		seq uint16
		at  time.Time
	}
	replies := make(chan reply, count+1)
	start := time.Now()
	end := start.Add(time.Duration(count)*interval + timeout)
	if err := p.conn.SetReadDeadline(end); err != nil {
		return nil, err
	}
	go func() {
		defer close(replies)
		for {
			n, from, err := p.conn.ReadFromIP(p.buf)
			if err != nil {
				return
			}
			b := p.buf[:n]
			if n < 8 || b[0] != replyType || binary.BigEndian.Uint16(b[4:]) != p.id {
				continue
			}
			if a, ok := netip.AddrFromSlice(from.IP); !ok || a.Unmap() != p.dst {
				continue
			}
			replies <- reply{binary.BigEndian.Uint16(b[6:]), time.Now()}
		}
	}()
	for i := 1; i <= count; i++ {
		if d := time.Until(start.Add(time.Duration(i-1) * interval)); d > 0 {
			time.Sleep(d)
		}
		req := make([]byte, 8+16)
		req[0] = reqType
		binary.BigEndian.PutUint16(req[4:], p.id)
		binary.BigEndian.PutUint16(req[6:], uint16(i))
		copy(req[8:], "shaperd-lab-ping")
		if p.dst.Is4() {
			binary.BigEndian.PutUint16(req[2:], ^Fold(Sum(req, 0)))
		}
		sent[i] = time.Now()
		if _, err := p.conn.WriteToIP(req, &net.IPAddr{IP: p.dst.AsSlice()}); err != nil {
			return nil, fmt.Errorf("ping %s: %w", p.dst, err)
		}
	}
	for r := range replies {
		if i := int(r.seq); i >= 1 && i <= count && !sent[i].IsZero() && r.at.Sub(sent[i]) <= timeout {
			answered[i] = true
		}
	}
	return answered[1:], nil
}

// Sum adds b as big-endian 16-bit words to the one's-complement
// accumulator acc (RFC 1071) and returns the new, unfolded accumulator.
func Sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// Fold folds a one's-complement accumulator to 16 bits (not inverted).
func Fold(acc uint32) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}
