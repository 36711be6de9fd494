package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gdamore/tcell/v2"
	"github.com/spf13/cobra"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/classify"
)

func newTopCmd(g *globals) *cobra.Command {
	var interval time.Duration
	var once bool
	cmd := &cobra.Command{
		Use:   "top [PORT]",
		Short: "Live view of quarantined ports: pps and bit/s each way, per-class pass and drop rates",
		Long: `A live view of the quarantined ports, like top or iftop: packets and bits per
second passed and dropped in each direction, the same per class with the drop
reasons, and each port's state and stage. Rates are the differences between
two status samples. The busiest port comes first. q, Esc or Ctrl-C quits.
With --once it prints one view (two samples --interval apart) and exits.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErr("top takes at most one PORT")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval < 100*time.Millisecond {
				return usageErr("--interval %v: want at least 100ms", interval)
			}
			port := ""
			if len(args) == 1 {
				port = args[0]
			}
			c := g.client()
			fetch := func() (api.Status, error) { return c.StatusWithoutSamples(port) }
			// The daemon must answer before the screen is taken over, so
			// that "not running" is an ordinary error with its exit code.
			first, err := fetch()
			if err != nil {
				return clientErr(err)
			}
			t0 := time.Now()
			if once {
				time.Sleep(interval)
				second, err := fetch()
				if err != nil {
					return clientErr(err)
				}
				for _, l := range renderTop(&first, &second, time.Since(t0)) {
					fmt.Fprintln(cmd.OutOrStdout(), l)
				}
				return nil
			}
			s, err := tcell.NewScreen()
			if err == nil {
				err = s.Init()
			}
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("top needs a terminal (%v); use --once to print one view", err)}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runTop(ctx, s, fetch, interval, topSample{st: first, at: t0})
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "time between refreshes")
	cmd.Flags().BoolVar(&once, "once", false, "print one view to stdout and exit (no terminal needed)")
	return cmd
}

// topSample is one status answer and when it arrived.
type topSample struct {
	st  api.Status
	at  time.Time
	err error
}

// runTop shows the view on s, an initialised screen, refreshing every
// interval until q, Esc, Ctrl-C or ctx ends; it finalises s. first is a
// sample already taken. A failed refresh is shown on the last line and
// retried at the next tick.
func runTop(ctx context.Context, s tcell.Screen, fetch func() (api.Status, error), interval time.Duration, first topSample) error {
	defer s.Fini()
	events := make(chan tcell.Event, 16)
	quit := make(chan struct{})
	go s.ChannelEvents(events, quit)
	defer close(quit)

	// At most one fetch is in flight, so the buffered channel never
	// blocks it, even after runTop returned.
	samples := make(chan topSample, 1)
	poll := func() {
		st, err := fetch()
		samples <- topSample{st: st, at: time.Now(), err: err}
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()

	prev, cur := (*topSample)(nil), &first
	lines := renderTop(nil, &cur.st, 0)
	msg := ""
	inflight := false
	s.HideCursor()
	drawTop(s, lines, msg)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			switch ev := ev.(type) {
			case *tcell.EventKey:
				if ev.Key() == tcell.KeyCtrlC || ev.Key() == tcell.KeyEscape ||
					ev.Key() == tcell.KeyRune && (ev.Rune() == 'q' || ev.Rune() == 'Q') {
					return nil
				}
			case *tcell.EventResize:
				s.Sync()
				drawTop(s, lines, msg)
			}
		case <-ticker.C:
			if !inflight {
				inflight = true
				go poll()
			}
		case smp := <-samples:
			inflight = false
			if smp.err != nil {
				msg = "status: " + smp.err.Error()
			} else {
				prev, cur = cur, &smp
				msg = ""
				lines = renderTop(&prev.st, &cur.st, cur.at.Sub(prev.at))
			}
			drawTop(s, lines, msg)
		}
	}
}

// drawTop puts lines on the screen, the title reversed and the column
// headers bold, and msg (or the key help) on the last row.
func drawTop(s tcell.Screen, lines []string, msg string) {
	s.Clear()
	_, h := s.Size()
	for y, l := range lines {
		if y >= h-1 {
			break
		}
		st := tcell.StyleDefault
		switch y {
		case 0:
			st = st.Reverse(true)
		case 2:
			st = st.Bold(true)
		}
		s.PutStrStyled(0, y, l, st)
	}
	if msg == "" {
		msg = "q quit"
	}
	s.PutStrStyled(0, h-1, msg, tcell.StyleDefault.Dim(true))
	s.Show()
}

// Columns of the view. PORT is wide enough for any interface name (15).
const topRowFmt = "%-15s %-7s %-6s %-11s %9s %9s %11s %11s  %s"

// renderTop returns the lines of one view of cur: rates are the counter
// differences from prev over dt. With prev nil or dt not positive the rates
// are "-". A port absent from prev (or quarantined anew since) has no rates
// yet. Ports come busiest first (frames per second both ways, passed and
// dropped), then by name. Under each direction, every class that has seen a
// frame gets a row, with its drop reasons by rate.
func renderTop(prev, cur *api.Status, dt time.Duration) []string {
	n := len(cur.Quarantines)
	title := fmt.Sprintf("shaperd top  %d quarantined %s  ", n, plural(n, "port", "ports"))
	if dt > 0 && prev != nil {
		title += fmt.Sprintf("rates over %.1fs  ", dt.Seconds())
	}
	title += fmt.Sprintf("daemon %s pid %d", cur.Daemon.Version, cur.Daemon.PID)
	lines := []string{title, ""}
	lines = append(lines, strings.TrimRight(fmt.Sprintf(topRowFmt, "PORT", "STATE", "STAGE", "DIR/CLASS", "PASS pps", "DROP pps", "PASS bit/s", "DROP bit/s", "LIMIT / DROPS"), " "))
	if n == 0 {
		return append(lines, "", "no quarantined ports")
	}
	sec := dt.Seconds()
	if prev == nil || sec <= 0 {
		sec = 0
	}
	before := map[string]*api.Quarantine{}
	if prev != nil {
		for i := range prev.Quarantines {
			before[prev.Quarantines[i].Port] = &prev.Quarantines[i]
		}
	}
	type portView struct {
		q        *api.Quarantine
		from, to dirRates
	}
	views := make([]portView, 0, n)
	for i := range cur.Quarantines {
		q := &cur.Quarantines[i]
		p := before[q.Port]
		if p != nil && !p.Since.Equal(q.Since) {
			p = nil // quarantined anew: the counters started again
		}
		v := portView{q: q}
		if p != nil && sec > 0 {
			v.from = ratesOf(&q.Directions.FromVM, &p.Directions.FromVM, sec)
			v.to = ratesOf(&q.Directions.ToVM, &p.Directions.ToVM, sec)
		}
		views = append(views, v)
	}
	sort.SliceStable(views, func(i, j int) bool {
		a, b := views[i].from.total()+views[i].to.total(), views[j].from.total()+views[j].to.total()
		if a != b {
			return a > b
		}
		return views[i].q.Port < views[j].q.Port
	})
	for k, v := range views {
		if k > 0 {
			lines = append(lines, "")
		}
		port, state, stage := v.q.Port, string(v.q.State), stageOf(v.q)
		for _, d := range []struct {
			name string
			dir  *api.Direction
			r    dirRates
		}{{"from_vm", &v.q.Directions.FromVM, v.from}, {"to_vm", &v.q.Directions.ToVM, v.to}} {
			note := "limit " + limitText(d.dir.Limits)
			if d.name == "from_vm" && v.q.Expires != nil {
				note = "pending until " + v.q.Expires.UTC().Format("2006-01-02 15:04:05Z")
			}
			lines = append(lines, row(port, state, stage, d.name, d.r.valid, d.r.all, note))
			port, state, stage = "", "", ""
			for _, class := range classOrder(d.dir.Classes) {
				cs := d.dir.Classes[class]
				if cs.PassedPackets+cs.DroppedPackets == 0 {
					continue
				}
				cr := d.r.classes[class]
				lines = append(lines, row("", "", "", "  "+class, d.r.valid, cr.rates, reasonText(cr.reasons)))
			}
		}
	}
	return lines
}

// stageOf is a quarantine's stage: manual, stage1..3 or probation.
func stageOf(q *api.Quarantine) string {
	if q.Stage == "" {
		return "manual"
	}
	return string(q.Stage)
}

func row(port, state, stage, dir string, valid bool, r rates, note string) string {
	cells := [4]string{"-", "-", "-", "-"}
	if valid {
		cells = [4]string{si(r.passPPS), si(r.dropPPS), si(r.passBPS), si(r.dropBPS)}
	}
	return strings.TrimRight(fmt.Sprintf(topRowFmt, port, state, stage, dir, cells[0], cells[1], cells[2], cells[3], note), " ")
}

// rates are per second: packets, and bits (not bytes).
type rates struct {
	passPPS, dropPPS, passBPS, dropBPS float64
}

type classRates struct {
	rates
	reasons map[string]float64 // drops per second by reason
}

type dirRates struct {
	valid   bool // false: no earlier sample to compare with
	all     rates
	classes map[string]classRates
}

func (d dirRates) total() float64 { return d.all.passPPS + d.all.dropPPS }

// perSec is the rate of a counter that went from a to b in sec seconds. A
// counter that went back (a write failure moves a frame from passed to
// dropped after the fact) counts as 0.
func perSec(b, a uint64, sec float64) float64 {
	if b <= a {
		return 0
	}
	return float64(b-a) / sec
}

func ratesOf(cur, prev *api.Direction, sec float64) dirRates {
	d := dirRates{valid: true, classes: map[string]classRates{}}
	for class, c := range cur.Classes {
		p := prev.Classes[class]
		cr := classRates{rates: rates{
			passPPS: perSec(c.PassedPackets, p.PassedPackets, sec),
			dropPPS: perSec(c.DroppedPackets, p.DroppedPackets, sec),
			passBPS: 8 * perSec(c.PassedBytes, p.PassedBytes, sec),
			dropBPS: 8 * perSec(c.DroppedBytes, p.DroppedBytes, sec),
		}}
		for reason, v := range c.Drops {
			if r := perSec(v, p.Drops[reason], sec); r > 0 {
				if cr.reasons == nil {
					cr.reasons = map[string]float64{}
				}
				cr.reasons[reason] = r
			}
		}
		d.classes[class] = cr
		d.all.passPPS += cr.passPPS
		d.all.dropPPS += cr.dropPPS
		d.all.passBPS += cr.passBPS
		d.all.dropBPS += cr.dropBPS
	}
	return d
}

// classOrder lists the classes in classify's order, then any unknown to
// this build by name.
func classOrder(m map[string]api.ClassStats) []string {
	var out []string
	for c := classify.Class(0); c < classify.NumClasses; c++ {
		if _, ok := m[c.String()]; ok {
			out = append(out, c.String())
		}
	}
	var rest []string
	for k := range m {
		if !slices.Contains(out, k) {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// reasonText lists drop reasons, the most frequent first.
func reasonText(r map[string]float64) string {
	keys := make([]string, 0, len(r))
	for k := range r {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if r[keys[i]] != r[keys[j]] {
			return r[keys[i]] > r[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + " " + si(r[k])
	}
	return strings.Join(parts, ", ")
}

func limitText(l api.Limits) string {
	var parts []string
	if l.PPS != nil {
		parts = append(parts, strconv.FormatFloat(*l.PPS, 'f', -1, 64)+" pps")
	}
	if l.BitsPerSecond != nil {
		parts = append(parts, si(float64(*l.BitsPerSecond))+" bit/s")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// si formats v with an SI prefix and three significant digits: 0, 7.5, 12,
// 5.00k, 39.5k, 395k, 10.0M.
func si(v float64) string {
	if v <= 0 || math.IsNaN(v) {
		return "0"
	}
	const prefixes = "kMGTP"
	i := -1
	for v >= 999.5 && i < len(prefixes)-1 {
		v /= 1000
		i++
	}
	if i < 0 {
		if v < 9.95 && v != math.Trunc(v) {
			return fmt.Sprintf("%.1f", v)
		}
		return fmt.Sprintf("%.0f", v)
	}
	p := prefixes[i : i+1]
	switch {
	case v < 9.995:
		return fmt.Sprintf("%.2f%s", v, p)
	case v < 99.95:
		return fmt.Sprintf("%.1f%s", v, p)
	default:
		return fmt.Sprintf("%.0f%s", v, p)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
