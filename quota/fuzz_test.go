package quota

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/shaperd/shaperd/internal/fuzzcorpus"
	"github.com/shaperd/shaperd/statefile"
)

// FuzzReadSnapshot feeds arbitrary bytes to the snapshot file reader, as
// they are and with their checksum made right (the fuzzer cannot forge
// SHA-256, so a mutated body would otherwise never get past it). Reading
// never panics and fails only with ErrCorruptSnapshot; a snapshot that
// restores holds and reports exactly the samples it was read with (see
// checkRestoresAsRead). The seed corpus is in testdata/fuzz/FuzzReadSnapshot
// (see TestFuzzCorpus).
func FuzzReadSnapshot(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		inputs := [][]byte{data}
		if sealed, ok := reseal(data); ok {
			inputs = append(inputs, sealed)
		}
		for _, in := range inputs {
			s, err := decode("fuzz", in)
			if err != nil {
				if !errors.Is(err, ErrCorruptSnapshot) {
					t.Fatalf("decode: %v does not wrap ErrCorruptSnapshot", err)
				}
				continue
			}
			checkRestoresAsRead(t, s)
		}
	})
}

// reseal returns data with the checksum of its body, if it is an envelope
// with a body that is JSON.
func reseal(data []byte) ([]byte, bool) {
	var env struct {
		Body json.RawMessage `json:"body"`
	}
	if json.Unmarshal(data, &env) != nil || len(env.Body) == 0 {
		return nil, false
	}
	// Sealed as the store writes it (json.Marshal compacts the body).
	sealed, err := statefile.Encode(env.Body, false)
	if err != nil {
		return nil, false
	}
	return sealed, true
}

// checkRestoresAsRead restores s into an Account of each test config that
// takes it, at an instant inside every lane's open interval, so that no
// interval closes and the crash rule adds no sample. The Account must then
// hold s's period, samples and history in every billed direction, and
// report s's samples: the closed intervals of the first direction's period,
// in order, each with the largest bytes any direction holds for it.
func checkRestoresAsRead(t *testing.T, s Snapshot) {
	t.Helper()
	for _, cfg := range []Config{small(), smallMax()} {
		b, err := New(cfg, t0)
		if err != nil {
			t.Fatal(err)
		}
		now := t0
		for i, l := range s.Lanes {
			if end := time.Unix(0, openEnd(l, s.Interval)-1); i == 0 || end.Before(now) {
				now = end
			}
		}
		if err := b.Restore(s, now); err != nil {
			if !errors.Is(err, ErrSnapshotMismatch) {
				t.Fatalf("Restore: %v does not wrap ErrSnapshotMismatch", err)
			}
			continue
		}
		held := b.Snapshot(now)
		bytesAt := map[int64]int64{} // interval start (ns) → the largest bytes held
		for i, l := range s.Lanes {
			h := held.Lanes[i]
			if !h.PeriodStart.Equal(l.PeriodStart) || !slices.Equal(h.Samples, l.Samples) || !slices.Equal(h.History, l.History) {
				t.Fatalf("%s: restored at %s, lane %s holds period %s, samples %v, history %v; read: %s, %v, %v",
					cfg.Direction, now, l.Name, h.PeriodStart, h.Samples, h.History, l.PeriodStart, l.Samples, l.History)
			}
			for j, v := range l.Samples {
				start := l.PeriodStart.UnixNano() + int64(j)*int64(s.Interval)
				bytesAt[start] = max(bytesAt[start], v)
			}
		}
		r := b.Report(now)
		first := s.Lanes[0]
		ok := len(r.Samples) == len(first.Samples)
		for i, smp := range r.Samples {
			start := first.PeriodStart.UnixNano() + int64(i)*int64(s.Interval)
			ok = ok && smp.Start.UnixNano() == start && smp.BPS == BytesToBPS(bytesAt[start], s.Interval)
		}
		if !ok {
			t.Fatalf("%s: restored at %s, reports samples %v; read: %+v", cfg.Direction, now, r.Samples, s.Lanes)
		}
	}
}

// FuzzRestore: a snapshot that passed its checksum but holds anything at
// all is refused or restored, never a panic, and the Account stays sound.
// The seed corpus is in testdata/fuzz/FuzzRestore (see TestFuzzCorpus).
func FuzzRestore(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte, later int64) {
		var s Snapshot
		if json.Unmarshal(body, &s) != nil {
			return
		}
		b, _ := New(small(), t0)
		now := t0.Add(time.Duration(later % 1e18)) // within 31 years
		if b.Restore(s, now) != nil {
			return
		}
		b.Admit(ToVM, 100, false, now, 0)
		b.Tick(now.Add(time.Second))
		if r := b.Report(now.Add(time.Second)); r.BurstIntervalsLeft > 5 {
			t.Fatalf("more burst intervals than free: %+v", r)
		}
	})
}

// snapshotFile returns s as WriteFile writes it.
func snapshotFile(t testing.TB, s Snapshot) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s.json")
	if err := WriteFile(p, s); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readSnapshotSeeds are FuzzReadSnapshot's seeds: snapshot files of one
