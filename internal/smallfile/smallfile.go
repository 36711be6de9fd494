// Package smallfile reads the small files the daemon trusts (its config,
// its state): only a regular file, and only up to a size, so that
// /dev/zero, a FIFO or a huge file cannot hang the daemon or exhaust its
// memory.
package smallfile

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotRegular means the path is not a regular file (a device, a FIFO, a
// directory, a socket, or a symbolic link where links are not followed).
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge means the file is larger than the caller allows.
var ErrTooLarge = errors.New("file too large")

// Read returns the content of the regular file at path, if it holds at
// most max bytes. With follow false a symbolic link is refused (not
// followed). A missing file wraps os.ErrNotExist.
func Read(path string, max int64, follow bool) ([]byte, error) {
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK // a FIFO must not block the open
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: %w (a symbolic link, which is not followed)", path, ErrNotRegular)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w (%v)", path, ErrNotRegular, fi.Mode().Type())
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s: %w: %d bytes, at most %d", path, ErrTooLarge, fi.Size(), max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s: %w: more than %d bytes", path, ErrTooLarge, max)
	}
	return data, nil
}
