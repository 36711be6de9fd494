package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", p)
	return c
}

func TestWatchdogFedOnlyWhileAlive(t *testing.T) {
	c := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "20000") // 20 ms: fed every 10 ms
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(time.Second))
	if n, _ := c.Read(buf); string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q", buf[:n])
	}
	var alive atomic.Bool
	alive.Store(true)
	var misses atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go watchdog(ctx, alive.Load, func() { misses.Add(1) })
	c.SetReadDeadline(time.Now().Add(time.Second))
	if n, _ := c.Read(buf); !strings.HasPrefix(string(buf[:n]), "WATCHDOG=1") {
		t.Fatalf("alive daemon: got %q, want WATCHDOG=1", buf[:n])
	}
	alive.Store(false)
	time.Sleep(30 * time.Millisecond)
	for { // drain what was sent before the switch
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("a dead forwarder still feeds the watchdog: %q", buf[:n])
	}
	if misses.Load() == 0 {
		t.Fatal("missed feeds not reported")
	}
}
