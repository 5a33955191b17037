// FlashAttention backward for Hopper (sm_90a): warpgroup MMAs for all five products.
//
// Appended after flash_forward_sm90.cu (it uses that file's wgmma helpers and swizzled
// loads). A CTA of WG warpgroups owns BN = 64 * WG keys of one query head; warpgroup w keeps
// dK and dV of keys [64w, 64w + 64) in registers while the CTA walks the query blocks of
// BM = 64 * QM rows. Per block:
//   S^T = K Q^T, dP^T = V dO^T      (A: K, V from shared memory; B: Q, dO; K-major)
//   P^T = exp2(S^T * scale * log2e - LSE), dS^T = P^T (dP^T - delta)   (registers)
//   dV += P^T dO, dK += dS^T Q      (A: P^T, dS^T in registers; B: dO, Q MN-major)
//   dQ += dS K                      (A: dS^T through shared memory, read transposed)
// dQ of the block is split into 64 x 64 tiles over the warpgroups and added to a float32
// (B, Hq, Lq, D) buffer with 16-byte reductions; at the end dK and dV are added the same way
// to float32 (B, Hkv, Lk, D) buffers, which sums the GQA group; no Lq x Lk buffer exists.
//
// Every tile in shared memory uses the forward's 128-byte-swizzled panel layout: rows of
// 64 elements, 16-byte chunk c of row r at chunk c ^ (r % 8). dS^T is stored with keys as
// rows and queries as columns, which is dS read MN-major (wgmma's transposed A).

namespace ftpoc {

#define FTPOC_WGMMA_SS_64x64x16(TYPE)                                                        \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n"                                              \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                 \
  " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"    \
  "%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, %34, %35;\n}\n"

// d (64 x 64) += A (64 x 16) * B (16 x 64), both operands in shared memory (descriptors).
// TRANS_A / TRANS_B 0: K-major, 1: MN-major. accumulate 0 overwrites d.
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
#define FTPOC_WGMMA_SS_ISSUE(TYPE)                                                    \
  asm volatile(FTPOC_WGMMA_SS_64x64x16(TYPE)                                          \
               : FTPOC_D32(d)                                                         \
               : "l"(desc_a), "l"(desc_b), "n"(TRANS_A), "n"(TRANS_B), "r"(accumulate))
#else
#define FTPOC_WGMMA_SS_ISSUE(TYPE) __trap()
#endif
template <typename T, int TRANS_A, int TRANS_B>
struct WgmmaSS;

template <int TRANS_A, int TRANS_B>
struct WgmmaSS<__nv_bfloat16, TRANS_A, TRANS_B> {
  static __device__ __forceinline__ void run(float (&d)[32], unsigned long long desc_a,
                                             unsigned long long desc_b, int accumulate) {
    FTPOC_WGMMA_SS_ISSUE("bf16");
  }
};

template <int TRANS_A, int TRANS_B>
struct WgmmaSS<__half, TRANS_A, TRANS_B> {
  static __device__ __forceinline__ void run(float (&d)[32], unsigned long long desc_a,
                                             unsigned long long desc_b, int accumulate) {
    FTPOC_WGMMA_SS_ISSUE("f16");
  }
};

// 4-byte asynchronous copy; src_bytes 0 fills the destination with zeros.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool valid) {
  int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

// dst[row, col0 + ...] += scale * acc for one 64 x 64 accumulator of a warpgroup (rows
// row_a + 8 * ..., see pack_a) in a row-major float32 matrix of `rows` rows and D columns.
// Lanes t and t^1 swap halves so each owns 4 consecutive columns of one row (even t row a,
// odd t row b): one 16-byte reduction per 8-column tile.
template <int D>
__device__ __forceinline__ void red_add_acc(float* dst, const float (&acc)[32], int row_a,
                                            int col0, int rows, float scale) {
  const int t = threadIdx.x & 3;
  const bool odd = t & 1;
  const int row = odd ? row_a + 8 : row_a;
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const float* a = &acc[4 * c];
    const float recv0 = __shfl_xor_sync(0xffffffffu, odd ? a[0] : a[2], 1);
    const float recv1 = __shfl_xor_sync(0xffffffffu, odd ? a[1] : a[3], 1);
    if (row < rows) {
      const float4 val = odd ? make_float4(recv0, recv1, a[2], a[3])
                             : make_float4(a[0], a[1], recv0, recv1);
      red_add_v4(dst + (size_t)row * D + col0 + c * 8 + 2 * (t & 2), val.x * scale,
                 val.y * scale, val.z * scale, val.w * scale);
    }
  }
}

template <int WG, int QM, int D>
struct BwdSm90Layout {
  static constexpr int BN = 64 * WG, BM = 64 * QM, NP = D / 64;
  static constexpr int KV_BYTES = BN * D * 2, QO_BYTES = BM * D * 2, DS_BYTES = BN * BM * 2;
  // K, V, two Q and two dO tiles, dS^T (all 1024-byte aligned), then LSE and delta x 2.
  static constexpr int K_OFF = 0, V_OFF = KV_BYTES, Q_OFF = 2 * KV_BYTES;
  static constexpr int O_OFF = Q_OFF + 2 * QO_BYTES, DS_OFF = O_OFF + 2 * QO_BYTES;
  static constexpr int STATS_OFF = DS_OFF + DS_BYTES;
};

