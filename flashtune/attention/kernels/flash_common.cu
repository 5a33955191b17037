// Helpers shared by every CUDA kernel of poc (the first part of each kernel's `header=`,
// see kernels/cuda.py): cp.async, ldmatrix, mma.sync, quad reductions, and the
// softmax-Jacobian term of the backward (its own kernel).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ftpoc {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy; src_bytes 0 fills the destination with zeros.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
  int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ unsigned pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
  }
};

template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                             unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ unsigned pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
  }
};

// Rows [row0, row0 + ROWS) of a row-major (L, D) matrix into shared memory (stride D + 8),
// zero-filling rows at or past L.
template <typename T, int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int row0, int L) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  constexpr int S = D + 8;
#pragma unroll
  for (int c = threadIdx.x; c < ROWS * CPR; c += NT) {
    int r = c / CPR, ch = c % CPR;
    bool valid = row0 + r < L;
    const T* g = src + (size_t)(valid ? row0 + r : 0) * D + ch * 8;
    cp_async16(smem_u32(dst + r * S + ch * 8), g, valid);
  }
}

// dst[0..3] += (a, b, c, d) in one 16-byte reduction (sm_90); dst 16-byte aligned.
__device__ __forceinline__ void red_add_v4(float* dst, float a, float b, float c, float d) {
  asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(a),
               "f"(b), "f"(c), "f"(d)
               : "memory");
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The smallest and largest non-negative document id of seg[row0, row0 + rows) below L, as
// (lo, hi); lo > hi when there is none. Every warp computes it alike: no barrier needed.
__device__ __forceinline__ int2 doc_range(const int* seg, int row0, int rows, int L) {
  int lo = 0x7fffffff, hi = -1;
  for (int r = threadIdx.x % 32; r < rows; r += 32) {
    const int id = row0 + r < L ? seg[row0 + r] : -1;
    if (id >= 0) {
      lo = min(lo, id);
      hi = max(hi, id);
    }
  }
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, m));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, m));
  }
  return make_int2(lo, hi);
}
// Whether two ranges of document ids overlap: tiles whose ranges miss hold no visible pair.
__device__ __forceinline__ bool docs_meet(int2 a, int2 b) { return a.x <= b.y && b.x <= a.y; }

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// delta[row] = sum over d of dO[row, d] * O[row, d] in float32 (FlashAttention-2's
// softmax-Jacobian term, one per query row): one warp per row, rows = B * Hq * Lq.
template <typename T, int D>
__device__ __forceinline__ void softmax_delta(const T* dout, const T* o, float* delta, int rows) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  float acc = 0.f;
#pragma unroll
  for (int c = lane; c < D; c += 32)
    acc += to_float(dout[(size_t)row * D + c]) * to_float(o[(size_t)row * D + c]);
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) delta[row] = acc;
}

}  // namespace ftpoc
