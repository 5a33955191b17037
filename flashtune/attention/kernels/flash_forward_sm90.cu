// FlashAttention forward for Hopper (sm_90a): warpgroup MMAs (wgmma) instead of mma.sync.
//
// Appended to flash_common.cu (it uses its helpers). Each warpgroup (4 warps) of a CTA
// owns 64 query rows; K and V tiles of BN keys, shared by the CTA's warpgroups, are
// multi-buffered in shared memory with cp.async in the 128-byte-swizzled layout that wgmma
// reads through matrix descriptors. Q is held in registers as wgmma's A operand, so
// S = Q K^T reads only K from shared memory; P = softmax(S) stays in registers as the A
// operand of O += P V. The loop is software-pipelined: the softmax of block j runs while the
// tensor cores still compute P(j-1) V(j-1).
//
// wgmma's accumulator layout for m64nNk16 gives warp w of a warpgroup rows 16w..16w+15
// in exactly mma.sync's C-fragment layout, one 8-column tile per 4 registers, and its A
// register layout per warp is mma.sync's A fragment: the softmax code of flash_fwd carries
// over unchanged.
//
// Shared-memory layout of a K or V tile (BN rows of D elements): D / 64 panels of 64 columns
// (128 bytes per row); inside a panel row r's 16-byte chunk c sits at chunk c ^ (r % 8)
// (the 128-byte swizzle), 8 rows make a 1024-byte atom. K is read K-major (S = Q K^T:
// reduction over D, contiguous); V is read MN-major (O = P V: reduction over keys, rows).

namespace ftpoc {

// Matrix descriptor: start address, leading and stride byte offsets (all >> 4), 128B swizzle.
__device__ __forceinline__ unsigned long long sw128_desc(unsigned addr, unsigned lbo,
                                                         unsigned sbo) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) |
         ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
         ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}
// The descriptor of addr + offset, from addr's: the start address is the low field, and
// shared memory (< 256 KB) never carries out of it. One add instead of rebuilding the fields.
__device__ __forceinline__ unsigned long long desc_at(unsigned long long desc, unsigned offset) {
  return desc + (offset >> 4);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N committed wgmma groups are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Writes by cp.async (generic proxy) become visible to wgmma (async proxy).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// wgmma reads its register operands and writes its accumulators asynchronously, but the
// compiler sees them consumed and produced at issue, and may move plain arithmetic on them
// across the (register-less) fence and wait instructions. Passing them through an empty
// volatile asm before wgmma.fence (their last writes land before the fence) and after
// wgmma.wait_group (they stay live, and unread, until the MMAs are done) pins them.
template <int N>
__device__ __forceinline__ void pin(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int M, int N>
__device__ __forceinline__ void pin(float (&r)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i) pin(r[i]);
}
template <int N>
__device__ __forceinline__ void pin(unsigned (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(r[i][e])::"memory");
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

#define FTPOC_D32(d)                                                                         \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),       \
      "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), \
      "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),          \
      "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),          \
      "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define FTPOC_WGMMA_64x64x16(TYPE)                                                            \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"                                              \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                 \
  " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"    \
  "%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, %37;\n}\n"

#define FTPOC_WGMMA_64x128x16(TYPE)                                                         \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"                                              \
  "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                              \
  " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                        \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                        \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"                       \
  " {%64,%65,%66,%67}, %68, p, 1, 1, %69;\n}\n"

// d += A (64 x 16, registers) * B (16 x N, descriptor), d this thread's part of a 64 x N
// accumulator: N = 64, 32 floats; N = 128, two 64-column halves back to back (the register
// order of one 64 x 128 accumulator), one instruction that reads A once. TRANS_B 0: B is
// K-major, 1: MN-major. accumulate 0 overwrites d. The PTX type is part of the instruction's
// text, so each element type's specialization issues it through one macro per width.
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
#define FTPOC_WGMMA_ISSUE(TYPE)                                                        \
  asm volatile(FTPOC_WGMMA_64x64x16(TYPE)                                              \
               : FTPOC_D32(d)                                                          \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(TRANS_B), \
                 "r"(accumulate))
