// Package tokenizer implements the byte-level BPE tokenizer used by IBM
// Granite 4.0 models (GPT-2 style byte alphabet, ~100k vocabulary), together
// with streaming detokenisation, Granite chat markup and a synthetic tokenizer
// generator for random-weight test models.
//
// A Tokenizer is built either from a Hugging Face tokenizer directory or
// tokenizer.json file (LoadHF) or from the tokenizer arrays of a GGUF file
// (FromVocab). Both sources describe the same model:
//
//   - the vocabulary: byte-level token strings (bytes mapped to printable
//     runes, "Ġ" for a space) plus added tokens such as "<|end_of_text|>"
//     that are matched as whole strings before BPE;
//   - the rank-ordered merge list;
//   - the pre-tokenizer: the GPT-2 regex (GGUF pre "gpt-2", HF ByteLevel with
//     use_regex=true) or the cl100k-style regex used by real Granite 4.0
//     checkpoints (GGUF pre "dbrx"/"llama3"/"llama-bpe", HF Sequence of a
//     Split and a ByteLevel with use_regex=false).
//
// The two known pre-tokenizer regexes are implemented by hand-written
// scanners (the regexes use a (?!\S) lookahead that Go's regexp cannot
// express); any other Split regex found in a tokenizer.json is run with a
// backtracking regexp engine.
//
// A Tokenizer is immutable after construction and safe for concurrent use;
// BPE results are kept in a bounded, sharded cache. Nothing in the package
// panics on malformed input: constructors return errors prefixed with
// "tokenizer: ", and Encode/Decode accept arbitrary bytes and ids.
package tokenizer
