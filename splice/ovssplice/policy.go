package ovssplice

// What the port isolations (package portpolicy/ovspolicy) and the splices
// share on one port: its no-flood flag, and the copy of every multicast
// frame that a splice sends to its VM.
//
// An isolation keeps its port no-flood (NORMAL floods nothing to it; its
// own flows deliver what it allows), as a splice does. Whoever comes first
// knows the port's own flag: the isolation records it in the port's
// Interface row (IsolateNoFloodID) and a splice in its net tap's row. A
// splice that starts on an isolated port takes the isolation's record as
// the port's flag; a splice released while the port is isolated leaves it
// no-flood; an isolation removed while the port is spliced leaves it
// no-flood too. So the flag is restored once, by whichever goes last, to
// what it was before either.

import (
	"fmt"
	"slices"
	"strconv"
)

// IsolateNoFloodID is the external_ids key of a port's Interface row that
// an isolation sets while it keeps the port no-flood: "true" if the port
// was no-flood before, "false" if the isolation turned flooding off.
const IsolateNoFloodID = "shaperd-isolate-noflood"

// MulticastPriority is the priority of a splice's flow that copies every
// multicast and broadcast frame to its VM (in table 0, matching the
// splice's mark clear); ToVMPriority that of its flows taking the frames to
// the VM's MACs, the next one up.
const (
	MulticastPriority = prioMulticast
	ToVMPriority      = prioToVM
)

// Spliced is a splice recorded in the Interface rows: the match on its mark
// being clear, the action that sets it, and the port's own no-flood flag
// as the splice found it.
type Spliced struct {
	Mark, SetMark string
	PortNoFlood   bool
}

// Splices returns the splices recorded in the Interface rows (those the
// daemon made or adopted, live or left by a daemon that died), by VM port,
// in one ovs-vsctl call.
func Splices(run ExecFunc) (map[string]Spliced, error) {
	rows, err := newCLI(run).spliceRows()
	if err != nil {
		return nil, fmt.Errorf("ovssplice: read the splices' rows: %w", err)
	}
	out := map[string]Spliced{}
	for _, r := range rows {
		port := r.ids[idPort]
		slot, err := strconv.ParseUint(r.ids[idSlot], 10, 32)
		if port == "" || err != nil || slot >= maxSlots {
			continue
		}
		p := plan{slot: uint(slot)}
		out[port] = Spliced{Mark: p.mark(), SetMark: p.setMark(), PortNoFlood: r.ids[idPortNoFlood] == "true"}
	}
	return out, nil
}

// isolatedFlag returns the port's own no-flood flag as an isolation
// recorded it, and whether the port is isolated.
func (c cli) isolatedFlag(port string) (noFlood, isolated bool, err error) {
	v, err := c.externalID(port, IsolateNoFloodID)
	if err != nil {
		return false, false, fmt.Errorf("read external_ids:%s of %s: %w", IsolateNoFloodID, port, err)
	}
	return v == "true", v != "", nil
}

// IsolatedPorts returns the ports whose Interface rows carry
// IsolateNoFloodID, with its value (the port was no-flood before), in one
// ovs-vsctl call.
func IsolatedPorts(run ExecFunc) (map[string]bool, error) {
	c := newCLI(run)
	out, err := c.vsctl("--format=json", "--columns=name,external_ids", "list", "Interface")
	if err != nil {
		return nil, fmt.Errorf("ovssplice: read the isolated ports' rows: %w", err)
	}
	rows, err := parseRows(out)
	if err != nil {
		return nil, err
	}
	ports := map[string]bool{}
	for _, r := range rows {
		if v, ok := r.ids[IsolateNoFloodID]; ok {
			ports[r.name] = v == "true"
		}
	}
	return ports, nil
}

// PortNoFlood reports whether port is no-flood in desc (`ovs-ofctl
// dump-ports-desc BRIDGE` output), and whether desc describes it.
func PortNoFlood(desc []byte, port string) (noFlood, ok bool) {
	flags, ok := parsePortConfig(desc, port)
	return slices.Contains(flags, "NO_FLOOD"), ok
}
