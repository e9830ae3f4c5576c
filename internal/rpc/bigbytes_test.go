package rpc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

func stockCodec() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// bigMessages are expert-stream messages with bytes fields below, at and
// above bigBytesMin, beside every other kind of field.
func bigMessages() []proto.Message {
	rng := rand.New(rand.NewPCG(1, 2))
	var ms []proto.Message
	for _, n := range []int{0, 100, bigBytesMin - 1, bigBytesMin, 1 << 20} {
		ms = append(ms,
			&pb.ExpertBatch{StepId: 7, Layer: 3, Rows: 2, Hidden: 4, Activations: randBytes(rng, n), TopK: 2,
				ExpertIds: []uint32{1, 2, 3, 4}, Weights: []float32{0.5, 0.25, 1, 2}, Chunk: 1, Chunks: 3,
				Trace: map[string]string{"traceparent": "00-abc-def-01"}, Dtype: pb.WireDType_WIRE_DTYPE_F32, PerPair: true},
			&pb.ExpertResult{StepId: 9, Layer: 1, Chunk: 2, Rows: 5, Out: randBytes(rng, n), Error: "", ComputeMicros: 12, PerPair: true},
			&pb.ExpertResult{Out: randBytes(rng, n), Error: "node draining"},
			&pb.SessionSnapshotChunk{Data: randBytes(rng, n), TotalBytes: int64(n)},
			// No bytes field: the proto codec's at once, however long.
			&pb.GenerateRequest{Input: &pb.GenerateRequest_Text{Text: strings.Repeat("a prompt ", n/9)}, SessionId: "s1"})
	}
	return ms
}

// frames cuts b into pieces of random sizes (as the transport's frames
// arrive), so that varints and fields straddle buffers.
func frames(rng *rand.Rand, b []byte) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 1+rng.IntN(3000))
		s = append(s, mem.SliceBuffer(append([]byte(nil), b[:n]...)))
		b = b[n:]
	}
	return s
}

func decodeWith(c encoding.CodecV2, data mem.BufferSlice, like proto.Message) (proto.Message, error) {
	m := like.ProtoReflect().New().Interface()
	return m, c.Unmarshal(data, m)
}

// TestBigBytesWireCompatible: PeerCodec's messages are the proto codec's
// protobuf: each side decodes what the other encodes into the same message,
// whatever the frames; and a large field is sent from the caller's own slice.
func TestBigBytesWireCompatible(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	peer, stock := PeerCodec(), stockCodec()
	for i, m := range bigMessages() {
		for _, enc := range []encoding.CodecV2{peer, stock} {
			for _, dec := range []encoding.CodecV2{peer, stock} {
				data, err := enc.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				got, err := decodeWith(dec, frames(rng, data.Materialize()), m)
				if err != nil {
					t.Fatalf("message %d, %T encoded by %T, decoded by %T: %v", i, m, enc, dec, err)
				}
				if !proto.Equal(got, m) {
					t.Fatalf("message %d, %T encoded by %T, decoded by %T: not the same message", i, m, enc, dec)
				}
			}
		}
		data, err := peer.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var big []byte
		switch m := m.(type) {
		case *pb.ExpertBatch:
			big = m.Activations
		case *pb.ExpertResult:
			big = m.Out
		case *pb.SessionSnapshotChunk:
			big = m.Data
		}
		last := data[len(data)-1].ReadOnlyData()
		if aliased := len(big) > 0 && &last[0] == &big[0]; aliased != (len(big) >= bigBytesMin) {
			t.Errorf("message %d (%d bytes of payload): sent from the caller's slice %v, want %v", i, len(big), aliased, len(big) >= bigBytesMin)
		}
		// And read back by the one-copy path, not the proto codec's.
		if len(big) >= bigBytesMin {
			got := m.ProtoReflect().New().Interface()
			if err := unmarshalBig(frames(rng, data.Materialize()), got); err != nil || !proto.Equal(got, m) {
				t.Errorf("message %d: the one-copy decoder gave %v (same message: %v)", i, err, err == nil && proto.Equal(got, m))
			}
		}
	}
}

