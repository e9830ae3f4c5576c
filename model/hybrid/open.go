package hybrid

import (
	"fmt"
	"os"

	"github.com/switchyard-serving/switchyard/model/gguf"
)

// Open loads a checkpoint in either format: a Hugging Face folder
// (config.json + *.safetensors) or a GGUF file. For GGUF it also returns the
// open file (its metadata holds the tokenizer; the model's Close closes it);
// for a folder the file is nil. This is the one place that tells the formats
// apart.
func Open(path string, opt LoadOptions) (*Model, *gguf.File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("hybrid: %w", err)
	}
	if st.IsDir() {
		m, err := LoadHF(path, opt)
		return m, nil, err
	}
	if !IsGGUF(path) {
		return nil, nil, fmt.Errorf("hybrid: %s is neither a Hugging Face model folder nor a GGUF file", path)
	}
	return LoadGGUF(path, opt)
}
