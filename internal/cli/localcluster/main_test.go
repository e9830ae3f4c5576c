package localcluster

import (
	"os"
	"testing"
)

// TestMain runs the tests, or, when the test binary is re-executed as an etcd
// server (etcdChildEnv, see etcdproc_test.go), only that server.
func TestMain(m *testing.M) {
	if spec := os.Getenv(etcdChildEnv); spec != "" {
		os.Exit(runEtcdChild(spec))
	}
	os.Exit(m.Run())
}
