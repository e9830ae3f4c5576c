package trunknode

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/switchyard-serving/switchyard/model/hybrid"
)

// Replication deltas. A session's KV cache grows by appending; its recurrent
// state is fixed-size. So after a replica trunk holds a full copy of a
// session at position p, the next copy is the recurrent state plus the KV
// rows from p on (and the pending token): a delta. The replica keeps the
// full copy and the deltas after it, and assembles a full session file only
// when it is asked for the session (a failover: rare). A replica that cannot
// apply a delta (it restarted, dropped the copy, or the bases differ) says
// so and gets a full copy; every maxDeltas-th copy is full anyway, which
// bounds what a replica keeps per session.
//
// A delta is
//
//	"SYTD" | u32 version | u16 len | id | u16 len | owner | i64 last use (unix ns)
//	| u32 base position | u32 new position | u32 n | n pending token ids
//	| u32 conv count | per conv: u64 n, n f32 | u32 ssm count | per ssm: u64 n, n f32
//	| u32 KV layers | per layer: u32 width, (new - base) rows of K, then of V (f32)
//	| u32 CRC32 of everything before | [32]byte HMAC-SHA256 (with a snapshot key)
const (
	deltaMagic   = "SYTD"
	deltaVersion = 1
	maxDeltas    = 8
)

// deltaHead is what a replica needs to know of a delta before applying it.
type deltaHead struct {
	id, owner  string
	used       time.Time
	base, upto int
}

// encodeDelta writes the part of sess past position base.
func encodeDelta(s *Session, base int, key []byte) ([]byte, error) {
	st := s.State
	if base > st.Pos {
		return nil, fmt.Errorf("trunknode: delta base %d is past the session's %d tokens", base, st.Pos)
	}
	le := binary.LittleEndian
	b := make([]byte, 0, 256+int(st.RecurrentBytes()))
	f32s := func(v []float32) {
		for _, f := range v {
			b = le.AppendUint32(b, math.Float32bits(f))
		}
	}
	b = append(b, deltaMagic...)
	b = le.AppendUint32(b, deltaVersion)
	b = appendStr(b, s.ID)
	b = appendStr(b, s.owner)
	b = le.AppendUint64(b, uint64(s.lastUsed.UnixNano()))
	b = le.AppendUint32(b, uint32(base))
	b = le.AppendUint32(b, uint32(st.Pos))
	b = le.AppendUint32(b, uint32(len(s.Unfed)))
	for _, t := range s.Unfed {
		b = le.AppendUint32(b, uint32(t))
	}
	for _, group := range [][][]float32{st.Conv, st.SSM} {
		b = le.AppendUint32(b, uint32(len(group)))
		for _, c := range group {
			b = le.AppendUint64(b, uint64(len(c)))
			f32s(c)
		}
	}
	b = le.AppendUint32(b, uint32(len(st.KV)))
	for i := range st.KV {
		kv := &st.KV[i]
		if kv.Len() != st.Pos {
			return nil, fmt.Errorf("trunknode: KV layer %d holds %d tokens, the state %d", i, kv.Len(), st.Pos)
		}
		k, v := make([]float32, kv.Width()), make([]float32, kv.Width())
		b = le.AppendUint32(b, uint32(kv.Width()))
		for part := range 2 { // K rows, then V rows
			for t := base; t < st.Pos; t++ {
				kv.Row(t, k, v)
				if part == 0 {
					f32s(k)
				} else {
					f32s(v)
				}
			}
		}
	}
	return seal(b, key), nil
}

// readDeltaHead checks a delta's integrity and reads its head.
func readDeltaHead(b []byte, key []byte) (deltaHead, error) {
	var h deltaHead
	sealed, err := unseal(b, deltaMagic, deltaVersion, key)
	if err != nil {
		return h, err
	}
	r := bytes.NewReader(sealed[8:])
	if h.id, err = readStr(r); err != nil {
		return h, err
	}
	if h.owner, err = readStr(r); err != nil {
		return h, err
	}
	var ns int64
	var base, upto uint32
	binary.Read(r, binary.LittleEndian, &ns)
	binary.Read(r, binary.LittleEndian, &base)
	if err := binary.Read(r, binary.LittleEndian, &upto); err != nil || upto < base {
		return h, fmt.Errorf("%w: bad delta positions", errSnapshot)
	}
	h.used, h.base, h.upto = time.Unix(0, ns), int(base), int(upto)
	return h, nil
}

