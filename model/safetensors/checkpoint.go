package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// IndexFile and SingleFile are the conventional names in a checkpoint directory.
const (
	IndexFile  = "model.safetensors.index.json"
	SingleFile = "model.safetensors"
)

// Checkpoint is a set of safetensors files opened as one name-to-tensor table.
type Checkpoint struct {
	files []*File
	paths []string
	where map[string]int // tensor name -> index into files
	names []string
}

// index is the JSON of model.safetensors.index.json.
type index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// OpenDir opens the checkpoint in dir: the shards named by
// model.safetensors.index.json when it exists (each opened once, and every
// weight_map entry checked against its shard), else model.safetensors, else every
// *.safetensors file in the directory in name order. A tensor name present in two
// files is an error.
func OpenDir(dir string) (*Checkpoint, error) {
	files, idx, err := checkpointFiles(dir)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{where: map[string]int{}}
	for _, name := range files {
		p := filepath.Join(dir, name)
		f, err := Open(p)
		if err != nil {
			c.Close()
			return nil, err
		}
		i := len(c.files)
		c.files = append(c.files, f)
		c.paths = append(c.paths, p)
		for _, n := range f.names {
			if j, dup := c.where[n]; dup {
				c.Close()
				return nil, fmt.Errorf("%w: tensor %q is in both %s and %s", ErrDuplicate, n, c.paths[j], p)
			}
			c.where[n] = i
		}
	}
	if idx != nil {
		// Report every inconsistency in name order, so the message is stable.
		names := make([]string, 0, len(idx.WeightMap))
		for n := range idx.WeightMap {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			shard := idx.WeightMap[n]
			i, ok := c.where[n]
			if !ok {
				c.Close()
				return nil, fmt.Errorf("%w: %s: tensor %q is mapped to %s but no shard holds it", ErrFormat, IndexFile, n, shard)
			}
			if filepath.Base(c.paths[i]) != shard {
				c.Close()
				return nil, fmt.Errorf("%w: %s: tensor %q is mapped to %s but is in %s", ErrFormat, IndexFile, n, shard, c.paths[i])
			}
		}
	}
	c.names = make([]string, 0, len(c.where))
	for n := range c.where {
		c.names = append(c.names, n)
	}
	slices.Sort(c.names)
	return c, nil
}

// checkpointFiles lists the files OpenDir opens (base names, in opening order)
// and the parsed index when there is one.
func checkpointFiles(dir string) ([]string, *index, error) {
	raw, err := os.ReadFile(filepath.Join(dir, IndexFile))
	switch {
	case err == nil:
		var idx index
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrFormat, filepath.Join(dir, IndexFile), err)
		}
		if len(idx.WeightMap) == 0 {
			return nil, nil, fmt.Errorf("%w: %s has an empty weight_map", ErrFormat, filepath.Join(dir, IndexFile))
		}
		var files []string
		for name, shard := range idx.WeightMap {
			if !plainFileName(shard) {
				return nil, nil, fmt.Errorf("%w: %s: tensor %q maps to %q, which is not a file name in the directory", ErrFormat, IndexFile, name, shard)
			}
			if !slices.Contains(files, shard) {
				files = append(files, shard)
			}
		}
		slices.Sort(files)
		return files, &idx, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("safetensors: %w", err)
	}

	if st, err := os.Stat(filepath.Join(dir, SingleFile)); err == nil && !st.IsDir() {
		return []string{SingleFile}, nil, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("safetensors: %w", err)
	}
	var files []string
	for _, e := range ents { // ReadDir sorts by name
		if strings.HasSuffix(e.Name(), ".safetensors") && e.Type().IsRegular() {
			files = append(files, e.Name())
		}
	}
	if len(files) == 0 {
		return nil, nil, fmt.Errorf("%w in %s", ErrNoFiles, dir)
	}
	return files, nil, nil
}

// plainFileName reports whether s names a file directly inside a directory.
func plainFileName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, `/\`) && filepath.Base(s) == s
}

// Tensor returns the named tensor from whichever file holds it.
func (c *Checkpoint) Tensor(name string) (Tensor, bool) {
	i, ok := c.where[name]
	if !ok {
		return Tensor{}, false
	}
	return c.files[i].Tensor(name)
}

// Names returns every tensor name of the checkpoint, sorted.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Files returns the paths of the opened files in the order they were opened.
func (c *Checkpoint) Files() []string { return slices.Clone(c.paths) }

// Close closes every file; tensor data must not be used afterwards.
func (c *Checkpoint) Close() error {
	if c == nil {
		return nil
	}
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	c.files, c.where = nil, nil
	return errors.Join(errs...)
}
