package daemon

import (
	"testing"

	"github.com/shaperd/shaperd/api"
	"github.com/shaperd/shaperd/ladder"
)

// api's stages are the ladder's: status and the state file show the
// ladder's names.
func TestStagesAreTheLaddersStages(t *testing.T) {
	for _, c := range []struct {
		a api.Stage
		l ladder.Stage
	}{{api.StageManual, ladder.Manual}, {api.Stage1, ladder.Stage1}, {api.Stage2, ladder.Stage2}, {api.Stage3, ladder.Stage3}, {api.StageProbation, ladder.Probation}} {
		if string(c.a) != string(c.l) {
			t.Errorf("api.Stage %q, ladder.Stage %q", c.a, c.l)
		}
	}
}
