package trunknode

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"time"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// A session snapshot (ExportSession / ImportSession) is
//
//	"SYSN" | u32 version | [32]byte weights fingerprint | u32 flags | u32 n
//	| n pending token ids (u32) | u32 CRC32 of the above
//	| the hybrid state encoding (which carries the model's shape fingerprint and its own CRC)
//	| [32]byte HMAC-SHA256 of everything before, with the cluster's snapshot key (when flags has snapSigned)
//
// all little-endian. The weights fingerprint refuses a snapshot of a model
// with the same shape but other weights; the MAC, when the node has a key,
// accepts only snapshots this cluster exported (a CRC only detects accidents).
const (
	snapMagic   = "SYSN"
	snapVersion = 2
	// snapChunk is the data size of one SessionSnapshotChunk.
	snapChunk = 1 << 20
	// maxSnapUnfed bounds the pending tokens a snapshot may carry (a session
	// holds at most the last sampled token).
	maxSnapUnfed = 64
	// snapSigned marks a snapshot with an HMAC trailer.
	snapSigned = 1
	snapMACLen = sha256.Size
)

var (
	// errSnapshot reports a malformed or corrupt snapshot (InvalidArgument).
	errSnapshot = errors.New("bad session snapshot")
	// errSnapshotUnsupported reports a valid snapshot this node cannot take: another
	// format version, another model's weights, or more tokens than its context
	// limit (FailedPrecondition).
	errSnapshotUnsupported = errors.New("session snapshot not supported by this node")
	// errSnapshotUnsigned reports a snapshot not signed with this cluster's
	// snapshot key (PermissionDenied).
	errSnapshotUnsigned = errors.New("session snapshot not signed by this cluster")
	// ErrBusyImports means the node is already receiving as many snapshots as it
	// buffers at once (ResourceExhausted).
	ErrBusyImports = errors.New("trunknode: too many session imports in progress")
)

// importIdleTimeout is how long an import waits for its next chunk.
var importIdleTimeout = 30 * time.Second

// An import must make progress: after importGrace it must have received at
// least importMinRate bytes per second on average, and it must end within
// importMaxDuration. A stream that trickles a byte every few seconds would
// otherwise hold one of the few import slots (and its buffer) for ever.
var (
	importGrace       = 10 * time.Second
	importMinRate     = int64(256 << 10) // bytes per second
	importMaxDuration = 10 * time.Minute
)

// errImportTooSlow ends an import that does not make progress.
var errImportTooSlow = fmt.Errorf("%w: the snapshot arrives too slowly", context.DeadlineExceeded)

// importProgress checks an import's progress after received bytes.
func importProgress(start time.Time, received int64) error {
	el := time.Since(start)
	switch {
	case el > importMaxDuration:
		return fmt.Errorf("%w: not complete after %v", errImportTooSlow, importMaxDuration)
	case el > importGrace && received < int64(el.Seconds()*float64(importMinRate)):
		return fmt.Errorf("%w: %d bytes in %v, below %d bytes/s", errImportTooSlow, received, el.Round(time.Millisecond), importMinRate)
	}
	return nil
}

// maxConcurrentImports bounds the snapshots a node buffers at once.
const maxConcurrentImports = 2

// snapIdentity is what a node stamps on and checks in snapshots.
type snapIdentity struct {
	cfg     *config.Config
	weights [32]byte // hybrid.Weights.Fingerprint
	key     []byte   // the cluster's snapshot key (nil: unsigned)
}

func snapshotHeaderLen(unfed int) int64 { return int64(len(snapMagic) + 4 + 32 + 4 + 4 + 4*unfed + 4) }

// snapshotLen is the exact size writeSnapshot produces.
func snapshotLen(s *Session, id snapIdentity) int64 {
	n := snapshotHeaderLen(len(s.Unfed)) + s.State.EncodedLen()
	if id.key != nil {
		n += snapMACLen
	}
	return n
}

// writeSnapshot streams a session's snapshot to w.
func writeSnapshot(dst io.Writer, s *Session, id snapIdentity) error {
	w := dst
	var mac hash.Hash
	if id.key != nil {
		mac = hmac.New(sha256.New, id.key)
		w = io.MultiWriter(dst, mac)
	}
	hdr := make([]byte, 0, snapshotHeaderLen(len(s.Unfed)))
	hdr = append(hdr, snapMagic...)
	hdr = binary.LittleEndian.AppendUint32(hdr, snapVersion)
	hdr = append(hdr, id.weights[:]...)
	var flags uint32
	if mac != nil {
		flags |= snapSigned
	}
	hdr = binary.LittleEndian.AppendUint32(hdr, flags)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(s.Unfed)))
	for _, t := range s.Unfed {
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(t))
	}
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.ChecksumIEEE(hdr))
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	if err := s.State.Encode(w, id.cfg); err != nil {
		return err
	}
	if mac != nil {
		// The trailer goes to the destination only (not into the MAC itself).
		if _, err := dst.Write(mac.Sum(nil)); err != nil {
			return err
		}
	}
	return nil
}