#define FTPOC_WGMMA128_ISSUE(TYPE)                                                      \
  asm volatile(FTPOC_WGMMA_64x128x16(TYPE)                                              \
               : FTPOC_D32(d[0]), FTPOC_D32(d[1])                                       \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(TRANS_B), \
                 "r"(accumulate))
#else
#define FTPOC_WGMMA_ISSUE(TYPE) __trap()
#define FTPOC_WGMMA128_ISSUE(TYPE) __trap()
#endif
template <typename T, int TRANS_B>
struct Wgmma;

template <int TRANS_B>
struct Wgmma<__nv_bfloat16, TRANS_B> {
  static __device__ __forceinline__ void run(float (&d)[32], const unsigned (&a)[4],
                                             unsigned long long desc_b, int accumulate) {
    FTPOC_WGMMA_ISSUE("bf16");
  }
  static __device__ __forceinline__ void run(float (&d)[2][32], const unsigned (&a)[4],
                                             unsigned long long desc_b, int accumulate) {
    FTPOC_WGMMA128_ISSUE("bf16");
  }
};

template <int TRANS_B>
struct Wgmma<__half, TRANS_B> {
  static __device__ __forceinline__ void run(float (&d)[32], const unsigned (&a)[4],
                                             unsigned long long desc_b, int accumulate) {
    FTPOC_WGMMA_ISSUE("f16");
  }
  static __device__ __forceinline__ void run(float (&d)[2][32], const unsigned (&a)[4],
                                             unsigned long long desc_b, int accumulate) {
    FTPOC_WGMMA128_ISSUE("f16");
  }
};

// d (N pieces of 64 columns) += A (16 columns, registers) * B (16 x 64N at addr; piece p at
// addr + p * piece), one m64n64k16 per piece; two pieces go as one m64n128k16. lbo: the
// stride of 64-column panels of an MN-major B (the 128-column instruction reads it;
// docs/kernels.md, "64-key tiles at D=64", on why the 64-column one gets it too).
template <typename T, int TRANS_B, int N>
struct WgmmaRow {
  static __device__ __forceinline__ void run(float (&d)[N][32], const unsigned (&a)[4],
                                             unsigned addr, unsigned lbo, unsigned piece,
                                             int accumulate) {
#pragma unroll
    for (int p = 0; p < N; ++p)
      Wgmma<T, TRANS_B>::run(d[p], a, sw128_desc(addr + p * piece, lbo, 1024), accumulate);
  }
};
template <typename T, int TRANS_B>
struct WgmmaRow<T, TRANS_B, 2> {
  static __device__ __forceinline__ void run(float (&d)[2][32], const unsigned (&a)[4],
                                             unsigned addr, unsigned lbo, unsigned,
                                             int accumulate) {
    Wgmma<T, TRANS_B>::run(d, a, sw128_desc(addr, lbo, 1024), accumulate);
  }
};

// An accumulator (64 x 64 per warpgroup, rows 16 * (warp % 4) + g and + 8) as wgmma A
// fragments of 16 columns each: columns 16kk..16kk+15 are C tiles 2kk and 2kk + 1.
template <typename T, int N>
__device__ __forceinline__ void pack_a(unsigned (&a)[N * 4][4], const float (&c)[N][32]) {
#pragma unroll
  for (int kk = 0; kk < N * 4; ++kk) {
    const float* c0 = &c[kk / 4][(kk % 4) * 8];
    a[kk][0] = Mma<T>::pack(c0[0], c0[1]);
    a[kk][1] = Mma<T>::pack(c0[2], c0[3]);
    a[kk][2] = Mma<T>::pack(c0[4], c0[5]);
    a[kk][3] = Mma<T>::pack(c0[6], c0[7]);
  }
}