// and two billed directions (the latter after a period rolled over, with
// history; and with its directions a period apart), one taken at a clean
// stop, and envelopes without a snapshot.
func readSnapshotSeeds(t testing.TB) map[string][]any {
	a := mustNew(t, small(), t0)
	a.Admit(ToVM, 700, false, at(0.5), 0)
	toVM := a.Snapshot(at(2))
	clean := toVM
	clean.Clean = &CleanStop{Ports: []PortMeter{{Name: "vm-1", Ifindex: 5, FromVMBytes: 123456, ToVMBytes: 654321}}}

	m := mustNew(t, smallMax(), t0)
	for s := range 150 {
		m.Admit(FromVM, 100+(s*13)%400, false, at(float64(s)+0.5), 0)
		m.Admit(ToVM, 200+(s*7)%600, false, at(float64(s)+0.5), 0)
	}
	both := m.Snapshot(at(150.5))
	// to_vm a period behind from_vm, both with samples: Report combined
	// them index by index, across the two periods.
	apart := both
	apart.Lanes = slices.Clone(both.Lanes)
	apart.Lanes[1].PeriodStart = t0
	return map[string][]any{
		"to-vm":                    {snapshotFile(t, toVM)},
		"to-vm-clean":              {snapshotFile(t, clean)},
		"max-second-period":        {snapshotFile(t, both)},
		"max-lanes-a-period-apart": {snapshotFile(t, apart)},
		"empty-envelope":           {[]byte(`{"sha256":"","body":{}}`)},
		"empty-object":             {[]byte(`{}`)},
	}
}

// restoreSeeds are FuzzRestore's seeds: a snapshot body and how long
// after t0 it is restored.
func restoreSeeds(t testing.TB) map[string][]any {
	a := mustNew(t, small(), t0)
	a.Admit(ToVM, 700, false, at(0.5), 0)
	good, err := json.Marshal(a.Snapshot(at(2)))
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]any{
		"to-vm": {good, int64(3e9)},
		"sample-above-max": {[]byte(`{"version":1,"tenant":"t","interval_ns":1000000000,"lanes":[{"name":"to_vm","period_start":"2025-01-01T00:00:00Z","samples":[99999999999],"normal":-1}]}`),
			int64(0)},
		"burst-counts-at-max": {[]byte(`{"version":1,"tenant":"t","interval_ns":1000000000,"lanes":[{"name":"to_vm","period_start":"2025-01-01T00:00:00Z","burst":true,"normal":9223372036854775807,"bypass":9223372036854775807}]}`),
			int64(5e9)},
	}
}

// restoreCrashers are inputs the fuzzer found, kept in
// testdata/fuzz/FuzzRestore under the names it gave them.
var restoreCrashers = map[string][]any{
	// Found when FuzzRestore was written (6e9498b): a lane without a
	// period start (the key mangled).
	"3361ab7b7719a701": {[]byte(`{"version":1,"tenant":"t","interval_ns":1000000000,"lanes":[{"name":"to_vm","eriod_start":"2025-01-01T00:00:00Z","burst":true,"normal":9223372036854775807,"bypass":9223372036854775807}]}`),
		int64(5000000067)},
}

// TestFuzzCorpus checks that the checked-in corpora are exactly the seeds
// (and crashers) above: every file a valid corpus entry of its fuzz
// target, with an entry's values, none missing. With
// SHAPERD_WRITE_CORPUS=1 it (re)writes the seeds first.
func TestFuzzCorpus(t *testing.T) {
	for _, tc := range []struct {
		target   string
		seeds    map[string][]any
		crashers map[string][]any
		args     []any
	}{
		{"FuzzReadSnapshot", readSnapshotSeeds(t), nil, []any{[]byte(nil)}},
		{"FuzzRestore", restoreSeeds(t), restoreCrashers, []any{[]byte(nil), int64(0)}},
	} {
		t.Run(tc.target, func(t *testing.T) {
			dir := filepath.Join("testdata", "fuzz", tc.target)
			if os.Getenv("SHAPERD_WRITE_CORPUS") == "1" {
				if err := fuzzcorpus.Write(dir, tc.seeds); err != nil {
					t.Fatal(err)
				}
			}
			entries := maps.Clone(tc.seeds)
			maps.Copy(entries, tc.crashers)
			fuzzcorpus.Check(t, dir, entries, tc.args...)
		})
	}
}

// The seeds hold what they are meant to: the snapshot files restore (so
// the property of FuzzReadSnapshot is checked on them), two billed
// directions with history.
func TestReadSnapshotSeeds(t *testing.T) {
	seeds := readSnapshotSeeds(t)
	for _, name := range []string{"to-vm", "to-vm-clean", "max-second-period", "max-lanes-a-period-apart"} {
		s, err := decode(name, seeds[name][0].([]byte))
		if err != nil {
			t.Fatal(err)
		}
		cfg := small()
		if len(s.Lanes) == 2 {
			cfg = smallMax()
			if len(s.Lanes[1].History) == 0 || len(s.Lanes[1].Samples) == 0 {
				t.Errorf("%s: no history or no samples: %+v", name, s.Lanes)
			}
		}
		if err := mustNew(t, cfg, t0).Restore(s, at(200)); err != nil {
			t.Errorf("%s does not restore: %v", name, err)
		}
		checkRestoresAsRead(t, s)
	}
}
