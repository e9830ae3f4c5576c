package telemetry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The SDK's own environment handling decides the transport and the sampler:
// spans reach an OTLP/HTTP receiver with http/protobuf, and
// OTEL_TRACES_SAMPLER=always_off sends none.
func TestTracingHonoursEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sampler string
		want    bool
	}{
		{"always_on", "always_on", true},
		{"always_off", "always_off", false},
		{"ratio arg alone", "", true}, // OTEL_TRACES_SAMPLER_ARG=1 without a sampler: parent-based ratio
	} {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
					posts.Add(1)
				}
			}))
			defer srv.Close()
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
			t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", "1")
			tr, err := NewTracing(context.Background(), "trunk", "t0")
			if err != nil {
				t.Fatal(err)
			}
			_, span := tr.Tracer().Start(context.Background(), "request")
			span.End()
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := posts.Load() > 0; got != tc.want {
				t.Fatalf("spans exported: %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTracingRejectsUnknownProtocol(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	if _, err := NewTracing(context.Background(), "trunk", "t0"); err == nil || !strings.Contains(err.Error(), "http/json") {
		t.Fatalf("err = %v", err)
	}
}

func TestBuildInfoMetric(t *testing.T) {
	reg := NewRegistry()
	n, err := testutil.GatherAndCount(reg, "switchyard_build_info")
	if err != nil || n != 1 {
		t.Fatalf("switchyard_build_info series: %d (%v)", n, err)
	}
	if b := BuildInfo(); b.Version == "" || b.GoVersion == "" || !strings.HasPrefix(b.String(), "switchyard ") {
		t.Fatalf("build info %+v", b)
	}
}
