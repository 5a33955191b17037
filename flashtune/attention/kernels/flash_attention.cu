// FlashAttention-2 forward and backward (mma.sync, any NVIDIA GPU) for mx.fast.cuda_kernel.
//
// MLX generates each __global__ signature and pastes a one-line body that calls the
// templates below (see kernels/cuda.py). Tensor cores through mma.sync.m16n8k16
// (bf16/fp16 in, float32 accumulate); tiles reach registers through ldmatrix; K/V and
// Q/dO tiles are double-buffered in shared memory with cp.async. Row stride in shared
// memory is D + 8 elements: 16 bytes of padding make ldmatrix conflict-free.
//
// Fragment layouts of mma.m16n8k16 (lane = 4*g + t):
//   A (16x16): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B (16x8):  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C (16x8):  c0 c1 (g, 2t..2t+1), c2 c3 (g+8, 2t..2t+1)
// Two C tiles side by side are exactly one A tile, so probabilities never leave registers.
//
// SEG (packed rows): seg holds int32 document ids (B, L), Lq == Lk. A query sees only keys of
// its own document; a negative id is padding (its output is zero, lse +inf, no gradient). A
// tile pair whose id ranges miss (doc_range) is skipped, loads included.

// Appended to flash_common.cu (cp.async, ldmatrix and mma.sync helpers).

