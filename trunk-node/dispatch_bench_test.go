package trunknode

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/tensor"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// fakeExpertEnv, set to a duration, makes the test binary serve a fake
// expert node answering that much later (TestMain).
const fakeExpertEnv = "SWITCHYARD_FAKE_EXPERT_DELAY"

// serveFakeProcess serves a fakeExpert with the given answer delay on a
// loopback port, prints the address and serves until stdin closes.
func serveFakeProcess(delay string) {
	d, err := time.ParseDuration(delay)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	pb.RegisterExpertServiceServer(s, &fakeExpert{delay: d})
	go s.Serve(lis)
	fmt.Println(lis.Addr())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // the parent closes stdin
	s.Stop()
}

// startFakeProcess runs a fake expert node in a child process (the test
// binary) and returns its address.
func startFakeProcess(b *testing.B, delay time.Duration) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fakeExpertEnv+"="+delay.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(addr)
}

// BenchmarkDispatchOverlap measures whether a layer call's remote experts
// overlap the trunk's own work between Begin and Wait (the shared expert):
// the expert nodes are fakes in processes of their own that answer 3 ms
// after they receive (compute on other machines: they take no core), and
// the caller multiplies a bf16 matrix on every thread meanwhile.
// "overlapped" near max(compute, call) means the messages left before the
// caller's work; near compute + call, after it.
func BenchmarkDispatchOverlap(b *testing.B) {
	const delay = 3 * time.Millisecond
	a0, a1 := startFakeProcess(b, delay), startFakeProcess(b, delay)
	d := NewDispatcher(DispatchConfig{Dial: newTestDispatcherDial()}, 1536)
	b.Cleanup(d.Close)
	d.SetTable(table2(a0, a1, false))
	// H-Tiny rows, 3 KiB in bf16 (gRPC's writer yields before flushing
	// writes under 1,000 bytes, which then wait for a free P).
	req, _ := request(1, 1536, 2)
	if err := d.Step(context.Background()).Begin(req).Wait(); err != nil { // opens the streams
		b.Fatal(err)
	}
	// Two 32 MiB products on this machine's threads (1.4-1.8 ms here), cold
	// from memory: the trunk's own work between Begin and Wait.
	rng := rand.New(rand.NewPCG(1, 2))
	ws := make([]tensor.Matrix, 8)
	for i := range ws {
		data := make([]byte, 2*4096*4096)
		for j := 0; j < len(data); j += 97 {
			data[j] = byte(rng.Uint32())
		}
		ws[i] = tensor.Matrix{DType: tensor.BF16, Rows: 4096, Cols: 4096, Data: data}
	}
	// The trunk command's spin wait: the workers still poll when the next
	// layer's Begin comes, so no idle P picks up goroutines meanwhile.
	defer kernels.SetSpinWait(kernels.SetSpinWait(DefaultConfig().SpinWait))
	x, out := make([]float32, 4096), make([]float32, 4096)
	work := func(i int) {
		kernels.MatMul(out, ws[i%len(ws)], x, 1)
		kernels.MatMul(out, ws[(i+1)%len(ws)], x, 1)
	}
	run := func(name string, f func(i int)) {
		b.Run(fmt.Sprintf("%s/threads=%d", name, kernels.Threads()), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				f(i)
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/layer")
		})
	}
	run("compute", work)
	run("call", func(int) {
		if err := d.Step(context.Background()).Begin(req).Wait(); err != nil {
			b.Fatal(err)
		}
	})
	run("overlapped", func(i int) {
		p := d.Step(context.Background()).Begin(req)
		work(i)
		if err := p.Wait(); err != nil {
			b.Fatal(err)
		}
	})
}
