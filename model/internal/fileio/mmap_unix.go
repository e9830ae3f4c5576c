//go:build unix

package fileio

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Map maps size bytes of f read-only.
func Map(f *os.File, size int) ([]byte, error) {
	b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	register(b, f)
	return b, nil
}

// Unmap releases a mapping made by Map.
func Unmap(b []byte) error {
	unregister(b)
	return unix.Munmap(b)
}

// hugePage is the size of a transparent huge page on the platforms measured
// (x86-64, arm64 with 4 KiB pages).
const hugePage = 2 << 20

// allocAnon maps size bytes of anonymous memory, advised for transparent
// huge pages (best effort: the system's THP setting decides). From 2 MiB on
// the map starts on a 2 MiB boundary, so that every whole 2 MiB of it can be
// a huge page (the kernel places a map only at page alignment otherwise: a
// 4.7 MiB expert would get one huge page, or none, and 4 KiB pages for the
// rest). The maps are made and released by address (MmapPtr), not through
// unix.Mmap's bookkeeping, since they are trimmed.
func allocAnon(size int) ([]byte, error) {
	n := size
	if size >= hugePage {
		n += hugePage // room to align the start; the head and the tail are unmapped
	}
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	head := 0
	if size >= hugePage {
		head = int((hugePage - uintptr(p)%hugePage) % hugePage)
		if head > 0 {
			if err := unix.MunmapPtr(p, uintptr(head)); err != nil {
				_ = unix.MunmapPtr(p, uintptr(n))
				return nil, err
			}
		}
		if tail := n - head - size; tail > 0 {
			if err := unix.MunmapPtr(unsafe.Add(p, head+size), uintptr(tail)); err != nil {
				_ = unix.MunmapPtr(unsafe.Add(p, head), uintptr(size))
				return nil, err
			}
		}
	}
	b := unsafe.Slice((*byte)(unsafe.Add(p, head)), size)
	adviseHuge(b)
	return b, nil
}

// freeAnon releases memory from allocAnon.
func freeAnon(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}

// AdviseHugePages advises transparent huge pages for the whole 2 MiB pages
// inside b (best effort, as allocAnon): for Go-heap buffers that are
// written soon after they are made, such as a session's recurrent state.
// Memory the runtime took fresh from the system is then faulted in 2 MiB
// at a time on the first write instead of 4 KiB (on this project's 2-core
// VM a first write cost about 11 µs per 4 KiB page: 32 ms for 11 MiB,
// against 0.6 ms in huge pages). Memory already faulted in is left as it
// is.
func AdviseHugePages(b []byte) {
	if len(b) < hugePage {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	head := int((hugePage - p%hugePage) % hugePage)
	n := (len(b) - head) / hugePage * hugePage
	if n <= 0 {
		return
	}
	adviseHuge(b[head : head+n])
}
