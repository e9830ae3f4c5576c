//go:build !purego

package kernels

import (
	"bufio"
	"debug/elf"
	"debug/gosym"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// TestAVX2KernelsHaveNoEVEX disassembles the AVX2 functions of this test
// binary (objdump) and fails on any EVEX-encoded instruction in them.
// TestAVX2KernelsUseAVX2Registers reads the source, but Go's assembler also
// picks EVEX, silently, for instruction forms VEX lacks (an immediate shift
// with a memory source, `VPSRLW $4, 256(AX), Y3`): this machine runs them,
// an AVX2-only CPU (AMD Zen 2 and 3, most Intel client parts) stops the
// process with SIGILL. The machine code is what such a CPU runs, so it is
// checked.
func TestAVX2KernelsHaveNoEVEX(t *testing.T) {
	objdump, err := exec.LookPath("objdump")
	if err != nil {
		t.Skip("no objdump (binutils): the AVX2 kernels' encodings are not checked")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	names, err := asmFunctions("asm_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	funcs, err := textSymbols(exe, names)
	if err != nil {
		t.Fatal(err)
	}
	var avx2, avx512 []textSym
	for _, f := range funcs {
		if isAVX2Func(f.name) {
			avx2 = append(avx2, f)
		} else {
			avx512 = append(avx512, f)
		}
	}
	if len(avx2) < 20 {
		t.Fatalf("only %d AVX2 functions found in the test binary", len(avx2))
	}
	found, err := evexInstructions(objdump, exe, avx2)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range found {
		t.Error(p)
	}
	// The checker itself: it finds EVEX in the AVX-512 kernels.
	var q4k []textSym
	for _, f := range avx512 {
		if f.name == "q4kx16N1" {
			q4k = append(q4k, f)
		}
	}
	if len(q4k) != 1 {
		t.Fatalf("q4kx16N1 not found in the test binary")
	}
	if p, err := evexInstructions(objdump, exe, q4k); err != nil || len(p) == 0 {
		t.Fatalf("checker on q4kx16N1 (AVX-512): %d EVEX instructions found, err %v", len(p), err)
	}
}

// isAVX2Func reports whether a generated function runs on AVX2-only CPUs:
// the AVX2 kernels (names with "256" or "AVX2") and the rewrites of Q4_0,
// Q5_0 and IQ4_NL rows as Q8_0 rows (conv*), which every level uses.
func isAVX2Func(name string) bool {
	return strings.Contains(name, "256") || strings.Contains(name, "AVX2") || strings.HasPrefix(name, "conv")
}

// asmFunctions lists the TEXT symbols of a generated assembly file.
func asmFunctions(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := asmText.FindStringSubmatch(sc.Text()); m != nil {
			names[m[1]] = true
		}
	}
	return names, sc.Err()
}

type textSym struct {
	name       string
	start, end uint64
}

// textSymbols finds the functions of names (this package's assembly) in
// the ELF file's Go line table (test binaries have no symbol table).
func textSymbols(path string, names map[string]bool) ([]textSym, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec, text := f.Section(".gopclntab"), f.Section(".text")
	if sec == nil || text == nil {
		return nil, fmt.Errorf("%s has no .gopclntab or .text section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil, err
	}
	const pkg = "/model/kernels."
	var out []textSym
	seen := map[string]int{}
	for _, fn := range tab.Funcs {
		i := strings.LastIndex(fn.Name, pkg)
		if i < 0 {
			continue
		}
		name := strings.TrimSuffix(fn.Name[i+len(pkg):], ".abi0")
		if !names[name] || fn.End <= fn.Entry {
			continue
		}
		// The assembly itself, not the (smaller) wrapper Go calls it
		// through, which the line table lists under the same name.
		if j, ok := seen[name]; !ok {
			seen[name] = len(out)
			out = append(out, textSym{name, fn.Entry, fn.End})
		} else if fn.End-fn.Entry > out[j].end-out[j].start {
			out[j] = textSym{name, fn.Entry, fn.End}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out, nil
}

// evexInstructions disassembles funcs and returns a line for each
// instruction whose first byte is 0x62: the EVEX prefix (BOUND, its legacy
// meaning, does not exist in 64-bit mode).
func evexInstructions(objdump, exe string, funcs []textSym) ([]string, error) {
	lo, hi := funcs[0].start, funcs[len(funcs)-1].end
	cmd := exec.Command(objdump, "-d", "--insn-width=16",
		fmt.Sprintf("--start-address=%#x", lo), fmt.Sprintf("--stop-address=%#x", hi), exe)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	found, n, perr := scanEVEX(out, funcs)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("objdump: %w", err)
	}
	if perr != nil {
		return nil, perr
	}
	if n == 0 {
		return nil, fmt.Errorf("objdump printed no instructions of the %d functions", len(funcs))
	}
	return found, nil
}

// scanEVEX reads objdump -d output ("  addr:\tbytes \tmnemonic") and reports
// the EVEX instructions that lie within funcs, and how many instructions
// of funcs it saw.
func scanEVEX(r io.Reader, funcs []textSym) (found []string, n int, err error) {
	insn := regexp.MustCompile(`^\s*([0-9a-f]+):\s+((?:[0-9a-f]{2} )+)\s*(.*)$`)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		m := insn.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		addr, err := strconv.ParseUint(m[1], 16, 64)
		if err != nil {
			return nil, n, err
		}
		k := sort.Search(len(funcs), func(i int) bool { return funcs[i].end > addr })
		if k == len(funcs) || addr < funcs[k].start {
			continue
		}
		n++
		if strings.HasPrefix(m[2], "62 ") {
			found = append(found, fmt.Sprintf("%s+%#x: EVEX encoding, which AVX2-only CPUs do not have: %s (%s)",
				funcs[k].name, addr-funcs[k].start, strings.TrimSpace(m[3]), strings.TrimSpace(m[2])))
		}
	}
	return found, n, sc.Err()
}
