package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"time"
)

// sdNotify sends a state line to the service manager (systemd's
// sd_notify(3) protocol) when $NOTIFY_SOCKET is set; otherwise it does
// nothing. It needs no library: one datagram on a unix socket.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// watchdog feeds systemd's watchdog at half its interval ($WATCHDOG_USEC),
// but only while alive() holds: a daemon whose forwarder died or hung stops
// feeding it, and systemd restarts the daemon (OVS splices fail open
// meanwhile). It returns when ctx ends.
func watchdog(ctx context.Context, alive func() bool, onMiss func()) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return
	}
	t := time.NewTicker(time.Duration(usec) * time.Microsecond / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if alive() {
				sdNotify("WATCHDOG=1")
			} else {
				onMiss()
			}
		}
	}
}
