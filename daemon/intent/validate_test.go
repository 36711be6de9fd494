package intent

import (
	"encoding/json"
	"strings"
	"testing"
)

// A spec the intent on the plumbing could not keep is refused, whatever
// wrote it (a hand-edited state file): FuzzStateEntry found these valid
// specs whose intent did not read back.
func TestValidateRefusesWhatTheIntentCannotKeep(t *testing.T) {
	for name, c := range map[string]struct{ spec, want string }{
		"backstop below 1": {`{"from_vm":{"pps":1000,"backstop":0.5}}`, "--backstop"},
		"backstop zero":    {`{"from_vm":{"pps":1000,"backstop":0}}`, "--backstop"},
		"to-vm backstop":   {`{"to_vm":{"pps":1000,"backstop":-3}}`, "--to-vm-backstop"},
		"comment class":    {`{"from_vm":{"pps":1000,"classes":["ssh: tcp dport 22 pps 100","# note"]}}`, "--class"},
		"blank class":      {`{"from_vm":{"pps":1000,"classes":["  "]}}`, "--class"},
		"space in profile": {`{"from_vm":{"pps":1000},"profile":"a b"}`, "profile"},
		"space in stage":   {`{"from_vm":{"pps":1000},"stage":"stage 1"}`, "stage"},
		"space in guard":   {`{"from_vm":{"pps":1000},"guard":true,"guard_ip":"198.18.0.5, 198.18.0.6"}`, "--guard-ip"},
	} {
		s := New()
		if err := json.Unmarshal([]byte(c.spec), &s); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error naming %s", name, err, c.want)
		}
	}
	ok := New()
	if err := json.Unmarshal([]byte(`{"from_vm":{"pps":1000,"backstop":1,"classes":["ssh: tcp dport 22 pps 100"]},"profile":"quarantine","stage":"stage1"}`), &ok); err != nil {
		t.Fatal(err)
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("a spec the intent keeps: %v", err)
	}
}