// TestBigBytesRepeatedField: a bytes field that stands twice decodes as the
// proto codec decodes it (the last one wins), large or small, in either order.
func TestBigBytesRepeatedField(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	small, large := randBytes(rng, 10), randBytes(rng, 2*bigBytesMin)
	field := func(v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), v)
	}
	head := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 42)
	for _, order := range [][][]byte{{small, large}, {large, small}, {large, large[:bigBytesMin+3]}, {large, nil}, {nil, large}} {
		b := append(append(append([]byte(nil), head...), field(order[0])...), field(order[1])...)
		want, err := decodeWith(stockCodec(), mem.BufferSlice{mem.SliceBuffer(b)}, &pb.ExpertResult{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeWith(PeerCodec(), frames(rng, b), &pb.ExpertResult{})
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("fields of %d then %d bytes: got out of %d bytes, want %d", len(order[0]), len(order[1]), len(got.(*pb.ExpertResult).Out), len(order[1]))
		}
	}
}

// TestBigBytesMalformed: every cut of a large message, and bytes changed
// at random, fail or decode as with the proto codec (never a panic, never
// a message the proto codec would not give).
func TestBigBytesMalformed(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	m := &pb.ExpertBatch{StepId: 1, Rows: 3, Activations: randBytes(rng, 3*bigBytesMin), ExpertIds: []uint32{1, 2, 3}, Trace: map[string]string{"a": "b"}}
	good, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	check := func(b []byte) {
		t.Helper()
		want, werr := decodeWith(stockCodec(), mem.BufferSlice{mem.SliceBuffer(b)}, m)
		got, gerr := decodeWith(PeerCodec(), frames(rng, b), m)
		if (werr == nil) != (gerr == nil) || (werr == nil && !proto.Equal(got, want)) {
			t.Fatalf("%d bytes: proto codec %v, PeerCodec %v (same message: %v)", len(b), werr, gerr, werr == nil && gerr == nil && proto.Equal(got, want))
		}
	}
	for cut := 0; cut < len(good); cut += 1 + cut/7 {
		check(good[:cut])
	}
	for range 300 {
		b := append([]byte(nil), good...)
		for range 1 + rng.IntN(3) {
			b[rng.IntN(min(len(b), 64))] = byte(rng.Uint32()) // the head: tags and lengths
		}
		check(b)
	}
}

// FuzzBigBytesUnmarshal: PeerCodec decodes any bytes as the proto codec
// does (both fail, or both give the same message), with a threshold low
// enough for the fuzzer's inputs to take the out-of-line path.
func FuzzBigBytesUnmarshal(f *testing.F) {
	prev := bigBytesMin
	bigBytesMin = 4
	defer func() { bigBytesMin = prev }()
	for _, m := range []proto.Message{
		&pb.ExpertBatch{StepId: 1, Activations: []byte("abcdefgh"), ExpertIds: []uint32{1}, Trace: map[string]string{"k": "v"}},
		&pb.ExpertResult{Out: []byte("0123456789"), Error: "x"},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b, uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		for _, like := range []proto.Message{&pb.ExpertBatch{}, &pb.ExpertResult{}} {
			want, werr := decodeWith(stockCodec(), mem.BufferSlice{mem.SliceBuffer(b)}, like)
			var data mem.BufferSlice
			for rest, n := b, 1+int(cut%16); len(rest) > 0; rest = rest[min(n, len(rest)):] {
				data = append(data, mem.SliceBuffer(rest[:min(n, len(rest))]))
			}
			got, gerr := decodeWith(PeerCodec(), data, like)
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("%T: proto codec %v, PeerCodec %v", like, werr, gerr)
			}
			if werr == nil && !proto.Equal(got, want) {
				t.Fatalf("%T: different messages", like)
			}
		}
	})
}

// echoExperts answers every batch with its activations as out.
type echoExperts struct {
	pb.UnimplementedExpertServiceServer
}

func (echoExperts) Dispatch(st grpc.BidiStreamingServer[pb.ExpertBatch, pb.ExpertResult]) error {
	for {
		b, err := st.Recv()
		if err != nil {
			return nil
		}
		if err := st.Send(&pb.ExpertResult{StepId: b.StepId, Out: b.Activations}); err != nil {
			return nil
		}
	}
}