namespace ftpoc {

// Forward. Grid (ceil(Lq / BM), Hq, B), NW warps; each warp owns MT tiles of 16 query rows
// (BM = 16 * MT * NW), so that each K/V fragment read from shared memory feeds MT products.
// Writes out (B, Hq, Lq, D) and lse (B, Hq, Lq) in log2 units (+inf on empty rows).
template <typename T, int D, int NW, int MT, bool CAUSAL, bool SEG = false>
__device__ __forceinline__ void flash_fwd(const T* q, const T* k, const T* v, const float* params,
                                          int Hq, int Lq, int Hkv, int Lk, T* out, float* lse,
                                          const int* seg = nullptr) {
  constexpr int BM = 16 * MT * NW, BN = 64, S = D + 8, NT = 32 * NW;
  constexpr bool Q_IN_REGS = MT == 1;  // MT > 1 re-reads Q fragments to save registers
  extern __shared__ uint4 ftpoc_smem[];
  T* Qs = reinterpret_cast<T*>(ftpoc_smem);
  T* Ks = Qs + BM * S;  // [2][BN][S]
  T* Vs = Ks + 2 * BN * S;

  const float scale_log2 = params[0] * kLog2e;
  const int mb = gridDim.x - 1 - blockIdx.x;  // longest causal rows first
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int m0 = mb * BM;
  const int offset = Lk - Lq;
  const T* qg = q + (size_t)(b * Hq + h) * Lq * D;
  const T* kg = k + (size_t)(b * Hkv + hk) * Lk * D;
  const T* vg = v + (size_t)(b * Hkv + hk) * Lk * D;
  const int n_end = CAUSAL ? min(Lk, m0 + BM + offset) : Lk;
  const int n_blocks = n_end > 0 ? (n_end + BN - 1) / BN : 0;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const int wrow = warp * 16 * MT;  // this warp's first row within the block

  const int* sg = SEG ? seg + (size_t)b * Lk : nullptr;
  const int2 q_docs = SEG ? doc_range(sg, m0, BM, Lq) : make_int2(0, 0);
  auto next_block = [&](int j) {  // the next K/V tile from j that the query block can see
    if (SEG)
      while (j < n_blocks && !docs_meet(q_docs, doc_range(sg, j * BN, BN, Lk))) ++j;
    return j;
  };

  load_tile<T, BM, D, NT>(Qs, qg, m0, Lq);
  int j = next_block(0);
  if (j < n_blocks) {
    load_tile<T, BN, D, NT>(Ks, kg, j * BN, Lk);
    load_tile<T, BN, D, NT>(Vs, vg, j * BN, Lk);
  }
  cp_async_commit();

  float o[MT][D / 8][4];
  float m_a[MT], m_b[MT], l_a[MT], l_b[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    m_a[mt] = m_b[mt] = -pos_inf();
    l_a[mt] = l_b[mt] = 0.f;
  }
  unsigned qf[Q_IN_REGS ? D / 16 : 1][4];

  for (int it = 0; j < n_blocks; ++it) {  // it counts tiles done: it & 1 is the buffer
    const int j_next = next_block(j + 1);
    if (j_next < n_blocks) {
      load_tile<T, BN, D, NT>(Ks + ((it + 1) & 1) * BN * S, kg, j_next * BN, Lk);
      load_tile<T, BN, D, NT>(Vs + ((it + 1) & 1) * BN * S, vg, j_next * BN, Lk);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (Q_IN_REGS && it == 0) {
#pragma unroll
      for (int kk = 0; kk < (Q_IN_REGS ? D / 16 : 0); ++kk)
        ldsm_x4(qf[kk], smem_u32(Qs + (wrow + (lane & 7) + ((lane >> 3) & 1) * 8) * S +
                                 kk * 16 + (lane >> 4) * 8));
    }
    const T* Kc = Ks + (it & 1) * BN * S;
    const T* Vc = Vs + (it & 1) * BN * S;

    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      unsigned qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (Q_IN_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mt][e] = qf[Q_IN_REGS ? kk : 0][e];
        } else {
          ldsm_x4(qa[mt], smem_u32(Qs + (wrow + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S +
                                   kk * 16 + (lane >> 4) * 8));
        }
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        unsigned bf[4];
        ldsm_x4(bf, smem_u32(Kc + (np * 16 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 +
                             ((lane >> 3) & 1) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<T>::run(s[mt][2 * np], qa[mt], bf[0], bf[1]);
          Mma<T>::run(s[mt][2 * np + 1], qa[mt], bf[2], bf[3]);
        }
      }
    }

    const int n0 = j * BN;
    const bool need_mask = SEG || (n0 + BN > Lk) || (CAUSAL && n0 + BN - 1 > m0 + offset);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row_a = m0 + wrow + mt * 16 + g, row_b = row_a + 8;
      const int doc_a = SEG && row_a < Lq ? sg[row_a] : -1;
      const int doc_b = SEG && row_b < Lq ? sg[row_b] : -1;
      float mx_a = -pos_inf(), mx_b = -pos_inf();
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][nt][e] * scale_log2;
          if (need_mask) {
            int col = n0 + nt * 8 + 2 * t + (e & 1);
            int row = e < 2 ? row_a : row_b;
            bool hide = col >= Lk || (CAUSAL && col > row + offset);
            if (SEG) {
              const int doc = e < 2 ? doc_a : doc_b;
              hide = hide || doc < 0 || sg[col] != doc;
            }
            if (hide) x = -pos_inf();
          }
          s[mt][nt][e] = x;
        }
        mx_a = fmaxf(mx_a, fmaxf(s[mt][nt][0], s[mt][nt][1]));
        mx_b = fmaxf(mx_b, fmaxf(s[mt][nt][2], s[mt][nt][3]));
      }
      const float new_a = fmaxf(m_a[mt], quad_max(mx_a));
      const float new_b = fmaxf(m_b[mt], quad_max(mx_b));
      const float base_a = new_a == -pos_inf() ? 0.f : new_a;
      const float base_b = new_b == -pos_inf() ? 0.f : new_b;
      const float corr_a = exp2f(m_a[mt] - base_a), corr_b = exp2f(m_b[mt] - base_b);
      m_a[mt] = new_a;
      m_b[mt] = new_b;
      float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        s[mt][nt][0] = exp2f(s[mt][nt][0] - base_a);
        s[mt][nt][1] = exp2f(s[mt][nt][1] - base_a);
        s[mt][nt][2] = exp2f(s[mt][nt][2] - base_b);
        s[mt][nt][3] = exp2f(s[mt][nt][3] - base_b);
        sum_a += s[mt][nt][0] + s[mt][nt][1];
        sum_b += s[mt][nt][2] + s[mt][nt][3];
      }
      l_a[mt] = l_a[mt] * corr_a + sum_a;  // per-thread partial sums; quads summed at the end
      l_b[mt] = l_b[mt] * corr_b + sum_b;
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[mt][i][0] *= corr_a;
        o[mt][i][1] *= corr_a;
        o[mt][i][2] *= corr_b;
        o[mt][i][3] *= corr_b;
      }
    }

