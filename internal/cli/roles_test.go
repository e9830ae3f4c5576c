package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/testutil"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// Each role subcommand, started as an operator starts it (flags only, no
// harness), registers in etcd under the flags' settings and stops cleanly.
func TestRoleSubcommandsRegister(t *testing.T) {
	e := testutil.StartEtcd(t)
	model := filepath.Join(fixture(t), "hf")
	for _, tc := range []struct {
		role string
		args []string
	}{
		{"expert", []string{"expert", "--node-id", "e1", "--model", model, "--listen", "127.0.0.1:0", "--etcd", e.Endpoint(), "--lease-ttl", "2"}},
		{"coordinator", []string{"coordinator", "--node-id", "c1", "--model", model, "--etcd", e.Endpoint(), "--lease-ttl", "2"}},
		{"trunk", []string{"trunk", "--node-id", "t1", "--model", model, "--listen", "127.0.0.1:0", "--etcd", e.Endpoint(), "--lease-ttl", "2"}},
	} {
		t.Run(tc.role, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			var out, errb syncBuffer
			done := make(chan int, 1)
			go func() { done <- Main(ctx, tc.args, &out, &errb) }()
			id := tc.args[2]
			key := cluster.NodesPrefix + tc.role + "/" + id
			testutil.WaitFor(t, tc.role+" registered", func() bool {
				select {
				case code := <-done:
					t.Fatalf("exited %d: %s", code, errb.String())
				default:
				}
				return e.Has(key)
			})
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			if e.Has(key) {
				t.Fatal("still registered after a clean stop")
			}
			if !strings.Contains(errb.String(), "registered in etcd") {
				t.Fatalf("no registration in the log:\n%s", errb.String())
			}
		})
	}
}
