// Package cuda reaches NVIDIA GPUs from pure Go: the CUDA driver API
// (libcuda.so.1) for contexts, streams, events, memory and PTX modules, and
// cuBLAS (libcublas.so.*) for matrix products. The libraries are opened at run
// time with github.com/ebitengine/purego, so building needs neither cgo nor the
// CUDA toolkit.
//
// The purego loader is compiled only with the build tag "cuda" (the GPU
// binary and image); without it Open fails with ErrNotBuilt and the default
// binary stays fully static. Everything above the loader (the Device, Stream,
// Module and BLAS types, argument packing, the library search) is plain Go and
// is tested in CI against Fake, an in-memory driver that runs registered Go
// twins of the kernels and a reference GEMM.
//
// Threading: a CUDA context is current per OS thread, and goroutines move
// between threads, so every call that reaches the driver locks its goroutine
// to a thread and makes the device's primary context current first (Device.do).
package cuda