// Rows [row0, row0 + ROWS) of a row-major (L, D) matrix into the swizzled panel layout,
// zero-filling rows at or past L. dst is 1024-byte aligned. Thread i copies 16-byte chunk
// i % CPR of rows i / CPR + n * (NT / CPR): the same column, panel and swizzle phase for every
// n, so only a row offset changes between its copies (a fixed trip count, no per-copy
// division or swizzle arithmetic). A tile inside the matrix takes a path without the
// per-row bounds checks: each copy is then one instruction with constant offsets (the
// forward's loop issued ~140 instructions for its 16 copies per thread before; 4-11 %
// faster on an H100; docs/kernels.md).
template <typename T, int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile_sw128(unsigned dst, const T* src, int row0, int L) {
  constexpr int CPR = D / 8;      // 16-byte chunks per row
  constexpr int STEP = NT / CPR;  // rows between one thread's copies
  static_assert(NT % CPR == 0 && STEP % 8 == 0 && ROWS % STEP == 0, "whole swizzle atoms");
  const int ch = threadIdx.x % CPR, r0 = threadIdx.x / CPR;
  const unsigned to = dst + (ch / 8) * ROWS * 128 + r0 * 128 + (((ch % 8) ^ (r0 & 7)) << 4);
  const T* from = src + (size_t)(row0 + r0) * D + ch * 8;
  if (row0 + ROWS <= L) {
#pragma unroll
    for (int n = 0; n < ROWS / STEP; ++n)
      cp_async16(to + n * STEP * 128, from + n * STEP * D, true);
    return;
  }
#pragma unroll
  for (int n = 0; n < ROWS / STEP; ++n) {
    const bool valid = row0 + r0 + n * STEP < L;
    cp_async16(to + n * STEP * 128, valid ? from + (size_t)n * STEP * D : src, valid);
  }
}