// BenchmarkPeerCodec: round trips of dispatch-sized messages (the payload
// each way) over a loopback gRPC stream with the node-to-node windows,
// both ends on the proto codec or on PeerCodec.
func BenchmarkPeerCodec(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 8 << 20} {
		for _, name := range []string{"proto", "peer"} {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, name), func(b *testing.B) {
				codec := stockCodec()
				if name == "peer" {
					codec = PeerCodec()
				}
				lis, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				srv := grpc.NewServer(append(PeerServerOptions(), grpc.ForceServerCodecV2(codec), grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))...)
				pb.RegisterExpertServiceServer(srv, echoExperts{})
				go srv.Serve(lis)
				defer srv.Stop()
				conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithInitialWindowSize(PeerStreamWindow), grpc.WithInitialConnWindowSize(PeerConnWindow),
					grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec), grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				st, err := pb.NewExpertServiceClient(conn).Dispatch(ctx)
				if err != nil {
					b.Fatal(err)
				}
				act := randBytes(rand.New(rand.NewPCG(1, 1)), size)
				b.SetBytes(int64(2 * size))
				for i := 0; b.Loop(); i++ {
					if err := st.Send(&pb.ExpertBatch{StepId: uint64(i), Activations: act}); err != nil {
						b.Fatal(err)
					}
					if _, err := st.Recv(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestBigBytesUnknownFields: fields the message does not know, or knows with
// another wire type, stay in its unknown fields byte for byte (varints
// longer than needed too), as the proto codec keeps them.
func TestBigBytesUnknownFields(t *testing.T) {
	big := protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), make([]byte, bigBytesMin))
	cases := map[string][]byte{
		"unknown field, long varint":    {0xF8, 0x01, 0x80, 0x80, 0x00},       // field 31, varint 0 in three bytes
		"string field as a varint":      {0x30, 0x80, 0x00},                   // error (6), varint 0 in two bytes
		"long tag":                      {0xA0, 0x80, 0x00, 0x07},             // rows (4), tag in three bytes
		"unknown bytes, long length":    {0xFA, 0x01, 0x82, 0x00, 0x61, 0x62}, // field 31, "ab" with a 2-byte length
		"unknown fixed32 and fixed64":   {0xFD, 0x01, 1, 2, 3, 4, 0xF9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8},
		"known varint with long length": {0x08, 0xFF, 0xFF, 0x03},
	}
	for name, extra := range cases {
		for _, b := range [][]byte{append(append([]byte(nil), extra...), big...), append(append([]byte(nil), big...), extra...)} {
			want, werr := decodeWith(stockCodec(), mem.BufferSlice{mem.SliceBuffer(b)}, &pb.ExpertResult{})
			got, gerr := decodeWith(PeerCodec(), frames(rand.New(rand.NewPCG(1, 1)), b), &pb.ExpertResult{})
			if werr != nil || gerr != nil {
				t.Fatalf("%s: proto codec %v, PeerCodec %v", name, werr, gerr)
			}
			if !proto.Equal(got, want) {
				t.Errorf("%s: unknown fields %x, want %x", name, got.ProtoReflect().GetUnknown(), want.ProtoReflect().GetUnknown())
			}
		}
	}
}

// TestBigBytesProto2: a proto2 message's bytes field (which may be
// required) is left to the proto codec, large or not.
func TestBigBytesProto2(t *testing.T) {
	m := &descriptorpb.UninterpretedOption{StringValue: make([]byte, 2*bigBytesMin), IdentifierValue: proto.String("x")}
	data, err := PeerCodec().Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if last := data[len(data)-1].ReadOnlyData(); len(data) != 1 && &last[0] == &m.StringValue[0] {
		t.Fatal("a proto2 bytes field was sent out of line")
	}
	got, err := decodeWith(PeerCodec(), frames(rand.New(rand.NewPCG(9, 9)), data.Materialize()), m)
	if err != nil || !proto.Equal(got, m) {
		t.Fatalf("round trip: %v, same message %v", err, err == nil && proto.Equal(got, m))
	}
}
