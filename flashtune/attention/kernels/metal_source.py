"""Metal Shading Language bodies of poc's flash-attention kernels, as mx.fast.metal_kernel takes them.

MLX writes the signature around each body: the inputs and outputs named in metal.py, template
constants T (element type), HEAD_DIM, CAUSAL, ROWS (simdgroups per threadgroup) and TILE
(keys or queries per threadgroup-memory tile), and the thread attributes the body names.
"""

_COMMON = """
    constexpr int D = HEAD_DIM;
    constexpr int PER = (D + 31) / 32;  // head-dim elements per lane
    const int Hq = q_shape[1], Lq = q_shape[2], Hkv = k_shape[1], Lk = k_shape[2];
    const int group = Hq / Hkv;
    const int offset = Lk - Lq;  // causal: row i sees key j <= i + offset
    const uint lane = thread_index_in_simdgroup;
    const uint sg = simdgroup_index_in_threadgroup;
    const uint tid = thread_index_in_threadgroup;
    const int b = threadgroup_position_in_grid.z;
    const float scale = params[0];
    const float scale_log2 = scale * 1.4426950408889634f;
"""

FORWARD = _COMMON + """
    const int h = threadgroup_position_in_grid.y;
    const int hk = h / group;
    const int m0 = threadgroup_position_in_grid.x * ROWS;
    const int row = m0 + int(sg);
    const ulong qbase = (ulong)(b * Hq + h) * Lq;
    const ulong kbase = (ulong)(b * Hkv + hk) * Lk;
    threadgroup float Ks[TILE * D];
    threadgroup float Vs[TILE * D];
    float qr[PER], acc[PER];
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        qr[i] = (row < Lq && d < D) ? float(q[(qbase + row) * D + d]) : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int n_end = CAUSAL ? min(Lk, m0 + ROWS + offset) : Lk;
    for (int n0 = 0; n0 < n_end; n0 += TILE) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int idx = tid; idx < TILE * D; idx += 32 * ROWS) {
            const int r = idx / D, c = idx % D;
            const bool ok = n0 + r < Lk;
            Ks[idx] = ok ? float(k[(kbase + n0 + r) * D + c]) : 0.0f;
            Vs[idx] = ok ? float(v[(kbase + n0 + r) * D + c]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float s[TILE];
        float tile_max = -INFINITY;
        for (int j = 0; j < TILE; ++j) {
            float part = 0.0f;
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) part += qr[i] * Ks[j * D + d];
            }
            float x = simd_sum(part) * scale_log2;
            const int col = n0 + j;
            if (col >= Lk || (CAUSAL && col > row + offset)) x = -INFINITY;
            s[j] = x;
            tile_max = max(tile_max, x);
        }
        const float m_new = max(m, tile_max);
        const float base = m_new == -INFINITY ? 0.0f : m_new;
        const float corr = exp2(m - base);
        l *= corr;
        for (int i = 0; i < PER; ++i) acc[i] *= corr;
        for (int j = 0; j < TILE; ++j) {
            const float p = exp2(s[j] - base);
            l += p;
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) acc[i] += p * Vs[j * D + d];
            }
        }
        m = m_new;
    }
    if (row < Lq) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            if (d < D) out[(qbase + row) * D + d] = static_cast<T>(acc[i] * inv);
        }
        if (lane == 0) lse[qbase + row] = l > 0.0f ? m + log2(l) : INFINITY;
    }
"""

