// Package fakedev provides an in-memory forward.Device for tests: frames
// injected with Inject are returned by Read; frames written are kept in order.
package fakedev

import (
	"errors"
	"os"
	"sync"
)

// Device is a fake frame device. Safe for concurrent use.
type Device struct {
	in     chan []byte
	mu     sync.Mutex
	out    [][]byte
	closed chan struct{}
	once   sync.Once
	// WriteErr, when set, is returned by every Write, for its first frame.
	WriteErr error
}

// New returns a Device whose read queue holds up to depth frames.
func New(depth int) *Device {
	return &Device{in: make(chan []byte, depth), closed: make(chan struct{})}
}

// Inject queues a copy of frame for Read; it reports false if the queue is full.
func (d *Device) Inject(frame []byte) bool {
	select {
	case d.in <- append([]byte(nil), frame...):
		return true
	default:
		return false
	}
}

// Read returns the next injected frames, as a tap without offloads does:
// it blocks until one arrives or Close, then takes those already queued, up
// to len(bufs), each at offset in its buffer, and zeroes the bytes before.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	put := func(i int, f []byte) {
		clear(bufs[i][:offset])
		sizes[i] = copy(bufs[i][offset:], f)
	}
	select {
	case f := <-d.in:
		put(0, f)
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n := 1
	for ; n < len(bufs); n++ {
		select {
		case f := <-d.in:
			put(n, f)
			continue
		default:
		}
		break
	}
	return n, nil
}

// Write records a copy of each frame (bufs[i][offset:]), in order. With
// WriteErr set it records nothing and returns WriteErr for the first frame.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	default:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.WriteErr != nil {
		return 0, d.WriteErr
	}
	for _, p := range bufs {
		d.out = append(d.out, append([]byte(nil), p[offset:]...))
	}
	return len(bufs), nil
}

// Written returns the frames written so far.
func (d *Device) Written() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]byte(nil), d.out...)
}

// Close unblocks readers; later calls return an error.
func (d *Device) Close() error {
	err := errors.New("fakedev: closed twice")
	d.once.Do(func() { close(d.closed); err = nil })
	return err
}
