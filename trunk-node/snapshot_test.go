package trunknode

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tensor"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// exportAll reads a whole ExportSession stream.
func exportAll(t *testing.T, c pb.SwitchyardClient, id string) ([]*pb.SessionSnapshotChunk, error) {
	t.Helper()
	st, err := c.ExportSession(context.Background(), &pb.ExportSessionRequest{SessionId: id})
	if err != nil {
		return nil, err
	}
	var out []*pb.SessionSnapshotChunk
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
}

// importAll streams chunks into ImportSession.
func importAll(t *testing.T, c pb.SwitchyardClient, chunks []*pb.SessionSnapshotChunk) (*pb.Session, error) {
	t.Helper()
	st, err := c.ImportSession(context.Background())
	if err != nil {
		return nil, err
	}
	for _, m := range chunks {
		if err := st.Send(m); err != nil {
			break // the server answered early; CloseAndRecv has its status
		}
	}
	return st.CloseAndRecv()
}

// hd32Model writes the shared fixture with attention heads of 32 (2 query
// heads, 1 KV head: the same tensors), which a Q8_0 KV cache's 32-value
// blocks need, as a Hugging Face folder, and returns it.
func hd32Model(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ents, err := os.ReadDir(fixtureHF(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(fixtureHF(t), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "config.json" {
			var c map[string]any
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatal(err)
			}
			c["num_attention_heads"], c["num_key_value_heads"] = 2, 1
			if b, err = json.Marshal(c); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestSessionMovesBetweenNodes: a session exported from one trunk node and
// imported into another continues exactly as it would have on the first,
// with each KV cache element type (a Q8_0 state moves as its blocks, state
// format 3).
func TestSessionMovesBetweenNodes(t *testing.T) {
	t.Run("bf16", func(t *testing.T) { testSessionMoves(t, tensor.BF16, nil) })
	t.Run("q8_0", func(t *testing.T) {
		model := hd32Model(t)
		testSessionMoves(t, tensor.Q8_0, func(c *Config) { c.ModelPath, c.KVDType = model, tensor.Q8_0 })
	})
}

func testSessionMoves(t *testing.T, kv tensor.DType, edit func(*Config)) {
	a, na := startLocal(t, edit)
	b, nb := startLocal(t, edit)
	ctx := context.Background()
	tok := na.Tokenizer()
	s, err := a.CreateSession(ctx, &pb.CreateSessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	turn1 := tok.Encode("The keeper climbed the lighthouse", true)
	if r := generate(t, a, &pb.GenerateRequest{SessionId: s.SessionId, Input: &pb.GenerateRequest_TokenIds{TokenIds: ids(turn1)}, MaxTokens: 5, IgnoreEos: true}); r.status != nil {
		t.Fatal(r.status)
	}
	chunks, err := exportAll(t, a, s.SessionId)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, m := range chunks {
		total += int64(len(m.Data))
	}
	if len(chunks) == 0 || chunks[0].TotalBytes != total || chunks[0].Tokens == 0 {
		t.Fatalf("%d chunks, first %d/%d tokens, %d bytes received", len(chunks), chunks[0].TotalBytes, chunks[0].Tokens, total)
	}
	moved, err := importAll(t, b, chunks)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := a.GetSession(ctx, &pb.GetSessionRequest{SessionId: s.SessionId})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Tokens != orig.Tokens || moved.StateBytes != orig.StateBytes || moved.SessionId == s.SessionId {
		t.Fatalf("imported %+v, original %+v", moved, orig)
	}
	// One page per attention layer, in the nodes' KV element type.
	if want := hybrid.PageTokens * hybrid.KVBytesPerToken(nb.Model().Cfg, kv); moved.KvBytes != want || nb.Model().KVDType != kv {
		t.Fatalf("imported session holds %d KV bytes (node %v), want one page of %v (%d)", moved.KvBytes, nb.Model().KVDType, kv, want)
	}
	if _, _, kv := nb.Store().Usage(); kv != moved.KvBytes {
		t.Fatalf("node B charges %d KV bytes for a session of %d", kv, moved.KvBytes)
	}
	turn2 := tok.Encode(" and lit the lamp", true)
	req := func(id string) *pb.GenerateRequest {
		return &pb.GenerateRequest{SessionId: id, Input: &pb.GenerateRequest_TokenIds{TokenIds: ids(turn2)}, MaxTokens: 8, IgnoreEos: true}
	}
	ra, rb := generate(t, a, req(s.SessionId)), generate(t, b, req(moved.SessionId))
	if ra.status != nil || rb.status != nil {
		t.Fatal(ra.status, rb.status)
	}
	if !slices.Equal(ra.ids, rb.ids) || rb.final.Usage.CachedTokens == 0 {
		t.Fatalf("moved session generated %v (usage %v), original %v", rb.ids, rb.final.Usage, ra.ids)
	}
	// Both nodes counted the transfer and its bytes.
	for _, c := range []struct {
		n         *Node
		direction string
	}{{na, "export"}, {nb, "import"}} {
		got := counter(t, c.n, "switchyard_session_transfers_total", map[string]string{"direction": c.direction, "code": "OK"})
		bytes := counter(t, c.n, "switchyard_session_transfer_bytes_total", map[string]string{"direction": c.direction})
		if got != 1 || bytes != float64(total) {
			t.Errorf("%s: %v transfers, %v bytes; want 1 and %d", c.direction, got, bytes, total)
		}
	}
}

// counter reads one counter of a node's registry (0 when absent).
func counter(t *testing.T, n *Node, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestImportSessionRefusesBadSnapshots(t *testing.T) {
	c, n := startLocal(t, nil)
	ctx := context.Background()
	s, err := c.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: "Hello there, keeper"}})
	if err != nil {
		t.Fatal(err)
	}
	good, err := exportAll(t, c, s.SessionId)
	if err != nil {
		t.Fatal(err)
	}
	data := good[0].Data
	with := func(d []byte, total int64) []*pb.SessionSnapshotChunk {
		return []*pb.SessionSnapshotChunk{{Data: d, TotalBytes: total, Tokens: good[0].Tokens}}
	}
	flip := func(i int) []byte {
		d := slices.Clone(data)
		d[i] ^= 0x40
		return d
	}
	// A state with the right checksums for a model of another shape.
	other := *n.model.Cfg
	other.MambaDState *= 2
	foreign := &Session{State: hybrid.NewState(&other), Unfed: []int{1}}
	var fw chunkCollector
	foreignID := snapIdentity{cfg: &other, weights: n.snap.weights} // crafted: this node's weights fingerprint, another shape
	if err := writeSnapshot(&fw, foreign, foreignID); err != nil {
		t.Fatal(err)
	}
	// ... and one holding more tokens than this node's context limit: refused
	// for its model from the first chunk, before its size.
	big := &Session{State: hybrid.NewState(&other)}
	for i := range big.State.KV {
		kv := make([]float32, 600*other.KVDim())
		big.State.KV[i].Append(kv, kv, 600)
	}
	big.State.Pos = 600
	var bw chunkCollector
	if err := writeSnapshot(&bw, big, foreignID); err != nil {
		t.Fatal(err)
	}
	// The same shape with other weights, and a state holding a NaN.
	orig, err := n.store.Get(s.SessionId)
	if err != nil {
		t.Fatal(err)
	}
	var ow chunkCollector
	if err := writeSnapshot(&ow, orig, snapIdentity{cfg: n.model.Cfg, weights: [32]byte{1}}); err != nil {
		t.Fatal(err)
	}
	poisoned := &Session{State: hybrid.NewState(n.model.Cfg)}
	poisoned.State.SSM[0][3] = float32(math.NaN())
	var pw chunkCollector
	if err := writeSnapshot(&pw, poisoned, n.snap); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		chunks []*pb.SessionSnapshotChunk
		want   codes.Code
	}{
		{"empty stream", nil, codes.InvalidArgument},
		{"no total_bytes", with(data, 0), codes.InvalidArgument},
		{"larger than any session", with(data, 1<<40), codes.FailedPrecondition},
		{"oversized chunk", with(append(slices.Clone(data), make([]byte, snapChunk)...), int64(len(data))), codes.InvalidArgument},
		{"truncated", with(data[:len(data)/2], int64(len(data))), codes.InvalidArgument},
		{"more data than announced", with(data, int64(len(data)-1)), codes.InvalidArgument},
		{"corrupt header", with(flip(42), int64(len(data))), codes.InvalidArgument},
		{"corrupt state", with(flip(len(data)/2), int64(len(data))), codes.InvalidArgument},
		{"not a snapshot", with([]byte("GIF89a, certainly not a session"), 31), codes.InvalidArgument},
		{"another model", with(fw.b, int64(len(fw.b))), codes.FailedPrecondition},
		{"another model, long", with(bw.b[:4096], int64(len(bw.b))), codes.FailedPrecondition},
		{"other weights", with(ow.b, int64(len(ow.b))), codes.FailedPrecondition},
		{"non-finite state", with(pw.b, int64(len(pw.b))), codes.InvalidArgument},
	}
	held, _, _ := n.Store().Usage()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := importAll(t, c, tc.chunks)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if why := map[string]string{"another model": "fingerprint", "another model, long": "fingerprint", "oversized chunk": "per chunk",
				"other weights": "other weights", "non-finite state": "NaN"}[tc.name]; why != "" && !strings.Contains(err.Error(), why) {
				t.Fatalf("refused for another reason than %q: %v", why, err)
			}
		})
	}
	if now, _, _ := n.Store().Usage(); now != held {
		t.Fatalf("%d sessions after refused imports, want %d", now, held)
	}
	if got := counter(t, n, "switchyard_session_transfers_total", map[string]string{"direction": "import", "code": "FailedPrecondition"}); got != 4 {
		t.Fatalf("%v imports counted as FailedPrecondition, want 4", got)
	}
	// The good snapshot still imports, and a missing session is NotFound.
	if _, err := importAll(t, c, good); err != nil {
		t.Fatal(err)
	}
	if _, err := exportAll(t, c, "s-nope"); status.Code(err) != codes.NotFound {
		t.Fatalf("export of a missing session: %v", err)
	}
	if _, err := exportAll(t, c, ""); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("export without an id: %v", err)
	}
	// A draining node still gives its sessions away but takes none.
	n.sched.Drain()
	if _, err := exportAll(t, c, s.SessionId); err != nil {
		t.Fatalf("export while draining: %v", err)
	}
	if _, err := importAll(t, c, good); status.Code(err) != codes.Unavailable {
		t.Fatalf("import while draining: %v", err)
	}
}

