"""Packed sequences (``segments``) in every registered implementation, against float64."""

import zlib
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401
from flashtune import attention
from tests.attention import reference
from tests.attention.test_contract import DTYPES, TOLERANCE, check

Row = tuple[tuple[int, ...], int]  # (document lengths, trailing padding slots)


@dataclass(frozen=True)
class PackedCase:
    """Rows of documents packed into L slots. Together the cases cover documents of length 1,
    documents that cross practical's CPU tiles (256 and 512), rows ending in padding, a row
    that is all padding, GQA ratios 1, 3, 8, and causal, no, bool and additive masks."""

    rows: tuple[Row, ...]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mask: str | None  # None, "causal", "bool", "additive"

    @property
    def L(self) -> int:
        return sum(self.rows[0][0]) + self.rows[0][1]

    def __str__(self):
        rows = "_".join("-".join(map(str, docs)) + f"+{pad}" for docs, pad in self.rows)
        return f"L{self.L}-{rows}-H{self.n_heads}/{self.n_kv_heads}-D{self.head_dim}-{self.mask}"


CASES = [
    PackedCase((((100, 1, 180), 19), ((250, 40, 10), 0)), 3, 1, 64, "causal"),
    PackedCase((((200, 1, 330, 60), 9),), 8, 1, 32, "causal"),  # 201..530 crosses 256 and 512
    PackedCase((((64, 1, 60), 4), ((), 129)), 4, 4, 32, None),  # the second row: all padding
    PackedCase((((30, 1, 30), 4), ((65,), 0)), 6, 2, 80, "bool"),
    PackedCase((((1, 1, 60, 60), 5),), 4, 2, 64, "additive"),
]


def segment_ids(rows) -> mx.array:
    """int32 (B, L): documents numbered from 0 in each row, then -1 for each padding slot."""
    ids = [[d for d, n in enumerate(docs) for _ in range(n)] + [-1] * pad for docs, pad in rows]
    return mx.array(ids, dtype=mx.int32)


def make_inputs(case: PackedCase, dtype, seed: int):
    """q, k, v, d_out in ``dtype``, the mask (with fully masked rows possible) and the ids."""
    rng = np.random.default_rng(seed)
    B, L, D = len(case.rows), case.L, case.head_dim
    q, k, v, d_out = (
        mx.array(rng.normal(size=(B, h, L, D)).astype(np.float32)).astype(dtype)
        for h in (case.n_heads, case.n_kv_heads, case.n_kv_heads, case.n_heads)
    )
    mask = case.mask
    if mask in ("bool", "additive"):
        keep = rng.random((B, 1, L, L)) < 0.7
        mask = (
            mx.array(keep)
            if mask == "bool"
            else mx.array(np.where(keep, rng.normal(size=keep.shape), -np.inf).astype(np.float32))
        )
    return q, k, v, d_out, mask, segment_ids(case.rows)


def assert_padding_is_zero(ids: mx.array, named):
    """Padding slots: output rows and dq rows zero; as keys never seen, so dk and dv zero."""
    padding = np.array(ids < 0)[:, None, :, None]
    for name, x in named.items():
        leaked = np.abs(np.where(padding, reference.to64(x), 0)).max()
        assert leaked == 0, f"{name} is {leaked:.3g} (not 0) on padding slots"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("name", attention.names())
def test_packed_forward_and_gradients_match_float64(name, case, dtype):
    fn = attention.get(name)
    seed = zlib.crc32(f"{name}{case}{dtype}".encode())
    q, k, v, d_out, mask, ids = make_inputs(case, DTYPES[dtype], seed)
    scale = case.head_dim**-0.5
    expected = reference.attention(q, k, v, scale, mask, d_out, segments=ids)

    def loss(q, k, v):
        out = fn(q, k, v, scale=scale, mask=mask, segments=ids)
        return mx.sum(out.astype(mx.float32) * d_out.astype(mx.float32))

    out = fn(q, k, v, scale=scale, mask=mask, segments=ids)
    grads = mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert out.dtype == q.dtype and out.shape == q.shape
    named = dict(zip(("out", "dq", "dk", "dv"), (out, *grads)))
    for (what, got), want in zip(named.items(), expected):
        assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
        check(what, got, want, TOLERANCE[dtype][0 if what == "out" else 1])
    assert_padding_is_zero(ids, named)


