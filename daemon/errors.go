package daemon

import (
	"errors"
	"fmt"

	"github.com/shaperd/shaperd/api"
)

// ErrUsage marks an error in a request: nothing was changed, and the caller
// should fix the request (the command line exits 2). It is api.ErrUsage:
// requests are parsed at the edge, by package api.
var ErrUsage = api.ErrUsage

var usagef = api.Usagef

// ErrNotFound means the request names a port that is not quarantined, or a
// tenant that does not exist; nothing changed. See status or quota list.
var ErrNotFound = errors.New("not found")

func notFoundf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotFound, fmt.Sprintf(format, args...))
}
