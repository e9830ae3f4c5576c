package rpc

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Invalid UTF-8 in a request's string field is the client's mistake, but
// grpc-go's codec rejects it before any handler or interceptor runs and
// answers INTERNAL. The server codec below decodes such a request with the
// bad bytes replaced and a marker in the message's unknown fields naming the
// fields; the interceptors then refuse it with INVALID_ARGUMENT.

// utf8Marker is the field number of the marker (the largest one protobuf
// allows; no Switchyard message uses it).
const utf8Marker protowire.Number = protowire.MaxValidNumber

// serverCodec is the proto codec with the UTF-8 leniency above (and large
// bytes fields out of line: PeerCodec).
type serverCodec struct{ base encoding.CodecV2 }

func newServerCodec() serverCodec { return serverCodec{base: PeerCodec()} }

func (c serverCodec) Name() string { return c.base.Name() }

func (c serverCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c serverCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok || !strings.Contains(err.Error(), "UTF-8") {
		return err
	}
	b := data.Materialize()
	var bad []string
	fixed, ok := sanitizeUTF8(b, m.ProtoReflect().Descriptor(), "", &bad)
	if !ok || len(bad) == 0 {
		return err
	}
	proto.Reset(m)
	if err := proto.Unmarshal(fixed, m); err != nil {
		return err
	}
	r := m.ProtoReflect()
	marker := protowire.AppendTag(nil, utf8Marker, protowire.BytesType)
	marker = protowire.AppendString(marker, strings.Join(bad, ", "))
	r.SetUnknown(append(r.GetUnknown(), marker...))
	return nil
}

// sanitizeUTF8 rewrites the wire bytes of a message of descriptor md with
// every invalid UTF-8 string field made valid, recording the field paths. It
// reports false on malformed input (the caller keeps the original error).
func sanitizeUTF8(b []byte, md protoreflect.MessageDescriptor, path string, bad *[]string) ([]byte, bool) {
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		tag := b[:n]
		b = b[n:]
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, false
			}
			out = append(append(out, tag...), b[:m]...)
			b = b[m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return nil, false
		}
		b = b[m:]
		if fd := md.Fields().ByNumber(num); fd != nil {
			name := path + string(fd.Name())
			switch {
			case fd.Kind() == protoreflect.StringKind && !utf8.Valid(v):
				*bad = append(*bad, name)
				v = []byte(strings.ToValidUTF8(string(v), "\uFFFD"))
			case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
				nv, ok := sanitizeUTF8(v, fd.Message(), name+".", bad)
				if !ok {
					return nil, false
				}
				v = nv
			}
		}
		out = protowire.AppendBytes(append(out, tag...), v)
	}
	return out, true
}

// utf8Error returns INVALID_ARGUMENT when m was decoded with invalid UTF-8.
func utf8Error(m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	unknown := pm.ProtoReflect().GetUnknown()
	for len(unknown) > 0 {
		num, typ, n := protowire.ConsumeTag(unknown)
		if n < 0 {
			return nil
		}
		unknown = unknown[n:]
		m := protowire.ConsumeFieldValue(num, typ, unknown)
		if m < 0 {
			return nil
		}
		if num == utf8Marker && typ == protowire.BytesType {
			fields, _ := protowire.ConsumeString(unknown)
			return status.Error(codes.InvalidArgument, fmt.Sprintf("request field %s is not valid UTF-8", fields))
		}
		unknown = unknown[m:]
	}
	return nil
}

// utf8Stream refuses stream messages decoded with invalid UTF-8.
type utf8Stream struct{ grpc.ServerStream }

func (s utf8Stream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return utf8Error(m)
}
