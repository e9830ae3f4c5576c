//go:build !amd64 || purego

package kernels

import "math"

// Without assembly (other architectures, or the purego build tag) only the
// reference and Go levels exist.

func detectLevel() Level { return LevelGo }

func dotAsm(Level, []float32, []float32) (float32, bool) { return 0, false }
func axpyAsm(Level, float32, []float32, []float32) bool  { return false }
func scaleAsm(Level, float32, []float32) bool            { return false }
func addAsm(Level, []float32, []float32, []float32) bool { return false }

func addScaledAsm(Level, []float32, []float32, float32, bool) int { return 0 }

func roundBF16Asm(Level, []float32, []float32, float32, bool) int { return 0 }
func mulAsm(Level, []float32, []float32, []float32) bool          { return false }
func ssmRowsAsm(Level, []float32, int, float32, []float32, []float32, []float32, []float32) bool {
	return false
}
func expShiftAsm(Level, []float32, float32, bool) (int, float64) { return 0, 0 }
func maxAsm(Level, []float32) (int, float32)                     { return 0, float32(math.Inf(-1)) }
func fmaProbe(int) int                                           { return 0 }
func readProbe(b []byte) uint64                                  { return readGo(b) }
func triadProbe(a, b, c []float32, s float32)                    { triadGo(a, b, c, s) }

func siluAsm(Level, []float32, []float32, []float32) int { return 0 }

func bf16WireAsm(Level, byte, []byte, []float32) int { return 0 }

func addWeightedQ80Asm(Level, [][]float32, []byte, int, [][]float32, int) bool { return false }
