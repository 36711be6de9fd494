package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Record is one demo run: what --samples writes and `demoview svg` reads.
// Times are seconds from the flood's start (negative before it).
type Record struct {
	Port       string    `json:"port"`
	FloodStart time.Time `json:"flood_start"`
	// FloodEnd is when the flood command exited; null if it outlived the
	// recording.
	FloodEnd *float64 `json:"flood_end"`
	// Quarantined is when the quarantine began (the daemon's since);
	// null if it never did.
	Quarantined *float64 `json:"quarantined"`
	// Released is when the port was first seen released, estimated as
	// for StageSince.
	Released *float64  `json:"released"`
	Samples  []Sample  `json:"samples"`
	Probe    probeJSON `json:"probe"`
}

type probeJSON struct {
	Addr     string  `json:"addr"`
	Answered int     `json:"answered"`
	Lost     int     `json:"lost"`
	MaxMS    float64 `json:"max_ms"`
}

// Sample is one second: the rates over (T-1, T], the state at T.
type Sample struct {
	T float64 `json:"t"`
	// Tick is the whole second this sample is printed under.
	Tick int `json:"tick"`
	// Stage is the port's ladder stage ("stage1", "stage2", "stage3",
	// "probation", "manual"), or its state: "watching" (not flagged),
	// "flagged", "pending", "released".
	Stage string `json:"stage"`
	// StageSince is when Stage began: the daemon's quarantine or flag
	// time when the port entered one, the previous sample's
	// next_transition when the ladder moved at it, else the midpoint
	// between the two samples.
	StageSince float64 `json:"stage_since"`
	// LimitPPS is the from_vm pps limit in force; null for none.
	LimitPPS  *float64 `json:"limit_pps"`
	Offered   float64  `json:"offered_pps"`
	Delivered float64  `json:"delivered_pps"`
	Flood     bool     `json:"flood"` // the flood command was running at T
	ProbeOK   int      `json:"probe_ok"`
	ProbeLost int      `json:"probe_lost"`
	ProbeMax  float64  `json:"probe_max_ms"`
	// Drops holds the drop reasons whose counters moved, in frames per
	// second over the interval.
	Drops map[string]float64 `json:"drops_pps,omitempty"`
}

type floodExit struct {
	at  time.Time
	err error
}

// ifCounters reads one interface's counters through a netlink socket in
// its namespace.
type ifCounters struct {
	h   *netlink.Handle
	dev string
}

func openIf(n nsIf) (*ifCounters, error) {
	ns, err := netns.GetFromName(n.ns)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", n.ns, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", n.ns, err)
	}
	c := &ifCounters{h: h, dev: n.dev}
	if _, _, err := c.read(); err != nil {
		h.Close()
		return nil, err
	}
	return c, nil
}

// read returns (tx_packets + tx_dropped, rx_packets).
func (c *ifCounters) read() (tx, rx uint64, err error) {
	l, err := c.h.LinkByName(c.dev)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", c.dev, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		return 0, 0, fmt.Errorf("%s: no statistics", c.dev)
	}
	return s.TxPackets + s.TxDropped, s.RxPackets, nil
}

// quiet reports whether a stage is no quarantine.
func quiet(stage string) bool {
	return stage == "watching" || stage == "flagged" || stage == "released"
}