#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      unsigned a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = Mma<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = Mma<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = Mma<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = Mma<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        unsigned bf[4];
        ldsm_x4_t(bf, smem_u32(Vc + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S +
                               dp * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<T>::run(o[mt][2 * dp], a[mt], bf[0], bf[1]);
          Mma<T>::run(o[mt][2 * dp + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this buffer's twin
    j = j_next;
  }
  cp_async_wait<0>();

  T* og = out + (size_t)(b * Hq + h) * Lq * D;
  float* lg = lse + (size_t)(b * Hq + h) * Lq;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int row_a = m0 + wrow + mt * 16 + g, row_b = row_a + 8;
    const float la = quad_sum(l_a[mt]), lb = quad_sum(l_b[mt]);
    const float inv_a = la > 0.f ? 1.f / la : 0.f;
    const float inv_b = lb > 0.f ? 1.f / lb : 0.f;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      const int col = i * 8 + 2 * t;
      if (row_a < Lq)
        *reinterpret_cast<unsigned*>(og + (size_t)row_a * D + col) =
            Mma<T>::pack(o[mt][i][0] * inv_a, o[mt][i][1] * inv_a);
      if (row_b < Lq)
        *reinterpret_cast<unsigned*>(og + (size_t)row_b * D + col) =
            Mma<T>::pack(o[mt][i][2] * inv_b, o[mt][i][3] * inv_b);
    }
    if (t == 0) {
      if (row_a < Lq) lg[row_a] = la > 0.f ? m_a[mt] + log2f(la) : pos_inf();
      if (row_b < Lq) lg[row_b] = lb > 0.f ? m_b[mt] + log2f(lb) : pos_inf();
    }
  }
}

