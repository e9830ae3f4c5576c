// Switchyard's MoE kernels for NVIDIA GPUs, compiled to PTX by `make generate`
// with Debian's clang-16 (no CUDA headers or libdevice; see scripts/genptx.sh).
// Each kernel has a Go twin in twins.go that the CI tests run through the fake
// driver; the GPU check compares the two on a real GPU.
//
// Layouts (row-major, one row per token-expert pair p, pairs sorted by expert,
// the nSmall grouped-GEMV pairs first):
//   X    f32  [R, H]        the round's input rows
//   Xb   bf16 [P-nSmall, H] gathered rows of the cuBLAS-path pairs
//   GU   f32  [P, 2I]       gate | up projections
//   A    f32  [nSmall, I]   silu(gate) * up of the grouped-GEMV pairs
//   Ab   bf16 [P-nSmall, I] the same for the cuBLAS-path pairs
//   Y    f32  [P, H]        expert outputs
//   out  f32  [R, H]        weighted sums
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))

typedef unsigned short bf16;
typedef unsigned long long u64;
typedef unsigned int u32x4 __attribute__((ext_vector_type(4)));
typedef float f32x4 __attribute__((ext_vector_type(4)));

static __device__ inline int tid() { return __nvvm_read_ptx_sreg_tid_x(); }
static __device__ inline int ntid() { return __nvvm_read_ptx_sreg_ntid_x(); }
static __device__ inline int bid() { return __nvvm_read_ptx_sreg_ctaid_x(); }
static __device__ inline int nbid() { return __nvvm_read_ptx_sreg_nctaid_x(); }

static __device__ inline float bf2f(unsigned int h) { return __builtin_bit_cast(float, h << 16); }
static __device__ inline bf16 f2bf(float f) {
  unsigned int u = __builtin_bit_cast(unsigned int, f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}
// ldg_nc_v4 loads 16 bytes of read-only global memory (weights) through the
// non-coherent cache path as one vector load.
static __device__ inline u32x4 ldg_nc_v4(const void* p) {
  unsigned int a, b, c, d;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(p));
  u32x4 v = {a, b, c, d};
  return v;
}

// silu(g) * u with exp through ex2.approx (relative error ~2^-22).
static __device__ inline float silu_mul(float g, float u) {
  float e = __nvvm_ex2_approx_f(-g * 1.4426950408889634f);
  return g / (1.0f + e) * u;
}

// gather_bf16: Xb[p - p0] = bf16(X[pairRow[p]]) for the cuBLAS-path pairs p in
// [p0, P), zeros where pairRow[p] < 0 (a bucket's padding). One block per pair
// (grid-stride), threads over H.
extern "C" __global__ void gather_bf16(const float* __restrict__ X, const int* __restrict__ pairRow, int p0, int P, int H,
                                      bf16* __restrict__ Xb) {
  for (int p = p0 + bid(); p < P; p += nbid()) {
    int row = pairRow[p];
    bf16* dst = Xb + (long)(p - p0) * H;
    if (row < 0) {
      for (int c = tid(); c < H; c += ntid()) dst[c] = 0;
      continue;
    }
    const float* src = X + (long)row * H;
    for (int c = tid(); c < H; c += ntid()) dst[c] = f2bf(src[c]);
  }
}

#define MPASS 4 // input rows per pass of a grouped-GEMV block
#define RPW 4   // weight rows per warp
#define WPB 4   // warps per block: a block computes RPW*WPB = 16 weight rows