// readSnapshot parses and checks a snapshot for this node.
func readSnapshot(b []byte, id snapIdentity) (*hybrid.State, []int, error) {
	if err := checkSnapshotHead(b, id); err != nil {
		return nil, nil, err
	}
	flags := binary.LittleEndian.Uint32(b[40:])
	n := binary.LittleEndian.Uint32(b[44:])
	hl := int(snapshotHeaderLen(int(n)))
	if len(b) < hl {
		return nil, nil, fmt.Errorf("%w: truncated header", errSnapshot)
	}
	if crc32.ChecksumIEEE(b[:hl-4]) != binary.LittleEndian.Uint32(b[hl-4:]) {
		return nil, nil, fmt.Errorf("%w: header checksum mismatch (truncated or corrupt)", errSnapshot)
	}
	body := b[hl:]
	if flags&snapSigned != 0 {
		if len(b) < hl+snapMACLen {
			return nil, nil, fmt.Errorf("%w: truncated signature", errSnapshot)
		}
		signed, sum := b[:len(b)-snapMACLen], b[len(b)-snapMACLen:]
		body = b[hl : len(b)-snapMACLen]
		if id.key != nil {
			mac := hmac.New(sha256.New, id.key)
			mac.Write(signed)
			if !hmac.Equal(mac.Sum(nil), sum) {
				return nil, nil, fmt.Errorf("%w: the signature does not match this cluster's snapshot key", errSnapshotUnsigned)
			}
		}
	} else if id.key != nil {
		return nil, nil, fmt.Errorf("%w: the snapshot carries no signature and this node requires one (--snapshot-key)", errSnapshotUnsigned)
	}
	unfed := make([]int, n)
	for i := range unfed {
		unfed[i] = int(binary.LittleEndian.Uint32(b[48+4*i:]))
		if unfed[i] >= id.cfg.VocabSize {
			return nil, nil, fmt.Errorf("%w: pending token %d is outside the vocabulary (%d)", errSnapshot, unfed[i], id.cfg.VocabSize)
		}
	}
	st, err := hybrid.DecodeState(body, id.cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errSnapshot, err)
	}
	if err := st.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errSnapshot, err)
	}
	return st, unfed, nil
}

// checkSnapshotHead checks what the start of a snapshot says about this node's
// model (snapshot and state format versions, weights and shape fingerprints),
// when b holds that much: what can never be taken is refused before the rest
// arrives.
func checkSnapshotHead(b []byte, id snapIdentity) error {
	if len(b) < 48 || string(b[:4]) != snapMagic {
		return fmt.Errorf("%w: not a switchyard session snapshot", errSnapshot)
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != snapVersion {
		return fmt.Errorf("%w: format version %d, this node reads %d", errSnapshotUnsupported, v, snapVersion)
	}
	if !bytes.Equal(b[8:40], id.weights[:]) {
		return fmt.Errorf("%w: the snapshot is of a model with other weights", errSnapshotUnsupported)
	}
	n := binary.LittleEndian.Uint32(b[44:])
	if n > maxSnapUnfed {
		return fmt.Errorf("%w: header claims %d pending tokens", errSnapshot, n)
	}
	hl := snapshotHeaderLen(int(n))
	if int64(len(b)) < hl+hybrid.StateHeaderLen {
		return nil // a short first chunk: readSnapshot checks it all later
	}
	if err := hybrid.CheckStateHeader(b[hl:], id.cfg); err != nil {
		return fmt.Errorf("%w: %w", errSnapshot, err)
	}
	return nil
}

// chunkOrErr is one Recv of an import stream.
type chunkOrErr struct {
	m   *pb.SessionSnapshotChunk
	err error
}

// recvChunks receives an import stream on its own goroutine, so the handler can
// give up on a client that stops sending (returning from the handler ends the
// stream, which ends the goroutine's Recv). The goroutine stops after the first
// error (io.EOF included).
func recvChunks(stream interface {
	Recv() (*pb.SessionSnapshotChunk, error)
	Context() context.Context
}) <-chan chunkOrErr {
	ch := make(chan chunkOrErr, 1)
	go func() {
		for {
			m, err := stream.Recv()
			select {
			case ch <- chunkOrErr{m, err}:
			case <-stream.Context().Done(): // the handler returned
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// nextChunk waits importIdleTimeout for the next chunk. A client that goes
// away ends the wait at once (ctx is the stream's): the receiving goroutine
// may see the cancellation first and hand nothing over.
func nextChunk(ctx context.Context, ch <-chan chunkOrErr) (*pb.SessionSnapshotChunk, error) {
	t := time.NewTimer(importIdleTimeout)
	defer t.Stop()
	select {
	case c := <-ch:
		return c.m, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%w: no snapshot data for %v", context.DeadlineExceeded, importIdleTimeout)
	}
}

// chunkWriter sends what is written to it as SessionSnapshotChunks of snapChunk
// bytes; the first carries the total size and token count.
type chunkWriter struct {
	send  func(*pb.SessionSnapshotChunk) error
	buf   []byte
	first *pb.SessionSnapshotChunk // sent with the first data, then nil
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), snapChunk-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == snapChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	msg := &pb.SessionSnapshotChunk{}
	if w.first != nil {
		msg, w.first = w.first, nil
	}
	msg.Data = w.buf
	err := w.send(msg)
	w.buf = make([]byte, 0, snapChunk) // the sent message may still reference the old buffer
	return err
}

// maxSnapshotBytes is the largest snapshot this node accepts: a session at the
// context limit.
func (n *Node) maxSnapshotBytes() int64 {
	return snapshotHeaderLen(maxSnapUnfed) + n.size.EmptyEncoded + int64(n.limits.MaxContext)*n.kvPerToken + snapMACLen
}
