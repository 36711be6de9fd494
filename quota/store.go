package quota

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrCorruptSnapshot means a snapshot file exists but cannot be trusted
// (truncated, bad checksum, malformed). The caller should set it aside,
// report it, and start the tenant afresh or from another copy.
var ErrCorruptSnapshot = errors.New("quota snapshot file is corrupt")

// ErrNoSnapshot means there is no snapshot file: a new tenant.
var ErrNoSnapshot = errors.New("no quota snapshot file")

// Store keeps one snapshot file per tenant in a directory:
// DIR/quota-TENANT.json. A file is checksummed (SHA-256 of its body) and
// replaced atomically: written to a temporary file, fsynced, renamed over
// the old one, and the directory fsynced, so a crash at any instant leaves
// the old or the new file, whole. Methods are safe for concurrent use on
// different tenants; the caller serialises saves of one tenant.
type Store struct {
	Dir string
}

// Path returns the file that holds tenant's snapshot.
func (st Store) Path(tenant string) string {
	return filepath.Join(st.Dir, "quota-"+tenant+".json")
}

type envelope struct {
	SHA256 string          `json:"sha256"`
	Body   json.RawMessage `json:"body"`
}

// Save writes s as its tenant's file, atomically.
func (st Store) Save(s Snapshot) error {
	if err := ValidTenant(s.Tenant); err != nil {
		return err
	}
	return WriteFile(st.Path(s.Tenant), s)
}

// Load reads tenant's snapshot. A missing file is ErrNoSnapshot; a damaged
// one wraps ErrCorruptSnapshot.
func (st Store) Load(tenant string) (Snapshot, error) {
	if err := ValidTenant(tenant); err != nil {
		return Snapshot{}, err
	}
	s, err := ReadFile(st.Path(tenant))
	if err == nil && s.Tenant != tenant {
		return Snapshot{}, fmt.Errorf("%w: %s holds tenant %q", ErrCorruptSnapshot, st.Path(tenant), s.Tenant)
	}
	return s, err
}

// Remove deletes tenant's file; a missing file is not an error.
func (st Store) Remove(tenant string) error {
	if err := ValidTenant(tenant); err != nil {
		return err
	}
	err := os.Remove(st.Path(tenant))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// WriteFile replaces path with s atomically (temporary file in the same
// directory, fsync, rename, fsync of the directory).
func WriteFile(path string, s Snapshot) error {
	body, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("quota: encode snapshot: %w", err)
	}
	sum := sha256.Sum256(body)
	data, err := json.Marshal(envelope{SHA256: hex.EncodeToString(sum[:]), Body: body})
	if err != nil {
		return fmt.Errorf("quota: encode snapshot: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("quota: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("quota: fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("quota: fsync %s: %w", dir, err)
	}
	return nil
}

// ReadFile reads and verifies a snapshot file. It never panics on bad
// input: damage is reported as an error wrapping ErrCorruptSnapshot.
func ReadFile(path string) (Snapshot, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Snapshot{}, fmt.Errorf("%w: %s", ErrNoSnapshot, path)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("quota: %w", err)
	}
	return decode(path, data)
}

func decode(path string, data []byte) (Snapshot, error) {
	corrupt := func(format string, args ...any) (Snapshot, error) {
		return Snapshot{}, fmt.Errorf("%w: %s: %s", ErrCorruptSnapshot, path, fmt.Sprintf(format, args...))
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return corrupt("%v", err)
	}
	if len(strings.TrimSpace(string(data[dec.InputOffset():]))) != 0 {
		return corrupt("trailing data after the snapshot")
	}
	if len(env.Body) == 0 {
		return corrupt("no body")
	}
	sum := sha256.Sum256(env.Body)
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return corrupt("checksum mismatch")
	}
	var s Snapshot
	if err := json.Unmarshal(env.Body, &s); err != nil {
		return corrupt("%v", err)
	}
	if s.Version != SnapshotVersion {
		return corrupt("version %d, want %d", s.Version, SnapshotVersion)
	}
	return s, nil
}
