package daemon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/ladder"
)

// StateFile is the name of the daemon's intent file in its state directory.
const StateFile = "state.json"

// The state file holds the daemon's own intent: which ports are
// quarantined, with what, since when, and which are pending. It is small,
// checksummed, and replaced atomically (write, fsync, rename, fsync the
// directory), so a kill -9 at any instant leaves either the old or the new
// file. The switch and the kernel stay the ground truth for what is spliced.
type stateBody struct {
	Version     int          `json:"version"`
	Written     time.Time    `json:"written"`
	Quarantines []savedEntry `json:"quarantines"`
}

type savedEntry struct {
	Port    string    `json:"port"`
	State   string    `json:"state"` // active, pending, releasing
	Backend string    `json:"backend,omitempty"`
	Spec    Spec      `json:"spec"`
	Since   time.Time `json:"since"`
	// Expires is when a pending quarantine is dropped.
	Expires time.Time `json:"expires,omitzero"`
	// Ladder is the position of the quarantine's ladder, if it has one.
	Ladder *ladder.State `json:"ladder,omitempty"`
}

type stateEnvelope struct {
	SHA256 string          `json:"sha256"`
	Body   json.RawMessage `json:"body"`
}

// ErrCorruptState means the state file exists but cannot be trusted; the
// daemon rebuilds from the plumbing.
var ErrCorruptState = errors.New("state file is corrupt")

// ErrNoState means there is no state file (a first start, or it was
// deleted); the daemon rebuilds from the plumbing.
var ErrNoState = errors.New("no state file")

// loadState reads the state file in dir.
func loadState(dir string) (map[string]savedEntry, error) {
	out := map[string]savedEntry{}
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return out, ErrNoState
	}
	if err != nil {
		return out, err
	}
	var env stateEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		return out, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	// The body was hashed as json.Marshal wrote it; the file indents it.
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Body); err != nil {
		return out, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return out, fmt.Errorf("%w: checksum mismatch", ErrCorruptState)
	}
	var body stateBody
	if err := json.Unmarshal(env.Body, &body); err != nil {
		return out, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	if body.Version != 1 {
		return out, fmt.Errorf("%w: version %d, want 1", ErrCorruptState, body.Version)
	}
	for _, e := range body.Quarantines {
		if checkPortName(e.Port) != nil {
			return map[string]savedEntry{}, fmt.Errorf("%w: bad port %q", ErrCorruptState, e.Port)
		}
		if err := e.Spec.Validate(); err != nil {
			return map[string]savedEntry{}, fmt.Errorf("%w: port %s: %v", ErrCorruptState, e.Port, err)
		}
		out[e.Port] = e
	}
	return out, nil
}

