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
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// ErrState reports a session state that does not fit the model or is corrupt.
var ErrState = errors.New("hybrid: bad session state")

// ErrStateModel reports a serialized state this model cannot take: one of a
// model with another shape, or of another format version (it is wrapped
// together with ErrState).
var ErrStateModel = errors.New("state of another model shape or format version")

// State is one session's memory: a fixed-size recurrent state per Mamba layer
// (float32) and a growing KV cache per attention layer (float32 or bfloat16, as
// the model's KVDType; every layer of a state holds the same type).
//
// Layout:
//   - Conv[i]: the last K-1 pre-activation xBC inputs of Mamba layer i, time-major
//     ([K-1, conv_dim], oldest first; zeros for a fresh session).
//   - SSM[i]: the SSM state of Mamba layer i, [H, P, N] (N fastest).
//   - KV[j]: attention layer j's cache of Pos tokens, in pages of PageTokens
//     (see KVCache).
//
// Encode writes the caches token-major ([Pos, kv_heads*head_dim] for K, then V),
// so the serialised form does not depend on the page layout; the values keep
// their element type (format version 1: float32, version 2: bfloat16), so a
// snapshot is lossless and its KV part is as large as the pages' tokens.
//
// Mamba and attention layers are numbered in model order among layers of their kind.
//
// KV pages may be shared with other states (Clone): a state appending to a
// shared page copies it first, so no state ever sees another's tokens. A state
// attached to a PageAccount (Attach) counts its pages there, a shared page
// once. Hand a state's pages back with Release (or Reset) when it is dropped,
// so the account frees them at once rather than when they are collected; a
// state that is provably dead is better dropped with Free, which also hands
// its recurrent buffer to the next new state (statePool).
type State struct {
	Pos  int // tokens consumed so far
	Conv [][]float32
	SSM  [][]float32
	KV   []KVCache

	own   *kvOwner  // page accounting of KV (nil until a page is needed)
	rec   []float32 // the buffer Conv and SSM are parts of (nil: none of ours), for Free
	freed bool      // Free was called: Forward refuses the state
}

// NewState returns an empty state for the model described by c, with float32
// KV caches.
func NewState(c *config.Config) *State { return NewStateKV(c, tensor.F32) }

// NewStateKV returns an empty state for the model described by c whose KV
// caches hold values of type kv (F32 or BF16; see CheckKVDType).
func NewStateKV(c *config.Config, kv tensor.DType) *State { return newStateKV(c, kv, true) }

// newStateKV is NewStateKV with the recurrent values zeroed only when zero
// is set (DecodeState writes them all).
func newStateKV(c *config.Config, kv tensor.DType, zero bool) *State {
	convLen, ssmLen := (c.MambaDConv-1)*c.ConvDim(), c.MambaHeads*c.MambaHeadDim*c.MambaDState
	rec := recurrentBuffer(c.NumLayers(config.Mamba)*(convLen+ssmLen), zero)
	s := &State{own: &kvOwner{}, rec: rec}
	for _, t := range c.LayerTypes {
		if t == config.Mamba {
			s.Conv = append(s.Conv, rec[:convLen:convLen])
			s.SSM = append(s.SSM, rec[convLen:convLen+ssmLen:convLen+ssmLen])
			rec = rec[convLen+ssmLen:]
		} else {
			kc := newKVCacheOf(c.KVHeads, c.HeadDim(), kv)
			kc.own = s.own
			s.KV = append(s.KV, kc)
		}
	}
	return s
}

// owner returns the state's page accounting, creating it for a state built
// without NewState.
func (s *State) owner() *kvOwner {
	if s.own == nil {
		s.own = &kvOwner{}
		for i := range s.KV {
			s.KV[i].own = s.own
		}
	}
	return s.own
}

// Attach counts the state's KV pages in a: the pages it holds that are not
// counted anywhere yet (a decoded or new state; pages shared with a counted
// state are counted already), and every page it allocates from now on. Clones
// of an attached state are attached to the same account.
func (s *State) Attach(a *PageAccount) {
	s.owner().acct = a
	for i := range s.KV {
		for _, p := range s.KV[i].pages {
			p.count(a)
		}
	}
}

