package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// ---- two-stream packed kernels: <type>x16S2N<n> ----
//
// A product of one or two input rows reads each weight byte once and is
// bound by that read. One core reads memory faster from a few distant
// places at once than from one: on a Zen 5 VM, one thread, 21-24 GB/s from
// one sequential stream against 39-42 from four far apart
// (BenchmarkReadStreams). The multi-stream kernels take the groups of a
// product as streams runs, run s starting s·wspan bytes after w, and step
// through the current group of every run in the same loop, block by block:
// groups groups per run, against n input rows (xstride bytes apart), group
// g of run s writing its 16 results for input row i to
// out + i·ostride + s·ospan + 64·g. Each group's sums are the one-run
// kernel's, in the same order, so the bits are the same.

// streamsSig is the signature of the multi-stream kernels.
const streamsSig = "func(w *byte, groups, nblocks int, xq *byte, xstride int, out *float32, ostride int, wspan, ospan int)"

// streamsBegin emits a multi-stream kernel's TEXT and returns its runs'
// weight pointers.
func streamsBegin(name, typ string, streams, n int) []GPVirtual {
	TEXT(name, NOSPLIT, streamsSig)
	Doc(fmt.Sprintf("%s multiplies %d runs of 16-row groups of repacked %s weights with %d quantized input rows (see streams.go).", name, streams, typ, n))
	return stridedPtrs(ld("w"), ld("wspan"), streams)
}

// stridedPtrs returns n pointers stride bytes apart, the first first (the
// others computed into new registers).
func stridedPtrs(first, stride GPVirtual, n int) []GPVirtual {
	p := make([]GPVirtual, n)
	p[0] = first
	for i := 1; i < n; i++ {
		p[i] = GP64()
		LEAQ(Mem{Base: p[i-1], Index: stride, Scale: 1}, p[i])
	}
	return p
}

// streamsEnd emits a multi-stream kernel's group epilogue: acc[s][i], run
// s's 16 results for input row i (zmm; with ymm acc[s][2i+h], rows 8h..),
// at out + i·ostride + s·ospan, out moved on 64 bytes, the next group (from
// name_grp), then the return.
func streamsEnd(name string, acc [][]VecVirtual) {
	perRow := 1
	if acc[0][0].Size() == 32 {
		perRow = 2
	}
	o := ld("out")
	osp := ld("ospan")
	var ost GPVirtual
	if len(acc[0]) > perRow {
		ost = ld("ostride")
	}
	run := GP64() // run s's out: out + s·ospan
	MOVQ(o, run)
	for s := range acc {
		if s > 0 {
			ADDQ(osp, run)
		}
		op := GP64()
		MOVQ(run, op)
		for i := 0; i < len(acc[s])/perRow; i++ {
			if i > 0 {
				ADDQ(ost, op)
			}
			for k := 0; k < perRow; k++ {
				VMOVUPS(acc[s][perRow*i+k], Mem{Base: op, Disp: 32 * k})
			}
		}
	}
	nextGroup(name, o)
}

// streamsLoopHead emits the loops' heads of a two-run kernel of one input
// row: the group label, the block count, the input pointer, each run's
// zeroed float32 sums and the block label.
func streamsLoopHead(name string) (cnt, xq GPVirtual, acc [][]VecVirtual) {
	Label(name + "_grp")
	cnt = ld("nblocks")
	xq = ld("xq")
	acc = [][]VecVirtual{packedZeroAcc(1), packedZeroAcc(1)}
	Label(name + "_blk")
	return cnt, xq, acc
}

// streamsNextBlock moves the input on by a block, loops to name_blk while
// blocks are left, then emits the group epilogue (streamsEnd); the kernel
// has moved its runs' weight pointers itself.
func streamsNextBlock(name string, xq, cnt GPVirtual, acc [][]VecVirtual) {
	ADDQ(U32(q8xBlock), xq)
	DECQ(cnt)
	JNZ(LabelRef(name + "_blk"))
	streamsEnd(name, acc)
}