// Forward, grid (G, 1, 1), 128 * WG threads: WG warpgroups of 64 query rows each (BM = 64 * WG)
// share the K/V tiles in 3 buffers (the block being multiplied, the one before it still in
// P V, the one loading). Same outputs as flash_fwd: out (B, Hq, Lq, D) and lse (B, Hq, Lq) in
// log2 units (+inf on empty rows).
//
// Tiles (BM query rows of one head) are numbered longest causal row block first over all
// heads. With G = the number of tiles every CTA runs one, and the hardware starts them in
// index order: every head's last row block goes first and the last wave is short blocks
// (measured on an H100: docs/kernels.md). A persistent grid (G = the CTAs that fit on the GPU at once)
// walks the tiles in rounds of G, every other round backwards, so that each CTA gets long and
// short tiles in turn, and copies the next tile's Q and first K/V block while its current
// tile computes its last block, instead of after the tile has finished (with one CTA per SM
// at D=128 nothing else covers that wait).
template <typename T, int D, int BN, int WG, int STAGES, bool CAUSAL>
__device__ __forceinline__ void flash_fwd_sm90(const T* q, const T* k, const T* v,
                                               const float* params, int B, int Hq, int Lq,
                                               int Hkv, int Lk, T* out, float* lse) {
  static_assert(D % 64 == 0 && BN % 64 == 0, "64-column panels, 64-key wgmma tiles");
  static_assert(STAGES == 3, "blocks j - 1 and j are read while j + 1 loads (one block ahead)");
  constexpr int BM = 64 * WG, NT = 128 * WG, SQ = D + 8, NB = BN / 64, NP = D / 64;
  constexpr int TILE_BYTES = BN * D * 2;
  extern __shared__ uint4 ftpoc_smem[];
  // K/V tiles need 1024-byte alignment (swizzle atoms); the launcher adds 1 KB of slack.
  const unsigned raw = smem_u32(ftpoc_smem);
  const unsigned kv_base = (raw + 1023u) & ~1023u;  // [K 0..STAGES-1, V 0..STAGES-1]
  T* Qs = reinterpret_cast<T*>(reinterpret_cast<char*>(ftpoc_smem) + (kv_base - raw) +
                               2 * STAGES * TILE_BYTES);

  const float scale_log2 = params[0] * kLog2e;
  const int heads = B * Hq, m_blocks = (Lq + BM - 1) / BM, n_tiles = m_blocks * heads;
  const int offset = Lk - Lq;
  // A tile: its first query row, its row of (B * Hq) heads in q and out, its K/V head's row
  // of (B * Hkv), and its K/V blocks (-1: this CTA has no tile in that round).
  struct Tile {
    int m0, bh, bkv, n_blocks;
  };
  auto tile = [&](int round) {
    Tile tl{0, 0, 0, -1};
    const int G = gridDim.x, c = blockIdx.x;
    const int t = round * G + ((round & 1) ? G - 1 - c : c);
    if (t < n_tiles) {
      tl.m0 = (m_blocks - 1 - t / heads) * BM;
      tl.bh = t % heads;
      tl.bkv = tl.bh / Hq * Hkv + tl.bh % Hq / (Hq / Hkv);
      const int n_end = CAUSAL ? min(Lk, tl.m0 + BM + offset) : Lk;
      tl.n_blocks = n_end > 0 ? (n_end + BN - 1) / BN : 0;
    }
    return tl;
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;  // warp / 4: warpgroup
  const int g = lane >> 2, t = lane & 3;

  // Block i of the CTA's stream (its tiles' K/V blocks in round order) goes to buffer
  // i % STAGES; one cp.async group per block, a tile's first block carries its Q.
  auto k_tile = [&](int block) { return kv_base + (block % STAGES) * TILE_BYTES; };
  auto v_tile = [&](int block) { return kv_base + (STAGES + block % STAGES) * TILE_BYTES; };
  auto load_first = [&](const Tile& tl, int buf) {
    load_tile<T, BM, D, NT>(Qs, q + (size_t)tl.bh * Lq * D, tl.m0, Lq);
    load_tile_sw128<T, BN, D, NT>(k_tile(buf), k + (size_t)tl.bkv * Lk * D, 0, Lk);
    load_tile_sw128<T, BN, D, NT>(v_tile(buf), v + (size_t)tl.bkv * Lk * D, 0, Lk);
  };

  float o[NP][32];
  float m_a, m_b, l_a, l_b;
  unsigned qf[D / 16][4];
  unsigned pa[BN / 16][4];  // P of the block whose O += P V is issued next
  int m0 = 0, row_a = 0, row_b = 0;

  // S = Q K^T over the keys in buffer `buf`, D / 16 steps of 16 along the head dim, each over
  // all BN keys (issued only).
  auto issue_scores = [&](int buf, float (&s)[NB][32]) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      WgmmaRow<T, 0, NB>::run(s, qf[kk], k_tile(buf) + (kk / 4) * BN * 128 + (kk % 4) * 32, 16,
                              64 * 128, kk > 0);
    wgmma_commit();
  };
  // O += P V(buf): V read MN-major, 16 keys (two 8-row atoms, 2048 bytes) per step, each over
  // all D columns (panels BN * 128 bytes apart) (issued only).
  auto issue_pv = [&](int buf) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      WgmmaRow<T, 1, NP>::run(o, pa[kk], v_tile(buf) + kk * 2048, BN * 128, BN * 128, 1);
    wgmma_commit();
  };
  // Online softmax of block j (of the tile) in log2 units, rows row_a (e = 0, 1) and row_b
  // (e = 2, 3): s becomes P, l is updated, and corr_a / corr_b are what O of earlier blocks
  // must be multiplied by.
  auto softmax = [&](float (&s)[NB][32], int j, float& corr_a, float& corr_b) {
    const int n0 = j * BN;
    const bool need_mask = (n0 + BN > Lk) || (CAUSAL && n0 + BN - 1 > m0 + offset);
    float mx_a = -pos_inf(), mx_b = -pos_inf();
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        float x = s[nb][i] * scale_log2;
        if (need_mask) {
          const int col = n0 + nb * 64 + (i / 4) * 8 + 2 * t + (i & 1);
          const int row = (i & 2) ? row_b : row_a;
          if (col >= Lk || (CAUSAL && col > row + offset)) x = -pos_inf();
        }
        s[nb][i] = x;
        if (i & 2) mx_b = fmaxf(mx_b, x);
        else mx_a = fmaxf(mx_a, x);
      }
    const float new_a = fmaxf(m_a, quad_max(mx_a)), new_b = fmaxf(m_b, quad_max(mx_b));
    const float base_a = new_a == -pos_inf() ? 0.f : new_a;
    const float base_b = new_b == -pos_inf() ? 0.f : new_b;
    corr_a = fast_exp2(m_a - base_a);
    corr_b = fast_exp2(m_b - base_b);
    m_a = new_a;
    m_b = new_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const float p = fast_exp2(s[nb][i] - ((i & 2) ? base_b : base_a));
        s[nb][i] = p;
        if (i & 2) sum_b += p;
        else sum_a += p;
      }
    l_a = l_a * corr_a + sum_a;  // per-thread partial sums; quads summed at the end
    l_b = l_b * corr_b + sum_b;
  };

  // O *= corr per row, landed before the wgmma.fence that the next O += P V needs.
  auto rescale_o = [&](float corr_a, float corr_b) {
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
      for (int i = 0; i < 32; ++i) o[p][i] *= (i & 2) ? corr_b : corr_a;
#pragma unroll
    for (int p = 0; p < NP; ++p) pin(o[p]);
    wgmma_fence();
  };

  int blk = 0;            // stream index of the block being multiplied
  bool have_first = false;  // the tile's Q and first block were issued under the tile before
  for (int round = 0;; ++round) {
    const Tile cur = tile(round);
    if (cur.n_blocks < 0) break;
    m0 = cur.m0;
    row_a = m0 + warp * 16 + g;
    row_b = row_a + 8;
    const T* kg = k + (size_t)cur.bkv * Lk * D;
    const T* vg = v + (size_t)cur.bkv * Lk * D;
    // Issues block j + 1 of this tile or, past its last, the next tile's Q and first block:
    // one cp.async group either way (empty at the end), so that the waits count groups.
    auto load_after = [&](int j) {
      if (j + 1 < cur.n_blocks) {
        load_tile_sw128<T, BN, D, NT>(k_tile(blk + 1), kg, (j + 1) * BN, Lk);
        load_tile_sw128<T, BN, D, NT>(v_tile(blk + 1), vg, (j + 1) * BN, Lk);
      } else {
        const Tile next = tile(round + 1);
        if (next.n_blocks > 0) load_first(next, blk + 1);
        have_first = next.n_blocks > 0;
      }
      cp_async_commit();
    };
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
      for (int i = 0; i < 32; ++i) o[p][i] = 0.f;
    m_a = -pos_inf(), m_b = -pos_inf(), l_a = 0.f, l_b = 0.f;
    // Software pipeline: iteration j issues S(j) and then O += P(j-1) V(j-1), and runs the
    // softmax of block j while the tensor cores still work on P(j-1) V(j-1). One CTA barrier
    // per block: past it, block j has landed for every thread's copies and every warpgroup is
    // done with the block two before it, whose buffers then take block j + 1 while the tensor
    // cores work (with a second barrier at the end of the block, before the copies, the
    // forward was 2-6 % slower on an H100: docs/kernels.md).
    if (cur.n_blocks > 0) {
      if (!have_first) {
        load_first(cur, blk);
        cp_async_commit();
      }
      cp_async_wait<0>();  // Q and block 0 landed
      fence_proxy_async();
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldsm_x4(qf[kk], smem_u32(Qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SQ +
                                 kk * 16 + (lane >> 4) * 8));
      float s[NB][32];
      pin(qf);
      wgmma_fence();
      issue_scores(blk, s);
      // A one-block tile copies the next tile's Q now: every thread must have read this one.
      if (cur.n_blocks == 1) __syncthreads();
      load_after(0);
      wgmma_wait<0>();
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) pin(s[nb]);
      pin(qf);
      float corr_a, corr_b;
      softmax(s, 0, corr_a, corr_b);  // O is still zero: nothing to rescale
      pack_a<T, NB>(pa, s);
      ++blk;
    }
    // O *= corr of the block before, applied while the tensor cores compute S (FA3's order):
    // the rescale of block j waits for P(j-1) V(j-1) and lands before P(j) V(j) is issued.
    float corr_a = 1.f, corr_b = 1.f;
    for (int j = 1; j < cur.n_blocks; ++j, ++blk) {
      cp_async_wait<0>();  // block j landed
      fence_proxy_async();
      __syncthreads();
      float s[NB][32];
      pin(qf);
      pin(pa);
      wgmma_fence();
      issue_scores(blk, s);
      // The copies go while S runs: issued after P V, they waited for its wgmmas to find a
      // slot (only once S was nearly done) and delayed the softmax (Nsight Compute on an H100;
      // docs/kernels.md).
      load_after(j);
      rescale_o(corr_a, corr_b);
      issue_pv(blk - 1);
      wgmma_wait<1>();  // S(j) is done; P(j-1) V(j-1) may still run
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) pin(s[nb]);
      softmax(s, j, corr_a, corr_b);
      wgmma_wait<0>();