// TestImportSessionLimits: a snapshot that does not fit the memory budget is
// refused before it is received, and a client that stops sending is dropped.
func TestImportSessionLimits(t *testing.T) {
	src, _ := startLocal(t, nil)
	ctx := context.Background()
	s, err := src.CreateSession(ctx, &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: "a prompt long enough to hold some KV cache pages"}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := exportAll(t, src, s.SessionId)
	if err != nil {
		t.Fatal(err)
	}
	small, _ := startLocal(t, func(c *Config) { c.Memory.KVBytes = 1000 })
	if _, err := importAll(t, small, snap); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("import into a full node: %v", err)
	}

	prev := importIdleTimeout
	importIdleTimeout = 100 * time.Millisecond
	defer func() { importIdleTimeout = prev }()
	dst, _ := startLocal(t, nil)
	// The handler's receive goroutine must end with each abandoned import (the
	// connection's own goroutines are started first, by a plain call).
	if _, err := dst.ModelInfo(ctx, &pb.ModelInfoRequest{}); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	defer func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines: %d before the silent imports, %d after\n%s", base, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	st, err := dst.ImportSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	half := &pb.SessionSnapshotChunk{Data: snap[0].Data[:len(snap[0].Data)/2], TotalBytes: snap[0].TotalBytes}
	if err := st.Send(half); err != nil {
		t.Fatal(err)
	}
	// ... and then nothing: the server gives up after the idle timeout.
	if _, err := st.CloseAndRecv(); err == nil {
		t.Fatal("a half-sent snapshot was accepted")
	}
	for range 3 { // more silent imports than the leak check's slack
		st, err := dst.ImportSession(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(half); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := st.Header(); done <- err }() // returns when the server ends the call
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the server kept a silent import open")
		}
		if _, err := st.CloseAndRecv(); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("silent import ended with %v, want DeadlineExceeded", err)
		}
	}
}

