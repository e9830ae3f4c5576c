package cli

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/cli/localcluster"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	"github.com/switchyard-serving/switchyard/internal/schedtrace"
	"github.com/switchyard-serving/switchyard/model/kernels"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

func init() {
	register("bench-cluster", "measure decode speed of 1 trunk + N expert nodes on loopback vs the in-process engine", runBenchCluster)
}

// rttRecorder keeps dispatch round trips and wire bytes.
type rttRecorder struct {
	mu      sync.Mutex
	rtt     []time.Duration
	compute []time.Duration
	bytes   int64
	out, in []int // payload bytes of each call, each way
}

func (r *rttRecorder) observe(c trunknode.CallInfo) {
	if c.Err != nil {
		return
	}
	r.mu.Lock()
	r.rtt = append(r.rtt, c.RTT)
	r.compute = append(r.compute, c.Compute)
	r.bytes += int64(c.BytesOut + c.BytesIn)
	r.out, r.in = append(r.out, c.BytesOut), append(r.in, c.BytesIn)
	r.mu.Unlock()
}

func (r *rttRecorder) reset() {
	r.mu.Lock()
	r.rtt, r.compute, r.bytes, r.out, r.in = nil, nil, 0, nil, nil
	r.mu.Unlock()
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// driveRates are one drive's rates: generated tokens per second over the
// whole run (prompts included), and its two phases apart. Prefill: prompt
// tokens per second until the last session's first token; decode: tokens
// per second that arrived after it (all sessions start together, so the
// trunk prefills them before most decode).
type driveRates struct {
	all, prefill, decode float64
}

// drive runs `sessions` concurrent generations of `tokens` tokens after
// `prompt` random prompt tokens each.
func drive(ctx context.Context, addr string, vocab, sessions, prompt, tokens int, seed uint64) (driveRates, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return driveRates{}, err
	}
	defer conn.Close()
	cli := pb.NewSwitchyardClient(conn)
	r := rand.New(rand.NewPCG(seed, 7))
	reqs := make([]*pb.GenerateRequest, sessions)
	for i := range reqs {
		ids := &pb.TokenIds{}
		for range prompt {
			ids.Ids = append(ids.Ids, int32(r.IntN(vocab/2)))
		}
		reqs[i] = &pb.GenerateRequest{Input: &pb.GenerateRequest_TokenIds{TokenIds: ids}, MaxTokens: int32(tokens), IgnoreEos: true}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	type arrival struct {
		at     time.Time
		tokens int
	}
	var arrivals []arrival // every chunk of every session
	var lastFirst time.Time
	var firstErr error
	start := time.Now()
	for _, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := cli.Generate(ctx, req)
			var mine []arrival
			for err == nil {
				var m *pb.GenerateResponse
				if m, err = s.Recv(); err == nil {
					if k := len(m.GetChunk().GetTokenIds()); k > 0 {
						mine = append(mine, arrival{time.Now(), k})
					}
				}
			}
			mu.Lock()
			arrivals = append(arrivals, mine...)
			if len(mine) > 0 && mine[0].at.After(lastFirst) {
				lastFirst = mine[0].at
			}
			if err != io.EOF && firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	end := time.Now()
	total, later := 0, 0
	for _, a := range arrivals {
		total += a.tokens
		if a.at.After(lastFirst) {
			later += a.tokens
		}
	}
	rates := driveRates{all: float64(total) / end.Sub(start).Seconds()}
	if !lastFirst.IsZero() {
		rates.prefill = float64(sessions*prompt) / lastFirst.Sub(start).Seconds()
		if d := end.Sub(lastFirst).Seconds(); d > 0 {
			rates.decode = float64(later) / d
		}
	}
	return rates, firstErr
}

func runBenchCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench-cluster", stderr)
	model := fs.String("model", "", "model folder or .gguf (default: the built-in tiny model)")
	sessionsFlag := fs.String("sessions", "1,8,32", "comma-separated concurrent session counts")
	tokens := fs.Int("tokens", 32, "tokens generated per session")
	prompt := fs.Int("prompt", 16, "prompt tokens per session")
	experts := fs.Int("experts", 2, "expert nodes")
	reps := fs.Int("reps", 3, "repetitions (median reported)")
	pingPong := fs.Bool("ping-pong", true, "the cluster's trunk splits big steps into two micro-batches that overlap dispatch and compute (the in-process baseline never does: it has no dispatch to overlap)")
	pingPongMin := fs.Int("ping-pong-min-rows", trunknode.DefaultPingPongMinRows, "the fewest rows of a step that --ping-pong splits")
	devices := fs.String("expert-device", "cpu", "comma-separated expert-node devices to measure in turn (cpu, cuda:0, fake)")
	inprocFlag := fs.Bool("inproc", true, "also measure the in-process engine (the ratio column's baseline)")
	wire := fs.String("wire", "bf16", "activation wire format: bf16 or f32")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the measurements (the cluster's, with the in-process repetitions that alternate with them) to this file")
	traceFile := fs.String("trace", "", "write an execution trace of the run to this file (go tool trace) and print, for the cluster's and the in-process engine's repetitions, how many Ps ran goroutines, which goroutines ran and which waited for a P")
	det := fs.Bool("deterministic", true, "the trunk's and expert nodes' --deterministic (batch-invariant kernels, per-pair answers summed in expert order; their default)")
	mmap := fs.Bool("mmap", false, "every node (the in-process baseline too) reads its weights through the file's map (their --mmap) instead of copying them into memory")
	spin := fs.Duration("spin-wait", 0, "how long idle compute threads poll before parking, for every node of this process (the trunk's and expert's --spin-wait, up's; 0: the kernels' 200µs, which at 32 sessions on a 2-core machine measured 10% faster than the nodes' 5ms and at 1 and 8 sessions 14-16% slower)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *spin < 0 {
		return fmt.Errorf("--spin-wait is %v, want >= 0", *spin)
	}
	defer kernels.SetSpinWait(kernels.SetSpinWait(*spin))
	if *model == "" {
		p, err := defaultModel(stderr)
		if err != nil {
			return err
		}
		*model = p
	}
	sessions, err := intList(*sessionsFlag)
	if err != nil {
		return err
	}
	maxS := 0
	for _, s := range sessions {
		maxS = max(maxS, s)
	}
	var wireType pb.WireDType
	switch *wire {
	case "bf16":
		wireType = pb.WireDType_WIRE_DTYPE_BF16
	case "f32":
		wireType = pb.WireDType_WIRE_DTYPE_F32
	default:
		return fmt.Errorf("--wire %q: want bf16 or f32", *wire)
	}
	tune := func(c *trunknode.Config) {
		c.Sched.MaxRunning = maxS
		c.Sched.MaxTokensPerStep = max(512, maxS*(*prompt))
		c.Sched.PingPong, c.Sched.PingPongMinRows = *pingPong, *pingPongMin
		c.Dispatch.WireDType = wireType
		c.Dispatch.Deterministic = *det
		c.Mmap = *mmap
	}
	// The in-process baseline runs beside the cluster, and its repetitions
	// alternate with the cluster's: on a shared, noisy machine both see the
	// same conditions, and the ratio is the median of the pairs' ratios.
	inproc, vocab := "", 0
	if *inprocFlag {
		addr, v, stop, err := startInProcess(ctx, *model, tune)
		if err != nil {
			return err
		}
		defer stop()
		inproc, vocab = addr, v
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop() // on errors; stopped before the summary otherwise
	}
	for _, dev := range strings.Split(*devices, ",") {
		if err := benchClusterOn(ctx, stdout, strings.TrimSpace(dev), *model, *experts, tune, *det, *mmap, sessions, *prompt, *tokens, *reps, vocab, inproc); err != nil {
			return err
		}
	}
	if *traceFile != "" {
		trace.Stop()
		return summarizeTrace(stdout, *traceFile, inproc != "")
	}
	return nil
}

// summarizeTrace prints where the Ps' time went during the cluster's
// repetitions (and the in-process engine's) from the execution trace.
func summarizeTrace(w io.Writer, path string, inproc bool) error {
	regions := []string{"cluster"}
	if inproc {
		regions = append(regions, "in-process")
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	reps, err := schedtrace.ReadRegions(f, regions...) // one pass for all
	if err != nil {
		return err
	}
	for i, region := range regions {
		fmt.Fprintf(w, "\nexecution trace %s, the %s repetitions (all devices and session counts):\n", path, region)
		if err := reps[i].Write(w, 8); err != nil {
			return err
		}
	}
	return nil
}

// startInProcess serves one trunk computing the experts itself (the
// baseline) and returns its address, the vocabulary size and its stop.
func startInProcess(ctx context.Context, model string, tune func(*trunknode.Config)) (string, int, func(), error) {
	lcfg := trunknode.DefaultConfig()
	lcfg.ModelPath, lcfg.LocalExperts = model, true
	lcfg.LogLevel = "warn" // the benchmark's own output stays readable
	tune(&lcfg)
	// Micro-batches only read the weights twice when the experts are in
	// process: nothing overlaps. The baseline runs as a trunk with local
	// experts does by default.
	lcfg.Sched.PingPong = false
	local, err := trunknode.New(lcfg)
	if err != nil {
		return "", 0, nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		local.Close()
		return "", 0, nil, err
	}
	lctx, stopLocal := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- local.Serve(lctx, lis) }()
	<-local.Ready()
	stop := func() {
		stopLocal()
		<-done
		local.Close()
	}
	return lis.Addr().String(), local.Model().Cfg.VocabSize, stop, nil
}

// benchClusterOn measures 1 trunk + experts expert nodes on device and prints
// a table: throughput, dispatch round trips, and where a decode step's time
// goes (the trunk's own work, the wire and queues, the expert nodes' compute).
func benchClusterOn(ctx context.Context, stdout io.Writer, device, model string, experts int, tune func(*trunknode.Config), det, mmap bool,
	sessions []int, prompt, tokens, reps, vocab int, inproc string) error {
	rec := &rttRecorder{}
	c, err := localcluster.Start(ctx, localcluster.Options{ModelPath: model, ExpertNodes: experts,
		ExpertDevice: device, ExpertGPUMemory: gpuShare(device, experts),
		Trunk:  func(tc *trunknode.Config) { tune(tc); tc.Dispatch.OnCall = rec.observe },
		Expert: func(ec *expertnode.Config) { ec.Deterministic, ec.Mmap = det, mmap }})
	if err != nil {
		return err
	}
	defer c.Close()
	cfg := c.Trunk.Model().Cfg
	if vocab == 0 {
		vocab = cfg.VocabSize
	}
	moeLayers := cfg.Layers
	fmt.Fprintf(stdout, "\nmodel %s: %s\n1 trunk + %d expert nodes on %s (loopback) vs in-process; %d prompt + %d generated tokens per session, median of %d (in-process and cluster runs alternate; ratio: median of the pairs; prefill and decode: the same ratio for prompt tokens per second until the last session's first token, and for the tokens per second that arrived after it)\n",
		model, cfg.Summary(), experts, device, prompt, tokens, reps)
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	echo, err := newEchoBench()
	if err != nil {
		return err
	}
	defer echo.close()
	fmt.Fprintln(w, "device\tsessions\tin-process tok/s\tcluster tok/s\tratio\tprefill\tdecode\tdispatch RTT p50\tp99\tnode compute p50\techo RTT p50\tp99\twire bytes/token\tstep ms\texpert compute ms\twire+queue ms\ttrunk ms\tblocked ms\t")
	for _, s := range sessions {
		var v, vin, ratios, blocked, preRatios, decRatios []float64
		var p50, p99, cp50 time.Duration
		var perTok float64
		var outB, inB int
		for i := range reps {
			var rin driveRates
			if inproc != "" {
				r := trace.StartRegion(ctx, "in-process")
				tin, err := drive(ctx, inproc, vocab, s, prompt, tokens, uint64(i))
				r.End()
				if err != nil {
					return err
				}
				vin = append(vin, tin.all)
				rin = tin
			}
			rec.reset()
			w0, t0 := c.Trunk.Dispatcher().Stats().WaitNanos.Load(), time.Now()
			r := trace.StartRegion(ctx, "cluster")
			tps, err := drive(ctx, c.Endpoint, vocab, s, prompt, tokens, uint64(i))
			r.End()
			if err != nil {
				return err
			}
			blocked = append(blocked, float64(c.Trunk.Dispatcher().Stats().WaitNanos.Load()-w0)/float64(time.Since(t0)))
			v = append(v, tps.all)
			if inproc != "" {
				ratios = append(ratios, tps.all/vin[i])
				// Each where both runs measured it: a run whose tokens all
				// came in its sessions' first chunks has no decode rate
				// (the server sends what a slow reader has not taken yet
				// as one chunk).
				if rin.prefill > 0 && tps.prefill > 0 {
					preRatios = append(preRatios, tps.prefill/rin.prefill)
				}
				if rin.decode > 0 && tps.decode > 0 {
					decRatios = append(decRatios, tps.decode/rin.decode)
				}
			}
			rec.mu.Lock()
			p50, p99, cp50 = quantile(rec.rtt, 0.5), quantile(rec.rtt, 0.99), quantile(rec.compute, 0.5)
			perTok = float64(rec.bytes) / float64(s*(tokens+prompt))
			outB, inB = medianInt(rec.out), medianInt(rec.in)
			rec.mu.Unlock()
		}
		// The same bytes each way, echoed by a bare gRPC stream on loopback.
		e50, e99, err := echo.run(ctx, outB, inB, 300)
		if err != nil {
			return err
		}
		ct, it := median(v), 0.0
		ratio, preRatio, decRatio := "-", "-", "-"
		if inproc != "" {
			it, ratio = median(vin), fmt.Sprintf("%.2f", median(ratios))
		}
		if len(preRatios) > 0 {
			preRatio = fmt.Sprintf("%.2f", median(preRatios))
		}
		if len(decRatios) > 0 {
			decRatio = fmt.Sprintf("%.2f", median(decRatios))
		}
		// A decode step makes one token per session: its time is s / tok/s. Per
		// step, every MoE layer waits for one dispatch round trip (p50), of which
		// the node's compute is a part; the rest of the step is the trunk's work.
		step := float64(s) / ct * 1e3
		rtt := float64(moeLayers) * float64(p50) / 1e6
		comp := float64(moeLayers) * float64(cp50) / 1e6
		// What the step actually waits for: the time the trunk blocked on
		// its layer calls after its own work (DispatchStats.WaitNanos), as a
		// share of the cluster run, times the step. With ping-pong
		// micro-batches (big steps) the other one computes meanwhile.
		fmt.Fprintf(w, "%s\t%d\t%.1f\t%.1f\t%s\t%s\t%s\t%v\t%v\t%v\t%v\t%v\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", device, s, it, ct, ratio, preRatio, decRatio,
			p50.Round(time.Microsecond), p99.Round(time.Microsecond), cp50.Round(time.Microsecond), e50.Round(time.Microsecond), e99.Round(time.Microsecond), perTok,
			step, comp, rtt-comp, step-rtt, median(blocked)*step)
	}
	return w.Flush()
}

func medianInt(v []int) int {
	if len(v) == 0 {
		return 0
	}
	s := append([]int(nil), v...)
	sort.Ints(s)
	return s[len(s)/2]
}

// echoServer is an ExpertService that computes nothing: it answers every
// batch at once with an out of batch.rows bytes (this benchmark's own
// convention), so that echoBench measures what gRPC on loopback alone costs
// for a dispatch's bytes.
type echoServer struct {
	pb.UnimplementedExpertServiceServer
}

func (echoServer) Dispatch(st grpc.BidiStreamingServer[pb.ExpertBatch, pb.ExpertResult]) error {
	var buf []byte
	for {
		b, err := st.Recv()
		if err != nil {
			return nil
		}
		if n := int(b.Rows); cap(buf) < n {
			buf = make([]byte, n)
		}
		if err := st.Send(&pb.ExpertResult{StepId: b.StepId, Out: buf[:b.Rows]}); err != nil {
			return nil
		}
	}
}

// echoBench is a loopback gRPC echo of dispatch-sized messages.
type echoBench struct {
	srv  *grpc.Server
	conn *grpc.ClientConn
}

func newEchoBench() (*echoBench, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	// The node-to-node connections' flow-control windows and codec, as the
	// dispatch streams have.
	e := &echoBench{srv: grpc.NewServer(append(rpc.PeerServerOptions(), grpc.MaxRecvMsgSize(64<<20), grpc.ForceServerCodecV2(rpc.PeerCodec()))...)}
	pb.RegisterExpertServiceServer(e.srv, echoServer{})
	go e.srv.Serve(lis)
	// The client dials as the trunk dials expert nodes.
	dial, err := rpc.Dialer(rpc.TLSFiles{}, 64<<20)
	if err == nil {
		e.conn, err = dial(context.Background(), lis.Addr().String())
	}
	if err != nil {
		e.srv.Stop()
		return nil, err
	}
	return e, nil
}

// run sends n messages of out payload bytes one at a time, each answered with
// in bytes, and returns the round trips' median and 99th percentile.
func (e *echoBench) run(ctx context.Context, out, in, n int) (p50, p99 time.Duration, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := pb.NewExpertServiceClient(e.conn).Dispatch(ctx)
	if err != nil {
		return 0, 0, err
	}
	act := make([]byte, out)
	rtts := make([]time.Duration, 0, n)
	for i := range n + 20 {
		start := time.Now()
		if err := st.Send(&pb.ExpertBatch{StepId: uint64(i), Rows: uint32(in), Activations: act}); err != nil {
			return 0, 0, err
		}
		if _, err := st.Recv(); err != nil {
			return 0, 0, err
		}
		if i >= 20 { // warm-up
			rtts = append(rtts, time.Since(start))
		}
	}
	st.CloseSend()
	return quantile(rtts, 0.5), quantile(rtts, 0.99), nil
}

func (e *echoBench) close() {
	e.conn.Close()
	e.srv.Stop()
}
