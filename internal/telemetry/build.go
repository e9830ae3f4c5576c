package telemetry

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version is the release version, set at link time:
//
//	go build -ldflags "-X github.com/switchyard-serving/switchyard/internal/telemetry.version=v0.4.0"
//
// (make build and the Dockerfile do). Without it, the module version or "dev".
var version = ""

// revision is the commit, set at link time like version; the VCS stamp Go
// embeds (go build -buildvcs) takes precedence when present.
var revision = ""

// Build describes the running binary.
type Build struct {
	Version   string `json:"version"`            // release version, or "dev"
	Revision  string `json:"revision,omitempty"` // VCS commit ("" when unknown)
	Time      string `json:"time,omitempty"`     // commit time (RFC 3339)
	Modified  bool   `json:"modified,omitempty"` // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"`
	Tags      string `json:"tags,omitempty"` // build tags (e.g. "cuda")
}

// BuildInfo returns the binary's build description.
func BuildInfo() Build {
	b := Build{Version: version, Revision: revision, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			case "-tags":
				b.Tags = s.Value
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	return b
}

// String is the one-line form `switchyard version` prints.
func (b Build) String() string {
	rev := b.Revision
	if rev == "" {
		rev = "unknown"
	} else if len(rev) > 12 {
		rev = rev[:12]
	}
	if b.Modified {
		rev += "-dirty"
	}
	s := fmt.Sprintf("switchyard %s (commit %s", b.Version, rev)
	if b.Time != "" {
		s += ", " + b.Time
	}
	s += ", " + b.GoVersion
	if b.Tags != "" {
		s += ", tags " + b.Tags
	}
	return s + ")"
}

// buildInfoCollector is switchyard_build_info: 1, labelled with the build.
func buildInfoCollector() prometheus.Collector {
	b := BuildInfo()
	rev := b.Revision
	if b.Modified {
		rev += "-dirty"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_build_info",
		Help:        "Always 1; the labels describe the running binary.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": rev, "go_version": b.GoVersion}})
	g.Set(1)
	return g
}

// RegisterModelInfo adds switchyard_model_info (always 1) to reg: the model a
// node serves, so one Prometheus can hold several deployments and tell them
// apart (join on node_id).
func RegisterModelInfo(reg *prometheus.Registry, nodeID, model string, layers, experts int) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_model_info",
		Help: "Always 1; the labels name the model this node serves.",
		ConstLabels: prometheus.Labels{"node_id": nodeID, "model": model,
			"layers": fmt.Sprint(layers), "experts": fmt.Sprint(experts)}})
	g.Set(1)
	reg.MustRegister(g)
}
