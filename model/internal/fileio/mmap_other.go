//go:build !unix

package fileio

import (
	"io"
	"os"
)

// Map reads the file into memory where mmap is not available.
func Map(f *os.File, size int) ([]byte, error) {
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}

// Unmap releases a mapping made by Map.
func Unmap([]byte) error { return nil }

func allocAnon(size int) ([]byte, error) { return make([]byte, size), nil }

func freeAnon([]byte) error { return nil }

// AdviseHugePages does nothing where there is no madvise.
func AdviseHugePages([]byte) {}
