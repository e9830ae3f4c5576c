package fileio

// Arena holds copies of memory-mapped tensors in anonymous memory, for
// loaders asked not to read weights through the file's map (the --no-mmap
// of the CLI): chunks of arenaChunk bytes (a larger tensor gets a chunk of
// its own), each tensor at a 64-byte boundary. On Linux the chunks are
// anonymous maps advised for transparent huge pages. Copy and Close are not
// safe for concurrent use.
type Arena struct {
	chunks [][]byte
	cur    []byte // the chunk being filled
	off    int
	bytes  int64
	chunk  int // chunk size (0: arenaChunk; a multiple of 4 KiB)
}

// NewArena returns an arena whose chunks are chunk bytes (a multiple of 4
// KiB; 0 means 256 MiB): the size of everything one arena will hold keeps
// its memory to what it copies.
func NewArena(chunk int) *Arena { return &Arena{chunk: chunk} }

// arenaChunk is the size of the arena's chunks: a multiple of 2 MiB.
const arenaChunk = 256 << 20

// Copy returns a copy of b in the arena. When b lies in a mapping made by
// Map, the copy is read from the file (pread, several times faster than
// faulting the map's pages in one by one); otherwise, or when the file can no
// longer be read, it is copied from b.
func (a *Arena) Copy(b []byte) ([]byte, error) {
	n := len(b)
	if n == 0 {
		return b, nil
	}
	off := (a.off + 63) &^ 63
	if a.cur == nil || off+n > len(a.cur) {
		chunk := a.chunk
		if chunk == 0 {
			chunk = arenaChunk
		}
		size := max(chunk, (n+4095)&^4095)
		c, err := allocAnon(size)
		if err != nil {
			return nil, err
		}
		a.chunks = append(a.chunks, c)
		a.cur, off = c, 0
	}
	dst := a.cur[off : off+n : off+n]
	if !readMapped(dst, b) {
		copy(dst, b)
	}
	a.off = off + n
	a.bytes += int64(n)
	return dst, nil
}

// Bytes is the total size of the copies.
func (a *Arena) Bytes() int64 { return a.bytes }

// Close releases the arena's memory; slices it returned must not be used
// after.
func (a *Arena) Close() error {
	var first error
	for _, c := range a.chunks {
		if err := freeAnon(c); err != nil && first == nil {
			first = err
		}
	}
	a.chunks, a.cur, a.off, a.bytes = nil, nil, 0, 0
	return first
}
