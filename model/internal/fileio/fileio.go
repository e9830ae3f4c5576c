// Package fileio holds the file plumbing the checkpoint formats share: read-only
// memory maps (with a read-into-memory fallback where mmap is unavailable), an
// arena of anonymous memory for loaders that copy the tensors out of the map
// (Arena), and atomic streaming writes (temporary file, fsync, rename).
package fileio

import (
	"bufio"
	"os"
	"path/filepath"
)

// WriteAtomic streams body into a temporary file next to path and renames it into
// place once flushed and synced; on any error the temporary file is removed and
// path is left untouched. Errors are returned unwrapped for the caller to prefix.
func WriteAtomic(path string, body func(w *bufio.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if err := body(w); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