// saveState replaces the state file in dir atomically.
func saveState(dir string, entries []savedEntry, now time.Time) error {
	slices.SortFunc(entries, func(a, b savedEntry) int { return strings.Compare(a.Port, b.Port) })
	body, err := json.Marshal(stateBody{Version: 1, Written: now.UTC(), Quarantines: entries})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	data, err := json.MarshalIndent(stateEnvelope{SHA256: hex.EncodeToString(sum[:]), Body: body}, "", " ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, StateFile), append(data, '\n'))
}

// writeAtomic replaces path with data: a temporary file in the same
// directory, fsync, rename, fsync of the directory; a crash leaves the old
// file or the new one, whole.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// setAside renames an untrusted state file so it can be inspected later and
// is not read again.
func setAside(dir string, now time.Time) (string, error) {
	to := filepath.Join(dir, fmt.Sprintf("%s.corrupt-%s", StateFile, now.UTC().Format("20060102T150405Z")))
	return to, os.Rename(filepath.Join(dir, StateFile), to)
}

// Intent is s in the command line's words, only what differs from a new
// spec: "pps=5000 bps=16mbit to-vm-pps=500 fail=open". It is kept on the
// plumbing (see splice.IntentRecorder) so a daemon without its state file
// recovers the limits; ParseIntent reverses it.
func (s Spec) Intent() string {
	def := NewSpec()
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+v) }
	for _, d := range []struct {
		prefix   string
		got, def DirSpec
	}{{"", s.FromVM, def.FromVM}, {"to-vm-", s.ToVM, def.ToVM}} {
		g, p := d.got, d.prefix
		if g.PPS != nil {
			add(p+"pps", strconv.FormatFloat(*g.PPS, 'g', -1, 64))
		}
		if g.BPS != nil {
			add(p+"bps", g.BPS.String())
		}
		if g.Burst != nil {
			add(p+"burst", strconv.Itoa(*g.Burst))
		}
		if g.BurstBytes != nil {
			add(p+"burst-bytes", g.BurstBytes.String())
		}
		if g.Mode != "" {
			add(p+"mode", g.Mode)
		}
		if g.Delay != nil {
			add(p+"delay", g.Delay.String())
		}
		if g.QueueBytes != nil {
			add(p+"queue-bytes", g.QueueBytes.String())
		}
		if g.QueueTime != nil {
			add(p+"queue-time", g.QueueTime.String())
		}
		if !eqF(g.BypassPPS, d.def.BypassPPS) {
			add(p+"bypass-pps", fmtF(g.BypassPPS))
		}
		if !eqR(g.BypassBPS, d.def.BypassBPS) {
			v := "none"
			if g.BypassBPS != nil {
				v = g.BypassBPS.String()
			}
			add(p+"bypass-bps", v)
		}
		if !eqF(g.ControlPPS, d.def.ControlPPS) {
			add(p+"control-pps", fmtF(g.ControlPPS))
		}
		if g.SynPPS != nil {
			add(p+"syn-pps", fmtF(g.SynPPS))
		}
		if g.UDPPPS != nil {
			add(p+"udp-pps", fmtF(g.UDPPPS))
		}
		if g.ICMPBPS != nil {
			add(p+"icmp-bps", g.ICMPBPS.String())
		}
		if g.MaxFrame != nil {
			add(p+"max-frame", g.MaxFrame.String())
		}
		if g.BypassConnPerSource != nil {
			add(p+"bypass-conn-per-source", strconv.Itoa(*g.BypassConnPerSource))
		}
		if g.Backstop != nil {
			add(p+"backstop", fmtF(g.Backstop))
		}
		if g.BackstopOff {
			add(p+"backstop", "none")
		}
		if len(g.Classes) > 0 {
			// Rules have spaces: escaped, one rule per line.
			add(p+"class", url.QueryEscape(strings.Join(g.Classes, "\n")))
		}
	}
	if !slices.Equal(s.BypassPorts, def.BypassPorts) {
		var ps []string
		for _, p := range s.BypassPorts {
			ps = append(ps, strconv.Itoa(int(p)))
		}
		v := strings.Join(ps, ",")
		if v == "" {
			v = "none"
		}
		add("bypass", v)
	}
	if s.BypassOutbound {
		add("bypass-outbound", "true")
	}
	if s.Fail != "" {
		add("fail", s.Fail)
	}
	if s.Guard {
		add("guard", "true")
		if s.GuardMAC != "" {
			add("guard-mac", s.GuardMAC)
		}
		if s.GuardIP != "" {
			add("guard-ip", s.GuardIP)
		}
	}
	if s.Profile != "" {
		add("profile", s.Profile)
	}
	if s.Origin != "" {
		add("origin", s.Origin)
	}
	if s.Stage != "" {
		add("stage", s.Stage)
	}
	return strings.Join(parts, " ")
}

// ParseIntent turns an Intent back into a Spec.
func ParseIntent(intent string) (Spec, error) {
	req := api.LimitRequest{}
	for _, f := range strings.Fields(intent) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Spec{}, fmt.Errorf("intent %q: %q is not key=value", intent, f)
		}
		if k == "class" || k == "to-vm-class" {
			u, err := url.QueryUnescape(v)
			if err != nil {
				return Spec{}, fmt.Errorf("intent %q: %s: %v", intent, k, err)
			}
			v = u
		}
		req[k] = v
	}
	if !HasLimitFlag(req) {
		return Spec{}, fmt.Errorf("intent %q names no limit", intent)
	}
	meta := map[string]string{}
	for _, k := range []string{"profile", "origin", "stage"} {
		if v, ok := req[k]; ok {
			meta[k] = v
			delete(req, k)
		}
	}
	s, err := NewSpec().Apply(req, false)
	if err != nil {
		return s, err
	}
	s.Profile, s.Origin, s.Stage = meta["profile"], meta["origin"], meta["stage"]
	return s, nil
}

func fmtF(p *float64) string {
	if p == nil {
		return "none"
	}
	return strconv.FormatFloat(*p, 'g', -1, 64)
}

func eqF(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func eqR[T comparable](a, b *T) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
