//go:build !unix

package hub

import "os"

// tryLock always succeeds where flock is not available: concurrent
// downloaders into one folder are then not serialized.
func tryLock(*os.File) (bool, error) { return true, nil }

func unlock(*os.File) error { return nil }
