package hybrid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// FuzzDecodeState: any state body (what a session import carries past the
// snapshot's own checks), framed with a valid magic, version, fingerprint
// and checksum so that the fuzzer reaches the decoder, decodes or fails with
// ErrState, never panics; a state that decodes and passes Validate (as an
// import requires) encodes back to the same bytes.
func FuzzDecodeState(f *testing.F) {
	m := loadFixture(f)
	r := rand.New(rand.NewPCG(11, 12))
	for _, kv := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, n := range []int{0, 1, 3} {
			st := NewStateKV(m.Cfg, kv)
			if n > 0 {
				forward1(f, m, st, randTokens(r, n, m.Cfg.VocabSize), false)
			}
			var buf bytes.Buffer
			if err := st.Encode(&buf, m.Cfg); err != nil {
				f.Fatal(err)
			}
			b := buf.Bytes()
			f.Add(uint8(stateVersion(kv)), b[StateHeaderLen:len(b)-4])
		}
	}
	f.Add(uint8(stateVersionQ80), []byte{})
	f.Fuzz(func(t *testing.T, version uint8, body []byte) {
		b := make([]byte, 0, StateHeaderLen+len(body)+4)
		b = append(b, stateMagic...)
		b = binary.LittleEndian.AppendUint32(b, uint32(version%4))
		b = binary.LittleEndian.AppendUint32(b, Fingerprint(m.Cfg))
		b = append(b, body...)
		b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
		st, err := DecodeState(b, m.Cfg)
		if err != nil {
			if !errors.Is(err, ErrState) {
				t.Fatalf("DecodeState: %v, want an ErrState", err)
			}
			return
		}
		defer st.Free()
		if err := st.Validate(); err != nil {
			// What an import does next: a NaN, an infinity or a value out of
			// range is refused. (A bf16 signalling NaN would not encode back
			// to its bits: widening quiets it.)
			if !errors.Is(err, ErrState) {
				t.Fatalf("Validate: %v, want an ErrState", err)
			}
			return
		}
		var buf bytes.Buffer
		if err := st.Encode(&buf, m.Cfg); err != nil {
			t.Fatal(err)
		}
		if e := buf.Bytes(); !bytes.Equal(e, b) {
			i := 0
			for i < len(b) && i < len(e) && b[i] == e[i] {
				i++
			}
			t.Fatalf("a decoded, valid state (pos %d, %d bytes) encodes to %d other bytes, the first at %d: % x, not % x", st.Pos, len(b), len(e), i, e[i:min(i+8, len(e))], b[i:min(i+8, len(b))])
		}
	})
}
