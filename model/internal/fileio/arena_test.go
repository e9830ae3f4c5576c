package fileio

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
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

// TestArenaReadsMappedFiles: a copy of a mapped slice is read from the file
// (pread), and still equals the map's bytes when the path has been replaced
// by another file since (then it is copied from the map).
func TestArenaReadsMappedFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "weights.bin")
	want := make([]byte, 3<<20+123)
	for i := range want {
		want[i] = byte(i*7 + i>>9)
	}
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Map(f, len(want))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	a := Arena{chunk: 2 << 20}
	defer a.Close()
	for _, r := range [][2]int{{0, 100}, {4097, 1 << 20}, {64, 3 << 20}, {len(want) - 5, len(want)}} {
		src := m[r[0]:r[1]]
		if runtime.GOOS != "windows" { // where Map reads the file into memory
			if _, off, ok := fileOf(src); !ok || off != int64(r[0]) {
				t.Fatalf("fileOf(m[%d:%d]) = %d, %v; want offset %d", r[0], r[1], off, ok, r[0])
			}
		}
		c, err := a.Copy(src)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c, want[r[0]:r[1]]) {
			t.Fatalf("copy of [%d, %d) differs from the file", r[0], r[1])
		}
	}
	if _, _, ok := fileOf(make([]byte, 10)); ok {
		t.Error("fileOf found a heap slice in a mapping")
	}
	// Replace the file: the copy must come from the map (the old inode).
	other := bytes.Repeat([]byte{0xEE}, len(want))
	tmp := path + ".new"
	if err := os.WriteFile(tmp, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if readMapped(make([]byte, 100), m[:100]) {
		t.Error("readMapped read a replaced file")
	}
	c, err := a.Copy(m[1000:2000])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c, want[1000:2000]) {
		t.Error("copy after the file was replaced differs from the map's bytes")
	}
	if err := Unmap(m); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := fileOf(m[:1]); ok { // the address only: not dereferenced
		t.Error("an unmapped mapping is still registered")
	}
}

// TestAllocAnonAligned: anonymous chunks of 2 MiB or more start on a 2 MiB
// boundary (where the OS maps them: unix), are writable to the last byte,
// and free cleanly.
func TestAllocAnonAligned(t *testing.T) {
	for _, size := range []int{4096, 1 << 20, 2 << 20, 4<<20 + 4096, 7<<20 + 12288} {
		b, err := allocAnon(size)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != size {
			t.Fatalf("allocAnon(%d): %d bytes", size, len(b))
		}
		if p := uintptr(unsafe.Pointer(unsafe.SliceData(b))); runtime.GOOS != "windows" && size >= 2<<20 && p%(2<<20) != 0 {
			t.Errorf("allocAnon(%d) at %#x: want a 2 MiB boundary", size, p)
		}
		b[0], b[size-1] = 1, 2
		if err := freeAnon(b); err != nil {
			t.Fatal(err)
		}
	}
}
