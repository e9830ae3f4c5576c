package kernels

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
)

// Level selects which implementation MatMul and the vector helpers run.
type Level int32

// Kernel levels, slowest first. Every level computes the same function within
// float32 rounding; tests force each supported level and compare with the
// reference.
const (
	// LevelRef runs the plain reference twins (MatMulRef, DotRef, ...), single-threaded.
	LevelRef Level = iota
	// LevelGo runs portable Go kernels on the worker pool.
	LevelGo
	// LevelAVX2 runs AVX2+FMA+F16C assembly (amd64).
	LevelAVX2
	// LevelAVX512 runs AVX-512 (F, BW, DQ, VL) assembly (amd64).
	LevelAVX512
)

// EnvLevel is the environment variable read at start-up to force a level:
// "ref", "go", "avx2" or "avx512". A level the CPU lacks falls back to the best
// supported one.
const EnvLevel = "SWITCHYARD_KERNELS"

func (l Level) String() string {
	switch l {
	case LevelRef:
		return "ref"
	case LevelGo:
		return "go"
	case LevelAVX2:
		return "avx2"
	case LevelAVX512:
		return "avx512"
	}
	return fmt.Sprintf("Level(%d)", int32(l))
}

// ParseLevel parses the names String returns.
func ParseLevel(s string) (Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "ref":
		return LevelRef, nil
	case "go", "generic", "purego":
		return LevelGo, nil
	case "avx2":
		return LevelAVX2, nil
	case "avx512", "avx-512":
		return LevelAVX512, nil
	}
	return 0, fmt.Errorf("kernels: unknown kernel level %q (want ref, go, avx2 or avx512)", s)
}

var (
	maxLevel = detectLevel() // best level this CPU (and build) supports
	curLevel atomic.Int32
)

func init() {
	l := maxLevel
	if v := os.Getenv(EnvLevel); v != "" {
		if p, err := ParseLevel(v); err == nil && p <= maxLevel {
			l = p
		}
	}
	curLevel.Store(int32(l))
}

// MaxLevel is the fastest level this CPU supports.
func MaxLevel() Level { return maxLevel }

// KernelLevel is the level in use.
func KernelLevel() Level { return Level(curLevel.Load()) }

// SupportedLevels lists the levels this CPU supports, slowest first.
func SupportedLevels() []Level {
	var ls []Level
	for l := LevelRef; l <= maxLevel; l++ {
		ls = append(ls, l)
	}
	return ls
}

// SetKernelLevel forces a level (for tests and benchmarks) and returns the
// previous one. It fails, changing nothing, when the CPU lacks the level.
func SetKernelLevel(l Level) (prev Level, err error) {
	if l < LevelRef || l > maxLevel {
		return KernelLevel(), fmt.Errorf("kernels: level %v not supported on this CPU (max %v)", l, maxLevel)
	}
	return Level(curLevel.Swap(int32(l))), nil
}