// UncountedKVBytes is the memory of the state's pages that Attach(a) would
// start counting: those not counted in a yet.
func (s *State) UncountedKVBytes(a *PageAccount) int64 {
	var n int64
	for i := range s.KV {
		c := &s.KV[i]
		for _, p := range c.pages {
			if t := p.tag.Load(); t == nil || t.acct != a || !t.live.Load() {
				n += p.bytes()
			}
		}
	}
	return n
}

// AllocatedBytes is the memory of the KV pages this state has allocated since
// it was made (new pages and copies of shared ones; monotonic). Safe to call
// while another goroutine advances the state.
func (s *State) AllocatedBytes() int64 {
	if s.own == nil {
		return 0
	}
	return s.own.allocated.Load()
}

// KVGrowBytes is the memory the attention caches will allocate to take tokens
// more: the pages they open, plus a private copy of a shared, partly filled
// last page.
func (s *State) KVGrowBytes(tokens int) int64 {
	var n int64
	for i := range s.KV {
		n += s.KV[i].growBytes(tokens)
	}
	return n
}

// PrivateKVBytes is the memory of the pages no other state shares: what
// Release would free now.
func (s *State) PrivateKVBytes() int64 {
	var n int64
	for i := range s.KV {
		c := &s.KV[i]
		for _, p := range c.pages {
			if p.refs.Load() == 1 {
				n += p.bytes()
			}
		}
	}
	return n
}

// Release lets the KV pages go (each is freed once no other state holds it)
// and leaves an empty cache at Pos 0; the recurrent state is left as is. Call
// it when the state is dropped.
func (s *State) Release() {
	s.Pos = 0
	for i := range s.KV {
		s.KV[i].reset()
	}
}

// Free drops the state for good: its KV pages are let go (Release) and its
// recurrent buffer goes back to a pool for the next new state of the same
// size (see statePool), so that state does not fault fresh memory in. The
// state holds nothing afterwards: Forward refuses it, and nothing may read
// or write it (or slices of it) again. Call it only where the state is
// provably dead, as where a server deletes a session nobody is advancing,
// encoding or copying; where that is not certain, Release and leave the
// buffer to the garbage collector. Free of a freed state does nothing.
func (s *State) Free() {
	s.Release()
	give(pool.f32, s.rec)
	s.rec, s.Conv, s.SSM = nil, nil, nil
	s.freed = true
}

// StateSize is a model's per-session state size, computed from the config
// alone (no state is allocated): the fixed recurrent part, and the encoded
// length (EncodedLen) of an empty state (the same for either KV element type).
// KV memory per token is KVBytesPerToken.
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

// KVBytesPerToken is the KV memory one token takes in a model of config c
// whose caches hold values of type kv (pages are allocated PageTokens tokens at
// a time): K and V of every attention layer. It is also what a token adds to
// an encoded state.
func KVBytesPerToken(c *config.Config, kv tensor.DType) int64 {
	return KVValueBytes(kv, 2*c.KVDim()) * int64(c.NumLayers(config.Attention))
}

