package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
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
