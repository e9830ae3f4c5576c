package telemetry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/internal/schedtrace"
)

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestServeMetricsPprof: /debug/pprof/ is served only when asked, beside
// /metrics, and its execution trace is one schedtrace reads.
func TestServeMetricsPprof(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pprof bool
		want  int
	}{{"off", false, http.StatusNotFound}, {"on", true, http.StatusOK}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			addr, err := ServeMetrics(ctx, "127.0.0.1:0", NewRegistry(), tc.pprof)
			if err != nil {
				t.Fatal(err)
			}
			if code, body := get(t, "http://"+addr+"/metrics"); code != http.StatusOK || !strings.Contains(string(body), "go_goroutines") {
				t.Fatalf("/metrics: %d %.200s", code, body)
			}
			code, body := get(t, "http://"+addr+"/debug/pprof/")
			if code != tc.want {
				t.Fatalf("/debug/pprof/: %d, want %d", code, tc.want)
			}
			if !tc.pprof {
				return
			}
			if !strings.Contains(string(body), "goroutine") {
				t.Fatalf("/debug/pprof/ index: %.300s", body)
			}
			if code, _ := get(t, "http://"+addr+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK {
				t.Fatalf("/debug/pprof/goroutine: %d", code)
			}
			code, tr := get(t, "http://"+addr+"/debug/pprof/trace?seconds=0.2")
			if code != http.StatusOK {
				t.Fatalf("/debug/pprof/trace: %d %.200s", code, tr)
			}
			rep, err := schedtrace.Read(bytes.NewReader(tr), "")
			if err != nil || rep.Window <= 0 {
				t.Fatalf("the trace: %v, report %+v", err, rep)
			}
		})
	}
}
