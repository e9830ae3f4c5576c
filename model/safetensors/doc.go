// Package safetensors reads and writes Hugging Face safetensors checkpoints.
//
// A .safetensors file is an 8-byte little-endian header length N, N bytes of JSON
// header and the tensor data. The header maps each tensor name to its dtype, its
// shape (numpy order, slowest dimension first) and the [begin, end) byte range of
// its data relative to the end of the header; the optional "__metadata__" entry is
// a string-to-string map.
//
// Open memory-maps a file and validates the whole header before returning: every
// dtype must be one this engine computes with (F32, F16, BF16), every byte range
// must lie inside the file, match its shape and not overlap another tensor. Tensor
// data then aliases the mapping, so it is valid only until Close and must not be
// written to. Parse does the same over an in-memory buffer.
//
// OpenDir opens a checkpoint directory, sharded (model.safetensors.index.json) or
// not, as one name-to-tensor table. WriteFile and WriteIndex produce checkpoints,
// streaming the tensor bytes so that multi-gigabyte synthetic models never need to
// be held in memory.
//
// A File or Checkpoint may be read from many goroutines at once; Close must not
// run concurrently with those reads, and invalidates every Tensor.Data obtained.
package safetensors
