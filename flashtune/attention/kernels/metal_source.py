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

# Forward and dQ: one simdgroup per query row; the row's place, its K/V head, and the
# threadgroup's K/V tiles.
_QUERY_ROW = """
    const int h = threadgroup_position_in_grid.y;
    const int hk = h / group;
    const int m0 = threadgroup_position_in_grid.x * ROWS;
    const int row = m0 + int(sg);
    const ulong qbase = (ulong)(b * Hq + h) * Lq;
    const ulong kbase = (ulong)(b * Hkv + hk) * Lk;
    @DOCS_OF_BLOCK row Lq m0@
    threadgroup float Ks[TILE * D];
    threadgroup float Vs[TILE * D];
"""
# Forward and dQ: opens the walk over the K/V tiles the block's rows may see, each copied into
# Ks and Vs between barriers (the kernel's own lines follow inside the loop and close it).
_KV_TILES = """    const int n_end = CAUSAL ? min(Lk, m0 + ROWS + offset) : Lk;
    for (int n0 = 0; n0 < n_end; n0 += TILE) {
        @SKIP_TILE n0 Lk@
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int idx = tid; idx < TILE * D; idx += 32 * ROWS) {
            const int r = idx / D, c = idx % D;
            const bool ok = n0 + r < Lk;
            Ks[idx] = ok ? float(k[(kbase + n0 + r) * D + c]) : 0.0f;
            Vs[idx] = ok ? float(v[(kbase + n0 + r) * D + c]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
"""

_FORWARD = (
    _COMMON
    + _QUERY_ROW
    + """    float qr[PER], acc[PER];
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        qr[i] = (row < Lq && d < D) ? float(q[(qbase + row) * D + d]) : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
"""
    + _KV_TILES
    + """        float s[TILE];
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
            @MASK x j@
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
)

_DQ = (
    _COMMON
    + _QUERY_ROW
    + """    float qr[PER], dor[PER], acc[PER];
    for (int i = 0; i < PER; ++i) {
        const int d = lane + 32 * i;
        const bool ok = row < Lq && d < D;
        qr[i] = ok ? float(q[(qbase + row) * D + d]) : 0.0f;
        dor[i] = ok ? float(dout[(qbase + row) * D + d]) : 0.0f;
        acc[i] = 0.0f;
    }
    const float row_lse = row < Lq ? lse[qbase + row] : INFINITY;
    const float row_delta = row < Lq ? delta[qbase + row] : 0.0f;
"""
    + _KV_TILES
    + """        for (int j = 0; j < TILE; ++j) {
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
            @MASK p j@
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
)

_DKDV = (
    _COMMON
    + """
    const int hk = threadgroup_position_in_grid.y;
    const int n0 = threadgroup_position_in_grid.x * ROWS;
    const int key = n0 + int(sg);
    const ulong kbase = (ulong)(b * Hkv + hk) * Lk;
    @DOCS_OF_BLOCK key Lk n0@
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
            @SKIP_TILE m0 Lq@
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
                @MASK p i@
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
)

# Per-document attention ("segments", (B, L) int32 ids, Lq == Lk): the lines that replace the
# @...@ markers above. Without segments the marker lines are dropped and each body is exactly
# the plain kernel. A row (query, or key in the dK/dV pass) sees only its own document; a
# negative id is padding and sees, and is seen by, nothing.
_DOCS_OF_BLOCK = """
const ulong sbase = (ulong)b * Lk;
const int my_doc = {mine} < {length} ? segments[sbase + {mine}] : -1;
int docs_lo = 0x7fffffff, docs_hi = -1;  // the block's non-negative document ids
for (int r = {block}; r < min({block} + ROWS, {length}); ++r) {{
    const int id = segments[sbase + r];
    if (id >= 0) {{
        docs_lo = min(docs_lo, id);
        docs_hi = max(docs_hi, id);
    }}
}}
"""
# Every thread reads the same ids, so the whole threadgroup skips a tile together (it holds
# barriers); a tile whose range of ids misses the block's range cannot hold a visible key.
_SKIP_TILE = """
int tile_doc[TILE];
int tile_lo = 0x7fffffff, tile_hi = -1;
for (int j = 0; j < TILE; ++j) {{
    tile_doc[j] = {start} + j < {length} ? segments[sbase + {start} + j] : -1;
    if (tile_doc[j] >= 0) {{
        tile_lo = min(tile_lo, tile_doc[j]);
        tile_hi = max(tile_hi, tile_doc[j]);
    }}
}}
if (tile_hi < docs_lo || tile_lo > docs_hi) continue;
"""
_MASK = """
if (my_doc < 0 || tile_doc[{index}] != my_doc) {value} = {masked};
"""
_MASKED = {"x": "-INFINITY", "p": "0.0f"}


def _segment_lines(marker: str) -> str:
    """The lines for one marker, e.g. ``@SKIP_TILE n0 Lk@`` (its arguments name the variables)."""
    name, *args = marker.strip("@").split()
    if name == "DOCS_OF_BLOCK":
        mine, length, block = args
        return _DOCS_OF_BLOCK.format(mine=mine, length=length, block=block)
    if name == "SKIP_TILE":
        start, length = args
        return _SKIP_TILE.format(start=start, length=length)
    value, index = args
    return _MASK.format(value=value, index=index, masked=_MASKED[value])


def _body(template: str, segments: bool) -> str:
    """The kernel body with segment lines in place of the markers (indented as the marker),
    or with the marker lines dropped."""
    lines = []
    for line in template.split("\n"):
        marker = line.strip()
        if not marker.startswith("@"):
            lines.append(line)
        elif segments:
            indent = line[: len(line) - len(line.lstrip())]
            lines += [indent + code for code in _segment_lines(marker).strip("\n").split("\n")]
    return "\n".join(lines)


FORWARD, FORWARD_SEGMENTS = _body(_FORWARD, False), _body(_FORWARD, True)
DQ, DQ_SEGMENTS = _body(_DQ, False), _body(_DQ, True)
DKDV, DKDV_SEGMENTS = _body(_DKDV, False), _body(_DKDV, True)
