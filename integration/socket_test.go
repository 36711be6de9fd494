package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestControlSocketPeerCredentials: the socket is 0660 root:GROUP; a member
// of the group may use it; a uid that is neither root nor in the group is
// refused by SO_PEERCRED even when the file's mode would let it in, and the
// refused request changes nothing.
func TestControlSocketPeerCredentials(t *testing.T) {
	l := newLab(t, "bridge")
	d := l.startDaemon("--socket-group", "nogroup")
	fi, err := os.Stat(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != 65534 {
		t.Fatalf("socket %s: mode %v uid %d gid %d, want 0660 root:nogroup(65534)", d.sock, fi.Mode().Perm(), st.Uid, st.Gid)
	}
	// The test's temp dirs are 0700; let other uids reach the socket.
	for dir := filepath.Dir(d.sock); strings.HasPrefix(dir, os.TempDir()+"/"); dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The client runs from a copy beside the socket: the checkout (bin/)
	// may sit in a 0700 home directory that uid 65534 cannot enter.
	client := filepath.Join(filepath.Dir(d.sock), "shaperd-client")
	copyFile(t, filepath.Join(l.bin, "shaperd"), client, 0o755)
	as := func(uid, gid uint32, args ...string) (int, string) {
		cmd := exec.Command(client, append([]string{"--socket", d.sock}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return ee.ExitCode(), string(out)
		case err != nil:
			t.Fatalf("uid %d gid %d could not run %s: %v", uid, gid, client, err)
		}
		return 0, string(out)
	}
	port := l.get("VM1_PORT")
	if code, out := as(65534, 65534, "status"); code != 0 {
		t.Errorf("a member of the socket group was refused: %d %s", code, out)
	}
	// Not in the group: the file's mode refuses it.
	if code, out := as(65534, 4242, "quarantine", port, "--pps", "10"); code != 1 || !strings.Contains(out, "permission denied") {
		t.Errorf("uid 65534 gid 4242 through a 0660 socket: exit %d %q, want 1, permission denied", code, out)
	}
	// Even if the mode were wrong, the peer's credentials are checked.
	if err := os.Chmod(d.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if code, out := as(65534, 4242, "quarantine", port, "--pps", "10"); code != 1 || !strings.Contains(out, "neither root nor") {
		t.Errorf("uid 65534 gid 4242 through a 0666 socket: exit %d %q, want 1 refused by SO_PEERCRED", code, out)
	}
	if code, out, _ := d.cli("status", "--json"); code != 0 || !strings.Contains(out, `"quarantines": []`) {
		t.Errorf("a refused request changed something: %s", out)
	}
	if !strings.Contains(d.logBuf.String(), `result=refused`) {
		t.Errorf("refusal not audited:\n%s", d.logBuf.String())
	}
}

// copyFile copies src to dst with the given mode.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatal(err)
	}
}