#pragma unroll
      for (int p = 0; p < NP; ++p) pin(o[p]);
      pin(pa);
      pin(qf);
      // Packed only now: ptxas serializes every wgmma when registers that feed one are
      // written while another is in flight (warning C7513), even into an array of their own.
      pack_a<T, NB>(pa, s);
    }
    if (cur.n_blocks > 0) {
      pin(pa);
      rescale_o(corr_a, corr_b);
      issue_pv(blk - 1);
      wgmma_wait<0>();
#pragma unroll
      for (int p = 0; p < NP; ++p) pin(o[p]);
      pin(pa);
    }

    T* og = out + (size_t)cur.bh * Lq * D;
    float* lg = lse + (size_t)cur.bh * Lq;
    const float la = quad_sum(l_a), lb = quad_sum(l_b);
    const float inv_a = la > 0.f ? 1.f / la : 0.f;
    const float inv_b = lb > 0.f ? 1.f / lb : 0.f;
    if (TILE_BYTES >= BM * D * 2) {
      // Through shared memory: the warp's 16 rows go to the K buffer of the block after next
      // (no warpgroup reads it any more, and its next copy waits for the next CTA barrier)
      // with stmatrix, 16-byte chunks XOR-swizzled by row, then out in whole 16-byte chunks,
      // consecutive lanes on consecutive chunks of a row.
      constexpr int CPR = D / 8;
      const unsigned stage = k_tile(blk + 1) + warp * 16 * D * 2;
#pragma unroll
      for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < 8; i += 2) {
          const int r = (lane & 7) + ((lane >> 3) & 1) * 8, c = p * 8 + i + (lane >> 4);
          const unsigned addr = stage + r * D * 2 + ((c ^ (r & 7)) << 4);
          asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n"
                       ::"r"(addr), "r"(Mma<T>::pack(o[p][4 * i] * inv_a, o[p][4 * i + 1] * inv_a)),
                       "r"(Mma<T>::pack(o[p][4 * i + 2] * inv_b, o[p][4 * i + 3] * inv_b)),
                       "r"(Mma<T>::pack(o[p][4 * i + 4] * inv_a, o[p][4 * i + 5] * inv_a)),
                       "r"(Mma<T>::pack(o[p][4 * i + 6] * inv_b, o[p][4 * i + 7] * inv_b))
                       : "memory");
        }
      __syncwarp();
