// Package moe computes a Mixture-of-Experts layer's routed experts on an NVIDIA
// GPU: the expert node's GPU backend (switchyard expert --device cuda:N).
//
// Experts live in device memory as bf16 (gate and up stacked as one [2I, H]
// matrix, then down [H, I]), uploaded once per assignment and shared between
// consecutive assignments by reference count (make-before-break uploads only
// what is new). Quantised and f32 checkpoints are converted to bf16 at upload.
//
// A round (Experts.Compute) is planned on the host (plan.go): the token-expert
// pairs are sorted by expert, and each expert takes one of two paths by its
// number of rows m:
//   - m <= SmallRows: the grouped GEMV kernel (kernels.cu), one launch for all
//     such experts, each weight row read once for all of the expert's rows, f32
//     activations (decode sizes, bound by memory bandwidth);
//   - larger: cuBLAS bf16 GEMMs with f32 accumulation, one per expert and
//     projection (prefill sizes, bound by the tensor cores).
//
// The weighted combine runs in slot order, so the result does not depend on
// which experts ran on which path or in which order. Every kernel has a Go twin
// (twins.go) that runs under cuda.Fake in CI; on a GPU the results are compared
// with hybrid.ComputeExperts (the CPU path) in this package's tests.
package moe
