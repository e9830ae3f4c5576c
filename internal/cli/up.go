package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/cli/localcluster"
	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/synth"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

func init() {
	register("up", "start a whole local cluster (etcd, coordinator, trunk, expert nodes) on loopback", runUp)
}

// defaultModel returns the built-in small model, synthesizing it on first use.
func defaultModel(stderr io.Writer) (string, error) {
	dir := os.Getenv("SWITCHYARD_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		dir = filepath.Join(base, "switchyard")
	}
	path := filepath.Join(dir, "tiny-seed1")
	if _, err := os.Stat(filepath.Join(path, "model.safetensors")); err == nil {
		return path, nil
	}
	fmt.Fprintf(stderr, "switchyard: writing the built-in model (synth --preset tiny) to %s\n", path)
	if _, err := synth.Write(path, synth.Options{Preset: "tiny", Seed: 1}); err != nil {
		return "", err
	}
	return path, nil
}

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("up", stderr)
	listen := fs.String("listen", "127.0.0.1:0", "public API address")
	model := fs.String("model", "", "model: Hugging Face folder or .gguf (default: the built-in tiny model)")
	experts := fs.Int("experts", 2, "number of expert nodes")
	trunks := fs.Int("trunks", 1, "number of trunk nodes (they share the expert nodes; the first listens on --listen)")
	data := fs.String("data-dir", "", "etcd data folder (default: temporary)")
	maxRunning := fs.Int("max-running", 64, "sessions advanced together per step")
	metrics := fs.String("metrics-addr", "127.0.0.1:0", "trunk /metrics address")
	expertDevice := fs.String("expert-device", "cpu", "expert nodes' device: cpu, cuda:N (all expert nodes share that GPU), or fake")
	logLevel := fs.String("log-level", "warn", "nodes' log level on stderr: debug, info, warn or error")
	httpListen := fs.String("http-listen", "127.0.0.1:8000", "the first trunk's OpenAI-compatible HTTP API address (others: a free port; empty: off)")
	mmap := fs.Bool("mmap", true, "every node reads the weights through the file's memory map (default here: the nodes share one process and one page cache; false copies each node's weights into its own memory, as trunk and expert do by default)")
	spin := fs.Duration("spin-wait", trunknode.DefaultConfig().SpinWait, "how long idle compute threads poll for the next product before parking (one setting for the whole process: its nodes share one pool of compute threads; 0: the kernels' 200µs)")
	insecureAPI := fs.Bool("insecure", false, "serve the public API without a token (by default up generates one and prints it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *model == "" {
		p, err := defaultModel(stderr)
		if err != nil {
			return err
		}
		*model = p
	}
	if *trunks < 1 {
		return fmt.Errorf("--trunks must be at least 1")
	}
	if *spin < 0 {
		return fmt.Errorf("--spin-wait is %v, want >= 0", *spin)
	}
	// The nodes' own commands apply their --spin-wait; here they share one
	// process and one pool, which polls for as long as a separate node's.
	kernels.SetSpinWait(*spin)
	log, err := agent.NewLogger(stderr, *logLevel, "text")
	if err != nil {
		return err
	}
	token := ""
	if !*insecureAPI {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		token = hex.EncodeToString(b[:])
	}
	c, err := localcluster.Start(ctx, localcluster.Options{ModelPath: *model, ExpertNodes: *experts, Trunks: *trunks, Listen: *listen, DataDir: *data,
		ExpertMetrics: true, CoordinatorMetrics: true,
		ExpertDevice: *expertDevice, ExpertGPUMemory: gpuShare(*expertDevice, *experts), Logger: log,
		Expert: func(ec *expertnode.Config) { ec.Mmap = *mmap },
		Trunk: func(tc *trunknode.Config) {
			tc.Sched.MaxRunning, tc.MetricsAddr, tc.APIToken, tc.Mmap = *maxRunning, *metrics, token, *mmap
			if *httpListen != "" {
				tc.HTTPListen = "127.0.0.1:0"
				if tc.NodeID == "trunk-0" {
					tc.HTTPListen = *httpListen
				}
			}
		}})
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stdout, "switchyard cluster ready: public API on %s (trunk %s, %d expert nodes, etcd %s)\n",
		c.Endpoint, "trunk-0", len(c.ExpertIDs()), c.Etcd.Endpoints[0])
	for i, ep := range c.Endpoints[1:] {
		fmt.Fprintf(stdout, "trunk-%d: public API on %s\n", i+1, ep)
	}
	for i, t := range c.Trunks {
		if a := t.HTTPAddr(); a != "" {
			fmt.Fprintf(stdout, "trunk-%d: OpenAI-compatible API on http://%s/v1\n", i, a)
		}
	}
	addrs := c.MetricsAddrs()
	ids := make([]string, 0, len(addrs))
	for id := range addrs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(stdout, "metrics: %-14s http://%s/metrics\n", id, addrs[id])
	}
	if token != "" {
		fmt.Fprintf(stdout, "api token: %s (every call needs it; up --insecure serves without one)\n", token)
		fmt.Fprintf(stdout, "try:\n  export SWITCHYARD_API_TOKEN=%s\n", token)
		fmt.Fprintf(stdout, "  switchyard generate --addr %s --prompt \"Hello\" --greedy --max-tokens 16\n", c.Endpoint)
		fmt.Fprintf(stdout, "  grpcurl -plaintext -H \"authorization: Bearer $SWITCHYARD_API_TOKEN\" -d '{\"text\":\"Hello\",\"max_tokens\":16}' %s switchyard.v1.Switchyard/Generate\n", c.Endpoint)
		if a := c.Trunk.HTTPAddr(); a != "" {
			fmt.Fprintf(stdout, "  curl -s http://%s/v1/chat/completions -H \"Authorization: Bearer $SWITCHYARD_API_TOKEN\" -H 'Content-Type: application/json' -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":16}'\n", a, config.ModelName(*model))
		}
	} else {
		fmt.Fprintf(stdout, "try:\n  switchyard generate --addr %s --prompt \"Hello\" --greedy --max-tokens 16\n", c.Endpoint)
		fmt.Fprintf(stdout, "  grpcurl -plaintext -d '{\"text\":\"Hello\",\"max_tokens\":16}' %s switchyard.v1.Switchyard/Generate\n", c.Endpoint)
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "switchyard: shutting down")
		return nil
	case err := <-c.Errors():
		return err
	}
}

// gpuShare splits one GPU between n local expert nodes (a fraction each), or
// leaves the default on the CPU.
func gpuShare(device string, n int) string {
	if device == "" || device == "cpu" || n <= 1 {
		return ""
	}
	return fmt.Sprintf("%.3f", 0.85/float64(n))
}
