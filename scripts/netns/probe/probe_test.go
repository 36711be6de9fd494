package main

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile(nil) != 0")
	}
}

// TestEchoLoopback runs the server and both client modes over loopback (no
// lab guards: measure and newServer take the listener and dialer as given).
func TestEchoLoopback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(l, false)
	defer s.Close()
	dial := func() (net.Conn, error) { return net.Dial("tcp", l.Addr().String()) }
	var stop atomic.Bool
	for _, newConn := range []bool{false, true} {
		cfg := clientConfig{count: 20, interval: time.Millisecond, size: 300, timeout: time.Second, connectTimeout: time.Second, newConn: newConn}
		r := measure(cfg, dial, &stop)
		if r.Sent != 20 || r.Completed != 20 || r.Failed != 0 || r.P50ms <= 0 || r.Maxms < r.P99ms {
			t.Errorf("newConn=%v: %+v", newConn, r)
		}
	}
	s.Close()
	s.Close() // safe twice
}

// TestTimeoutCountsFailures uses a server that never answers.
func TestTimeoutCountsFailures(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(2 * time.Second)
		}
	}()
	var stop atomic.Bool
	cfg := clientConfig{count: 3, size: 64, timeout: 50 * time.Millisecond, connectTimeout: time.Second}
	r := measure(cfg, func() (net.Conn, error) { return net.Dial("tcp", l.Addr().String()) }, &stop)
	if r.Sent != 3 || r.Completed != 0 || r.Failed != 3 || r.Error == "" {
		t.Errorf("%+v", r)
	}
}
