// Command streamexp writes a stand-alone Go module for the stream
// experiment (see run.sh) into the folder -out: synthetic AVX-512 loops that
// read a buffer as s streams, with or without software prefetches, with w
// VPDPBUSD per 64-byte line (dependent on the line's load, or not), and
// 36-line blocks (a packed Q4_K group's block) read in address order or in
// the packed kernel's order, unrolled ("blk_") or by a loop inside each
// block ("lp_", with the lines in the kernel's layout, in reading order, or
// with the headers in an array of their own), and a test that times them. It is not part of
// the engine: it measures how fast one core streams memory in loops shaped
// like the packed kernels.
package main

import (
	_ "embed"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// testFile is the generated module's test (TestStreams).
//
//go:embed streams_test.go.tmpl
var testFile string

var asm, decl strings.Builder

func emit(format string, a ...any) { fmt.Fprintf(&asm, format+"\n", a...) }

func begin(name string, streams, shift int) {
	fmt.Fprintf(&decl, "//go:noescape\nfunc %s(p unsafe.Pointer, n int)\n\n", name)
	emit("TEXT ·%s(SB), NOSPLIT, $0-16", name)
	emit("\tMOVQ p+0(FP), AX\n\tMOVQ n+8(FP), DX\n\tSHRQ $%d, DX", shift)
	emit("\tMOVQ AX, R8\n\tLEAQ (AX)(DX*1), R9\n\tLEAQ (R9)(DX*1), R10\n\tLEAQ (R10)(DX*1), R11")
	emit("\tXORQ BX, BX\n\tVPXORD Z30, Z30, Z30\n\tVPXORD Z31, Z31, Z31")
	for i := 0; i < 4; i++ {
		emit("\tVPXORD Z%d, Z%d, Z%d", i, i, i)
	}
}

func end(name string, step int) {
	emit("\tADDQ $%d, BX\n\tCMPQ BX, DX\n\tJB %s_loop\n\tVZEROUPPER\n\tRET\n", step, name)
}

var bases = []string{"R8", "R9", "R10", "R11"}

// loopLine emits the loads of one line of the lp_ loops, disp bytes from
// the pointer b (prefetched dist bytes further on, if prefetch), and w
// VPDPBUSD on it; *k counts the lines (registers rotate with it).
func loopLine(k *int, w int, prefetch bool, dist, disp int, b string) {
	if prefetch {
		emit("\tPREFETCHT0 %d(%s)", dist+disp, b)
	}
	emit("\tVMOVDQU64 %d(%s), Z%d", disp, b, *k%4)
	for j := 0; j < w; j++ {
		emit("\tVPDPBUSD Z%d, Z31, Z%d", *k%4, 8+(*k*w+j)%16)
	}
	*k++
}

func main() {
	out := flag.String("out", "", "folder to write the experiment's module into (required)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "streamexp: -out is required")
		os.Exit(2)
	}
	var names []string
	emit("#include \"textflag.h\"\n")
	// Plain streams: 4 lines per stream per iteration, prefetch d lines ahead.
	for _, s := range []int{1, 2, 4} {
		for _, d := range []int{0, 8, 16, 32, 64} {
			for _, w := range []int{0, 2, 4, 8} {
				for _, dep := range []int{0, 1} {
					name := fmt.Sprintf("rd_S%d_D%d_W%d_X%d", s, d, w, dep)
					names = append(names, name)
					begin(name, s, map[int]int{1: 0, 2: 1, 4: 2}[s])
					emit("%s_loop:", name)
					k := 0
					for line := 0; line < 4; line++ {
						for _, b := range bases[:s] {
							if d > 0 {
								emit("\tPREFETCHT0 %d(%s)(BX*1)", 64*(line+d), b)
							}
							src := "Z30"
							if dep == 1 {
								src = fmt.Sprintf("Z%d", 4+k%4)
								emit("\tVMOVDQU64 %d(%s)(BX*1), %s", 64*line, b, src)
							} else {
								emit("\tVPADDD %d(%s)(BX*1), Z%d, Z%d", 64*line, b, k%4, k%4)
							}
							for i := 0; i < w; i++ {
								emit("\tVPDPBUSD %s, Z31, Z%d", src, 8+(k*w+i)%12)
							}
							k++
						}
					}
					end(name, 256)
				}
			}
		}
	}
	// 36-line blocks (a 16-row group's Q4_K block): address order, the
	// packed kernel's order (d and scales, then the nibbles' 4 chunks
	// interleaved word by word), or 2 chunks at a time.
	orders := map[string][]int{}
	for l := 0; l < 36; l++ {
		orders["seq"] = append(orders["seq"], l)
	}
	orders["q4k"] = []int{1, 2, 3}
	orders["q4kb"] = []int{1, 2, 3}
	for g := 0; g < 8; g++ {
		for c := 0; c < 4; c++ {
			orders["q4k"] = append(orders["q4k"], 4+8*c+g)
		}
	}
	for _, c0 := range []int{0, 2} {
		for g := 0; g < 8; g++ {
			for c := c0; c < c0+2; c++ {
				orders["q4kb"] = append(orders["q4kb"], 4+8*c+g)
			}
		}
	}
	orders["q4k"] = append(orders["q4k"], 0)
	orders["q4kb"] = append(orders["q4kb"], 0)
	// Two streams either interleaved line by line ("S2") or one whole
	// block of each in turn ("S2alt").
	for _, sv := range []string{"S1", "S2", "S2alt"} {
		s := map[string]int{"S1": 1, "S2": 2, "S2alt": 2}[sv]
		for _, o := range []string{"seq", "q4k", "q4kb"} {
			for _, pv := range []string{"P0", "P3", "P3all"} {
				pd := map[string]int{"P0": 0, "P3": 3, "P3all": 3}[pv]
				for _, w := range []int{2, 3, 4} {
					name := fmt.Sprintf("blk_%s_%s_%s_W%d", sv, o, pv, w)
					names = append(names, name)
					begin(name, s, s-1)
					emit("\tSUBQ $2304, DX")
					emit("%s_loop:", name)
					k := 0
					// P3all: a block's 36 prefetches together at its start
					// (as q4kx16N1 issues them); P3: one before each line.
					all := func(b string) {
						for i := 0; pv == "P3all" && i < 36; i++ {
							emit("\tPREFETCHT0 %d(%s)(BX*1)", 2304*pd+64*i, b)
						}
					}
					line := func(i, l int, b string) {
						if pv == "P3" {
							emit("\tPREFETCHT0 %d(%s)(BX*1)", 2304*pd+64*i, b)
						}
						emit("\tVMOVDQU64 %d(%s)(BX*1), Z%d", 64*l, b, k%4)
						for j := 0; j < w; j++ {
							emit("\tVPDPBUSD Z%d, Z31, Z%d", k%4, 8+(k*w+j)%16)
						}
						k++
					}
					if sv == "S2alt" {
						for _, b := range bases[:s] {
							all(b)
							for i, l := range orders[o] {
								line(i, l, b)
							}
						}
					} else {
						for _, b := range bases[:s] {
							all(b)
						}
						for i, l := range orders[o] {
							for _, b := range bases[:s] {
								line(i, l, b)
							}
						}
					}
					end(name, 2304)
				}
			}
		}
	}
	// The same 36-line blocks read by a loop inside each block, so that
	// the weight loads come from a few instructions with a steady stride
	// (the hardware's stride prefetcher tracks a load instruction; the
	// unrolled blocks above have 36 per stream): "lp_seq" 9 steps of 4
	// lines; "lp_q4kb" the packed kernel's order (4 header lines, then two
	// passes of 8 steps, each two chunks' lines 4+8c+g); "lp_g2" the same
	// passes over lines laid out in their reading order (4+16p+2g+u).
	type pass struct {
		lines []int // the lines of step 0
		step  int   // bytes a step
		n     int   // steps
	}
	lps := map[string]struct {
		head   int
		passes []pass
	}{
		"seq":  {0, []pass{{[]int{0, 1, 2, 3}, 256, 9}}},
		"q4kb": {4, []pass{{[]int{4, 12}, 64, 8}, {[]int{20, 28}, 64, 8}}},
		"g2":   {4, []pass{{[]int{4, 5}, 128, 8}, {[]int{20, 21}, 128, 8}}},
		"g4":   {4, []pass{{[]int{4, 5, 6, 7}, 256, 8}}},
	}
	for _, o := range []string{"seq", "q4kb", "g2", "g4"} {
		for _, pv := range []string{"P0", "P3"} {
			for _, w := range []int{2, 4} {
				name := fmt.Sprintf("lp_S2_%s_%s_W%d", o, pv, w)
				names = append(names, name)
				begin(name, 2, 1)
				emit("\tSUBQ $2304, DX")
				emit("%s_loop:", name)
				emit("\tLEAQ (R8)(BX*1), R12\n\tLEAQ (R9)(BX*1), R13")
				k := 0
				line := func(disp int, b string) { loopLine(&k, w, pv == "P3", 2304*3, disp, b) }
				for l := 0; l < lps[o].head; l++ {
					for _, b := range []string{"R12", "R13"} {
						line(64*l, b)
					}
				}
				for pi, ps := range lps[o].passes {
					lbl := fmt.Sprintf("%s_p%d", name, pi)
					emit("\tMOVQ R12, SI\n\tMOVQ R13, DI\n\tMOVQ $%d, CX", ps.n)
					emit("%s:", lbl)
					for _, l := range ps.lines {
						for _, b := range []string{"SI", "DI"} {
							line(64*l, b)
						}
					}
					emit("\tADDQ $%d, SI\n\tADDQ $%d, DI\n\tDECQ CX\n\tJNZ %s", ps.step, ps.step, lbl)
				}
				end(name, 2304)
			}
		}
	}
	// "sep": each stream's 4 header lines a block in an array of their own
	// (the stream's first ninth: 256 bytes a block), its 32 nibble lines in
	// another (8 steps of 4 lines), so that every load instruction keeps
	// one stride from block to block.
	for _, pv := range []string{"P0", "P3"} {
		for _, w := range []int{2, 4} {
			name := fmt.Sprintf("lp_S2_sep_%s_W%d", pv, w)
			names = append(names, name)
			begin(name, 2, 1)
			// DX: bytes a stream; R12/R13 the header arrays, R8/R9 the
			// nibbles (the rest of each stream); BX counts nibble bytes.
			emit("\tMOVQ $9, CX\n\tXORQ DX, DX\n\tMOVQ n+8(FP), AX\n\tSHRQ $1, AX\n\tDIVQ CX") // AX: a ninth of a stream
			emit("\tMOVQ AX, CX\n\tSHRQ $8, CX\n\tSHLQ $8, CX")                                // header bytes: whole blocks of 256
			emit("\tMOVQ R8, R12\n\tMOVQ R9, R13\n\tADDQ CX, R8\n\tADDQ CX, R9\n\tMOVQ CX, DX\n\tSHLQ $3, DX\n\tSUBQ $2048, DX")
			emit("%s_loop:", name)
			k := 0
			line := func(disp int, b string, dist int) { loopLine(&k, w, pv == "P3", dist, disp, b) }
			for l := 0; l < 4; l++ {
				for _, b := range []string{"R12", "R13"} {
					line(64*l, b, 256*3)
				}
			}
			emit("\tLEAQ (R8)(BX*1), SI\n\tLEAQ (R9)(BX*1), DI\n\tMOVQ $8, CX")
			emit("%s_g:", name)
			for l := 0; l < 4; l++ {
				for _, b := range []string{"SI", "DI"} {
					line(64*l, b, 2048*3)
				}
			}
			emit("\tADDQ $256, SI\n\tADDQ $256, DI\n\tDECQ CX\n\tJNZ %s_g", name)
			emit("\tADDQ $256, R12\n\tADDQ $256, R13")
			end(name, 2048)
		}
	}
	fmt.Fprintf(&decl, "var fns = map[string]func(unsafe.Pointer, int){\n")
	for _, n := range names {
		fmt.Fprintf(&decl, "\t%q: %s,\n", n, n)
	}
	fmt.Fprintf(&decl, "}\n")
	files := map[string]string{
		"go.mod":          "module streamexp\n\ngo 1.26\n",
		"stream_amd64.s":  asm.String(),
		"decl_amd64.go":   "// Code generated by scripts/streamexp; DO NOT EDIT.\n\npackage streamexp\n\nimport \"unsafe\"\n\n" + decl.String(),
		"streams_test.go": testFile,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(*out, name), []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "streamexp:", err)
			os.Exit(1)
		}
	}
}