// Backward, grid (ceil(Lk / BN), Hq, B), 128 * WG threads, one query head per CTA. Same
// inputs as flash_bwd; dq (B, Hq, Lq, D), dk and dv (B, Hkv, Lk, D) are float32, zeroed by
// MLX, and accumulated with reductions. lse, delta: float32 (B, Hq, Lq), lse in log2 units.
template <typename T, int D, int WG, int QM, bool CAUSAL>
__device__ __forceinline__ void flash_bwd_sm90(const T* q, const T* k, const T* v,
                                               const T* dout, const float* lse,
                                               const float* delta, const float* params, int Hq,
                                               int Lq, int Hkv, int Lk, float* dq, float* dk,
                                               float* dv) {
  static_assert(D % 64 == 0, "64-column panels");
  using L = BwdSm90Layout<WG, QM, D>;
  constexpr int BN = L::BN, BM = L::BM, NP = L::NP, NT = 128 * WG;
  // dQ of a block is QM x NP tiles of 64 x 64; warpgroup w takes tiles w, w + WG, ...
  constexpr int DQ_TILES = QM * NP / WG;
  static_assert(QM * NP % WG == 0, "dQ tiles split evenly over the warpgroups");
  extern __shared__ uint4 ftpoc_smem[];
  const unsigned raw = smem_u32(ftpoc_smem);
  const unsigned base = (raw + 1023u) & ~1023u;  // the launcher adds 1 KB of slack
  float* Ls = reinterpret_cast<float*>(reinterpret_cast<char*>(ftpoc_smem) + (base - raw) +
                                       L::STATS_OFF);  // [2][BM]
  float* Es = Ls + 2 * BM;                              // delta, [2][BM]

  const float scale = params[0];
  const float scale_log2 = scale * kLog2e;
  const int n0 = blockIdx.x * BN, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int offset = Lk - Lq;
  const T* kg = k + (size_t)(b * Hkv + hk) * Lk * D;
  const T* vg = v + (size_t)(b * Hkv + hk) * Lk * D;
  const size_t row_base = (size_t)(b * Hq + h) * Lq;
  const int q_first = CAUSAL ? max(0, n0 - offset) / BM : 0;
  const int n_steps = (Lq + BM - 1) / BM - q_first;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wg = warp / 4;
  const int g = lane >> 2, t = lane & 3;
  const int key_a = n0 + warp * 16 + g, key_b = key_a + 8;

  auto q_tile = [&](int step) { return base + L::Q_OFF + (step & 1) * L::QO_BYTES; };
  auto o_tile = [&](int step) { return base + L::O_OFF + (step & 1) * L::QO_BYTES; };
  auto prefetch = [&](int step) {
    if (step < n_steps) {
      const int m0 = (q_first + step) * BM;
      load_tile_sw128<T, BM, D, NT>(q_tile(step), q + row_base * D, m0, Lq);
      load_tile_sw128<T, BM, D, NT>(o_tile(step), dout + row_base * D, m0, Lq);
      // Rows past Lq get LSE 0 and delta 0: their Q and dO rows are zero, so P dO and dS are 0.
      for (int r = threadIdx.x; r < BM; r += NT) {
        const bool valid = m0 + r < Lq;
        const size_t row = row_base + (valid ? m0 + r : 0);
        cp_async4(smem_u32(Ls + (step & 1) * BM + r), lse + row, valid);
        cp_async4(smem_u32(Es + (step & 1) * BM + r), delta + row, valid);
      }
    }
    cp_async_commit();  // one group per step, empty past the end: the waits count groups
  };

  load_tile_sw128<T, BN, D, NT>(base + L::K_OFF, kg, n0, Lk);
  load_tile_sw128<T, BN, D, NT>(base + L::V_OFF, vg, n0, Lk);
  prefetch(0);

  float dka[NP][32], dva[NP][32];
#pragma unroll
  for (int p = 0; p < NP; ++p)
#pragma unroll
    for (int i = 0; i < 32; ++i) dka[p][i] = dva[p][i] = 0.f;

  for (int step = 0; step < n_steps; ++step) {
    prefetch(step + 1);  // its buffers last held step - 1, released by the loop-end barrier
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
    const int m0 = (q_first + step) * BM;
    const float* Lc = Ls + (step & 1) * BM;
    const float* Ec = Es + (step & 1) * BM;

    // S^T = K Q^T and dP^T = V dO^T for this warpgroup's 64 keys: (64, BM) each.
    float st[QM][32], dpt[QM][32];
    const unsigned long long k_kmajor = sw128_desc(base + L::K_OFF, 16, 1024);
    const unsigned long long v_kmajor = sw128_desc(base + L::V_OFF, 16, 1024);
    const unsigned long long q_kmajor = sw128_desc(q_tile(step), 16, 1024);
    const unsigned long long o_kmajor = sw128_desc(o_tile(step), 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int nq = 0; nq < QM; ++nq)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const unsigned a_off = (kk / 4) * BN * 128 + wg * 64 * 128 + (kk % 4) * 32;
        const unsigned b_off = (kk / 4) * BM * 128 + nq * 64 * 128 + (kk % 4) * 32;
        WgmmaSS<T, 0, 0>::run(st[nq], desc_at(k_kmajor, a_off), desc_at(q_kmajor, b_off),
                              kk > 0);
        WgmmaSS<T, 0, 0>::run(dpt[nq], desc_at(v_kmajor, a_off), desc_at(o_kmajor, b_off),
                              kk > 0);
      }
    wgmma_commit();
    wgmma_wait<0>();
    pin(st);
    pin(dpt);

    // P^T from the saved log-sum-exp, dS^T = P^T (dP^T - delta).
    const bool need_mask = (n0 + BN > Lk) || (CAUSAL && n0 + BN - 1 > m0 + offset);
#pragma unroll
    for (int nq = 0; nq < QM; ++nq)
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int qc = nq * 64 + (i / 4) * 8 + 2 * t + (i & 1);
        float p = fast_exp2(st[nq][i] * scale_log2 - Lc[qc]);
        if (need_mask) {
          const int key = (i & 2) ? key_b : key_a;
          if (key >= Lk || (CAUSAL && key > m0 + qc + offset)) p = 0.f;
        }
        st[nq][i] = p;
        dpt[nq][i] = p * (dpt[nq][i] - Ec[qc]);
      }
    unsigned pa[QM * 4][4], da[QM * 4][4];
    pack_a<T, QM>(pa, st);
    pack_a<T, QM>(da, dpt);
    // The dK/dV products' accumulators and register operands, around their fence and wait.
    auto pin_dkdv = [&] {
#pragma unroll
      for (int p = 0; p < NP; ++p) {
        pin(dva[p]);
        pin(dka[p]);
      }
      pin(pa);
      pin(da);
    };

    // dS^T to shared memory (keys are rows, queries columns in 64-wide panels), before the
    // MMAs below take da: registers an MMA in flight reads may not be touched, read included.
    const unsigned ds = base + L::DS_OFF;
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = warp * 16 + g + ((e & 1) ? 8 : 0);
        const int col = (kk % 4) * 16 + ((e & 2) ? 8 : 0);  // within the 64-query panel
        const unsigned addr = ds + (kk / 4) * BN * 128 + r * 128 +
                              ((((col >> 3) ^ (r & 7))) << 4) + t * 4;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(da[kk][e]) : "memory");
      }
    // dV += P^T dO and dK += dS^T Q (scale applied once at the end); left in flight.
    pin_dkdv();
    const unsigned long long o_mnmajor = sw128_desc(o_tile(step), 1024, 1024);
    const unsigned long long q_mnmajor = sw128_desc(q_tile(step), 1024, 1024);
    wgmma_fence();
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        const unsigned off = p * BM * 128 + kk * 2048;
        Wgmma<T, 1>::run(dva[p], pa[kk], desc_at(o_mnmajor, off), 1);
        Wgmma<T, 1>::run(dka[p], da[kk], desc_at(q_mnmajor, off), 1);
      }
    wgmma_commit();

    fence_proxy_async();
    __syncthreads();  // all of dS^T written

    // dQ tiles (64 query rows x 64 columns) += dS K over the CTA's BN keys.
    float dqa[DQ_TILES][32];
    const unsigned long long mnmajor = sw128_desc(base, 1024, 1024);
    wgmma_fence();
