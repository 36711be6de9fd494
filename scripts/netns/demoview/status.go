package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// status holds the parts of `shaperd status --json` the view reads (see
// api.Status); the rest is ignored.
type status struct {
	Daemon struct {
		Now time.Time `json:"now"`
	} `json:"daemon"`
	Quarantines []quarantine `json:"quarantines"`
	Flagged     []flagged    `json:"flagged"`
}

type flagged struct {
	Port  string    `json:"port"`
	Since time.Time `json:"since"`
}

type quarantine struct {
	Port           string     `json:"port"`
	State          string     `json:"state"`
	Since          time.Time  `json:"since"`
	Stage          string     `json:"stage"`
	NextTransition *time.Time `json:"next_transition"`
	Directions     struct {
		FromVM direction `json:"from_vm"`
		ToVM   direction `json:"to_vm"`
	} `json:"directions"`
}

type direction struct {
	Limits struct {
		PPS *float64 `json:"pps"`
	} `json:"limits"`
	Classes map[string]struct {
		Drops map[string]uint64 `json:"drops"`
	} `json:"classes"`
	TapDrops    uint64            `json:"tap_drops"`
	KernelDrops map[string]uint64 `json:"kernel_drops"`
}

// readStatus runs `shaperd --socket SOCK status --json`.
func readStatus(ctx context.Context, bin, socket string) (status, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--socket", socket, "status", "--json")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return status{}, fmt.Errorf("shaperd status --json: %w: %s", err, strings.TrimSpace(errb.String()))
	}
	var st status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		return status{}, fmt.Errorf("shaperd status --json: %w", err)
	}
	return st, nil
}

func (s status) quarantine(port string) *quarantine {
	for i := range s.Quarantines {
		if s.Quarantines[i].Port == port {
			return &s.Quarantines[i]
		}
	}
	return nil
}

func (s status) flagged(port string) *flagged {
	for i := range s.Flagged {
		if s.Flagged[i].Port == port {
			return &s.Flagged[i]
		}
	}
	return nil
}

// drops sums a quarantine's drop counters by reason: the forwarder's
// reasons over every class, the kernel half's by its reason, and frames
// the tap queue dropped as "tap_queue". Those toward the VM are prefixed
// "to_vm:".
func (q *quarantine) drops() map[string]uint64 {
	m := map[string]uint64{}
	add := func(prefix string, d direction) {
		for _, c := range d.Classes {
			for r, n := range c.Drops {
				m[prefix+r] += n
			}
		}
		for r, n := range d.KernelDrops {
			m[prefix+r] += n
		}
		if d.TapDrops > 0 {
			m[prefix+"tap_queue"] += d.TapDrops
		}
	}
	add("", q.Directions.FromVM)
	add("to_vm:", q.Directions.ToVM)
	return m
}
