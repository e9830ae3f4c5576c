package fileio

import (
	"bytes"
	"testing"
	"unsafe"
)

func TestArena(t *testing.T) {
	const chunk = 2 << 20
	a := Arena{chunk: chunk}
	var srcs, copies [][]byte
	// Sizes that fill and overflow chunks, and one larger than a chunk.
	for i, n := range []int{1, 63, 100, chunk / 2, chunk / 2, 7, chunk + 5, 64} {
		src := bytes.Repeat([]byte{byte(i + 1)}, n)
		c, err := a.Copy(src)
		if err != nil {
			t.Fatal(err)
		}
		if p := uintptr(unsafe.Pointer(unsafe.SliceData(c))); p%64 != 0 {
			t.Errorf("copy %d at %#x: want 64-byte alignment", i, p)
		}
		if cap(c) != n {
			t.Errorf("copy %d: cap %d, want %d (an append must not run into the next copy)", i, cap(c), n)
		}
		srcs, copies = append(srcs, src), append(copies, c)
	}
	for i := range srcs {
		if !bytes.Equal(srcs[i], copies[i]) {
			t.Fatalf("copy %d differs (overwritten by a later one?)", i)
		}
	}
	var total int64
	for _, s := range srcs {
		total += int64(len(s))
	}
	if a.Bytes() != total {
		t.Errorf("Bytes %d, want %d", a.Bytes(), total)
	}
	if len(a.chunks) != 3 {
		t.Errorf("%d chunks, want 3 (two half-chunk copies overflow the first, the large copy has its own)", len(a.chunks))
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if a.Bytes() != 0 || len(a.chunks) != 0 {
		t.Error("Close left chunks")
	}
	if c, err := a.Copy(nil); err != nil || len(c) != 0 {
		t.Errorf("empty copy: %v %v", c, err)
	}
}
