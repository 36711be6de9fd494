package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name, text string
		want       Config
		errHas     []string
	}{
		{name: "ok", text: "socket: /tmp/s.sock\nlog_format: json\n", want: Config{Socket: "/tmp/s.sock", LogFormat: "json"}},
		{name: "empty", text: "", want: Config{}},
		{name: "unknown key", text: "socket: /x\nsokcet: /y\n", errHas: []string{"[2:1]", "sokcet"}},
		{name: "bad syntax", text: "socket: [\n", errHas: []string{"[1:"}},
		{name: "bad value", text: "log_level: loud\n", errHas: []string{"log_level", "loud"}},
		{name: "metrics addr", text: "metrics_addr: '[::1]:9751'\n", want: Config{MetricsAddr: ptr("[::1]:9751")}},
		{name: "metrics off", text: "metrics_addr: ''\n", want: Config{MetricsAddr: ptr("")}},
		{name: "metrics no port", text: "metrics_addr: 127.0.0.1\n", errHas: []string{"metrics_addr", "127.0.0.1", "host:port"}},
		{name: "metrics bad port", text: "metrics_addr: ':http'\n", errHas: []string{"metrics_addr", ":http"}},
		{name: "coalesce", text: "coalesce: 300us\n", want: Config{Coalesce: "300us"}},
		{name: "coalesce off", text: "coalesce: 0s\n", want: Config{Coalesce: "0s"}},
		{name: "coalesce too long", text: "coalesce: 20ms\n", errHas: []string{"coalesce", "20ms", "10ms"}},
		{name: "coalesce negative", text: "coalesce: -1us\n", errHas: []string{"coalesce", "-1us"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(p, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := Load(p)
			if tt.errHas != nil {
				if err == nil {
					t.Fatalf("Load: no error, want one with %q", tt.errHas)
				}
				for _, s := range tt.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// Only a regular file (or a link to one) of at most MaxBytes is read:
// /dev/zero, a FIFO or a huge file are refused at once.
func TestLoadRefusesWhatIsNotASmallFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.yaml")
	if err := os.WriteFile(huge, []byte(strings.Repeat("#\n", MaxBytes)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dev/zero", fifo, dir, huge} {
		start := time.Now()
		if _, err := Load(p); err == nil {
			t.Errorf("Load(%s) accepted", p)
		} else if time.Since(start) > time.Second {
			t.Errorf("Load(%s) took %v", p, time.Since(start))
		}
	}
	ok := filepath.Join(dir, "ok.yaml")
	os.WriteFile(ok, []byte("log_level: info\n"), 0o600)
	link := filepath.Join(dir, "link.yaml")
	os.Symlink(ok, link)
	if _, err := Load(link); err != nil {
		t.Errorf("a link to a config file: %v", err)
	}
}

// A file that is not a config (--config /etc/shadow) is refused without its
// lines in the message; a mistyped key is still named.
func TestLoadDoesNotEchoAForeignFile(t *testing.T) {
	dir := t.TempDir()
	shadow := filepath.Join(dir, "shadow")
	os.WriteFile(shadow, []byte("root:$6$salt$hashhashhash:19000:0:99999:7:::\n"), 0o600)
	_, err := Load(shadow)
	if err == nil || strings.Contains(err.Error(), "hashhash") || strings.Contains(err.Error(), "root") {
		t.Errorf("Load of a shadow file: %v", err)
	}
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("log_levell: info\n"), 0o600)
	if _, err := Load(typo); err == nil || !strings.Contains(err.Error(), `unknown field "log_levell"`) {
		t.Errorf("Load of a mistyped key: %v", err)
	}
}

// The webhook token comes from alerts_token, alerts_token_file or systemd's
// credential, and is at least 16 bytes.
func TestLoadSecrets(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tok")
	os.WriteFile(tokFile, []byte("0123456789abcdefXYZ\n"), 0o600)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("tiny\n"), 0o600)
	creds := t.TempDir()
	os.WriteFile(filepath.Join(creds, "alerts_token"), []byte("from-systemd-credential"), 0o600)
	for _, c := range []struct {
		name      string
		cfg       Config
		credDir   string
		want, err string
	}{
		{"inline", Config{AlertsToken: "0123456789abcdef"}, "", "0123456789abcdef", ""},
		{"file, newline dropped", Config{AlertsTokenFile: tokFile}, "", "0123456789abcdefXYZ", ""},
		{"credential", Config{}, creds, "from-systemd-credential", ""},
		{"inline wins over the credential", Config{AlertsToken: "0123456789abcdef"}, creds, "0123456789abcdef", ""},
		{"none", Config{}, "", "", ""},
		{"both", Config{AlertsToken: "0123456789abcdef", AlertsTokenFile: tokFile}, "", "", "give one of them"},
		{"too short inline", Config{AlertsToken: "short"}, "", "", "at least 16"},
		{"too short in a file", Config{AlertsTokenFile: short}, "", "", "at least 16"},
		{"missing file", Config{AlertsTokenFile: filepath.Join(dir, "none")}, "", "", "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("CREDENTIALS_DIRECTORY", c.credDir)
			cfg := c.cfg
			err := cfg.LoadSecrets()
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("LoadSecrets: %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || cfg.AlertsToken != c.want {
				t.Fatalf("LoadSecrets: token %q, %v; want %q", cfg.AlertsToken, err, c.want)
			}
		})
	}
}
