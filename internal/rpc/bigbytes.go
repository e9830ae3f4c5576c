package rpc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Messages with large bytes fields (the expert stream's activation rows:
// ExpertBatch.activations and ExpertResult.out, megabytes each at prefill)
// are encoded and decoded without the proto codec's copies of those fields.
// The proto codec copies such a field three times between the caller's
// slice and the receiver's: into the marshal buffer on the sending side, and
// on the receiving side from the transport's 16 KiB frames into one
// contiguous buffer, then out of it into the message (proto.Unmarshal never
// aliases its input). A CPU profile of a prefill-heavy bench-cluster run (32
// sessions of 64-token prompts, three nodes on two cores) spent 20% of its
// samples in memmove, most of it these copies.
//
// bigCodec sends a large bytes field as its own buffer after the rest of the
// message (the caller's slice itself, no copy; the wire bytes are ordinary
// protobuf, since a parser takes fields in any order), and reads one from
// the frames straight into the message's slice (one copy). Every other field
// goes through the proto codec as before. So the messages are the same
// protobuf either way: a peer with the stock codec (grpcurl, an older node)
// reads and writes them as before (TestBigBytesWireCompatible).

// bigBytesMin is the size from which a bytes field travels out of line, and
// the smallest received message the decoder scans for such fields (a
// variable for tests).
var bigBytesMin = 16 << 10

// bigCodec is the proto codec with out-of-line large bytes fields (above).
type bigCodec struct{ base encoding.CodecV2 }

// PeerCodec returns the codec of node-to-node calls (Dialer; servers built
// by NewServer use it too): the proto codec, with large bytes fields
// encoded and decoded without its copies. Name() is "proto", so the wire
// format and content type are unchanged.
//
// A large field is read from the sender's slice until the transport has
// written it, which can be after Send returns (flow control): as gRPC's
// SendMsg contract says, a sender must not change a message it has sent.
// Every sender on these connections builds a new slice per message: the
// dispatcher's batches (encodeChunk), the expert node's results, and
// session snapshots (chunkWriter).
func PeerCodec() encoding.CodecV2 { return bigCodec{base: encoding.GetCodecV2("proto")} }

func (c bigCodec) Name() string { return c.base.Name() }

func (c bigCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return c.base.Marshal(v)
	}
	r := m.ProtoReflect()
	if !hasBytesField(r.Descriptor()) {
		return c.base.Marshal(v)
	}
	fields := r.Descriptor().Fields()
	var big []protoreflect.FieldDescriptor
	for i := range fields.Len() {
		fd := fields.Get(i)
		if isBigBytes(fd) && r.Has(fd) && len(r.Get(fd).Bytes()) >= bigBytesMin {
			big = append(big, fd)
		}
	}
	if len(big) == 0 {
		return c.base.Marshal(v)
	}
	// A shallow copy without the large fields (lists, maps and bytes are
	// shared, not copied), marshalled as usual.
	rest := r.New()
	r.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		if !slices.Contains(big, fd) {
			rest.Set(fd, val)
		}
		return true
	})
	rest.SetUnknown(r.GetUnknown())
	head, err := proto.Marshal(rest.Interface())
	if err != nil {
		return nil, err
	}
	out := make(mem.BufferSlice, 0, 1+2*len(big))
	out = append(out, mem.SliceBuffer(head))
	for _, fd := range big {
		b := r.Get(fd).Bytes()
		key := protowire.AppendTag(make([]byte, 0, 16), fd.Number(), protowire.BytesType)
		out = append(out, mem.SliceBuffer(protowire.AppendVarint(key, uint64(len(b)))), mem.SliceBuffer(b))
	}
	return out, nil
}

func (c bigCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok || data.Len() < bigBytesMin || !hasBytesField(m.ProtoReflect().Descriptor()) {
		return c.base.Unmarshal(data, v)
	}
	err := unmarshalBig(data, m)
	if errors.Is(err, errNotBig) {
		return c.base.Unmarshal(data, v)
	}
	return err
}

// errNotBig: the message is not one unmarshalBig decodes (no large bytes
// field, a group, or a large field that also stands small); the proto codec
// decodes it instead.
var errNotBig = errors.New("rpc: no out-of-line bytes field")

