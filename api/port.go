package api

// CheckPort checks a port's name: an interface name the kernel and the
// switch's tools take as such (1 to 15 characters, no space, '/' or ':',
// not "." or "..", not beginning with '-').
func CheckPort(port string) error {
	if port == "" {
		return Usagef("no port given")
	}
	if len(port) > 15 {
		return Usagef("port %q: interface names have at most 15 characters", port)
	}
	for _, r := range port {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return Usagef("port %q: not a valid interface name", port)
		}
	}
	if port == "." || port == ".." {
		return Usagef("port %q: not a valid interface name", port)
	}
	if port[0] == '-' {
		// It would read as an option to the switch's tools.
		return Usagef("port %q: an interface name must not begin with -", port)
	}
	return nil
}
