// Package kernels holds the numeric kernels of the engine: matrix products over
// weight matrices of any tensor.DType (dequantized on the fly, float32 accumulation)
// and the small vector operations the layers use.
//
// Every fast kernel has a plain Go reference twin in ref.go, and tests check that
// they agree. Kernels write into caller-provided outputs and allocate nothing on the
// hot path.
//
// # API
//
//   - MatMul(out, w, x, n): out = x·Wᵀ for n input rows (MatMulRef is its twin).
//   - Dot, Axpy, Scale, Add (twins DotRef, AxpyRef, ScaleRef, AddRef), and
//     RMSNorm, SiLU, Softplus, Softmax.
//   - SetThreads/Threads: threads MatMul uses (default runtime.GOMAXPROCS(0)).
//   - SetProductObserver: a callback after every product (bench --breakdown).
//   - ParallelFor: many small independent calls on the worker pool; a
//     participant with no index left helps with the others' one-thread
//     products of up to 8 input rows (SetProductHelping).
//   - SetBatchInvariant/BatchInvariant: whether a row's MatMul result is
//     bitwise independent of the other rows of its call (default off).
//   - Level, KernelLevel, SetKernelLevel, MaxLevel, SupportedLevels,
//     ParseLevel: the implementation in use.
//   - MeasureBandwidth, MeasureBandwidthDetail, MeasureFMAPeak: machine
//     probes for achieved/peak ratios.
//
// # Implementations
//
// MatMul and the vector helpers run at one of four levels (see Level): the
// reference twins, portable Go, AVX2+FMA assembly and AVX-512 assembly. The
// best level the CPU supports is chosen at start-up with golang.org/x/sys/cpu;
// the SWITCHYARD_KERNELS environment variable (ref, go, avx2, avx512) or
// SetKernelLevel forces another. The purego build tag (or a non-amd64 build)
// leaves only the reference and Go levels. AMX is never used.
//
// # MatMul design
//
// The assembly computes tiles of 4 weight rows × N input rows (N ≤ 6 with
// AVX-512, ≤ 2 with AVX2) as dot products along the columns: per chunk of
// columns it widens the 4 weight rows to float32 in registers, multiplies
// them with the N packed input rows (each input vector load is shared by the
// 4 rows) and reduces 4·N accumulators at the end. Widening: bf16 by shift
// (even elements) and mask (odd elements; the input is packed in the same
// even/odd order), f16 by VCVTPH2PS, Q8_0 by sign extension and conversion
// with the block scale applied once per block and input row, Q4_K by
// VPERMPS lookups of the nibbles in per-sub-block tables holding
// d·sc·q − dmin·m. The other quantized types (Q6_K, Q5_K, Q3_K, Q2_K, Q4_0,
// Q4_1, Q5_0, Q5_1, IQ4_NL, IQ4_XS) have AVX-512 kernels only: a per-quad
// prologue writes every sub-block's scale (and min) as float32 into scratch,
// then each 16 values are unpacked with VPMOVZXBD, shifts and masks (the
// high bits of Q5/Q6/Q3 merged with VPTERNLOGD or, for Q5_0/Q5_1, an opmask
// OR), converted and scaled with one FMA, or looked up in the IQ4 codebook
// with VPERMPS; Q6_K and Q5_K load each row's bytes once per 64 values. At
// the AVX2 level those types have no float32 kernels: every one of them
// runs integer kernels on 8-bit activations there (below), and the Go
// level (dequantize, then dot) takes what is left. On AVX-512 the float32
// kernels serve what the integer ones do not: products with 8-bit
// activations turned off, and rows holding an infinity or a NaN.
// Partial column chunks use opmasks (AVX-512) or Go (AVX2).
//
// Decode (small n) thus streams every weight byte once per call; each kernel
// prefetches the rows two quads ahead into L2. For larger n the input rows
// are split into groups of N that pass over a block of weight rows sized to
// stay in L2, while the next block is prefetched. From a per-dtype batch size
// on (panelMinN), a block is first widened into a float32 panel so that the
// widening is not repeated per group (worth it for f16 and the quantized
// types at prefill sizes).
//
// # 8-bit activations
//
// Products with K-quant weights (Q2_K to Q6_K) and IQ4_XS, the
// types of llama.cpp's Q2_K, Q3_K_M, Q4_K_M, Q5_K_M and IQ4_XS
// files, do not widen the weights: on CPUs with AVX-512
// BW each input row is quantized to int8 per block of 256 values (one
// float32 scale and the 16- and 32-value sums per block, quantQ8K512), and
// the kernels
// q8dot512<type>N<n> form each block's dot product in integers: the unsigned
// 2- to 6-bit codes times the int8 activations with VPMADDUBSW, times
// the sub-block scales with VPDPWSSD (VPMADDWD and VPADDD without VNNI;
// VPSHUFB or VPERMW broadcast the scales),
// the mins (Q2_K, Q4_K, Q5_K) and the −32 or −4 offset (Q6_K, Q3_K) from
// the activation sums (IQ4_XS: codebook values, |kv| against x with kv's
// sign);
// float32 only scales each block's integers by d·d_x. This is llama.cpp's
// method (its Q8_K activations) and costs a quarter to a half of the vector
// instructions of widening: decode runs closer to memory speed, prefill
// sizes 20-25% faster than on float32 panels. The kernels walk the rows one
// after the other (one sequential stream: measured faster than four
// interleaved rows with software prefetch). A row's result does not depend
// on the other rows of the call, so the path is batch-invariant in both
// modes. The activations carry int8 rounding (at most half a step, amax/254,
// per value), as in llama.cpp. SetQ8Activations(false) or
// SWITCHYARD_Q8_ACTIVATIONS=0 turns it off; rows with an infinity or a NaN
// (each computed alone) and the other levels widen as before.
// matMulQ8Ref is the plain twin (exact integer sums, then one float32 step
// per row and block, as the kernels take it); TestMatMulQ8 checks the
// kernels against it bit for bit and against the float32 reference.
// Matrices copied into memory are repacked in 16-row groups for faster
// kernels with the same bits (packed.go).
//
// The i-quants of 1 to 3 bits (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S,
// IQ3_XXS, IQ3_S: llama.cpp's lattice codes) take the same activations and
// run row-major (q8dot512IQ*N1..N8, q8dot256IQ*N1..N8: internal/gen/q8iq.go
// and q8iqavx2.go): per 64 (AVX2: 32) values the lattice entries are loaded
// from the package's copies of the tables (scalar loads where an index is a
// byte or a masked u16 of the block, gathers where it has high bits
// elsewhere), the signs become a mask (a ±1 vector for VPSIGNB on AVX2),
// and |w| against the signed activations goes through VPMADDUBSW and
// VPDPWSSD with the odd sub-block scales (IQ1_S and IQ1_M need no signs:
// their bytes, with VNNI times the scale, are offset from w and the offset
// taken off per block from the activations' group sums); the block's
// integer sum is scaled by (d·k)·d_x, k a power of two (tensor.IQInts'
// integer form, which dotQ8Ref computes as the twin). Building a chunk's
// values costs several times one input row's multiply-adds, so the kernels
// share it among up to 16 input rows (8 at the AVX2 level), whose sums
// are reduced and scaled as one vector.
//
// Q8_0 takes 8-bit activations per 32 values (q80act.go), and so do the
// types whose blocks are Q8_0 blocks once their codes are written as int8:
// Q4_0 (q−8), IQ4_NL (its codebook) and Q5_0 (q−16) (asQ80). Their
// packed kernels decode the nibbles (and Q5_0's fifth bits) in registers
// (q40x16N, iq4nlx16N, q50x16N); row-major Q4_0, IQ4_NL and Q5_0 have
// one-row kernels of their own (q40rows512, iq4nlrows512, q50rows512),
// and other row-major products
// rewrite their rows as Q8_0 rows as they go (conv*Q80). Every path gives
// the bits of the Q8_0 twin. Q4_1 and Q5_1 (d·q + m) take the same
// activations, as llama.cpp's q8_1 does, and kernels of the same shapes
// (q41rows512, q41x16N, q51rows512, q51x16N and their AVX2 twins) that add
// each block's min share m·d_x·Σq_x from the activations' block sums
// (dotQ81Ref); having no Q8_0 rewrite, their row-major products with many
// input rows pack 16-row groups as they go (q8PackingBlock). MXFP4 (an
// E8M0 power-of-two scale and E2M1 codes: llama.cpp's MXFP4_MOE files)
// takes the same activations, as llama.cpp does: its packed kernels
// (mxfp4x16N, mxfp4x16S2N, mxfp4x16AVX2N) look its codes up as IQ4_NL's
// are looked up and build the float32 scale from the exponent byte in
// registers (dotMXFP4Ref's steps); row-major MXFP4 (a mapped file) has
// one-row kernels of its own (mxfp4rows512, mxfp4rows256) and packs 16-row
// groups as it goes from q81PackMinRows input rows, as Q4_1 does. On AVX2,
// and on AVX-512 without VNNI, the
// block sums come from VPMADDUBSW: |q_w| against q_x signed as q_w
// (llama.cpp's trick against 16-bit saturation), or Q4_0's unsigned codes
// directly, then VPMADDWD (q80x16AVX2N, q40x16AVX2N, q80rows256,
// q80rows8x256); the activation quantizers (quantQ80R256, quantQ8K256) and
// packed Q4_K, Q5_K, Q3_K, Q2_K and IQ4_XS (q4kx16AVX2N, q5kx16AVX2N,
// q3kx16AVX2N, q2kx16AVX2N, iq4xsx16AVX2N) have AVX2 versions too,
// with the AVX-512 kernels' bits. TestAVX2KernelsUseAVX2Registers checks
// that no AVX2 kernel names a register only AVX-512 encodes.
//
// # bf16 activations
//
// Products with bf16 weights and a column count that is a multiple of 32, on
// CPUs with AVX-512 BF16, round the input rows to bf16 (nearest even) and
// multiply with VDPBF16PS (bf16dot512N<n>: tiles of 4 weight rows by up to
// 6 input rows, 32 products per instruction into float32, no widening), as
// llama.cpp does for bf16 weights. Twice the arithmetic rate of the FMA
// tiles: prefill-sized products run about 2.1x faster, decode ones 1.05-1.3x
// (BenchmarkBF16Activations). Neither avo nor the Go assembler knows
// VDPBF16PS: the generator emits its bytes, so those kernels use physical
// registers. The activations carry bf16 rounding (relative 2^-9 per value).
// Attention over bf16 KV pages (MatMulSerialInvariant) keeps float32 queries.
// SetBF16Activations(false) or SWITCHYARD_BF16_ACTIVATIONS=0 turns it off;
// matMulBF16Ref is the plain twin. One input row walks the weight rows one
// after the other (bf16rows512: a sequential stream, four accumulators per
// row), except in the batch-invariant mode, where the tiles' one accumulator
// per output keeps a row's result independent of the call's other rows.
//
// # Batch invariance
//
// A row's result never depends on the thread count (rows of W are shared
// out, never the columns). With SetBatchInvariant(true) it does not depend
// on the other input rows of the call either: every tile height and the
// panel path add a row's products into one accumulator per (weight row,
// input row) in one fixed order of sub-vectors, the panels being stored (and
// x packed) in the tile kernels' order (panelorder_amd64.go, bf16 in
// even/odd order; the panel path always uses that order). This is what makes
// a session's tokens independent of the sessions batched with it and of
// which expert node computes its experts (the trunk's and expert node's
// --deterministic, on by default there). Off (this package's default), the
// one- and two-row float-widening products use faster kernels (two
// accumulator sets at N=1, and N=2 with AVX-512; Q8_0 on AVX2 with the block
// scale factored out), which round differently. Where the bf16 and 8-bit
// activation paths apply (AVX-512 BF16 and VNNI) they are batch-invariant
// already and the setting changes nothing on those types; measured
// (BenchmarkBatchInvariantCost, in_proj shape, one thread, medians of 3): no
// difference above the noise on AVX-512 at any type (F32, F16, BF16 with and
// without VDPBF16PS, Q8_0, K-quants, Q4_0), and on AVX2 +12% on Q8_0 at one
// row, +4% on BF16 and +3% on Q4_K at one row, none at two.
// TestMatMulBatchInvariant checks every level and dtype bitwise.
//
// Row blocks are shared out dynamically to a persistent worker pool (see
// pool.go); a call whose work is too small runs on the caller alone.
//
// # Generated assembly
//
// asm_amd64.s and its stubs asm_amd64.go are generated by the avo program in
// internal/gen, a separate module so that avo stays out of this module's
// dependencies. Regenerate them with
//
//	go generate ./model/kernels
//
// (equivalently: cd model/kernels/internal/gen && go run . -out ../../asm_amd64.s
// -stubs ../../asm_amd64.go -pkg kernels). The first run downloads avo and
// builds golang.org/x/tools, which takes under a minute.
package kernels

import (
	"os"
	"sync/atomic"
)

//go:generate sh -c "cd internal/gen && go run . -out ../../asm_amd64.s -stubs ../../asm_amd64.go -pkg kernels"

// batchInvariant selects the batch-invariant small-N kernels (see the package
// documentation).
var batchInvariant atomic.Bool

// The SWITCHYARD_BATCH_INVARIANT environment variable set to 1 starts the
// process with the setting on.
func init() { batchInvariant.Store(os.Getenv("SWITCHYARD_BATCH_INVARIANT") == "1") }

// SetBatchInvariant chooses whether MatMul's result for a row is bitwise
// independent of how many rows share the call (on) or whether the one- and
// two-row products use faster kernels that round differently (off, the
// default).
// It returns the previous setting. Calls in flight keep the kernels they
// started with.
func SetBatchInvariant(on bool) (prev bool) { return batchInvariant.Swap(on) }

// BatchInvariant reports the setting of SetBatchInvariant.
func BatchInvariant() bool { return batchInvariant.Load() }