// applyDelta brings st (at the delta's base) to the delta's position and
// returns its pending tokens. The delta passed readDeltaHead.
func applyDelta(st *hybrid.State, b []byte, vocab int) ([]int, error) {
	bad := func(what string) error { return fmt.Errorf("%w: delta: %s", errSnapshot, what) }
	r := bytes.NewReader(b[8:])
	readStr(r)
	readStr(r)
	var ns int64
	var base, upto, n uint32
	binary.Read(r, binary.LittleEndian, &ns)
	binary.Read(r, binary.LittleEndian, &base)
	binary.Read(r, binary.LittleEndian, &upto)
	if int(base) != st.Pos {
		return nil, bad(fmt.Sprintf("base %d, the copy holds %d tokens", base, st.Pos))
	}
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil || n > maxSnapUnfed {
		return nil, bad("pending tokens")
	}
	unfed := make([]int, n)
	for i := range unfed {
		var t uint32
		if err := binary.Read(r, binary.LittleEndian, &t); err != nil || int(t) >= vocab {
			return nil, bad("pending token")
		}
		unfed[i] = int(t)
	}
	// raw reads len(dst) float32s at once.
	raw := func(dst []float32) error {
		buf := make([]byte, 4*len(dst))
		if _, err := io.ReadFull(r, buf); err != nil {
			return bad("truncated")
		}
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
		}
		return nil
	}
	floats := func(dst []float32) error {
		var m uint64
		if err := binary.Read(r, binary.LittleEndian, &m); err != nil || m != uint64(len(dst)) {
			return bad("recurrent state size")
		}
		return raw(dst)
	}
	for _, group := range [][][]float32{st.Conv, st.SSM} {
		var c uint32
		if err := binary.Read(r, binary.LittleEndian, &c); err != nil || int(c) != len(group) {
			return nil, bad("layer count")
		}
		for _, dst := range group {
			if err := floats(dst); err != nil {
				return nil, err
			}
		}
	}
	var layers uint32
	if err := binary.Read(r, binary.LittleEndian, &layers); err != nil || int(layers) != len(st.KV) {
		return nil, bad("KV layer count")
	}
	rows := int(upto - base)
	for i := range st.KV {
		var w uint32
		if err := binary.Read(r, binary.LittleEndian, &w); err != nil || int(w) != st.KV[i].Width() {
			return nil, bad("KV width")
		}
		k, v := make([]float32, rows*int(w)), make([]float32, rows*int(w))
		for _, dst := range [][]float32{k, v} {
			if err := raw(dst); err != nil {
				return nil, err
			}
		}
		st.KV[i].Append(k, v, rows)
	}
	st.Pos = int(upto)
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", errSnapshot, err)
	}
	return unfed, nil
}

// assemble turns a replica's full copy and its deltas into one session file.
func assemble(full []byte, deltas [][]byte, id snapIdentity) ([]byte, error) {
	if len(deltas) == 0 {
		return full, nil
	}
	sid, owner, _, st, _, err := parseTier(full, id)
	if err != nil {
		return nil, err
	}
	defer st.Free() // encoded into a new file below: nothing keeps it
	var unfed []int
	var used time.Time
	for _, d := range deltas {
		h, err := readDeltaHead(d, id.key)
		if err != nil {
			return nil, err
		}
		if unfed, err = applyDelta(st, d, id.cfg.VocabSize); err != nil {
			return nil, err
		}
		used = h.used
	}
	return encodeTier(&Session{ID: sid, owner: owner, State: st, Unfed: unfed, lastUsed: used}, id)
}
