// Command gen generates the amd64 assembly of package kernels with avo.
//
// It is its own module so that avo (and golang.org/x/tools) never enter the
// main module's dependencies. Regenerate from model/kernels with
//
//	go generate ./model/kernels
//
// which runs, in this directory,
//
//	go run . -out ../../asm_amd64.s -stubs ../../asm_amd64.go -pkg kernels
//
// The generated files are committed; a plain `go build` needs neither avo nor
// GOEXPERIMENT nor cgo.
//
// Kernel families (each in an AVX-512 "512" and an AVX2+FMA "256" flavour):
//
//   - tile<isa><dtype>N<n>: out[i][r] = Σ_k W[r][k]·x[i][k] for quads of 4
//     weight rows and n input rows, widening the weights on the fly;
//   - widen<isa><dtype>: dequantize quads of rows into a float32 panel that the
//     F32 tile kernel then multiplies (the prefill path);
//   - dot, axpy, scale, add, expShift, maxv: vector helpers;
//   - fmaPeak, readMem, triad: machine probes.
package main

import (
	"flag"
	"fmt"
	"go/format"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	. "github.com/mmcloughlin/avo/build"
)

func main() {
	ConstraintExpr("!purego")
	genConsts()
	genExpConsts()
	genQ8Consts()
	genQ4Kx16Consts()
	genQ6Kx16Consts()
	genQ23Kx16Consts()
	genIQ4XSx16Consts()
	genQ23Kx16AVX2Consts()
	genIQ4XSx16AVX2Consts()
	genQ8AVX2Consts()
	genQ8QuantConsts()
	genQ80Consts()
	genQ80RowsConsts()
	genQ80AVX2Consts()
	genQ40x16Consts()
	genQ4Kx16AVX2Consts()
	genConvConsts()
	genToBF16Consts()
	genRoundBF16Consts()
	for _, s := range []isa{isa512, isa256} {
		genProbes(s)
		genVec(s)
		genExp(s, true)
		genExp(s, false)
		genMax(s)
	}
	for _, dt := range allDtypes {
		for n := 1; n <= maxN(isa512, dt); n++ {
			genTile(isa512, dt, n, modeFMA)
			if fastSmallN(isa512, dt, n) {
				genTile(isa512, dt, n, modeFMAInvariant)
			}
		}
		if dt == dF32 {
			for n := 1; n <= isa512.maxN; n++ {
				genTile(isa512, dt, n, modePanel)
			}
		}
		if dt != dF32 {
			genTile(isa512, dt, 0, modeWiden)
		}
	}
	for _, dt := range allDtypes {
		if only512(dt) {
			continue
		}
		for n := 1; n <= maxN(isa256, dt); n++ {
			genTile(isa256, dt, n, modeFMA)
			if fastSmallN(isa256, dt, n) {
				genTile(isa256, dt, n, modeFMAInvariant)
			}
		}
		if dt != dF32 {
			genTile(isa256, dt, 0, modeWiden)
		}
	}
	for _, dt := range q8Dtypes {
		for n := 1; n <= q8MaxN; n++ {
			genQ8(dt, n, true)
			genQ8(dt, n, false)
		}
	}
	genQ8IQConsts()
	for _, dt := range q8IQDtypes {
		for n := 1; n <= q8IQMaxN; n++ {
			genQ8IQ(dt, n, true)
			genQ8IQ(dt, n, false)
		}
	}
	genQ8IQAVX2Consts()
	for _, dt := range q8IQDtypes {
		for n := 1; n <= q8IQAVX2MaxN; n++ {
			genQ8IQAVX2(dt, n)
		}
	}
	for _, dt := range q8AVX2Dtypes {
		for n := 1; n <= q8AVX2MaxN(dt); n++ {
			genQ8AVX2(dt, n)
		}
	}
	genQ8Quant()
	genQ80Quant()
	genQ80Prep()
	genQ80QuantRow()
	genQ80Rows()
	genQ40Rows("Q40")
	genQ40Rows("IQ4NL")
	genQ40Rows("Q50")
	genQ40Rows("Q41")
	genQ40Rows("Q51")
	genQ40Rows("MXFP4")
	for r := 1; r <= q80MaxRows; r++ {
		genQ80Dot(r)
	}
	for n := 1; n <= q80x16MaxN; n++ {
		genQ80x16(n)
	}
	for _, typ := range []string{"Q80", "Q40", "IQ4NL", "Q50", "Q41", "Q51", "MXFP4"} {
		for n := 1; n <= 2; n++ {
			genX16Streams(typ, n)
		}
	}
	for _, typ := range []string{"Q40", "IQ4NL", "Q50", "Q41", "Q51", "MXFP4"} {
		for n := 1; n <= q80x16MaxN; n++ {
			genX16Q80Act(typ, n)
		}
	}
	for n := 1; n <= q80x16AVX2MaxN; n++ {
		genQ80x16AVX2(n)
	}
	for _, typ := range []string{"Q40", "IQ4NL", "Q50", "Q41", "Q51", "MXFP4"} {
		for n := 1; n <= q80x16AVX2MaxN; n++ {
			genX16AVX2(typ, n)
		}
	}
	for _, typ := range []string{"Q80", "Q40", "Q41"} {
		genX16AVX2Streams(typ)
	}
	genQ80Rows256()
	genRows256("Q40")
	genRows256("Q50")
	genRows256("IQ4NL")
	genRows256("Q41")
	genRows256("Q51")
	genRows256("MXFP4")
	genQ80Rows8x256()
	genQ80QuantRow256()
	genQ8Quant256()
	for _, t := range []string{"Q40", "Q50", "IQ4NL"} {
		genConvQ80(t)
	}
	for n := 1; n <= q4kx16AVX2MaxN; n++ {
		genQ4Kx16AVX2(n)
		genQ5Kx16AVX2(n)
	}
	for n := 1; n <= q6kx16AVX2MaxN; n++ {
		genQ6Kx16AVX2(n)
	}
	genQKx16Streams(dQ4K, 2)
	genQKx16Streams(dQ5K, 1)
	genQ4Kx16Shared()
	genQ6Kx16Shared()
	for n := 1; n <= q4kx16MaxN; n++ {
		genQ4Kx16(n)
	}
	for n := 1; n <= q5kx16MaxN; n++ {
		genQ5Kx16(n)
	}
	for n := 1; n <= q6kx16MaxN; n++ {
		genQ6Kx16(n)
	}
	genQ6Kx16Unpack()
	genQ5Kx16Unpack()
	genQ3Kx16Unpack()
	for n := 1; n <= q3kCodesMaxN; n++ {
		genQ3Kx16Codes(n)
	}
	for n := 1; n <= q5kCodesMaxN; n++ {
		genQ5Kx16Codes(n)
	}
	for n := 1; n <= q6kCodesMaxN; n++ {
		genQ6Kx16Codes(n)
	}
	for n := 1; n <= q23kx16MaxN; n++ {
		genQ3Kx16(n)
		genQ2Kx16(n)
	}
	for n := 1; n <= iq4xsx16MaxN; n++ {
		genIQ4XSx16(n)
	}
	for n := 1; n <= q23kx16AVX2MaxN; n++ {
		genQ3Kx16AVX2(n)
		genQ2Kx16AVX2(n)
	}
	for n := 1; n <= iq4xsx16AVX2MaxN; n++ {
		genIQ4XSx16AVX2(n)
	}
	genSiLU()
	for n := 1; n <= 6; n++ {
		genBF16Dot(n)
	}
	genToBF16()
	genBF16Rows(1)
	genBF16Rows(2)
	Generate()
	writePanelOrder()
	writeKernelTables()
}