#pragma unroll
      for (int n = 0; n < 16 * CPR / 32; ++n) {
        const int idx = lane + 32 * n, r = idx / CPR, c = idx % CPR;
        const int row = m0 + warp * 16 + r;
        uint4 chunk;
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(chunk.x), "=r"(chunk.y), "=r"(chunk.z), "=r"(chunk.w)
                     : "r"(stage + r * D * 2 + ((c ^ (r & 7)) << 4)) : "memory");
        if (row < Lq) *reinterpret_cast<uint4*>(og + (size_t)row * D + c * 8) = chunk;
      }
    } else {
#pragma unroll
      for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int col = p * 64 + i * 8 + 2 * t;
          if (row_a < Lq)
            *reinterpret_cast<unsigned*>(og + (size_t)row_a * D + col) =
                Mma<T>::pack(o[p][4 * i] * inv_a, o[p][4 * i + 1] * inv_a);
          if (row_b < Lq)
            *reinterpret_cast<unsigned*>(og + (size_t)row_b * D + col) =
                Mma<T>::pack(o[p][4 * i + 2] * inv_b, o[p][4 * i + 3] * inv_b);
        }
    }
    if (t == 0) {
      if (row_a < Lq) lg[row_a] = la > 0.f ? m_a + log2f(la) : pos_inf();
      if (row_b < Lq) lg[row_b] = lb > 0.f ? m_b + log2f(lb) : pos_inf();
    }
  }
  cp_async_wait<0>();
}

}  // namespace ftpoc
