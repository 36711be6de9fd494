package forward

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/songgao/water"
)

// OpenTap attaches to the existing persistent tap named name and returns it as
// a Device. Closing the Device detaches from the tap and leaves it in place
// (it keeps its persist flag: water clears the flag unless asked to keep it).
func OpenTap(name string) (Device, error) {
	ifce, err := water.New(water.Config{
		DeviceType: water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{
			Name:    name,
			Persist: true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("forward: open tap %s: %w", name, err)
	}
	return ifce, nil
}

// isClosed reports whether err says the device was closed under a reader or
// writer, which is how Close stops the loops.
func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, fs.ErrClosed)
}
