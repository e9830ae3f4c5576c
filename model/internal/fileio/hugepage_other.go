//go:build unix && !linux

package fileio

// adviseHuge does nothing where the system has no transparent huge pages
// to ask for (MADV_HUGEPAGE is Linux's).
func adviseHuge([]byte) {}
