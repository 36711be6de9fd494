package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"time"

	"github.com/shaperd/shaperd/scripts/netns/internal/labnet"
)

func runPing(args []string) error {
	fs := flag.NewFlagSet("probe ping", flag.ContinueOnError)
	dst := fs.String("dst", "", "lab address to ping (required)")
	count := fs.Int("count", 3, "echo requests")
	interval := fs.Duration("interval", 100*time.Millisecond, "time between requests")
	timeout := fs.Duration("timeout", time.Second, "per-request timeout")
	js := fs.Bool("json", false, "print the result as JSON")
	paced := fs.Bool("paced", false, "send one request every --interval whatever the replies, as ping -i does (without it, a request waits for the previous one's reply or timeout), and count those answered within --timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dst == "" || fs.NArg() > 0 || *count < 1 || *timeout <= 0 {
		return errors.New("ping: want --dst ADDR, --count >= 1, --timeout > 0")
	}
	a, err := netip.ParseAddr(*dst)
	if err != nil {
		return fmt.Errorf("--dst %q: %w", *dst, err)
	}
	p, err := labnet.NewPinger(a)
	if err != nil {
		return err
	}
	defer p.Close()
	var r result
	if *paced {
		answered, err := p.Paced(*count, *interval, *timeout)
		if err != nil {
			return err
		}
		run := 0
		for _, ok := range answered {
			r.Sent++
			if ok {
				r.Completed++
				run = 0
				continue
			}
			r.Failed++
			if run++; run > r.LongestLoss {
				r.LongestLoss = run
			}
		}
		return report(r, *js)
	}
	var rtts []time.Duration
	start := time.Now()
	for i := range *count {
		if d := time.Until(start.Add(time.Duration(i) * *interval)); d > 0 {
			time.Sleep(d)
		}
		r.Sent++
		rtt, err := p.Echo(uint16(i+1), *timeout)
		if err != nil {
			r.Failed++
			if r.Error == "" {
				r.Error = err.Error()
			}
			continue
		}
		rtts = append(rtts, rtt)
	}
	return report(finish(r, rtts), *js)
}
