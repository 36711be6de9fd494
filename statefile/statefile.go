// Package statefile reads and writes shaperd's small state files: a JSON
// body sealed with its SHA-256, replaced atomically (a temporary file in the
// same directory, fsync, rename, fsync of the directory), so that a kill -9
// at any instant leaves the old file or the new one, whole, and a file
// damaged on disk is told apart from a good one.
//
// The file is {"sha256": HEX, "body": BODY}. The checksum is of the body as
// json.Compact writes it, so a body indented for people checks the same.
package statefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/shaperd/shaperd/internal/smallfile"
)

// ErrCorrupt means a file exists but cannot be trusted: truncated,
// malformed, or its checksum does not match. The caller should set it
// aside and rebuild what it held from elsewhere. Decode's errors are a
// *CorruptError, which matches it.
var ErrCorrupt = errors.New("corrupt")

// CorruptError says why a file cannot be trusted.
type CorruptError struct{ Reason string }

func (e *CorruptError) Error() string        { return "corrupt: " + e.Reason }
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Reason returns why err says a file is corrupt, or err's text.
func Reason(err error) string {
	var ce *CorruptError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return err.Error()
}

func corrupt(format string, args ...any) error {
	return &CorruptError{Reason: fmt.Sprintf(format, args...)}
}

type envelope struct {
	SHA256 string          `json:"sha256"`
	Body   json.RawMessage `json:"body"`
}

// Write replaces path with v, JSON-encoded and sealed with its checksum;
// with indent the file is indented for people. The directory is made
// (0700) if needed.
func Write(path string, v any, indent bool) error {
	data, err := Encode(v, indent)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	return WriteAtomic(path, data)
}

// Encode is the file Write writes for v: v's JSON, sealed with the
// checksum of its compact form, and a final newline.
func Encode(v any, indent bool) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	env := envelope{SHA256: hex.EncodeToString(sum[:]), Body: body}
	var data []byte
	if indent {
		data, err = json.MarshalIndent(env, "", " ")
	} else {
		data, err = json.Marshal(env)
	}
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// MaxBytes bounds a state file: a tenant's month of 5-minute samples is
// about half a megabyte.
const MaxBytes = 16 << 20

// Read reads path and decodes its body into v once the seal checks. Only a
// regular file of at most MaxBytes is read; a symbolic link is not
// followed. A missing file wraps os.ErrNotExist; a damaged one wraps
// ErrCorrupt; anything else (a link, a FIFO, a device, a file too large)
// is an error of its own, which the caller should report, not take for
// damage.
func Read(path string, v any) error {
	data, err := smallfile.Read(path, MaxBytes, false)
	if err != nil {
		return err
	}
	return Decode(data, v)
}

// CheckDir refuses a state directory that another user could have written
// to: the directory, and each file in it, must be owned by the daemon's
// user and writable by no one else; a symbolic link is refused, not
// followed. A directory that does not exist yet passes (it is made 0700).
func CheckDir(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s is not a directory (%v); it is not followed", dir, fi.Mode().Type())
	}
	if err := trusted(dir, fi); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() {
			return fmt.Errorf("state file %s is not a regular file (%v); remove it", p, fi.Mode().Type())
		}
		if err := trusted(p, fi); err != nil {
			return err
		}
	}
	return nil
}

// trusted says whether fi (of path) is owned by the daemon's user and
// writable by no one else.
func trusted(path string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot tell its owner", path)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("%s is owned by uid %d, not the daemon's uid %d: refusing to trust it (chown %d %s, after checking what it holds)", path, st.Uid, uid, uid, path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by others (mode %04o): refusing to trust it (chmod go-w %s, after checking what it holds)", path, fi.Mode().Perm(), path)
	}
	return nil
}

// Decode checks data's seal and decodes its body into v: a damaged file
// wraps ErrCorrupt, and never panics.
func Decode(data []byte, v any) error {
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return corrupt("%v", err)
	}
	if len(bytes.TrimSpace(data[dec.InputOffset():])) != 0 {
		return corrupt("trailing data after the body")
	}
	if len(env.Body) == 0 {
		return corrupt("no body")
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Body); err != nil {
		return corrupt("%v", err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return corrupt("checksum mismatch")
	}
	if err := json.Unmarshal(env.Body, v); err != nil {
		return corrupt("%v", err)
	}
	return nil
}

// WriteAtomic replaces path with data: a temporary file in the same
// directory, fsync, rename, fsync of the directory; a crash leaves the old
// file or the new one, whole.
func WriteAtomic(path string, data []byte) error {
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
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
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
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
