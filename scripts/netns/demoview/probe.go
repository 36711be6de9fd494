package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// prober keeps one TCP connection to a probe server (an echo, like an ssh
// session's keystrokes) and sends a message every interval. A message is
// answered when its echo returns, lost when none returned within timeout
// or it could not be sent; a broken connection is dialled again at the
// next message.
type prober struct {
	addr     string
	interval time.Duration
	timeout  time.Duration

	mu      sync.Mutex
	pending map[uint64]time.Time // sequence number -> when sent
	win     probeStats           // since the last take
	total   probeStats
}

// probeStats counts outcomes; MaxRTT is the slowest answered echo.
type probeStats struct {
	Answered int
	Lost     int
	MaxRTT   time.Duration
}

const probeSize = 64

func newProber(addr string) *prober {
	return &prober{addr: addr, interval: 100 * time.Millisecond, timeout: time.Second, pending: map[uint64]time.Time{}}
}

// run sends until ctx ends.
func (p *prober) run(ctx context.Context) {
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	broken := make(chan net.Conn, 1)
	msg := make([]byte, probeSize)
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	for seq := uint64(0); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case c := <-broken:
			if c == conn {
				conn.Close()
				conn = nil
			}
		default:
		}
		now := time.Now()
		p.mu.Lock()
		p.pending[seq] = now
		p.mu.Unlock()
		if conn == nil {
			d := net.Dialer{Timeout: p.timeout}
			c, err := d.DialContext(ctx, "tcp", p.addr)
			if err != nil {
				continue // counted lost at its timeout
			}
			conn = c
			go p.read(c, broken)
		}
		binary.BigEndian.PutUint64(msg, seq)
		_ = conn.SetWriteDeadline(now.Add(p.timeout))
		if _, err := conn.Write(msg); err != nil {
			conn.Close()
			conn = nil
		}
	}
}

// read matches echoes to their messages until the connection fails.
func (p *prober) read(c net.Conn, broken chan<- net.Conn) {
	buf := make([]byte, probeSize)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			select {
			case broken <- c:
			default:
			}
			return
		}
		at := time.Now()
		seq := binary.BigEndian.Uint64(buf)
		p.mu.Lock()
		if t0, ok := p.pending[seq]; ok {
			delete(p.pending, seq)
			rtt := at.Sub(t0)
			p.win.Answered++
			p.win.MaxRTT = max(p.win.MaxRTT, rtt)
		}
		p.mu.Unlock()
	}
}

// take returns the outcomes known since the last take, counting as lost
// every message older than the timeout by now.
func (p *prober) take(now time.Time) probeStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	for seq, t0 := range p.pending {
		if now.Sub(t0) > p.timeout {
			delete(p.pending, seq)
			p.win.Lost++
		}
	}
	w := p.win
	p.win = probeStats{}
	p.total.Answered += w.Answered
	p.total.Lost += w.Lost
	p.total.MaxRTT = max(p.total.MaxRTT, w.MaxRTT)
	return w
}
