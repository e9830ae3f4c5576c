// Package gguf reads and writes GGUF files, the llama.cpp model format.
//
// A GGUF file (little-endian, versions 2 and 3) holds the magic "GGUF", a
// version, the tensor and key/value counts, the typed key/value metadata (in file
// order), one info record per tensor (name, dimensions in ggml order, ggml type
// and offset) and, from the next multiple of general.alignment (default 32), the
// tensor data.
//
// Open memory-maps a file and Parse reads one from memory. Both validate every
// length and count against the size of the input before allocating, so a corrupt
// or hostile header gives an error rather than a huge allocation or a panic, and
// they check that every tensor whose size is known lies inside the data section.
//
// Dimensions: TensorInfo.Dims is in ggml "ne" order (fastest dimension first),
// exactly as stored. File.Tensor returns the shape in numpy order (the reverse),
// which is the order the rest of the engine uses (see package tensor).
//
// Writer builds a GGUF file, streaming the tensor data through a callback so that
// large synthetic models never need to be held in memory.
//
// A File may be read from many goroutines at once; Close must not run
// concurrently with those reads, and invalidates every tensor slice obtained.
package gguf