type chunkCollector struct{ b []byte }

func (c *chunkCollector) Write(p []byte) (int, error) { c.b = append(c.b, p...); return len(p), nil }

func TestChunkWriterSplitsAndReassembles(t *testing.T) {
	var got []*pb.SessionSnapshotChunk
	w := &chunkWriter{send: func(m *pb.SessionSnapshotChunk) error { got = append(got, m); return nil },
		first: &pb.SessionSnapshotChunk{TotalBytes: 42, Tokens: 7}}
	want := make([]byte, 2*snapChunk+12345)
	for i := range want {
		want[i] = byte(i * 7)
	}
	for rest := want; len(rest) > 0; { // odd-sized writes across chunk edges
		k := min(len(rest), 300007)
		if _, err := w.Write(rest[:k]); err != nil {
			t.Fatal(err)
		}
		rest = rest[k:]
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	var all []byte
	for i, m := range got {
		if (i == 0) != (m.TotalBytes == 42 && m.Tokens == 7) {
			t.Fatalf("chunk %d carries total %d tokens %d", i, m.TotalBytes, m.Tokens)
		}
		if len(m.Data) > snapChunk || (i < len(got)-1 && len(m.Data) != snapChunk) {
			t.Fatalf("chunk %d has %d bytes", i, len(m.Data))
		}
		all = append(all, m.Data...)
	}
	if len(got) != 3 || !slices.Equal(all, want) {
		t.Fatalf("%d chunks, reassembled %d of %d bytes, equal %v", len(got), len(all), len(want), slices.Equal(all, want))
	}
	sendErr := errors.New("client gone")
	w = &chunkWriter{send: func(*pb.SessionSnapshotChunk) error { return sendErr }}
	if _, err := w.Write(want); !errors.Is(err, sendErr) {
		t.Fatalf("write after a failed send: %v", err)
	}
}

// With a snapshot key, a node accepts only snapshots signed with it: its own
// exports import, an unsigned or tampered one is PERMISSION_DENIED.
func TestSignedSnapshots(t *testing.T) {
	key := []byte("0123456789abcdef-cluster-key")
	c, n := startLocal(t, func(cfg *Config) { cfg.SnapshotKey = key })
	s, good := sessionSnapshot(t, c, "Hello there, keeper")
	if _, err := importAll(t, c, good); err != nil {
		t.Fatalf("own signed export: %v", err)
	}
	orig, _ := n.store.Get(s.SessionId)
	for name, id := range map[string]snapIdentity{
		"unsigned":  {cfg: n.model.Cfg, weights: n.snap.weights},
		"other key": {cfg: n.model.Cfg, weights: n.snap.weights, key: []byte("another cluster's key!!")},
	} {
		var w chunkCollector
		if err := writeSnapshot(&w, orig, id); err != nil {
			t.Fatal(err)
		}
		_, err := importAll(t, c, []*pb.SessionSnapshotChunk{{Data: w.b, TotalBytes: int64(len(w.b)), Tokens: good[0].Tokens}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: %v", name, err)
		}
	}
	data := slices.Clone(good[0].Data)
	data[len(data)-40] ^= 1 // inside the state, under the signature
	if _, err := importAll(t, c, []*pb.SessionSnapshotChunk{{Data: data, TotalBytes: good[0].TotalBytes, Tokens: good[0].Tokens}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("tampered: %v", err)
	}
}

// An import that trickles (a byte every little while) is ended once it falls
// below the progress requirement, instead of holding an import slot for ever.
func TestImportMustMakeProgress(t *testing.T) {
	c, _ := startLocal(t, nil)
	ctx := context.Background()
	_, snap := sessionSnapshot(t, c, "Hello there, keeper")
	prevGrace, prevRate := importGrace, importMinRate
	importGrace, importMinRate = 200*time.Millisecond, 1<<20
	defer func() { importGrace, importMinRate = prevGrace, prevRate }()
	st, err := c.ImportSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := snap[0].Data
	start := time.Now()
	var sendErr error
	// The head in full (so the model checks pass), then a byte at a time.
	if err := st.Send(&pb.SessionSnapshotChunk{Data: data[:64], TotalBytes: snap[0].TotalBytes}); err != nil {
		t.Fatal(err)
	}
	for i := 64; i < len(data) && time.Since(start) < 5*time.Second; i++ {
		msg := &pb.SessionSnapshotChunk{Data: data[i : i+1]}
		if sendErr = st.Send(msg); sendErr != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err = st.CloseAndRecv()
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "too slowly") {
		t.Fatalf("trickled import ended with %v (send error %v)", err, sendErr)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("the trickle was cut only after %v", el)
	}
}

// sessionSnapshot creates a session holding prompt and exports it.
func sessionSnapshot(t *testing.T, c pb.SwitchyardClient, prompt string) (*pb.Session, []*pb.SessionSnapshotChunk) {
	t.Helper()
	s, err := c.CreateSession(context.Background(), &pb.CreateSessionRequest{Prompt: &pb.CreateSessionRequest_Text{Text: prompt}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := exportAll(t, c, s.SessionId)
	if err != nil {
		t.Fatal(err)
	}
	return s, snap
}
