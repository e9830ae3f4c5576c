package cli

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

func TestRoleConfigSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "trunk.yaml")
	os.WriteFile(file, []byte(`
model: /models/granite
etcd: [etcd-0:2379, etcd-1:2379]
max-running: 32
session-ttl: 10m
ping-pong: true
gossip:
  bind: 0.0.0.0:7946
log-format: json
`), 0o644)
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
		check   func(t *testing.T, c trunknode.Config)
	}{
		{name: "file", args: []string{"--config", file}, check: func(t *testing.T, c trunknode.Config) {
			if c.ModelPath != "/models/granite" || strings.Join(c.Etcd, ",") != "etcd-0:2379,etcd-1:2379" || c.Sched.MaxRunning != 32 ||
				c.Memory.IdleTTL != 10*time.Minute || !c.Sched.PingPong || c.Gossip == nil || c.Gossip.BindPort != 7946 || c.LogFormat != "json" {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "env overrides file", env: map[string]string{"SWITCHYARD_CONFIG": file, "SWITCHYARD_MAX_RUNNING": "8"}, check: func(t *testing.T, c trunknode.Config) {
			if c.Sched.MaxRunning != 8 || c.ModelPath != "/models/granite" {
				t.Fatalf("max running %d model %q", c.Sched.MaxRunning, c.ModelPath)
			}
		}},
		{name: "flag overrides env and file", env: map[string]string{"SWITCHYARD_MAX_RUNNING": "8"}, args: []string{"--config=" + file, "--max-running", "4"},
			check: func(t *testing.T, c trunknode.Config) {
				if c.Sched.MaxRunning != 4 {
					t.Fatalf("max running %d", c.Sched.MaxRunning)
				}
			}},
		{name: "unknown key", args: []string{"--config", writeYAML(t, "max-runing: 3\n")}, wantErr: `unknown setting "max-runing"`},
		{name: "bad value", args: []string{"--config", writeYAML(t, "max-running: lots\n")}, wantErr: "max-running"},
		{name: "bad env", env: map[string]string{"SWITCHYARD_SESSION_TTL": "soon"}, wantErr: "SWITCHYARD_SESSION_TTL"},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "nope.yaml")}, wantErr: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out strings.Builder
			fs := flag.NewFlagSet("trunk", flag.ContinueOnError)
			fs.SetOutput(io.MultiWriter(&out))
			cfg := trunknode.DefaultConfig()
			cfg.AddFlags(fs)
			err := parseRole(fs, tc.args)
			if err == nil {
				err = cfg.Config.Validate()
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(out.String()+err.Error(), tc.wantErr) {
					t.Fatalf("err %v, output %q; want %q", err, out.String(), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v: %s", err, out.String())
			}
			tc.check(t, cfg)
		})
	}
}

func writeYAML(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
