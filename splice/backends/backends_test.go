package backends

import (
	"log/slog"
	"testing"

	"github.com/shaperd/shaperd/splice"
	"github.com/shaperd/shaperd/splice/fakesplice"
)

// Every backend keeps the whole contract a restarted daemon and
// `release --offline` rely on: it adopts what it finds. The fake backend
// of the tests keeps it too, so a new backend can be tried the same way.
func TestContract(t *testing.T) {
	bs := New(slog.New(slog.DiscardHandler))
	if len(bs) != len(registry) {
		t.Fatalf("%d backends for %d registry lines", len(bs), len(registry))
	}
	names := map[string]bool{}
	for _, b := range append(bs, splice.Backend(fakesplice.New())) {
		if names[b.Name()] {
			t.Errorf("two backends are called %q", b.Name())
		}
		names[b.Name()] = true
		if _, ok := b.(splice.Adopter); !ok {
			t.Errorf("%s cannot adopt its splices after a restart", b.Name())
		}
	}
	// ovssplice leaves pieces (flows, groups) a cut-short splice may not
	// name; the daemon removes them after its start.
	if _, ok := bs[0].(splice.OrphanRemover); !ok {
		t.Errorf("ovs does not remove its orphan pieces")
	}
	if bs[0].Name() != "ovs" || bs[1].Name() != "tc" {
		t.Errorf("order %s, %s; want ovs before tc", bs[0].Name(), bs[1].Name())
	}
}
