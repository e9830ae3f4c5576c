//go:build !cuda

package cuda

// loadDriver fails: the loader is compiled only with the "cuda" build tag.
func loadDriver() (driver, [2]string, error) { return nil, [2]string{}, ErrNotBuilt }

// Built reports whether this binary can reach real GPUs (the "cuda" build tag).
const Built = false
