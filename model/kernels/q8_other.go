//go:build purego || !amd64

package kernels

import "github.com/switchyard-serving/switchyard/model/tensor"

// planQ8: no integer kernels on this build.
func planQ8(*callCtx, Level) (ok, nonFinite bool) { return false, false }

func hasQ8Kernels() bool { return false }

func hasQ8KernelsAt(tensor.DType, Level) bool { return false }

func hasQ80KernelsAt(Level) bool { return false }

func quantizeQ8KAsm([]byte, []float32, int) (ok, done bool) { return false, false }

func forceQ8BW() (restore func()) { return nil }

func planBF16(*callCtx, Level) bool { return false }

func hasBF16DotKernels() bool { return false }

func toBF16Asm([]uint16, []float32) int { return 0 }

func hasPackedKernels(tensor.DType) bool { return false }

func packedFast(tensor.Layout, Level) bool { return false }

func planPair(*callCtx, Level, tensor.Matrix, []float32) bool { return false }

func hasStreamKernel(tensor.Layout, Level, int) bool { return false }
