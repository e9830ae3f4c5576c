//go:build !purego

package kernels

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestAVX2KernelsUseAVX2Registers: the generated AVX2 functions
// (isAVX2Func) use only the 16 registers and the encodings an AVX2-only
// CPU has: no X16-X31/Y16-Y31 (EVEX only), no ZMM, no mask registers. avo
// allocates from all 32 vector registers, and this machine, which has
// AVX-512, would run such code without complaint; an AVX2-only CPU would
// fault on it. The source does not show an encoding the assembler picks
// for a form VEX lacks: TestAVX2KernelsHaveNoEVEX checks the machine code.
func TestAVX2KernelsUseAVX2Registers(t *testing.T) {
	f, err := os.Open("asm_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	checked, problems, err := avx2RegisterProblems(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	if checked < 20 {
		t.Fatalf("only %d AVX2 functions found in asm_amd64.s", checked)
	}
	// The checker itself: an EVEX-only register in an AVX2 function is
	// reported, the same in an AVX-512 function is not.
	const sample = "TEXT ·foo256(SB), NOSPLIT, $0-8\n\tVMOVDQU32 Y17, Y1 // x\n\tRET\nTEXT ·foo512(SB), NOSPLIT, $0-8\n\tVMOVDQU32 Z17, Z1\n"
	if _, p, _ := avx2RegisterProblems(strings.NewReader(sample)); len(p) != 1 || !strings.Contains(p[0], "foo256 uses Y17") {
		t.Fatalf("checker on a sample: %q", p)
	}
}

// asmText matches a function's first line in generated assembly (its name
// in group 1).
var asmText = regexp.MustCompile(`^TEXT ·(\w+)\(SB\)`)

// avx2RegisterProblems scans generated assembly and reports each line of an
// AVX2 function that names a register AVX2-only CPUs lack.
func avx2RegisterProblems(r io.Reader) (checked int, problems []string, err error) {
	bad := regexp.MustCompile(`\b([XY](1[6-9]|2[0-9]|3[01])|Z[0-9]+|K[1-7])\b`)
	avx2 := false
	var fn string
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		l := sc.Text()
		if m := asmText.FindStringSubmatch(l); m != nil {
			fn = m[1]
			avx2 = isAVX2Func(fn)
			if avx2 {
				checked++
			}
			continue
		}
		if !avx2 {
			continue
		}
		code, _, _ := strings.Cut(l, "//")
		if reg := bad.FindString(code); reg != "" {
			problems = append(problems, fmt.Sprintf("line %d: %s uses %s, which AVX2-only CPUs do not have: %s", line, fn, reg, strings.TrimSpace(code)))
		}
	}
	return checked, problems, sc.Err()
}
