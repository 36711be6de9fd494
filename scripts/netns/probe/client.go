package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

// clientConfig is one measurement run.
type clientConfig struct {
	count          int
	interval       time.Duration // between message sends (schedule, not gap)
	size           int           // message bytes; the first 8 carry the sequence number
	timeout        time.Duration // per message, for its echo
	connectTimeout time.Duration
	newConn        bool // one connection per message; RTT includes connect
}

// result is what the client prints.
type result struct {
	Sent      int     `json:"sent"`
	Completed int     `json:"completed"`
	Failed    int     `json:"failed"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	Maxms     float64 `json:"max_ms"`
	Minms     float64 `json:"min_ms"`
	Meanms    float64 `json:"mean_ms"`
	Late      int     `json:"late,omitempty"`           // echoes that arrived after their timeout
	ConnP50ms float64 `json:"connect_p50_ms,omitempty"` // --new-conn: connect time alone
	Error     string  `json:"error,omitempty"`          // first failure, if any
	// LongestLoss is ping --paced's longest run of unanswered requests.
	LongestLoss int `json:"longest_loss,omitempty"`
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("probe client", flag.ContinueOnError)
	connect := fs.String("connect", "", "ADDR:PORT of a probe server, e.g. 198.18.0.11:22 (required)")
	var cfg clientConfig
	fs.IntVar(&cfg.count, "count", 100, "messages to send")
	fs.DurationVar(&cfg.interval, "interval", 100*time.Millisecond, "time between message sends")
	fs.IntVar(&cfg.size, "size", 64, "message size in bytes (8-65536)")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "per-message echo timeout")
	fs.DurationVar(&cfg.connectTimeout, "connect-timeout", 5*time.Second, "TCP connect timeout")
	fs.BoolVar(&cfg.newConn, "new-conn", false, "open a new connection per message (RTT = connect + echo)")
	js := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *connect == "" || fs.NArg() > 0 {
		return errors.New("client: want --connect ADDR:PORT and no other arguments")
	}
	if cfg.count < 1 || cfg.size < 8 || cfg.size > 65536 || cfg.interval < 0 || cfg.timeout <= 0 || cfg.connectTimeout <= 0 {
		return errors.New("client: want --count >= 1, --size 8-65536, --interval >= 0, --timeout and --connect-timeout > 0")
	}
	ap, err := labnet.ParseAddrPort("connect", *connect)
	if err != nil {
		return err
	}
	if _, err := labnet.CheckDestination(ap.Addr()); err != nil {
		return err
	}
	var stop atomic.Bool
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		stop.Store(true)
	}()
	// From here an interrupt ends the run with a result: say so, for a
	// caller that must not stop it before (the bench's waitReady).
	fmt.Fprintln(os.Stderr, "probe: client running")
	d := net.Dialer{Timeout: cfg.connectTimeout}
	r := measure(cfg, func() (net.Conn, error) { return d.Dial("tcp", ap.String()) }, &stop)
	return report(r, *js)
}

func report(r result, js bool) error {
	if js {
		if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
			return err
		}
	} else {
		fmt.Printf("probe: %d sent, %d completed, %d failed; rtt p50 %.3f ms, p99 %.3f ms, max %.3f ms",
			r.Sent, r.Completed, r.Failed, r.P50ms, r.P99ms, r.Maxms)
		if r.Error != "" {
			fmt.Printf("; first error: %s", r.Error)
		}
		fmt.Println()
	}
	if r.Failed > 0 {
		return errFailed
	}
	return nil
}

type echo struct {
	seq uint64
	at  time.Time
}

// measure runs cfg against the server reached by dial. stop ends it early
// (the remaining messages count as failed).
func measure(cfg clientConfig, dial func() (net.Conn, error), stop *atomic.Bool) result {
	var (
		r        result
		rtts     []time.Duration
		connRTTs []time.Duration
	)
	fail := func(err error) {
		r.Failed++
		if r.Error == "" && err != nil {
			r.Error = err.Error()
		}
	}
	msg := make([]byte, cfg.size)
	for i := 8; i < len(msg); i++ {
		msg[i] = byte('a' + i%26)
	}
	start := time.Now()
	wait := func(i int) {
		if d := time.Until(start.Add(time.Duration(i) * cfg.interval)); d > 0 {
			time.Sleep(d)
		}
	}

	if cfg.newConn {
		buf := make([]byte, cfg.size)
		for i := range cfg.count {
			wait(i)
			if stop.Load() {
				fail(errors.New("interrupted"))
				continue
			}
			t0 := time.Now()
			c, err := dial()
			if err != nil {
				fail(fmt.Errorf("connect: %w", err))
				continue
			}
			connRTTs = append(connRTTs, time.Since(t0))
			binary.BigEndian.PutUint64(msg, uint64(i))
			_ = c.SetDeadline(time.Now().Add(cfg.timeout))
			if _, err := c.Write(msg); err != nil {
				c.Close()
				fail(fmt.Errorf("write: %w", err))
				continue
			}
			r.Sent++
			_, err = io.ReadFull(c, buf)
			c.Close()
			if err != nil || binary.BigEndian.Uint64(buf) != uint64(i) {
				fail(fmt.Errorf("echo %d: %w", i, orBadEcho(err)))
				continue
			}
			rtts = append(rtts, time.Since(t0))
		}
		r.ConnP50ms = ms(percentile(connRTTs, 0.50))
		return finish(r, rtts)
	}

	c, err := dial()
	if err != nil {
		r.Failed = cfg.count
		r.Error = fmt.Sprintf("connect: %v", err)
		return finish(r, nil)
	}
	defer c.Close()
	echoes := make(chan echo, cfg.count)
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, cfg.size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				readErr <- err
				return
			}
			echoes <- echo{seq: binary.BigEndian.Uint64(buf), at: time.Now()}
		}
	}()
	var broken error
	for i := range cfg.count {
		if broken != nil {
			fail(broken)
			continue
		}
		wait(i)
		if stop.Load() {
			fail(errors.New("interrupted"))
			continue
		}
		binary.BigEndian.PutUint64(msg, uint64(i))
		_ = c.SetWriteDeadline(time.Now().Add(cfg.timeout))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			broken = fmt.Errorf("write: %w", err)
			fail(broken)
			continue
		}
		r.Sent++
		timer := time.NewTimer(cfg.timeout)
	waitEcho:
		for {
			select {
			case e := <-echoes:
				if e.seq < uint64(i) {
					r.Late++
					continue
				}
				if e.seq != uint64(i) {
					broken = fmt.Errorf("echo %d: got sequence %d; stream corrupted", i, e.seq)
					fail(broken)
					break waitEcho
				}
				rtts = append(rtts, e.at.Sub(t0))
				break waitEcho
			case err := <-readErr:
				broken = fmt.Errorf("connection lost: %w", err)
				fail(broken)
				break waitEcho
			case <-timer.C:
				fail(fmt.Errorf("echo %d: no reply within %v", i, cfg.timeout))
				break waitEcho
			}
		}
		timer.Stop()
	}
	return finish(r, rtts)
}

func orBadEcho(err error) error {
	if err != nil {
		return err
	}
	return errors.New("wrong sequence number echoed")
}

func finish(r result, rtts []time.Duration) result {
	r.Completed = len(rtts)
	if len(rtts) == 0 {
		return r
	}
	slices.Sort(rtts)
	var sum time.Duration
	for _, d := range rtts {
		sum += d
	}
	r.P50ms = ms(percentile(rtts, 0.50))
	r.P99ms = ms(percentile(rtts, 0.99))
	r.Maxms = ms(rtts[len(rtts)-1])
	r.Minms = ms(rtts[0])
	r.Meanms = ms(sum / time.Duration(len(rtts)))
	return r
}

// percentile returns the nearest-rank p-quantile of sorted d (0 if empty).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	if !slices.IsSorted(d) {
		d = slices.Clone(d)
		slices.Sort(d)
	}
	i := int(math.Ceil(p*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
