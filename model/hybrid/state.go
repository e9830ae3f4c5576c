package hybrid

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"

	"github.com/switchyard-serving/switchyard/model/config"
)

// ErrState reports a session state that does not fit the model or is corrupt.
var ErrState = errors.New("hybrid: bad session state")

// ErrStateModel reports a serialized state this model cannot take: one of a
// model with another shape, or of another format version (it is wrapped
// together with ErrState).
var ErrStateModel = errors.New("state of another model shape or format version")

// State is one session's memory: a fixed-size recurrent state per Mamba layer and a
// growing KV cache per attention layer, all float32.
//
// Layout:
//   - Conv[i]: the last K-1 pre-activation xBC inputs of Mamba layer i, time-major
//     ([K-1, conv_dim], oldest first; zeros for a fresh session).
//   - SSM[i]: the SSM state of Mamba layer i, [H, P, N] (N fastest).
//   - KV[j]: attention layer j's cache of Pos tokens, in pages of PageTokens
//     (see KVCache).
//
// Encode writes the caches token-major ([Pos, kv_heads*head_dim] for K, then V),
// so the serialised form does not depend on the page layout.
//
// Mamba and attention layers are numbered in model order among layers of their kind.
type State struct {
	Pos  int // tokens consumed so far
	Conv [][]float32
	SSM  [][]float32
	KV   []KVCache
}

// NewState returns an empty state for the model described by c.
func NewState(c *config.Config) *State {
	s := &State{}
	for _, t := range c.LayerTypes {
		if t == config.Mamba {
			s.Conv = append(s.Conv, make([]float32, (c.MambaDConv-1)*c.ConvDim()))
			s.SSM = append(s.SSM, make([]float32, c.MambaHeads*c.MambaHeadDim*c.MambaDState))
		} else {
			s.KV = append(s.KV, newKVCache(c.KVHeads, c.HeadDim()))
		}
	}
	return s
}

// StateSize is a model's per-session state size, computed from the config
// alone (no state is allocated): the fixed recurrent part, and the encoded
// length (EncodedLen) of an empty state.
type StateSize struct {
	RecurrentBytes int64 // conv + SSM states of every Mamba layer
	EmptyEncoded   int64 // EncodedLen of a state holding no tokens
}

// SizeOf returns the state size of a model of config c.
func SizeOf(c *config.Config) StateSize {
	var sz StateSize
	sz.EmptyEncoded = int64(len(stateMagic) + 5*4 + 4)
	for _, t := range c.LayerTypes {
		if t == config.Mamba {
			n := int64((c.MambaDConv-1)*c.ConvDim() + c.MambaHeads*c.MambaHeadDim*c.MambaDState)
			sz.RecurrentBytes += 4 * n
			sz.EmptyEncoded += 16 + 4*n
		} else {
			sz.EmptyEncoded += 16
		}
	}
	return sz
}

// RecurrentBytes is the size of the fixed part (conv + SSM states).
func (s *State) RecurrentBytes() int64 {
	var n int64
	for i := range s.Conv {
		n += int64(len(s.Conv[i])+len(s.SSM[i])) * 4
	}
	return n
}

// KVBytes is the memory of the attention caches: their pages in use, so at most
// one partly filled page per attention layer beyond the tokens held.
func (s *State) KVBytes() int64 {
	var n int64
	for i := range s.KV {
		n += s.KV[i].Bytes()
	}
	return n
}

// Bytes is the session's memory (recurrent + KV pages).
func (s *State) Bytes() int64 { return s.RecurrentBytes() + s.KVBytes() }

// Clone returns a deep copy (a fork of the session).
func (s *State) Clone() *State {
	cp := func(src [][]float32) [][]float32 {
		out := make([][]float32, len(src))
		for i, v := range src {
			out[i] = append([]float32(nil), v...)
		}
		return out
	}
	out := &State{Pos: s.Pos, Conv: cp(s.Conv), SSM: cp(s.SSM)}
	for i := range s.KV {
		out.KV = append(out.KV, s.KV[i].clone())
	}
	return out
}

// Reset clears the state to a fresh session: the recurrent state is zeroed in
// place and the KV pages are freed.
func (s *State) Reset() {
	s.Pos = 0
	for i := range s.Conv {
		clear(s.Conv[i])
		clear(s.SSM[i])
	}
	for i := range s.KV {
		s.KV[i].reset()
	}
}

const stateMagic = "SYST"
const stateVersion = 1

// Fingerprint identifies the state shape of a model (layer kinds and widths), so a
// serialized state is only restored into a compatible model.
func Fingerprint(c *config.Config) uint32 {
	h := crc32.NewIEEE()
	fmt.Fprintf(h, "%v|%d|%d|%d|%d|%d|%d|%d", c.LayerTypes, c.Hidden, c.MambaDConv, c.ConvDim(),
		c.MambaHeads, c.MambaHeadDim, c.MambaDState, c.KVDim())
	return h.Sum32()
}

// MarshalBinary-style encoding: magic, version, fingerprint, pos, then each
// tensor as little-endian float32, then a CRC32 of everything before it.

