// Package version says which shaperd this is: the version and commit that
// make build stamps into the binary (-ldflags -X), or, for a plain go
// build, the commit Go recorded from the checkout. Never "dev": a fleet
// rollout must be able to tell its binaries apart.
package version

import (
	"runtime"
	"runtime/debug"
)

// Set by make build (git describe --tags --always --dirty, and the full
// commit hash).
var (
	version string
	commit  string
)

// Version is the stamped version; else the short commit Go recorded, with
// -dirty for a modified tree; else "unknown".
func Version() string {
	if version != "" {
		return version
	}
	rev, dirty := vcs()
	switch {
	case rev == "":
		return "unknown"
	case len(rev) > 7:
		rev = rev[:7]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// Commit is the full commit hash, or "unknown".
func Commit() string {
	if commit != "" {
		return commit
	}
	if rev, _ := vcs(); rev != "" {
		return rev
	}
	return "unknown"
}

// Go is the Go version the binary was built with.
func Go() string { return runtime.Version() }

func vcs() (rev string, dirty bool) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", false
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	return rev, dirty
}
