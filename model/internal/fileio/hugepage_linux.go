package fileio

import "golang.org/x/sys/unix"

// adviseHuge asks for transparent huge pages on b (best effort).
func adviseHuge(b []byte) { _ = unix.Madvise(b, unix.MADV_HUGEPAGE) }