// record runs the view: it returns what it recorded, even on error.
func record(ctx context.Context, o options) (*Record, error) {
	rec := &Record{Port: o.port, Probe: probeJSON{Addr: o.probe}}
	off, err := openIf(o.offered)
	if err != nil {
		return rec, fmt.Errorf("--offered: %w", err)
	}
	defer off.h.Close()
	del, err := openIf(o.delivered)
	if err != nil {
		return rec, fmt.Errorf("--delivered: %w", err)
	}
	defer del.h.Close()
	if _, err := readStatus(ctx, o.shaperd, o.socket); err != nil {
		return rec, err
	}

	pctx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	pr := newProber(o.probe)
	go pr.run(pctx)
	defer finishProbe(rec, pr) // the totals, on every return

	fmt.Printf("== each second: the port's ladder stage, the frames per second the VM offers and the external host\n")
	fmt.Printf("   receives, the ssh-like probe to %s (echoes back/lost, slowest), and the drops that moved\n", o.probe)
	fmt.Println(header)

	var (
		start     = time.Now()
		floodDone = make(chan floodExit, 1)
		flood     *exec.Cmd
		floodErr  bytes.Buffer
		floodRun  bool
		seenQ     bool
		prev      struct {
			at       time.Time
			tx, rx   uint64
			daemon   time.Time
			drops    map[string]uint64
			since    time.Time // the quarantine the drops belong to
			stage    string
			next     *time.Time
			releaseT int // tick of the first released sample
		}
	)
	rec.FloodStart = start.Add(time.Duration(o.lead) * time.Second)
	rel := func(t time.Time) float64 { return t.Sub(rec.FloodStart).Seconds() }
	defer func() {
		if flood != nil && floodRun {
			_ = flood.Process.Kill()
			<-floodDone
		}
	}()

	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * time.Second)
		select {
		case <-ctx.Done():
			return rec, errors.New("interrupted")
		case <-time.After(time.Until(due)):
		}
		// A second missed entirely (the machine too busy to sample) is
		// said, not hidden: the next line covers both.
		if skip := int(time.Since(due) / time.Second); skip > 0 && i > 0 {
			fmt.Printf("== no view for %d s: sampling ran late\n", skip)
			i += skip
		}
		st, err := readStatus(ctx, o.shaperd, o.socket)
		if err != nil {
			return rec, err
		}
		tx, _, err := off.read()
		if err != nil {
			return rec, fmt.Errorf("--offered: %w", err)
		}
		_, rx, err := del.read()
		if err != nil {
			return rec, fmt.Errorf("--delivered: %w", err)
		}
		now := time.Now()
		probe := pr.take(now)
		select {
		case e := <-floodDone:
			floodRun = false
			rec.FloodEnd = ptr(rel(e.at))
			if e.err != nil {
				fmt.Printf("== the flood command failed: %v %s\n", e.err, strings.TrimSpace(floodErr.String()))
			}
		default:
		}

		q := st.quarantine(o.port)
		var s Sample
		s.Tick = i - o.lead
		s.T = rel(now)
		switch {
		case q != nil && q.State == "pending":
			s.Stage = "pending"
		case q != nil:
			s.Stage = q.Stage
		case st.flagged(o.port) != nil:
			s.Stage = "flagged"
		case seenQ:
			s.Stage = "released"
		default:
			s.Stage = "watching"
		}
		if q != nil {
			s.LimitPPS = q.Directions.FromVM.Limits.PPS
			if !seenQ {
				seenQ = true
				rec.Quarantined = ptr(rel(q.Since))
				fmt.Printf("== %s quarantined automatically %.2f s after the flood started\n", o.port, rel(q.Since))
			}
		}

		if i > 0 {
			s.StageSince = lastSample(rec).StageSince
			if s.Stage != prev.stage {
				s.StageSince = stageStart(s.Stage, prev.stage, q, st, o.port, prev.at, now, prev.next, rel)
			}
			dt := now.Sub(prev.at).Seconds()
			s.Offered = float64(tx-prev.tx) / dt
			s.Delivered = float64(rx-prev.rx) / dt
			s.Flood = floodRun
			s.ProbeOK, s.ProbeLost = probe.Answered, probe.Lost
			s.ProbeMax = math.Round(float64(probe.MaxRTT)/1e4) / 100
			if q != nil {
				cur := q.drops()
				base, from := prev.drops, prev.daemon
				if !prev.since.Equal(q.Since) || base == nil {
					base, from = nil, q.Since // a new quarantine: its counters start at 0
				}
				ddt := st.Daemon.Now.Sub(from).Seconds()
				for r, n := range cur {
					if n > base[r] && ddt > 0 {
						if s.Drops == nil {
							s.Drops = map[string]float64{}
						}
						s.Drops[r] = float64(n-base[r]) / ddt
					}
				}
			}
			if s.Stage == "released" && prev.stage != "released" {
				rec.Released = ptr(s.StageSince)
				prev.releaseT = i
			}
			rec.Samples = append(rec.Samples, s)
			fmt.Println(line(s))
		} else {
			s.StageSince = rel(start)
			rec.Samples = append(rec.Samples, s) // the baseline, not printed
		}
		prev.at, prev.tx, prev.rx, prev.stage = now, tx, rx, s.Stage
		prev.next = nil
		prev.drops, prev.daemon = nil, st.Daemon.Now
		if q != nil {
			prev.next = q.NextTransition
			prev.drops, prev.since = q.drops(), q.Since
		}

		if flood == nil && i >= o.lead {
			flood = exec.Command(o.cmd[0], o.cmd[1:]...)
			flood.Stderr = &floodErr
			// Times so far were from the planned start: move them to
			// the real one.
			planned := rec.FloodStart
			rec.FloodStart = time.Now()
			shift := rec.FloodStart.Sub(planned).Seconds()
			for k := range rec.Samples {
				rec.Samples[k].T -= shift
				rec.Samples[k].StageSince -= shift
			}
			if err := flood.Start(); err != nil {
				return rec, fmt.Errorf("start the flood: %w", err)
			}
			floodRun = true
			go func() {
				err := flood.Wait()
				floodDone <- floodExit{time.Now(), err}
			}()
		}
		if prev.releaseT > 0 && i >= prev.releaseT+o.tail {
			break
		}
		if now.Sub(start) > o.max {
			return rec, fmt.Errorf("%s not released within --max %v", o.port, o.max)
		}
	}
	finishProbe(rec, pr)
	fmt.Println(summary(rec))
	return rec, nil
}

// lastSample returns the last recorded sample.
func lastSample(rec *Record) Sample { return rec.Samples[len(rec.Samples)-1] }

// stageStart estimates when the port entered stage, seen at now and not at
// prevAt (see Sample.StageSince).
func stageStart(stage, prevStage string, q *quarantine, st status, port string, prevAt, now time.Time, prevNext *time.Time, rel func(time.Time) float64) float64 {
	clamp := func(t time.Time) float64 {
		if t.Before(prevAt) {
			t = prevAt
		}
		if t.After(now) {
			t = now
		}
		return rel(t)
	}
	switch {
	case q != nil && quiet(prevStage):
		return clamp(q.Since)
	case stage == "flagged" && st.flagged(port) != nil:
		return clamp(st.flagged(port).Since)
	case prevNext != nil && prevNext.After(prevAt) && !prevNext.After(now.Add(200*time.Millisecond)):
		return clamp(*prevNext)
	}
	return rel(prevAt.Add(now.Sub(prevAt) / 2))
}

// finishProbe copies the probe's totals into rec.
func finishProbe(rec *Record, pr *prober) {
	pr.mu.Lock()
	t := pr.total
	pr.mu.Unlock()
	rec.Probe.Answered, rec.Probe.Lost = t.Answered, t.Lost
	rec.Probe.MaxMS = math.Round(float64(t.MaxRTT)/1e4) / 100
}

func ptr[T any](v T) *T { return &v }

func writeJSON(path string, rec *Record) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(rec, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--samples: %w", err)
	}
	return nil
}

func readJSON(path string) (*Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(rec.Samples) < 2 {
		return nil, fmt.Errorf("%s: fewer than two samples", path)
	}
	return &rec, nil
}