// writePanelOrder writes panelorder_amd64.go beside the stubs file: the
// AVX-512 widen kernels' sub-vector order of the dtypes that store panels
// in an order other than the natural one (see recordPanel).
func writePanelOrder() {
	var b strings.Builder
	b.WriteString("// panelOrder512 is, per dtype, the natural index of each 16-value sub-vector\n")
	b.WriteString("// of a chunk in the order the AVX-512 widen kernels store them (and the tile\n")
	b.WriteString("// kernels add them); the panel path packs x in the same order.\n")
	b.WriteString("var panelOrder512 = map[tensor.DType][]int{\n")
	for _, d := range allDtypes {
		o, ok := panelOrder[d]
		if !ok {
			continue
		}
		natural := true
		for t, v := range o {
			natural = natural && t == v
		}
		if natural {
			continue
		}
		fmt.Fprintf(&b, "\ttensor.%s: {", d.tensorName())
		for t, v := range o {
			if t > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%d", v)
		}
		b.WriteString("},\n")
	}
	b.WriteString("}\n")
	writeGoFile("panelorder_amd64.go", b.String())
}

// writeKernelTables writes kerneltables_amd64.go beside the stubs file: the
// dispatch tables of the integer kernels (by dtype) and of the packed
// kernels (by layout), each by number of input rows, read from the names of
// the kernels the stubs file declares. A kernel added or removed here thus
// cannot be left out of (or dangle in) the tables, and a table whose row
// counts have a gap stops the generator.
func writeKernelTables() {
	f := flag.Lookup("stubs")
	if f == nil || f.Value.String() == "" {
		return // no stubs file: writeGoFile writes nothing either
	}
	stubs, err := os.ReadFile(f.Value.String())
	if err != nil {
		panic(err)
	}
	var b strings.Builder
	// The integer kernels: q8dot512<dtype>N<n>[BW], q8dot256<dtype>N<n>.
	var dtypes []tableKey
	for d := dF32; d <= dIQ1M; d++ {
		dtypes = append(dtypes, tableKey{d.String(), d.tensorName()})
	}
	q8 := kernelsByRows(stubs, `q8dot(512|256)([0-9A-Z]+?)N(?P<n>\d+)(BW)?`, func(m []string) (string, string) {
		return map[string]string{"512": "q8Kernels", "512BW": "q8KernelsBW", "256": "q8Kernels256"}[m[1]+m[4]], m[2]
	})
	writeTable(&b, "// q8Kernels are the AVX-512 integer kernels (with VNNI) by dtype and\n// number of input rows (nil where there is none); useQ8BW swaps in\n// q8KernelsBW.\n",
		"q8Kernels", "[tensor.NumDTypes][q8MaxRows + 1]q8Fn", "tensor.", dtypes, q8)
	writeTable(&b, "// q8KernelsBW are q8Kernels without VNNI.\n", "q8KernelsBW", "[tensor.NumDTypes][q8MaxRows + 1]q8Fn", "tensor.", dtypes, q8)
	writeTable(&b, "// q8Kernels256 are the AVX2 integer kernels (the same bits as q8Kernels),\n// for the AVX2 level.\n",
		"q8Kernels256", "[tensor.NumDTypes][q8MaxRows + 1]q8Fn", "tensor.", dtypes, q8)
	// The packed kernels: <prefix>x16[AVX2][S2]N<n>.
	prefixes := make([]string, len(packedLayouts))
	for i, l := range packedLayouts {
		prefixes[i] = l.name
	}
	packed := kernelsByRows(stubs, `(`+strings.Join(prefixes, "|")+`)x16(AVX2)?(S2)?N(?P<n>\d+)`, func(m []string) (string, string) {
		return map[[2]bool]string{ // by [AVX2, S2]
			{false, false}: "packedKernels", {true, false}: "packedKernelsAVX2",
			{false, true}: "streamKernels", {true, true}: "streamKernelsAVX2",
		}[[2]bool{m[2] != "", m[3] != ""}], m[1]
	})
	writeTable(&b, "// packedKernels are the packed kernels of each packed layout at the AVX-512\n// level, by input rows.\n",
		"packedKernels", "[tensor.NumLayouts][]packedFn", "tensor.", packedLayouts, packed)
	writeTable(&b, "// packedKernelsAVX2 are the packed kernels of each layout at the AVX2 level\n// (nil: that layout is not packed there).\n",
		"packedKernelsAVX2", "[tensor.NumLayouts][]packedFn", "tensor.", packedLayouts, packed)
	writeTable(&b, "// streamKernels are the two-stream kernels of each layout at the AVX-512\n// level, by input rows (see q8_amd64.go).\n",
		"streamKernels", "[tensor.NumLayouts][maxStreamRows + 1]streamFn", "tensor.", packedLayouts, packed)
	writeTable(&b, "// streamKernelsAVX2 are the two-stream kernels at the AVX2 level.\n",
		"streamKernelsAVX2", "[tensor.NumLayouts][maxStreamRows + 1]streamFn", "tensor.", packedLayouts, packed)
	// The kernels of unpacked codes: <prefix>x16CN<n>.
	codes := kernelsByRows(stubs, `(`+strings.Join(prefixes, "|")+`)x16CN(?P<n>\d+)`, func(m []string) (string, string) {
		return "codesKernels", m[1]
	})
	writeTable(&b, "// codesKernels are the kernels of each packed layout that read blocks\n// unpacked once for many input rows (see q8_amd64.go), by input rows.\n",
		"codesKernels", "[tensor.NumLayouts][]packedFn", "tensor.", packedLayouts, codes)
	writeUnpackers(&b, stubs, codes["codesKernels"])
	writeGoFile("kerneltables_amd64.go", strings.TrimSuffix(b.String(), "\n"))
}

