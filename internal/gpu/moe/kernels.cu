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
//   Ab   bf16 [P-nSmall, I] silu(gate) * up of the cuBLAS-path pairs (the
//                           GEMV path forms it on the fly, in f32)
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
// [p0, P). One block per pair (grid-stride), threads over H.
extern "C" __global__ void gather_bf16(const float* __restrict__ X, const int* __restrict__ pairRow, int p0, int P, int H,
                                      bf16* __restrict__ Xb) {
  for (int p = p0 + bid(); p < P; p += nbid()) {
    const float* src = X + (long)pairRow[p] * H;
    bf16* dst = Xb + (long)(p - p0) * H;
    for (int c = tid(); c < H; c += ntid()) dst[c] = f2bf(src[c]);
  }
}

#define MMAX 8 // rows per grouped-GEMV task
#define RPW 4  // weight rows per warp
#define WPB 4  // warps per block: a block computes RPW*WPB = 16 weight rows

// gemv_body is the small-group path of a grouped GEMM, for groups of at most
// MMAX rows (decode sizes), which are bound by reading the weights. Block b
// runs task b = {W (bf16 [N, K] row-major), p0 | m << 32, n0}: warp w computes
// weight rows n0 + RPW*w .. +RPW for the task's m input rows, each weight row
// read once (16-byte loads, 8 values per lane, RPW loads in flight), with
// float32 fused multiply-adds per lane and a butterfly sum across the warp.
// K must be a multiple of 8. Input row i of the task:
//   UP:   X[pairRow[p0+i]]                       (the round's f32 input rows)
//   DOWN: silu(G[p0+i, k]) * G[p0+i, K + k]      (G is the [P, 2K] gate|up output)
// out[(p0+i)*N + n] receives the dot product.
template <bool DOWN>
static __device__ inline void gemv_body(const u64* __restrict__ tasks, const float* __restrict__ in,
                                        const int* __restrict__ pairRow, float* __restrict__ out, int K, int N) {
  const u64* t = tasks + 3 * bid();
  const bf16* __restrict__ W = (const bf16*)t[0];
  int p0 = (int)(t[1] & 0xffffffffu);
  int m = (int)(t[1] >> 32);
  int warp = tid() >> 5, lane = tid() & 31;
  int n0 = (int)t[2] + warp * RPW;
  if (n0 >= N) return;
  const float* xr[MMAX];
#pragma unroll
  for (int i = 0; i < MMAX; i++) {
    int p = p0 + (i < m ? i : 0);
    xr[i] = DOWN ? in + (long)p * 2 * K : in + (long)pairRow[p] * K;
  }
  float acc[RPW][MMAX];
#pragma unroll
  for (int r = 0; r < RPW; r++)
#pragma unroll
    for (int i = 0; i < MMAX; i++) acc[r][i] = 0.0f;
  // Two 256-value steps per iteration: 2*RPW independent 16-byte weight loads
  // in flight per lane before the first use.
  for (int k0 = lane * 8; k0 < K; k0 += 512) {
    u32x4 wv[2][RPW];
#pragma unroll
    for (int h = 0; h < 2; h++) {
      int k = k0 + 256 * h < K ? k0 + 256 * h : k0;
#pragma unroll
      for (int r = 0; r < RPW; r++) {
        int n = n0 + r < N ? n0 + r : n0;
        wv[h][r] = ldg_nc_v4(W + (long)n * K + k);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      int k = k0 + 256 * h;
      if (k < K) {
#pragma unroll
        for (int i = 0; i < MMAX; i++) {
          if (i < m) {
            float xv[8];
            f32x4 a = *(const f32x4*)(xr[i] + k);
            f32x4 b = *(const f32x4*)(xr[i] + k + 4);
            xv[0] = a[0]; xv[1] = a[1]; xv[2] = a[2]; xv[3] = a[3];
            xv[4] = b[0]; xv[5] = b[1]; xv[6] = b[2]; xv[7] = b[3];
            if (DOWN) {
              f32x4 c = *(const f32x4*)(xr[i] + K + k);
              f32x4 d = *(const f32x4*)(xr[i] + K + k + 4);
              xv[0] = silu_mul(xv[0], c[0]); xv[1] = silu_mul(xv[1], c[1]);
              xv[2] = silu_mul(xv[2], c[2]); xv[3] = silu_mul(xv[3], c[3]);
              xv[4] = silu_mul(xv[4], d[0]); xv[5] = silu_mul(xv[5], d[1]);
              xv[6] = silu_mul(xv[6], d[2]); xv[7] = silu_mul(xv[7], d[3]);
            }
#pragma unroll
            for (int r = 0; r < RPW; r++) {
              float s = acc[r][i];
#pragma unroll
              for (int j = 0; j < 4; j++) {
                s = __nvvm_fma_rn_f(bf2f(wv[h][r][j] & 0xffffu), xv[2 * j], s);
                s = __nvvm_fma_rn_f(bf2f(wv[h][r][j] >> 16), xv[2 * j + 1], s);
              }
              acc[r][i] = s;
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < RPW; r++) {
#pragma unroll
    for (int i = 0; i < MMAX; i++) {
      if (i < m) {
        float s = acc[r][i];
        s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 16, 0x1f);
        s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 8, 0x1f);
        s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 4, 0x1f);
        s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 2, 0x1f);
        s += __nvvm_shfl_sync_bfly_f32(0xffffffffu, s, 1, 0x1f);
        if (lane == 0 && n0 + r < N) out[(long)(p0 + i) * N + n0 + r] = s;
      }
    }
  }
}

// gemv_up: GU[p, n] = gate_up_n . X[pairRow[p]] for the small-path pairs (K = H, N = 2I).
extern "C" __global__ void gemv_up(const u64* tasks, const float* X, const int* pairRow, float* GU, int K, int N) {
  gemv_body<false>(tasks, X, pairRow, GU, K, N);
}

// gemv_down: Y[p, n] = down_n . (silu(gate) * up)[p] for the small-path pairs,
// the activation formed on the fly from GU (K = I, N = H).
extern "C" __global__ void gemv_down(const u64* tasks, const float* GU, float* Y, int K, int N) {
  gemv_body<true>(tasks, GU, 0, Y, K, N);
}

// silu_mul_bf16: Ab[p - p0, j] = bf16(silu(GU[p, j]) * GU[p, I + j]) for the
// cuBLAS-path pairs p in [p0, P).
extern "C" __global__ void silu_mul_bf16(const float* __restrict__ GU, int p0, int P, int I, bf16* __restrict__ Ab) {
  long total = (long)(P - p0) * I;
  for (long idx = (long)bid() * ntid() + tid(); idx < total; idx += (long)nbid() * ntid()) {
    int q = (int)(idx / I), j = (int)(idx - (long)q * I);
    const float* gu = GU + (long)(p0 + q) * 2 * I;
    Ab[idx] = f2bf(silu_mul(gu[j], gu[I + j]));
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