@pytest.mark.parametrize("mask_kind", ["causal", "bool", None])
def test_practical_small_tiles_with_segments(mask_kind):
    """Tiles of 16 x 24 against documents of 1, 30, 9, 41 and 16 slots: boundaries fall inside
    tiles, on their edges, and documents span several tiles."""
    case = PackedCase((((1, 30, 9, 41), 19), ((16, 84), 0)), 6, 2, 32, mask_kind)
    q, k, v, d_out, mask, ids = make_inputs(case, mx.float32, seed=5)
    fn = attention.get("practical")
    expected = reference.attention(q, k, v, 0.3, mask, d_out, segments=ids)

    def run(q, k, v):
        return fn(q, k, v, scale=0.3, mask=mask, segments=ids, block_q=16, block_k=24)

    grads = mx.grad(lambda *a: mx.sum(run(*a) * d_out), argnums=(0, 1, 2))(q, k, v)
    for what, got, want in zip(("out", "dq", "dk", "dv"), (run(q, k, v), *grads), expected):
        check(what, got, want, TOLERANCE["float32"][0])


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
@pytest.mark.parametrize("name", attention.names())
def test_without_segments_nothing_changes(name, mask_kind):
    """segments=None is the path without segments, bit for bit: the registered function with
    and without the keyword, and its core called directly (which never sees the keyword)."""
    case = PackedCase((((70, 59), 0),), 6, 2, 32, mask_kind)
    q, k, v, d_out, mask, _ = make_inputs(case, mx.bfloat16, seed=11)
    fn = attention.get(name)
    calls = {
        "without": lambda q, k, v: fn(q, k, v, scale=0.2, mask=mask),
        "None": lambda q, k, v: fn(q, k, v, scale=0.2, mask=mask, segments=None),
        "core": lambda q, k, v: fn.__wrapped__(q, k, v, scale=0.2, mask=mask),
    }
    results = {}
    for label, call in calls.items():

        def loss(q, k, v, call=call):
            return mx.sum(call(q, k, v).astype(mx.float32) * d_out)

        results[label] = (call(q, k, v), *mx.grad(loss, argnums=(0, 1, 2))(q, k, v))
    for label in ("None", "core"):
        for what, got, want in zip(("out", "dq", "dk", "dv"), results[label], results["without"]):
            assert mx.array_equal(got, want), f"{what} with {label} differs from without segments"


@pytest.mark.parametrize("name", attention.names())
@pytest.mark.parametrize(
    "q_len, k_len, segments, message",
    [
        (6, 6, mx.zeros((2, 6), dtype=mx.int64), "int32"),
        (6, 6, mx.zeros((2, 6)), "int32"),
        (6, 6, mx.zeros((6,), dtype=mx.int32), r"\(B, L\) = \(2, 6\); got \(6,\)"),
        (6, 6, mx.zeros((1, 6), dtype=mx.int32), r"\(B, L\) = \(2, 6\); got \(1, 6\)"),
        (6, 6, mx.zeros((2, 7), dtype=mx.int32), r"\(B, L\) = \(2, 6\); got \(2, 7\)"),
        (5, 6, mx.zeros((2, 6), dtype=mx.int32), r"Lq == Lk.*q \(2, 4, 5, 8\)"),
        (6, 6, [[0] * 6] * 2, "mx.array"),
    ],
    ids=["int64", "float32", "rank-1", "batch", "length", "Lq!=Lk", "list"],
)
def test_bad_segments_raise_value_error_naming_them(name, q_len, k_len, segments, message):
    q = mx.zeros((2, 4, q_len, 8))
    k = v = mx.zeros((2, 2, k_len, 8))
    with pytest.raises(ValueError, match=message):
        attention.get(name)(q, k, v, scale=1.0, mask="causal", segments=segments)


@pytest.mark.parametrize("mask_kind", ["causal", "bool"])
def test_demo_cuda_padding_path_with_segments(mask_kind, monkeypatch):
    """On CUDA demo pads L 129 to 256 and passes the document mask additive in q's dtype;
    MLX's SDPA runs on any backend, so that path is checked here with the backend reported
    as CUDA: padded keys hidden, padded rows harmless, padding slots zero."""
    from flashtune.attention import demo as module

    monkeypatch.setattr(module.env, "backend", lambda: "cuda")
    case = PackedCase((((64, 1, 60), 4), ((129,), 0)), 4, 2, 64, mask_kind)
    q, k, v, d_out, mask, ids = make_inputs(case, mx.float16, seed=13)
    assert module.padded_length(q, k) == 256
    expected = reference.attention(q, k, v, 0.125, mask, d_out, segments=ids)

    def run(q, k, v):
        return module.demo(q, k, v, scale=0.125, mask=mask, segments=ids)

    def loss(q, k, v):
        return mx.sum(run(q, k, v).astype(mx.float32) * d_out.astype(mx.float32))

    grads = mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
    named = dict(zip(("out", "dq", "dk", "dv"), (run(q, k, v), *grads)))
    for (what, got), want in zip(named.items(), expected):
        check(what, got, want, TOLERANCE["float16"][0])
    assert_padding_is_zero(ids, named)