// Encode writes the state in a portable binary form tied to the model fingerprint,
// streaming: it holds at most one token's KV row beyond a small buffer, whatever
// the state's size. EncodedLen is the number of bytes it writes.
func (s *State) Encode(w io.Writer, c *config.Config) error {
	sum := crc32.NewIEEE()
	ew := &errWriter{w: io.MultiWriter(w, sum)}
	bw := bufio.NewWriterSize(ew, 64<<10)
	var b8 [8]byte
	u32 := func(v uint32) { binary.LittleEndian.PutUint32(b8[:4], v); bw.Write(b8[:4]) }
	u64 := func(v uint64) { binary.LittleEndian.PutUint64(b8[:], v); bw.Write(b8[:]) }
	f32s := func(v []float32) {
		for _, f := range v {
			u32(math.Float32bits(f))
		}
	}
	bw.WriteString(stateMagic)
	for _, v := range []uint32{stateVersion, Fingerprint(c), uint32(s.Pos), uint32(len(s.Conv)), uint32(len(s.KV))} {
		u32(v)
	}
	for i := range s.Conv {
		u64(uint64(len(s.Conv[i])))
		f32s(s.Conv[i])
		u64(uint64(len(s.SSM[i])))
		f32s(s.SSM[i])
	}
	for i := range s.KV {
		kv := &s.KV[i]
		d := kv.kvHeads * kv.headDim
		k, v := make([]float32, d), make([]float32, d)
		for part := range 2 { // K for every token, then V
			u64(uint64(kv.Len() * d))
			for t := range kv.Len() {
				if ew.err != nil { // the reader went away: stop walking the cache
					return ew.err
				}
				kv.Row(t, k, v)
				if part == 0 {
					f32s(k)
				} else {
					f32s(v)
				}
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b8[:4], sum.Sum32())
	_, err := w.Write(b8[:4])
	return err
}

// errWriter remembers the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

// EncodedLen is the exact size of Encode's output.
func (s *State) EncodedLen() int64 {
	n := int64(len(stateMagic) + 5*4 + 4) // magic, header, CRC
	for i := range s.Conv {
		n += 16 + 4*int64(len(s.Conv[i])+len(s.SSM[i]))
	}
	for i := range s.KV {
		n += 16 + 8*int64(s.KV[i].Len()*s.KV[i].kvHeads*s.KV[i].headDim)
	}
	return n
}

// StateHeaderLen is how many leading bytes of an encoded state CheckStateHeader reads.
const StateHeaderLen = 12

// CheckStateHeader checks the start of an encoded state (its first
// StateHeaderLen bytes: magic, version, model fingerprint) without the rest, so a
// receiver can refuse a state of another model before taking it all.
func CheckStateHeader(b []byte, c *config.Config) error {
	if len(b) < StateHeaderLen || string(b[:4]) != stateMagic {
		return fmt.Errorf("%w: not a switchyard session state", ErrState)
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != stateVersion {
		return fmt.Errorf("%w: %w: version %d, this build reads %d", ErrState, ErrStateModel, v, stateVersion)
	}
	if fp := binary.LittleEndian.Uint32(b[8:]); fp != Fingerprint(c) {
		return fmt.Errorf("%w: %w (fingerprint %08x, this model %08x)", ErrState, ErrStateModel, fp, Fingerprint(c))
	}
	return nil
}

// DecodeState reads a state written by Encode for a model with config c.
func DecodeState(b []byte, c *config.Config) (*State, error) {
	if len(b) < len(stateMagic)+5*4+4 {
		return nil, fmt.Errorf("%w: not a switchyard session state", ErrState)
	}
	if err := CheckStateHeader(b, c); err != nil {
		return nil, err
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch (truncated or corrupt)", ErrState)
	}
	r := body[12:]
	u32 := func() uint32 { v := binary.LittleEndian.Uint32(r); r = r[4:]; return v }
	s := NewState(c)
	s.Pos = int(u32())
	nm, na := int(u32()), int(u32())
	if nm != len(s.Conv) || na != len(s.KV) {
		return nil, fmt.Errorf("%w: %d mamba / %d attention layers, model has %d / %d", ErrState, nm, na, len(s.Conv), len(s.KV))
	}
	get := func(want int) ([]float32, error) {
		if len(r) < 8 {
			return nil, fmt.Errorf("%w: truncated", ErrState)
		}
		n := binary.LittleEndian.Uint64(r)
		r = r[8:]
		if want >= 0 && n != uint64(want) || n > uint64(len(r)/4) {
			return nil, fmt.Errorf("%w: tensor of %d values does not fit", ErrState, n)
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(r[4*i:]))
		}
		r = r[4*n:]
		return v, nil
	}
	var err error
	for i := range s.Conv {
		if s.Conv[i], err = get(len(s.Conv[i])); err != nil {
			return nil, err
		}
		if s.SSM[i], err = get(len(s.SSM[i])); err != nil {
			return nil, err
		}
	}
	kv := s.Pos * c.KVDim()
	for i := range s.KV {
		k, err := get(kv)
		if err != nil {
			return nil, err
		}
		v, err := get(kv)
		if err != nil {
			return nil, err
		}
		s.KV[i].Append(k, v, s.Pos)
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrState, len(r))
	}
	return s, nil
}
