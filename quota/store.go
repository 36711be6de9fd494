package quota

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shaperd/shaperd/statefile"
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
	if err := statefile.Write(path, s, false); err != nil {
		return fmt.Errorf("quota: %w", err)
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
	var s Snapshot
	if err := statefile.Decode(data, &s); err != nil {
		return Snapshot{}, fmt.Errorf("%w: %s: %s", ErrCorruptSnapshot, path, statefile.Reason(err))
	}
	if s.Version != SnapshotVersion {
		return Snapshot{}, fmt.Errorf("%w: %s: version %d, want %d", ErrCorruptSnapshot, path, s.Version, SnapshotVersion)
	}
	return s, nil
}