// grouped_gemv is the small-group path of a grouped GEMM, for groups of at
// most 16 rows (decode sizes), which are bound by reading the weights. Block b
// runs task b = {W (bf16 [N, K] row-major), p0 | m << 32, n0}: warp w computes
// weight rows n0 + RPW*w .. +RPW for the task's m input rows, MPASS rows per
// pass (the block's 16 weight rows stay in L1/L2 between passes), each weight
// chunk read with one 16-byte load per lane, float32 fused multiply-adds per
// lane and a butterfly sum across the warp. K must be a multiple of 8. Input
// row i is in[rowOf(p0+i) * K] with rowOf(p) = pairRow[p] (the round's input
// rows, gate|up) or p itself when pairRow is null (activations, down); out
// [(p0+i)*N + n] receives the dot product. At most 64 registers per thread
// (8 blocks per multiprocessor) keep enough loads in flight.
extern "C" __global__ void __attribute__((launch_bounds(128, 8)))
grouped_gemv(const u64* __restrict__ tasks, const float* __restrict__ in, const int* __restrict__ pairRow,
             float* __restrict__ out, int K, int N) {
  const u64* t = tasks + 3 * bid();
  const bf16* W = (const bf16*)t[0];
  int p0 = (int)(t[1] & 0xffffffffu);
  int m = (int)(t[1] >> 32);
  int warp = tid() >> 5, lane = tid() & 31;
  int n0 = (int)t[2] + warp * RPW;
  if (n0 >= N) return;
  for (int i0 = 0; i0 < m; i0 += MPASS) {
    float acc[RPW][MPASS];
#pragma unroll
    for (int r = 0; r < RPW; r++)
#pragma unroll
      for (int i = 0; i < MPASS; i++) acc[r][i] = 0.0f;
    for (int k = lane * 8; k < K; k += 256) {
      u32x4 wv[RPW];
#pragma unroll
      for (int r = 0; r < RPW; r++) {
        int n = n0 + r < N ? n0 + r : n0;
        wv[r] = ldg_nc_v4(W + (long)n * K + k);
      }
#pragma unroll
      for (int i = 0; i < MPASS; i++) {
        if (i0 + i < m) {
          int p = p0 + i0 + i;
          const float* x = in + (long)(pairRow ? pairRow[p] : p) * K + k;
          f32x4 a = *(const f32x4*)x;
          f32x4 b = *(const f32x4*)(x + 4);
#pragma unroll
          for (int r = 0; r < RPW; r++) {
            float s = acc[r][i];
            s = __nvvm_fma_rn_f(bf2f(wv[r][0] & 0xffffu), a[0], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][0] >> 16), a[1], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][1] & 0xffffu), a[2], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][1] >> 16), a[3], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][2] & 0xffffu), b[0], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][2] >> 16), b[1], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][3] & 0xffffu), b[2], s);
            s = __nvvm_fma_rn_f(bf2f(wv[r][3] >> 16), b[3], s);
            acc[r][i] = s;
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RPW; r++) {
#pragma unroll
      for (int i = 0; i < MPASS; i++) {
        if (i0 + i < m) {
          float s = acc[r][i];
          s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 16, 0x1f);
          s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 8, 0x1f);
          s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 4, 0x1f);
          s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 2, 0x1f);
          s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 1, 0x1f);
          if (lane == 0 && n0 + r < N) out[(long)(p0 + i0 + i) * N + n0 + r] = s;
        }
      }
    }
  }
}

// silu_mul_rows: the activations of the pairs p in [p0, P):
// silu(GU[p, j]) * GU[p, I + j], as f32 into A[p] for the grouped-GEMV pairs
// (p < S) and as bf16 into Ab[p - S] for the cuBLAS pairs.
extern "C" __global__ void silu_mul_rows(const float* __restrict__ GU, int p0, int S, int P, int I,
                                         float* __restrict__ A, bf16* __restrict__ Ab) {
  long total = (long)(P - p0) * I;
  for (long q = (long)bid() * ntid() + tid(); q < total; q += (long)nbid() * ntid()) {
    long idx = q + (long)p0 * I;
    int p = (int)(idx / I), j = (int)(idx - (long)p * I);
    const float* gu = GU + (long)p * 2 * I;
    float v = silu_mul(gu[j], gu[I + j]);
    if (p < S) A[idx] = v;
    else Ab[idx - (long)S * I] = f2bf(v);
  }
}

// combine_rows: out[r] = sum over j < topK of w[r*topK+j] * Y[pos[r*topK+j]],
// in slot order (deterministic); pos < 0 marks a padding slot. One block per row.
extern "C" __global__ void combine_rows(const float* Y, const int* pos, const float* w, int R, int topK, int H, float* out) {
  for (int r = bid(); r < R; r += nbid()) {
    for (int c = tid(); c < H; c += ntid()) {
      float s = 0.0f;
      for (int j = 0; j < topK; j++) {
        int p = pos[r * topK + j];
        if (p >= 0) s = __nvvm_fma_rn_f(w[r * topK + j], Y[(long)p * H + c], s);
      }
      out[(long)r * H + c] = s;
    }
  }
}
