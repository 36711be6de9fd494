package smallfile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	os.WriteFile(ok, []byte("hello"), 0o600)
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 11), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(ok, link)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(ok, 10, false); err != nil || string(b) != "hello" {
		t.Fatalf("regular: %q %v", b, err)
	}
	if b, err := Read(link, 10, true); err != nil || string(b) != "hello" {
		t.Fatalf("link followed: %q %v", b, err)
	}
	for _, c := range []struct {
		path   string
		follow bool
		want   error
	}{
		{big, false, ErrTooLarge},
		{link, false, ErrNotRegular},
		{fifo, false, ErrNotRegular},
		{dir, false, ErrNotRegular},
		{"/dev/zero", true, ErrNotRegular},
		{filepath.Join(dir, "none"), false, os.ErrNotExist},
	} {
		start := time.Now()
		if _, err := Read(c.path, 10, c.follow); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.path, err, c.want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s took %v", c.path, d)
		}
	}
}
