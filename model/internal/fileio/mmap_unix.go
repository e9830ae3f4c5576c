//go:build unix

package fileio

import (
	"os"

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

// allocAnon maps size bytes of anonymous memory, advised for transparent
// huge pages (best effort: the system's THP setting decides).
func allocAnon(size int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return b, nil
}

func freeAnon(b []byte) error { return unix.Munmap(b) }