// unmarshalBig decodes data into m, reading each large bytes field of m's
// message type from the frames into a slice of its own and every other field
// through proto.Unmarshal.
func unmarshalBig(data mem.BufferSlice, m proto.Message) error {
	rd := data.Reader()
	defer rd.Close()
	md := m.ProtoReflect().Descriptor()
	type bigField struct {
		fd protoreflect.FieldDescriptor
		b  []byte
	}
	var big []bigField
	var small []protowire.Number // fields that could have been big but stood small
	var rest []byte              // every other field, its bytes as they came (unknown fields keep them)
	for rd.Remaining() > 0 {
		mark := len(rest)
		var key uint64
		var err error
		if key, rest, err = readVarint(rd, rest); err != nil {
			return err
		}
		num, typ := protowire.DecodeTag(key)
		if !num.IsValid() {
			return fmt.Errorf("rpc: malformed message: field number %d", num)
		}
		switch typ {
		case protowire.VarintType:
			_, rest, err = readVarint(rd, rest)
		case protowire.Fixed32Type:
			rest, err = readN(rd, rest, 4)
		case protowire.Fixed64Type:
			rest, err = readN(rd, rest, 8)
		case protowire.BytesType:
			var n uint64
			if n, rest, err = readVarint(rd, rest); err != nil {
				return err
			}
			if n > uint64(rd.Remaining()) {
				return fmt.Errorf("rpc: malformed message: field %d of %d bytes, %d left", num, n, rd.Remaining())
			}
			switch fd := md.Fields().ByNumber(num); {
			case fd == nil || !isBigBytes(fd):
			case n < uint64(bigBytesMin):
				small = append(small, num)
			default:
				rest = rest[:mark]
				b := make([]byte, n)
				if _, err := io.ReadFull(rd, b); err != nil {
					return fmt.Errorf("rpc: malformed message: %w", err)
				}
				big = append(big, bigField{fd, b})
				continue
			}
			rest, err = readN(rd, rest, int(n))
		default: // groups: rare enough for the proto codec
			return errNotBig
		}
		if err != nil {
			return err
		}
	}
	if len(big) == 0 {
		return errNotBig
	}
	// The last occurrence of a field wins: a large field that also stood
	// small (empty, say) is left to the proto codec, which keeps the order.
	for _, f := range big {
		if slices.Contains(small, f.fd.Number()) {
			return errNotBig
		}
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return err
	}
	r := m.ProtoReflect()
	for _, f := range big {
		r.Set(f.fd, protoreflect.ValueOfBytes(f.b))
	}
	return nil
}

// readVarint reads a varint from rd, appending its bytes as they are to b
// (a longer encoding than needed stays so, as in unknown fields).
func readVarint(rd *mem.Reader, b []byte) (uint64, []byte, error) {
	l := len(b)
	for i := 0; i < binary.MaxVarintLen64; i++ {
		c, err := rd.ReadByte()
		if err != nil {
			return 0, b, fmt.Errorf("rpc: malformed message: %w", err)
		}
		b = append(b, c)
		if c < 0x80 {
			x, n := protowire.ConsumeVarint(b[l:])
			if n < 0 {
				return 0, b, fmt.Errorf("rpc: malformed message: %w", protowire.ParseError(n))
			}
			return x, b, nil
		}
	}
	return 0, b, fmt.Errorf("rpc: malformed message: varint longer than %d bytes", binary.MaxVarintLen64)
}

// readN appends the next n bytes of rd to b.
func readN(rd *mem.Reader, b []byte, n int) ([]byte, error) {
	if n > rd.Remaining() {
		return b, fmt.Errorf("rpc: malformed message: %d bytes wanted, %d left", n, rd.Remaining())
	}
	l := len(b)
	b = slices.Grow(b, n)[:l+n]
	if _, err := io.ReadFull(rd, b[l:]); err != nil {
		return b, fmt.Errorf("rpc: malformed message: %w", err)
	}
	return b, nil
}

// hasBytesField: messages of md can hold a field sent out of line (others,
// a long prompt's text say, go to the proto codec at once). Only proto3
// messages: a proto2 bytes field may be required, which the rest of the
// message without it would not pass as.
func hasBytesField(md protoreflect.MessageDescriptor) bool {
	if md.Syntax() != protoreflect.Proto3 {
		return false
	}
	fields := md.Fields()
	for i := range fields.Len() {
		if isBigBytes(fields.Get(i)) {
			return true
		}
	}
	return false
}

// isBigBytes: fd is a singular bytes field outside any oneof (one
// unmarshalBig may decode out of line; a oneof's last member on the wire
// wins, an order it does not keep).
func isBigBytes(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.BytesKind && fd.Cardinality() != protoreflect.Repeated && fd.ContainingOneof() == nil
}
