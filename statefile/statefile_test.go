package statefile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type body struct {
	Version int      `json:"version"`
	Ports   []string `json:"ports"`
}

func TestWriteRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	for _, indent := range []bool{false, true} {
		p := filepath.Join(dir, "f.json")
		in := body{1, []string{"vm-1", "vm-2"}}
		if err := Write(p, in, indent); err != nil {
			t.Fatal(err)
		}
		var out body
		if err := Read(p, &out); err != nil || out.Version != 1 || strings.Join(out.Ports, ",") != "vm-1,vm-2" {
			t.Fatalf("indent %v: Read = %+v, %v", indent, out, err)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("directory: %v %v", fi.Mode(), err)
		}
	}
	if err := Read(filepath.Join(dir, "none.json"), &body{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// The files written before this package keep loading: the state file was
// indented, the tenants file and the quota snapshots compact.
func TestDecodeOldFiles(t *testing.T) {
	var b body
	compact := `{"sha256":"` + sumOf(`{"version":1,"ports":["vm-1"]}`) + `","body":{"version":1,"ports":["vm-1"]}}` + "\n"
	if err := Decode([]byte(compact), &b); err != nil || b.Ports[0] != "vm-1" {
		t.Fatalf("compact: %+v %v", b, err)
	}
	indented := "{\n \"sha256\": \"" + sumOf(`{"version":1,"ports":["vm-1"]}`) + "\",\n \"body\": {\n  \"version\": 1,\n  \"ports\": [\n   \"vm-1\"\n  ]\n }\n}\n"
	if err := Decode([]byte(indented), &b); err != nil {
		t.Fatalf("indented: %v", err)
	}
}

func TestDecodeCorrupt(t *testing.T) {
	good := `{"sha256":"` + sumOf(`{"version":1}`) + `","body":{"version":1}}`
	for name, data := range map[string]string{
		"empty":         "",
		"truncated":     good[:len(good)-5],
		"bad checksum":  strings.Replace(good, `"version":1}}`, `"version":2}}`, 1),
		"no body":       `{"sha256":"00"}`,
		"unknown field": `{"sha256":"00","body":{},"x":1}`,
		"trailing data": good + "{}",
		"body not JSON": `{"sha256":"00","body":nope}`,
		"wrong type":    `{"sha256":"` + sumOf(`{"version":"x"}`) + `","body":{"version":"x"}}`,
	} {
		if err := Decode([]byte(data), &body{}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

// sumOf is the seal of a compact body.
func sumOf(body string) string {
	sum := sha256.Sum256([]byte(body))
	return hex.EncodeToString(sum[:])
}

// A state directory someone else could write is refused, and so is a file
// in it that is a link, a FIFO, or writable by others.
func TestCheckDir(t *testing.T) {
	mk := func(t *testing.T) string {
		d := filepath.Join(t.TempDir(), "state")
		if err := Write(filepath.Join(d, "state.json"), body{Version: 1}, true); err != nil {
			t.Fatal(err)
		}
		return d
	}
	if err := CheckDir(filepath.Join(t.TempDir(), "none")); err != nil {
		t.Errorf("a directory not made yet: %v", err)
	}
	d := mk(t)
	if err := CheckDir(d); err != nil {
		t.Fatalf("the daemon's own directory: %v", err)
	}
	for name, meddle := range map[string]func(d string) error{
		"world-writable dir":  func(d string) error { return os.Chmod(d, 0o777) },
		"group-writable file": func(d string) error { return os.Chmod(filepath.Join(d, "state.json"), 0o620) },
		"file is a link": func(d string) error {
			p := filepath.Join(d, "state.json")
			os.Remove(p)
			return os.Symlink("/dev/zero", p)
		},
		"file is a FIFO": func(d string) error {
			p := filepath.Join(d, "state.json")
			os.Remove(p)
			return syscall.Mkfifo(p, 0o600)
		},
		"dir is a link": func(d string) error {
			real := d + ".real"
			if err := os.Rename(d, real); err != nil {
				return err
			}
			return os.Symlink(real, d)
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			if err := meddle(d); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := CheckDir(d); err == nil {
				t.Error("accepted")
			} else {
				t.Log(err)
			}
			if time.Since(start) > time.Second {
				t.Error("took over a second")
			}
		})
	}
}

// A file owned by another user is refused (needs root to make one).
func TestCheckDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a file to another user")
	}
	d := filepath.Join(t.TempDir(), "state")
	if err := Write(filepath.Join(d, "state.json"), body{Version: 1}, true); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(d, "state.json"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(d); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("a file of uid 65534: %v", err)
	}
}
