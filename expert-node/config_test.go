package expertnode

import (
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := testConfig(fixtureHF)
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // "" = valid
	}{
		{"defaults with id and path", func(*Config) {}, ""},
		{"coalesce window", func(c *Config) { c.CoalesceWindow = time.Millisecond }, ""},
		{"no node id", func(c *Config) { c.NodeID = "" }, "node id"},
		{"no model path", func(c *Config) { c.ModelPath = "" }, "ModelPath"},
		{"zero message size", func(c *Config) { c.MaxRecvMsgBytes = 0 }, "MaxRecvMsgBytes"},
		{"huge message size", func(c *Config) { c.MaxRecvMsgBytes = 1 << 40 }, "MaxRecvMsgBytes"},
		{"negative window", func(c *Config) { c.CoalesceWindow = -time.Second }, "CoalesceWindow"},
		{"negative spin wait", func(c *Config) { c.SpinWait = -time.Millisecond }, "SpinWait"},
		{"zero batch rows", func(c *Config) { c.MaxBatchRows = 0 }, "MaxBatchRows"},
		{"zero inflight", func(c *Config) { c.MaxInflightPerStream = 0 }, "MaxInflightPerStream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mutate(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrConfig naming %s", err, tc.want)
			}
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if c.MaxRecvMsgBytes != 64<<20 || c.CoalesceWindow != 0 || c.MaxBatchRows != 4096 {
		t.Fatalf("DefaultConfig = %+v", c)
	}
}

func TestNewRejects(t *testing.T) {
	checkGoroutines(t)
	if _, err := New(Config{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("New(empty) = %v, want ErrConfig", err)
	}
	if _, err := New(testConfig("testdata/does-not-exist")); !errors.Is(err, ErrConfig) {
		t.Fatalf("New(missing model) = %v, want ErrConfig", err)
	}
}

// The shared flags (--etcd, --gossip-*) reach the node's config through
// Validate, as `switchyard expert` parses them.
func TestFlagsResolveSharedSettings(t *testing.T) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("expert", flag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse([]string{"--node-id", "e1", "--model", "m", "--etcd", "etcd-0:2379,etcd-1:2379", "--gossip-bind", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Etcd) != 2 || c.Gossip == nil || c.NodeID != "e1" {
		t.Fatalf("etcd %v gossip %v id %q", c.Etcd, c.Gossip, c.NodeID)
	}
}