// codesBlocks are the bytes of one block unpacked by each layout's
// unpacking kernel, by the layout's kernel name prefix.
var codesBlocks = map[string]int{"q6k": q6kCodesBlock, "q5k": q5kCodesBlock, "q3k": q3kCodesBlock}

// writeUnpackers appends the tables of the unpacking kernels
// (<prefix>x16Unpack in the stubs file) and of their blocks' bytes, by
// layout. An unpacking kernel without codes kernels (codes, by prefix) or
// without its block size, or the other way round, stops the generator.
func writeUnpackers(b *strings.Builder, stubs []byte, codes map[string][]string) {
	var fns, sizes strings.Builder
	found := map[string]bool{}
	for _, k := range packedLayouts {
		if !strings.Contains(string(stubs), "\nfunc "+k.name+"x16Unpack(") {
			continue
		}
		n, ok := codesBlocks[k.name]
		if !ok || len(codes[k.name]) == 0 {
			panic(fmt.Sprintf("%sx16Unpack has no block size or no codes kernels", k.name))
		}
		found[k.name] = true
		fmt.Fprintf(&fns, "\ttensor.%s: %sx16Unpack,\n", k.index, k.name)
		fmt.Fprintf(&sizes, "\ttensor.%s: %d,\n", k.index, n)
	}
	for prefix := range codes {
		if !found[prefix] {
			panic(prefix + " has codes kernels but no x16Unpack")
		}
	}
	fmt.Fprintf(b, "\n// codesUnpackers unpack a layout's packed blocks into codes: nblocks\n// consecutive blocks from w into dst, codesBlockBytes[layout] bytes each.\nvar codesUnpackers = [tensor.NumLayouts]func(w *byte, nblocks int, dst *byte){\n%s}\n", fns.String())
	fmt.Fprintf(b, "\n// codesBlockBytes are the bytes of one block unpacked by codesUnpackers.\nvar codesBlockBytes = [tensor.NumLayouts]int{\n%s}\n", sizes.String())
}

