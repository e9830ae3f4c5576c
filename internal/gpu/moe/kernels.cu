// Switchyard's MoE kernels for NVIDIA GPUs, compiled to PTX by `make generate`
// with Debian's clang-16 (no CUDA headers or libdevice; see scripts/genptx.sh).
// Each kernel has a Go twin in twins.go that the CI tests run through the fake
// driver; the GPU check compares the two on a real GPU.
//
// Layouts (row-major, one row per token-expert pair p, pairs sorted by expert):
//   X    f32  [R, H]   the round's input rows
//   Xs   f32  [P, H]   gathered rows of the small-path pairs (p < nSmall)
//   Xb   bf16 [P-nSmall, H] gathered rows of the cuBLAS-path pairs
//   GU   f32  [P, 2I]  gate | up projections
//   A    f32  [P, I]   silu(gate) * up of small-path pairs; Ab bf16 for the rest
//   Y    f32  [P, H]   expert outputs
//   out  f32  [R, H]   weighted sums
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
// silu(g) * u with exp through ex2.approx (relative error ~2^-22).
static __device__ inline float silu_mul(float g, float u) {
  float e = __nvvm_ex2_approx_f(-g * 1.4426950408889634f);
  return g / (1.0f + e) * u;
}

// gather_rows: for pair p, copies X[pairRow[p]] into Xs[p] (p < nSmall) or, as
// bf16, into Xb[p-nSmall]. One block per pair (grid-stride), threads over H.
extern "C" __global__ void gather_rows(const float* X, const int* pairRow, int P, int nSmall, int H, float* Xs, bf16* Xb) {
  for (int p = bid(); p < P; p += nbid()) {
    const float* src = X + (long)pairRow[p] * H;
    if (p < nSmall) {
      float* dst = Xs + (long)p * H;
      for (int c = tid(); c < H; c += ntid()) dst[c] = src[c];
    } else {
      bf16* dst = Xb + (long)(p - nSmall) * H;
      for (int c = tid(); c < H; c += ntid()) dst[c] = f2bf(src[c]);
    }
  }
}

#define MMAX 16

// grouped_gemv: the small-group path of a grouped GEMM, for groups of at most
// MMAX rows (decode sizes), which are bound by reading the weights.
// Block b runs task b = {W (bf16 [N, K] row-major), p0 | m << 32, n0}: each warp
// takes one weight row n = n0 + warp, reads it once (16-byte loads, 8 values
// per lane) and forms its dot product with the m input rows in[p0 .. p0+m),
// writing out[(p0+i)*N + n]. K must be a multiple of 8.
extern "C" __global__ void grouped_gemv(const u64* tasks, const float* in, float* out, int K, int N) {
  const u64* t = tasks + 3 * bid();
  const bf16* W = (const bf16*)t[0];
  int p0 = (int)(t[1] & 0xffffffffu);
  int m = (int)(t[1] >> 32);
  int warp = tid() >> 5, lane = tid() & 31;
  int n = (int)t[2] + warp;
  if (n >= N) return;
  const bf16* w = W + (long)n * K;
  const float* x = in + (long)p0 * K;
  float acc[MMAX];
#pragma unroll
  for (int i = 0; i < MMAX; i++) acc[i] = 0.0f;
  for (int k = lane * 8; k < K; k += 256) {
    u32x4 wv = *(const u32x4*)(w + k);
    float wf[8];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      wf[2 * j] = bf2f(wv[j] & 0xffffu);
      wf[2 * j + 1] = bf2f(wv[j] >> 16);
    }
#pragma unroll
    for (int i = 0; i < MMAX; i++) {
      if (i < m) {
        const float* xi = x + (long)i * K + k;
        f32x4 a = *(const f32x4*)xi;
        f32x4 b = *(const f32x4*)(xi + 4);
        float s = acc[i];
        s = __nvvm_fma_rn_f(wf[0], a[0], s);
        s = __nvvm_fma_rn_f(wf[1], a[1], s);
        s = __nvvm_fma_rn_f(wf[2], a[2], s);
        s = __nvvm_fma_rn_f(wf[3], a[3], s);
        s = __nvvm_fma_rn_f(wf[4], b[0], s);
        s = __nvvm_fma_rn_f(wf[5], b[1], s);
        s = __nvvm_fma_rn_f(wf[6], b[2], s);
        s = __nvvm_fma_rn_f(wf[7], b[3], s);
        acc[i] = s;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < MMAX; i++) {
    if (i < m) {
      float s = acc[i];
      s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 16, 0x1f);
      s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 8, 0x1f);
      s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 4, 0x1f);
      s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 2, 0x1f);
      s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 1, 0x1f);
      if (lane == 0) out[(long)(p0 + i) * N + n] = s;
    }
  }
}

// silu_mul_rows: A[p, j] = silu(GU[p, j]) * GU[p, I + j] for p in [0, P): as
// f32 into A for p < nSmall, as bf16 into Ab[p - nSmall] for the rest.
extern "C" __global__ void silu_mul_rows(const float* GU, int P, int nSmall, int I, float* A, bf16* Ab) {
  long total = (long)P * I;
  for (long idx = (long)bid() * ntid() + tid(); idx < total; idx += (long)nbid() * ntid()) {
    int p = (int)(idx / I), j = (int)(idx - (long)p * I);
    const float* gu = GU + (long)p * 2 * I;
    float v = silu_mul(gu[j], gu[I + j]);
    if (p < nSmall) A[(long)p * I + j] = v;
    else Ab[(long)(p - nSmall) * I + j] = f2bf(v);
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

// bf16_from_f32: dst[i] = bf16(src[i]), for weights converted on the device.
extern "C" __global__ void bf16_from_f32(const float* src, long n, bf16* dst) {
  for (long i = (long)bid() * ntid() + tid(); i < n; i += (long)nbid() * ntid()) dst[i] = f2bf(src[i]);
}
