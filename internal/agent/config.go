package agent

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/membership"
)

// Config is what every role's node shares: identity, control plane, gossip,
// metrics and logging. Roles embed it in their own Config.
type Config struct {
	// NodeID names the node in etcd, gossip, routing tables and metrics. Required.
	NodeID string
	// Etcd endpoints; empty runs without a control plane (only a trunk with
	// local experts may).
	Etcd    []string
	EtcdTLS cluster.EtcdTLS
	// AdvertiseAddr is the gRPC address registered in etcd (default: the
	// listener's address).
	AdvertiseAddr string
	// LeaseTTL is the etcd registration lease, in seconds: a node that dies
	// disappears from the cluster after about this long (gossip is faster).
	LeaseTTL int64
	// Gossip, when set, joins the memberlist cluster (failure detection within
	// about a second).
	Gossip *membership.Config
	// MetricsAddr serves Prometheus /metrics ("" = not served).
	MetricsAddr string
	// EnablePprof also serves the Go runtime's profiles under /debug/pprof/
	// on MetricsAddr (CPU profile, heap, goroutines, execution trace: read a
	// trace with `switchyard schedtrace`). Off by default: whoever reaches
	// the metrics address can read them. Needs MetricsAddr.
	EnablePprof bool
	// StopTimeout bounds the graceful stop of the gRPC server (in-flight calls
	// finishing) before it is stopped hard.
	StopTimeout time.Duration
	// Logger receives the node's control-path events (default: built from
	// LogLevel and LogFormat on LogOutput).
	Logger    *slog.Logger
	LogLevel  string    // debug, info, warn or error
	LogFormat string    // text or json
	LogOutput io.Writer // default os.Stderr

	flags *rawFlags // set by AddFlags, resolved by Validate
}

// rawFlags holds flag values that need parsing after flag.Parse.
type rawFlags struct {
	etcd, gossipBind, gossipAdvertise, gossipKey string
}

// DefaultConfig returns the defaults (NodeID is the host name).
func DefaultConfig() Config {
	return Config{NodeID: hostname(), LeaseTTL: 5, StopTimeout: 5 * time.Second, LogLevel: "info", LogFormat: "text"}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "node"
	}
	return h
}

// AddFlags registers the shared flags (--node-id, --etcd*, --advertise,
// --lease-ttl, --gossip-*, --metrics-addr, --log-*) on fs; Validate resolves
// them after parsing. etcdDefault is --etcd's default.
func (c *Config) AddFlags(fs *flag.FlagSet, etcdDefault string) {
	c.flags = &rawFlags{}
	fs.StringVar(&c.NodeID, "node-id", c.NodeID, "node id")
	fs.StringVar(&c.flags.etcd, "etcd", etcdDefault, "comma-separated etcd endpoints")
	fs.StringVar(&c.EtcdTLS.CA, "etcd-ca", os.Getenv("SWITCHYARD_ETCD_CA"), "CA bundle for etcd TLS (PEM)")
	fs.StringVar(&c.EtcdTLS.Cert, "etcd-cert", os.Getenv("SWITCHYARD_ETCD_CERT"), "client certificate for etcd TLS (PEM)")
	fs.StringVar(&c.EtcdTLS.Key, "etcd-key", os.Getenv("SWITCHYARD_ETCD_KEY"), "client key for etcd TLS (PEM)")
	fs.StringVar(&c.AdvertiseAddr, "advertise", c.AdvertiseAddr, "address registered in etcd (default: the listen address)")
	fs.Int64Var(&c.LeaseTTL, "lease-ttl", c.LeaseTTL, "etcd registration lease in seconds")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "serve Prometheus /metrics on this address (e.g. :9090)")
	fs.BoolVar(&c.EnablePprof, "enable-pprof", c.EnablePprof, "also serve the Go runtime's profiles under /debug/pprof/ on --metrics-addr (CPU, heap, goroutines, execution trace; whoever reaches that address can read them)")
	fs.StringVar(&c.flags.gossipBind, "gossip-bind", "", "memberlist bind host:port (empty: gossip off)")
	fs.StringVar(&c.flags.gossipAdvertise, "gossip-advertise", "", "memberlist address announced to peers (default: the bind address)")
	fs.StringVar(&c.flags.gossipKey, "gossip-key", "", "base64 gossip encryption key (default $SWITCHYARD_GOSSIP_KEY; empty: plaintext)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
}

// Validate checks the configuration and resolves parsed flags.
func (c *Config) Validate() error {
	if c.flags != nil {
		if err := c.resolveFlags(); err != nil {
			return err
		}
		c.flags = nil
	}
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("agent: node id is required"))
	}
	if c.EnablePprof && c.MetricsAddr == "" {
		errs = append(errs, errors.New("agent: --enable-pprof serves on the metrics address: set --metrics-addr too"))
	}
	if c.LeaseTTL <= 0 {
		errs = append(errs, fmt.Errorf("agent: lease TTL must be positive, got %d", c.LeaseTTL))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if f := c.LogFormat; f != "" && f != "text" && f != "json" {
		errs = append(errs, fmt.Errorf("agent: log format %q: want text or json", f))
	}
	return errors.Join(errs...)
}

func (c *Config) resolveFlags() error {
	f := c.flags
	c.Etcd = Endpoints(f.etcd)
	if f.gossipBind == "" {
		if f.gossipAdvertise != "" {
			return errors.New("agent: --gossip-advertise needs --gossip-bind")
		}
		return nil
	}
	g := &membership.Config{LAN: true}
	var err error
	if g.BindAddr, g.BindPort, err = splitHostPort(f.gossipBind); err != nil {
		return fmt.Errorf("agent: --gossip-bind: %w", err)
	}
	if f.gossipAdvertise != "" {
		if g.AdvertiseAddr, g.AdvertisePort, err = splitHostPort(f.gossipAdvertise); err != nil {
			return fmt.Errorf("agent: --gossip-advertise: %w", err)
		}
	}
	k := f.gossipKey
	if k == "" {
		k = os.Getenv("SWITCHYARD_GOSSIP_KEY")
	}
	if k != "" {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil || (len(b) != 16 && len(b) != 24 && len(b) != 32) {
			return errors.New("agent: gossip key must be base64 of 16, 24 or 32 bytes")
		}
		g.SecretKey = b
	}
	c.Gossip = g
	return nil
}

// Endpoints splits a comma-separated endpoint list, dropping blanks.
func Endpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func splitHostPort(s string) (string, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("bad port %q", port)
	}
	return host, p, nil
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("agent: log level %q: want debug, info, warn or error", s)
}

// NewLogger builds the logger the configuration describes, with the node's
// role and id on every record. It returns c.Logger (tagged) when set.
func (c *Config) NewLogger(role string) *slog.Logger {
	if c.Logger != nil {
		return c.Logger.With("role", role, "node", c.NodeID)
	}
	l, err := NewLogger(c.LogOutput, c.LogLevel, c.LogFormat)
	if err != nil {
		l = slog.Default()
	}
	return l.With("role", role, "node", c.NodeID)
}

// NewLogger returns a structured logger writing to w (nil: stderr) at level
// (debug, info, warn, error) in format (text or json). Records logged with a
// context of a traced request carry its trace_id and span_id.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	if w == nil {
		w = os.Stderr
	}
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "", "text":
		return slog.New(traceHandler{slog.NewTextHandler(w, opts)}), nil
	case "json":
		return slog.New(traceHandler{slog.NewJSONHandler(w, opts)}), nil
	}
	return nil, fmt.Errorf("agent: log format %q: want text or json", format)
}
