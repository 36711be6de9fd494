package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
)

// Under journald each line carries its syslog priority and no time of its
// own: journalctl -p warning then filters.
func TestJournalHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newJournalHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}, false)).With("port", "vm-1")
	log.Debug("d")
	log.Info("i", "k", 1)
	log.Warn("w")
	log.Error("e")
	want := []string{`<7>level=DEBUG msg=d port=vm-1`, `<6>level=INFO msg=i port=vm-1 k=1`, `<4>level=WARN msg=w port=vm-1`, `<3>level=ERROR msg=e port=vm-1`}
	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUnderJournal(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(os.Stderr.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]bool{"": false, "1:2": false, fmt.Sprintf("%d:%d", st.Dev, st.Ino): true} {
		t.Setenv("JOURNAL_STREAM", v)
		if got := underJournal(); got != want {
			t.Errorf("JOURNAL_STREAM=%q: %v, want %v", v, got, want)
		}
	}
}
