package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- multi-stream packed kernels of one input row: <type>x16S<streams> ----
//
// A product of one input row reads each weight byte once and is bound by
// that read. One core reads memory faster from a few distant places at once
// than from one: on a Zen 5 VM, one thread, 28-31 GB/s from one sequential
// stream against 39-46 from four a quarter of the buffer apart
// (BenchmarkReadStreams). The multi-stream kernels take the groups of a
// product as streams runs, run s starting s·wspan bytes after w, and step
// through the current group of every run in the same loop, block by block:
// groups groups per run, group g of run s writing its 16 results to
// out + s·ospan + 64·g. Each group's sums are the one-run kernel's, in the
// same order, so the bits are the same.

// streamsSig is the signature of the multi-stream kernels.
const streamsSig = "func(w *byte, groups, nblocks int, xq *byte, wspan int, out *float32, ospan int)"

// streamsBegin emits a multi-stream kernel's TEXT and returns its runs'
// weight pointers.
func streamsBegin(name, typ string, streams int) []GPVirtual {
	TEXT(name, NOSPLIT, streamsSig)
	Doc(fmt.Sprintf("%s multiplies %d runs of 16-row groups of repacked %s weights with one quantized input row (see streams.go).", name, streams, typ))
	wp := make([]GPVirtual, streams)
	wp[0] = ld("w")
	span := ld("wspan")
	for s := 1; s < streams; s++ {
		wp[s] = GP64()
		LEAQ(Mem{Base: wp[s-1], Index: span, Scale: 1}, wp[s])
	}
	return wp
}

// streamsEnd emits a multi-stream kernel's group epilogue: run s's 16
// results at out + s·ospan, out moved on 64 bytes, the next group (from
// name_grp), then the return.
func streamsEnd(name string, acc []VecVirtual) {
	o := ld("out")
	osp := ld("ospan")
	op := GP64()
	MOVQ(o, op)
	for s := range acc {
		if s > 0 {
			ADDQ(osp, op)
		}
		VMOVUPS(acc[s], Mem{Base: op})
	}
	ADDQ(U8(64), o)
	Store(o, Param("out"))
	DECQ(paddr("groups"))
	JNZ(LabelRef(name + "_grp"))
	VZEROUPPER()
	RET()
}