#pragma unroll
    for (int x = 0; x < DQ_TILES; ++x) {
      const int tile = wg + WG * x, rt = tile % QM, panel = tile / QM;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const unsigned a_off = L::DS_OFF + rt * BN * 128 + kk * 2048;
        const unsigned b_off = L::K_OFF + panel * BN * 128 + kk * 2048;
        WgmmaSS<T, 1, 1>::run(dqa[x], desc_at(mnmajor, a_off), desc_at(mnmajor, b_off),
                              kk > 0);
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
    pin_dkdv();
    pin(dqa);

#pragma unroll
    for (int x = 0; x < DQ_TILES; ++x) {
      const int tile = wg + WG * x, rt = tile % QM, panel = tile / QM;
      red_add_acc<D>(dq + row_base * D, dqa[x], m0 + rt * 64 + (warp % 4) * 16 + g, panel * 64,
                     Lq, scale);
    }
    __syncthreads();  // Q, dO and dS^T of this step are read; the next prefetch may reuse them
  }
  cp_async_wait<0>();

  // dK, dV of the query heads of one GQA group meet in their KV head's rows.
  const size_t obase = (size_t)(b * Hkv + hk) * Lk * D;
#pragma unroll
  for (int p = 0; p < NP; ++p) {
    red_add_acc<D>(dk + obase, dka[p], key_a, p * 64, Lk, scale);
    red_add_acc<D>(dv + obase, dva[p], key_a, p * 64, Lk, 1.f);
  }
}

}  // namespace ftpoc