// tableKey is one row of a dispatch table: the name part that selects it
// in the kernels' names, and the Go index it is written at (after the
// prefix writeTable is given).
type tableKey struct{ name, index string }

// packedLayouts are the packed layouts by the prefix of their kernels'
// names, in the order of the tables.
var packedLayouts = []tableKey{
	{"q80", "Q80x16"}, {"q4k", "Q4Kx16"}, {"q5k", "Q5Kx16"}, {"q6k", "Q6Kx16"},
	{"q40", "Q40x16"}, {"iq4nl", "IQ4NLx16"}, {"q3k", "Q3Kx16"}, {"q2k", "Q2Kx16"},
	{"iq4xs", "IQ4XSx16"}, {"q50", "Q50x16"}, {"q41", "Q41x16"}, {"q51", "Q51x16"},
	{"mxfp4", "MXFP4x16"},
}

// kernelsByRows finds the functions of the stubs file whose whole name
// matches pattern (its group n the number of input rows) and files them by
// [table][key] (from where, given pattern's submatches: m[1] its first
// group) as names by rows−1.
func kernelsByRows(stubs []byte, pattern string, where func(m []string) (table, key string)) map[string]map[string][]string {
	re := regexp.MustCompile(`(?m)^func (` + pattern + `)\(`)
	ni := re.SubexpIndex("n")
	found := map[string]map[string][]string{}
	for _, m := range re.FindAllStringSubmatch(string(stubs), -1) {
		name := m[1]
		table, key := where(m[1:])
		n, _ := strconv.Atoi(m[ni])
		if found[table] == nil {
			found[table] = map[string][]string{}
		}
		names := found[table][key]
		for len(names) < n {
			names = append(names, "")
		}
		names[n-1] = name
		found[table][key] = names
	}
	return found
}

// writeTable appends the Go table name of type typ to b: one row per key
// with kernels in found[name], its kernels at indices 1..n. A missing row
// count stops the generator.
func writeTable(b *strings.Builder, doc, name, typ, prefix string, keys []tableKey, found map[string]map[string][]string) {
	b.WriteString(doc)
	fmt.Fprintf(b, "var %s = %s{\n", name, typ)
	for _, k := range keys {
		names := found[name][k.name]
		if len(names) == 0 {
			continue
		}
		fmt.Fprintf(b, "\t%s%s: {", prefix, k.index)
		for i, fn := range names {
			if fn == "" {
				panic(fmt.Sprintf("%s: %s has no kernel of %d input rows", name, k.index, i+1))
			}
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(b, "%d: %s", i+1, fn)
		}
		b.WriteString("},\n")
	}
	b.WriteString("}\n\n")
}

// writeGoFile writes a generated Go file of package kernels (importing
// tensor) beside the stubs file, formatted as gofmt would.
func writeGoFile(name, body string) {
	f := flag.Lookup("stubs")
	if f == nil || f.Value.String() == "" {
		return
	}
	src := "// Code generated by command: go run . (model/kernels/internal/gen). DO NOT EDIT.\n\n" +
		"//go:build !purego\n\npackage kernels\n\nimport \"github.com/switchyard-serving/switchyard/model/tensor\"\n\n" + body
	out, err := format.Source([]byte(src))
	if err != nil {
		panic(fmt.Sprintf("%s: %v", name, err))
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(f.Value.String()), name), out, 0o644); err != nil {
		panic(err)
	}
}