DQ = _COMMON + """
    const int h = threadgroup_position_in_grid.y;
    const int hk = h / group;
    const int m0 = threadgroup_position_in_grid.x * ROWS;
    const int row = m0 + int(sg);
    const ulong qbase = (ulong)(b * Hq + h) * Lq;
    const ulong kbase = (ulong)(b * Hkv + hk) * Lk;
    threadgroup float Ks[TILE * D];
    threadgroup float Vs[TILE * D];
    float qr[PER], dor[PER], acc[PER];
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        const bool ok = row < Lq && d < D;
        qr[i] = ok ? float(q[(qbase + row) * D + d]) : 0.0f;
        dor[i] = ok ? float(dout[(qbase + row) * D + d]) : 0.0f;
        acc[i] = 0.0f;
    }
    const float row_lse = row < Lq ? lse[qbase + row] : INFINITY;
    const float row_delta = row < Lq ? delta[qbase + row] : 0.0f;
    const int n_end = CAUSAL ? min(Lk, m0 + ROWS + offset) : Lk;
    for (int n0 = 0; n0 < n_end; n0 += TILE) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int idx = tid; idx < TILE * D; idx += 32 * ROWS) {
            const int r = idx / D, c = idx % D;
            const bool ok = n0 + r < Lk;
            Ks[idx] = ok ? float(k[(kbase + n0 + r) * D + c]) : 0.0f;
            Vs[idx] = ok ? float(v[(kbase + n0 + r) * D + c]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int j = 0; j < TILE; ++j) {
            float sp = 0.0f, dpp = 0.0f;
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) {
                    sp += qr[i] * Ks[j * D + d];
                    dpp += dor[i] * Vs[j * D + d];
                }
            }
            const float sc = simd_sum(sp), dp = simd_sum(dpp);
            const int col = n0 + j;
            float p = exp2(sc * scale_log2 - row_lse);
            if (col >= Lk || (CAUSAL && col > row + offset)) p = 0.0f;
            const float ds = p * (dp - row_delta);
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) acc[i] += ds * Ks[j * D + d];
            }
        }
    }
    if (row < Lq) {
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            if (d < D) dq[(qbase + row) * D + d] = static_cast<T>(acc[i] * scale);
        }
    }
"""

DKDV = _COMMON + """
    const int hk = threadgroup_position_in_grid.y;
    const int n0 = threadgroup_position_in_grid.x * ROWS;
    const int key = n0 + int(sg);
    const ulong kbase = (ulong)(b * Hkv + hk) * Lk;
    threadgroup float Qs[TILE * D];
    threadgroup float Os[TILE * D];
    threadgroup float Ls[TILE];
    threadgroup float Es[TILE];
    float kr[PER], vr[PER], dka[PER], dva[PER];
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        const bool ok = key < Lk && d < D;
        kr[i] = ok ? float(k[(kbase + key) * D + d]) : 0.0f;
        vr[i] = ok ? float(v[(kbase + key) * D + d]) : 0.0f;
        dka[i] = 0.0f;
        dva[i] = 0.0f;
    }
    const int q_first = CAUSAL ? max(0, n0 - offset) : 0;
    for (int hh = 0; hh < group; ++hh) {
        const ulong qbase = (ulong)(b * Hq + hk * group + hh) * Lq;
        for (int m0 = q_first; m0 < Lq; m0 += TILE) {
            threadgroup_barrier(mem_flags::mem_threadgroup);
            for (int idx = tid; idx < TILE * D; idx += 32 * ROWS) {
                const int r = idx / D, c = idx % D;
                const bool ok = m0 + r < Lq;
                Qs[idx] = ok ? float(q[(qbase + m0 + r) * D + c]) : 0.0f;
                Os[idx] = ok ? float(dout[(qbase + m0 + r) * D + c]) : 0.0f;
            }
            for (int r = tid; r < TILE; r += 32 * ROWS) {
                const bool ok = m0 + r < Lq;
                Ls[r] = ok ? lse[qbase + m0 + r] : INFINITY;
                Es[r] = ok ? delta[qbase + m0 + r] : 0.0f;
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
            for (int i = 0; i < TILE; ++i) {
                float sp = 0.0f, dpp = 0.0f;
                for (int e = 0; e < PER; ++e) {
                    const int d = lane + 32 * e;
                    if (d < D) {
                        sp += kr[e] * Qs[i * D + d];
                        dpp += vr[e] * Os[i * D + d];
                    }
                }
                const float sc = simd_sum(sp), dp = simd_sum(dpp);
                float p = exp2(sc * scale_log2 - Ls[i]);
                if (key >= Lk || (CAUSAL && key > m0 + i + offset)) p = 0.0f;
                const float ds = p * (dp - Es[i]);
                for (int e = 0; e < PER; ++e) {
                    const int d = lane + 32 * e;
                    if (d < D) {
                        dva[e] += p * Os[i * D + d];
                        dka[e] += ds * Qs[i * D + d];
                    }
                }
            }
        }
    }
    if (key < Lk) {
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            if (d < D) {
                dk[(kbase + key) * D + d] = static_cast<T>(dka[i] * scale);
                dv[(kbase + key) * D + d] = static_cast<T>(dva[i]);
            }
        }
    }
"""