// Backward. Grid (ceil(Lk / BN), Hq / HPC, B), NW warps; each warp owns 16 keys of the
// CTA's BN = 16 * NW and keeps their dK, dV rows in registers while the CTA walks the
// query blocks (BM = BN rows) of HPC query heads. dQ is accumulated with float atomics
// into dq (B, Hq, Lq, D) float32 (zeroed by MLX); dk, dv are (B, Hq / HPC, Lk, D) float32.
// lse is in log2 units (from flash_fwd); delta = rowsum(dO * O), float32 (B, Hq, Lq).
template <typename T, int D, int NW, bool CAUSAL, bool SEG = false>
__device__ __forceinline__ void flash_bwd(const T* q, const T* k, const T* v, const T* dout,
                                          const float* lse, const float* delta,
                                          const float* params, int Hq, int Lq, int Hkv, int Lk,
                                          float* dq, float* dk, float* dv,
                                          const int* seg = nullptr) {
  constexpr int BN = 16 * NW, BM = BN, S = D + 8, SD = BM + 8, NT = 32 * NW;
  extern __shared__ uint4 ftpoc_smem[];
  T* Ks = reinterpret_cast<T*>(ftpoc_smem);
  T* Vs = Ks + BN * S;
  T* Qs = Vs + BN * S;       // [2][BM][S]
  T* Os = Qs + 2 * BM * S;   // dO, [2][BM][S]
  T* dSs = Os + 2 * BM * S;  // dS transposed: [BN][SD]
  float* Ls = reinterpret_cast<float*>(dSs + BN * SD);  // [2][BM]
  float* Es = Ls + 2 * BM;                               // delta, [2][BM]

  const float scale = params[0];
  const float scale_log2 = scale * kLog2e;
  const int nb = blockIdx.x, b = blockIdx.z;
  const int hpc = Hq / gridDim.y;  // query heads per CTA: 1, or the whole GQA group
  const int group = Hq / Hkv;
  const int n0 = nb * BN;
  const int offset = Lk - Lq;
  const int hk = (blockIdx.y * hpc) / group;
  const T* kg = k + (size_t)(b * Hkv + hk) * Lk * D;
  const T* vg = v + (size_t)(b * Hkv + hk) * Lk * D;
  const int q_first = CAUSAL ? max(0, n0 - offset) / BM : 0;
  const int nq = (Lq + BM - 1) / BM - q_first;
  const int total = hpc * nq;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;
  const int key_a = n0 + warp * 16 + g, key_b = key_a + 8;

  const int* sg = SEG ? seg + (size_t)b * Lk : nullptr;
  const int2 k_docs = SEG ? doc_range(sg, n0, BN, Lk) : make_int2(0, 0);
  const int kdoc_a = SEG && key_a < Lk ? sg[key_a] : -1;
  const int kdoc_b = SEG && key_b < Lk ? sg[key_b] : -1;
  auto next_item = [&](int it) {  // the next (head, query block) from it that sees these keys
    if (SEG)
      while (it < total && !docs_meet(k_docs, doc_range(sg, (q_first + it % nq) * BM, BM, Lq))) ++it;
    return it;
  };

  auto prefetch = [&](int it, int buf) {
    const int h = blockIdx.y * hpc + it / nq;
    const int m0 = (q_first + it % nq) * BM;
    const size_t base = (size_t)(b * Hq + h) * Lq;
    load_tile<T, BM, D, NT>(Qs + buf * BM * S, q + base * D, m0, Lq);
    load_tile<T, BM, D, NT>(Os + buf * BM * S, dout + base * D, m0, Lq);
    for (int r = threadIdx.x; r < BM; r += NT) {
      const bool valid = m0 + r < Lq;
      Ls[buf * BM + r] = valid ? lse[base + m0 + r] : pos_inf();
      Es[buf * BM + r] = valid ? delta[base + m0 + r] : 0.f;
    }
  };

  load_tile<T, BN, D, NT>(Ks, kg, n0, Lk);
  load_tile<T, BN, D, NT>(Vs, vg, n0, Lk);
  int it = next_item(0);
  if (it < total) prefetch(it, 0);
  cp_async_commit();

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[i][e] = dva[i][e] = 0.f;

  for (int step = 0; it < total; ++step) {  // step & 1 is the buffer
    const int it_next = next_item(it + 1);
    if (it_next < total) prefetch(it_next, (step + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int h = blockIdx.y * hpc + it / nq;
    const int m0 = (q_first + it % nq) * BM;
    const int buf = step & 1;
    const T* Qc = Qs + buf * BM * S;
    const T* Oc = Os + buf * BM * S;
    const float* Lc = Ls + buf * BM;
    const float* Ec = Es + buf * BM;

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys: (16, BM) each.
    float st[BM / 8][4], dpt[BM / 8][4];
#pragma unroll
    for (int i = 0; i < BM / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      unsigned ka[4], va[4];
      const int arow = (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S + kk * 16 +
                       (lane >> 4) * 8;
      ldsm_x4(ka, smem_u32(Ks + arow));
      ldsm_x4(va, smem_u32(Vs + arow));
#pragma unroll
      for (int np = 0; np < BM / 16; ++np) {
        const int brow =
            (np * 16 + (lane & 7) + (lane >> 4) * 8) * S + kk * 16 + ((lane >> 3) & 1) * 8;
        unsigned qb[4], ob[4];
        ldsm_x4(qb, smem_u32(Qc + brow));
        ldsm_x4(ob, smem_u32(Oc + brow));
        Mma<T>::run(st[2 * np], ka, qb[0], qb[1]);
        Mma<T>::run(st[2 * np + 1], ka, qb[2], qb[3]);
        Mma<T>::run(dpt[2 * np], va, ob[0], ob[1]);
        Mma<T>::run(dpt[2 * np + 1], va, ob[2], ob[3]);
      }
    }

    // P^T from the saved log-sum-exp, then dS^T = P^T * (dP^T - delta).
    const bool need_mask = SEG || (n0 + BN > Lk) || (CAUSAL && n0 + BN - 1 > m0 + offset);
#pragma unroll
    for (int nt = 0; nt < BM / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + 2 * t + (e & 1);
        float p = exp2f(st[nt][e] * scale_log2 - Lc[qc]);
        if (need_mask) {
          const int key = e < 2 ? key_a : key_b;
          bool hide = key >= Lk || (CAUSAL && key > m0 + qc + offset);
          if (SEG) {
            const int kdoc = e < 2 ? kdoc_a : kdoc_b;
            hide = hide || kdoc < 0 || m0 + qc >= Lq || sg[m0 + qc] != kdoc;
          }
          if (hide) p = 0.f;
        }
        st[nt][e] = p;
        dpt[nt][e] = p * (dpt[nt][e] - Ec[qc]);
      }
    }

    // dV += P^T dO and dK += dS^T Q (scale applied once at the end).
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      unsigned pa[4] = {Mma<T>::pack(st[2 * kk][0], st[2 * kk][1]),
                        Mma<T>::pack(st[2 * kk][2], st[2 * kk][3]),
                        Mma<T>::pack(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                        Mma<T>::pack(st[2 * kk + 1][2], st[2 * kk + 1][3])};
      unsigned da[4] = {Mma<T>::pack(dpt[2 * kk][0], dpt[2 * kk][1]),
                        Mma<T>::pack(dpt[2 * kk][2], dpt[2 * kk][3]),
                        Mma<T>::pack(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                        Mma<T>::pack(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
      // Keep dS^T (bf16/fp16) for the dQ product below.
      unsigned* d0 = reinterpret_cast<unsigned*>(dSs + (warp * 16 + g) * SD + kk * 16 + 2 * t);
      unsigned* d1 = reinterpret_cast<unsigned*>(dSs + (warp * 16 + g + 8) * SD + kk * 16 + 2 * t);
      d0[0] = da[0];
      d1[0] = da[1];
      d0[4] = da[2];
      d1[4] = da[3];
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        const int brow =
            (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S + dp * 16 + (lane >> 4) * 8;
        unsigned ob[4], qb[4];
        ldsm_x4_t(ob, smem_u32(Oc + brow));
        ldsm_x4_t(qb, smem_u32(Qc + brow));
        Mma<T>::run(dva[2 * dp], pa, ob[0], ob[1]);
        Mma<T>::run(dva[2 * dp + 1], pa, ob[2], ob[3]);
        Mma<T>::run(dka[2 * dp], da, qb[0], qb[1]);
        Mma<T>::run(dka[2 * dp + 1], da, qb[2], qb[3]);
      }
    }
    __syncthreads();  // dS^T complete

    // dQ rows [m0 + 16 warp, +16) += dS K * scale, 16 columns at a time, then atomics.
    unsigned sa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      ldsm_x4_t(sa[kk], smem_u32(dSs + (kk * 16 + (lane & 7) + (lane >> 4) * 8) * SD +
                                 warp * 16 + ((lane >> 3) & 1) * 8));
    const int qrow_a = m0 + warp * 16 + g, qrow_b = qrow_a + 8;
    float* dqg = dq + ((size_t)(b * Hq + h) * Lq) * D;
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        unsigned kb[4];
        ldsm_x4_t(kb, smem_u32(Ks + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S +
                               dp * 16 + (lane >> 4) * 8));
        Mma<T>::run(acc[0], sa[kk], kb[0], kb[1]);
        Mma<T>::run(acc[1], sa[kk], kb[2], kb[3]);
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        // Gather 4 consecutive columns per thread (lanes t and t^1 swap halves), then one
        // 16-byte reduction: even t takes row g, odd t row g + 8.
        const bool odd = t & 1;
        const float send0 = odd ? acc[half][0] : acc[half][2];
        const float send1 = odd ? acc[half][1] : acc[half][3];
        const float recv0 = __shfl_xor_sync(0xffffffffu, send0, 1);
        const float recv1 = __shfl_xor_sync(0xffffffffu, send1, 1);
        const int row = odd ? qrow_b : qrow_a;
        const int col = dp * 16 + half * 8 + 2 * (t & 2);
        if (row < Lq) {
          float4 val = odd ? make_float4(recv0, recv1, acc[half][2], acc[half][3])
                           : make_float4(acc[half][0], acc[half][1], recv0, recv1);
          red_add_v4(dqg + (size_t)row * D + col, val.x * scale, val.y * scale, val.z * scale,
                     val.w * scale);
        }
      }
    }
    it = it_next;
  }
  cp_async_wait<0>();

  const size_t obase = ((size_t)(b * gridDim.y + blockIdx.y) * Lk) * D;
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    const int col = i * 8 + 2 * t;
    if (key_a < Lk) {
      *reinterpret_cast<float2*>(dk + obase + (size_t)key_a * D + col) =
          make_float2(dka[i][0] * scale, dka[i][1] * scale);
      *reinterpret_cast<float2*>(dv + obase + (size_t)key_a * D + col) =
          make_float2(dva[i][0], dva[i][1]);
    }
    if (key_b < Lk) {
      *reinterpret_cast<float2*>(dk + obase + (size_t)key_b * D + col) =
          make_float2(dka[i][2] * scale, dka[i][3] * scale);
      *reinterpret_cast<float2*>(dv + obase + (size_t)key_b * D + col) =
          make_float2(dva[i][2], dva[i][3]);
    }
  }
}

}  // namespace ftpoc