// KVDType is the element type of the state's KV caches (F32 when it has none).
func (s *State) KVDType() tensor.DType {
	if len(s.KV) == 0 {
		return tensor.F32
	}
	return s.KV[0].DType()
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

// Clone returns a fork of the session: the recurrent state is copied, the KV
// pages are shared (copied on write, see KVCache), so a fork costs the
// recurrent state and no KV memory until one of the two appends. The clone is
// attached to the same PageAccount as s.
func (s *State) Clone() *State {
	n := 0
	for i := range s.Conv {
		n += len(s.Conv[i]) + len(s.SSM[i])
	}
	rec := recurrentBuffer(n, false) // every value copied below
	all := rec
	cp := func(src [][]float32) [][]float32 {
		out := make([][]float32, len(src))
		for i, v := range src {
			out[i] = rec[:len(v):len(v)]
			copy(out[i], v)
			rec = rec[len(v):]
		}
		return out
	}
	out := &State{Pos: s.Pos, Conv: cp(s.Conv), SSM: cp(s.SSM), own: &kvOwner{}, rec: all}
	if s.own != nil {
		out.own.acct = s.own.acct
	}
	for i := range s.KV {
		out.KV = append(out.KV, s.KV[i].clone(out.own))
	}
	return out
}

// Reset clears the state to a fresh session: the recurrent state is zeroed in
// place and the KV pages are let go (see Release).
func (s *State) Reset() {
	for i := range s.Conv {
		clear(s.Conv[i])
		clear(s.SSM[i])
	}
	s.Release()
}

const stateMagic = "SYST"

// State format versions: the same layout, with the KV values as float32
// (version 1, also every state written before bfloat16 caches), as bfloat16
// (version 2) or as Q8_0 blocks (version 3: each token's row per head, the
// blocks the cache holds). A state is written in its caches' type, so an F32
// state reads on builds that know only version 1.
const (
	stateVersionF32  = 1
	stateVersionBF16 = 2
	stateVersionQ80  = 3
)

func stateVersion(kv tensor.DType) uint32 {
	switch kv {
	case tensor.BF16:
		return stateVersionBF16
	case tensor.Q8_0:
		return stateVersionQ80
	}
	return stateVersionF32
}

// Fingerprint identifies the state shape of a model (layer kinds and widths), so a
// serialized state is only restored into a compatible model.
func Fingerprint(c *config.Config) uint32 {
	h := crc32.NewIEEE()
	fmt.Fprintf(h, "%v|%d|%d|%d|%d|%d|%d|%d", c.LayerTypes, c.Hidden, c.MambaDConv, c.ConvDim(),
		c.MambaHeads, c.MambaHeadDim, c.MambaDState, c.KVDim())
	return h.Sum32()
}

// MarshalBinary-style encoding: magic, version, fingerprint, pos, then each
// tensor as its length (u64, in values) and its values, little-endian (the
// recurrent state float32, KV float32 in version 1 and bfloat16 in version 2),
// then a CRC32 of everything before it.

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
	kvt := s.KVDType()
	kvs := f32s
	if kvt == tensor.BF16 {
		kvs = func(v []float32) {
			for _, f := range v {
				binary.LittleEndian.PutUint16(b8[:2], tensor.F32ToBF16(f))
				bw.Write(b8[:2])
			}
		}
	}
	bw.WriteString(stateMagic)
	for _, v := range []uint32{stateVersion(kvt), Fingerprint(c), uint32(s.Pos), uint32(len(s.Conv)), uint32(len(s.KV))} {
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
		var row []byte // Q8_0: each token's blocks as the cache holds them
		if kvt == tensor.Q8_0 {
			row = make([]byte, kv.rowBytes())
		}
		for part := range 2 { // K for every token, then V
			u64(uint64(kv.Len() * d))
			for t := range kv.Len() {
				if ew.err != nil { // the reader went away: stop walking the cache
					return ew.err
				}
				if row != nil {
					for h := range kv.kvHeads {
						bw.Write(kv.q80Row(row, part, t, h))
					}
					continue
				}
				kv.Row(t, k, v)
				if part == 0 {
					kvs(k)
				} else {
					kvs(v)
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
	dt := s.KVDType()
	for i := range s.KV {
		n += 16 + 2*KVValueBytes(dt, s.KV[i].Len()*s.KV[i].kvHeads*s.KV[i].headDim)
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
	if v := binary.LittleEndian.Uint32(b[4:]); v != stateVersionF32 && v != stateVersionBF16 && v != stateVersionQ80 {
		return fmt.Errorf("%w: %w: version %d, this build reads %d, %d and %d", ErrState, ErrStateModel, v, stateVersionF32, stateVersionBF16, stateVersionQ80)
	}
	if fp := binary.LittleEndian.Uint32(b[8:]); fp != Fingerprint(c) {
		return fmt.Errorf("%w: %w (fingerprint %08x, this model %08x)", ErrState, ErrStateModel, fp, Fingerprint(c))
	}
	return nil
}

// DecodeState reads a state written by Encode for a model with config c. Its
// KV caches hold the type it was written in (a version 1 state decodes to F32
// caches, a version 2 state to BF16 caches).
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
	kvt := tensor.F32
	switch binary.LittleEndian.Uint32(b[4:]) {
	case stateVersionBF16:
		kvt = tensor.BF16
	case stateVersionQ80:
		kvt = tensor.Q8_0
		if err := checkKVDTypeFor(kvt, c.HeadDim()); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrState, err)
		}
	}
	s := newStateKV(c, kvt, false) // decodeInto writes every recurrent value
	if err := decodeInto(s, r, c, kvt); err != nil {
		s.Free() // never seen by anyone: its buffer goes back to the pool
		return nil, err
	}
	return s, nil
}

// decodeValues writes the little-endian values b of type dt (F32 or BF16)
// into dst as float32.
func decodeValues(dst []float32, b []byte, dt tensor.DType) {
	if dt == tensor.BF16 {
		for i := range dst {
			dst[i] = tensor.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

// decodeInto reads a state's body r (past the magic, version and
// fingerprint) into the new state s of KV type kvt.
func decodeInto(s *State, r []byte, c *config.Config, kvt tensor.DType) error {
	u32 := func() uint32 { v := binary.LittleEndian.Uint32(r); r = r[4:]; return v }
	s.Pos = int(u32())
	nm, na := int(u32()), int(u32())
	if nm != len(s.Conv) || na != len(s.KV) {
		return fmt.Errorf("%w: %d mamba / %d attention layers, model has %d / %d", ErrState, nm, na, len(s.Conv), len(s.KV))
	}
	// next reads a tensor's value count (which must be want, when want >= 0)
	// and returns its values' bytes in type dt.
	next := func(want int, dt tensor.DType) ([]byte, error) {
		if len(r) < 8 {
			return nil, fmt.Errorf("%w: truncated", ErrState)
		}
		n := binary.LittleEndian.Uint64(r)
		r = r[8:]
		// Every type takes at least a byte a value, so n <= len(r) first.
		if want >= 0 && n != uint64(want) || n > uint64(len(r)) || KVValueBytes(dt, int(n)) > int64(len(r)) {
			return nil, fmt.Errorf("%w: tensor of %d values does not fit", ErrState, n)
		}
		nb := KVValueBytes(dt, int(n))
		b := r[:nb:nb]
		r = r[nb:]
		return b, nil
	}
	get := func(want int, dt tensor.DType) ([]float32, error) {
		b, err := next(want, dt)
		if err != nil {
			return nil, err
		}
		v := make([]float32, int64(len(b))/KVValueBytes(dt, 1))
		decodeValues(v, b, dt)
		return v, nil
	}
	// The recurrent parts are read into the state's own buffer (a pooled
	// one, when there is one: recurrentBuffer).
	fill := func(dst []float32) error {
		b, err := next(len(dst), tensor.F32)
		if err != nil {
			return err
		}
		decodeValues(dst, b, tensor.F32)
		return nil
	}
	for i := range s.Conv {
		if err := fill(s.Conv[i]); err != nil {
			return err
		}
		if err := fill(s.SSM[i]); err != nil {
			return err
		}
	}
	kv := s.Pos * c.KVDim()
	for i := range s.KV {
		if kvt == tensor.Q8_0 {
			// The blocks as they were written: no quantizing again.
			kb, err := next(kv, tensor.Q8_0)
			if err != nil {
				return err
			}
			vb, err := next(kv, tensor.Q8_0)
			if err != nil {
				return err
			}
			s.KV[i].appendQ80(kb, vb, s.Pos)
			continue
		}
		k, err := get(kv, kvt)
		if err != nil {
			return err
		}
		v, err := get(kv, kvt)
		if err != nil {
			return err
		}
		s.KV[i].Append(k, v, s.Pos)
	}
	if len(r) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrState, len(r))
	}
	return nil
}
