//go:build unix

package fileio

import (
	"os"

	"golang.org/x/sys/unix"
)

// Map maps size bytes of f read-only.
func Map(f *os.File, size int) ([]byte, error) {
	return unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
}

// Unmap releases a mapping made by Map.
func Unmap(b []byte) error { return unix.Munmap(b) }
