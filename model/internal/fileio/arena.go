package fileio

// Arena holds copies of memory-mapped tensors in anonymous memory, for
// loaders asked not to read weights through the file's map (the nodes'
// default; --mmap keeps the map): chunks of arenaChunk bytes (a larger
// tensor gets a chunk of its own), each tensor at a 64-byte boundary. On
// Linux the chunks are anonymous maps starting on 2 MiB boundaries, advised
// for transparent huge pages. Alloc, Copy and Close are not safe for
// concurrent use.
type Arena struct {
	chunks [][]byte
	cur    []byte // the chunk being filled
	off    int
	bytes  int64
	chunk  int // chunk size (0: arenaChunk; a multiple of 4 KiB)
}

// arenaChunk is the size of the arena's chunks: a multiple of 2 MiB.
const arenaChunk = 256 << 20

// Copy returns a copy of b in the arena. When b lies in a mapping made by
// Map, the copy is read from the file (pread, several times faster than
// faulting the map's pages in one by one); otherwise, or when the file can no
// longer be read, it is copied from b.
func (a *Arena) Copy(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return b, nil
	}
	dst, err := a.Alloc(len(b))
	if err != nil {
		return nil, err
	}
	Read(dst, b)
	return dst, nil
}

// Alloc returns n bytes of the arena's memory (64-byte aligned, zeroed when
// first touched), for a caller that fills them itself (Read, or a repacked
// copy).
func (a *Arena) Alloc(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	off := (a.off + 63) &^ 63
	if a.cur == nil || off+n > len(a.cur) {
		chunk := a.chunk
		if chunk == 0 {
			chunk = arenaChunk
		}
		c, err := allocAnon(max(chunk, (n+4095)&^4095))
		if err != nil {
			return nil, err
		}
		a.chunks = append(a.chunks, c)
		a.cur, off = c, 0
	}
	a.off = off + n
	a.bytes += int64(n)
	return a.cur[off : off+n : off+n], nil
}

// Read fills dst with the bytes of src: read from the file when src lies in
// a mapping made by Map (see Copy), else copied.
func Read(dst, src []byte) {
	if !readMapped(dst, src) {
		copy(dst, src)
	}
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
