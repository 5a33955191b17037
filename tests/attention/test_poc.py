"""CPU tests of poc's routing and of its self-check/fallback logic (kernels simulated)."""

import logging
import re
import types

import mlx.core as mx
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune import log
from flashtune.attention import get
from flashtune.attention import poc as poc_module
from flashtune.attention.kernels import cuda as cuda_kernels
from flashtune.attention.kernels import metal as metal_kernels
from flashtune.attention.practical import _backward, _forward

poc = get("poc")
practical = get("practical")


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))


@pytest.fixture
def said(monkeypatch):
    """Fresh say-once memory, fresh verdicts, and the flashtune log captured."""
    monkeypatch.setattr(log, "_said", set())
    monkeypatch.setattr(poc_module, "_verdicts", {})
    records = Records()
    log.logger.addHandler(records)
    yield records
    log.logger.removeHandler(records)


def fake_kernels(mode="right", calls=None, segments=True):
    """A kernels module built from practical's internals; 'raise' and 'wrong' simulate failures,
    'ignore-segments' and 'padding-leak' kernels that get packed rows wrong. ``segments`` is
    the module's SEGMENTS, or None for a module without that attribute."""

    def forward(q, k, v, scale, causal, segments=None):
        if calls is not None:
            calls.append(q.shape)
        if mode == "raise":
            raise RuntimeError("simulated compile failure: no such intrinsic")
        used = None if mode == "ignore-segments" else segments
        out, lse = _forward(q, k, v, None, scale=scale, causal=causal, block_q=32, block_k=32, segments=used)
        if mode == "padding-leak" and segments is not None:
            out = out + 1e-6 * (segments < 0)[:, None, :, None].astype(out.dtype)
        return (out * 1.1 if mode == "wrong" else out), lse

    def backward(q, k, v, out, lse, d_out, scale, causal, segments=None):
        used = None if mode == "ignore-segments" else segments
        return _backward(
            q, k, v, None, out, lse, d_out, scale=scale, causal=causal, block_q=32, block_k=32, segments=used
        )

    module = types.SimpleNamespace(
        forward=forward,
        backward=backward,
        supports=metal_kernels.supports,
        DTYPES=metal_kernels.DTYPES,
        HEAD_DIMS=metal_kernels.HEAD_DIMS,
    )
    if segments is not None:
        module.SEGMENTS = segments
    return module


def inputs(dtype=mx.bfloat16, L_q=9, L_k=13, D=32, seed=0):
    keys = mx.random.split(mx.random.key(seed), 3)
    q = mx.random.normal((1, 4, L_q, D), key=keys[0]).astype(dtype)
    k = mx.random.normal((1, 2, L_k, D), key=keys[1]).astype(dtype)
    v = mx.random.normal((1, 2, L_k, D), key=keys[2]).astype(dtype)
    return q, k, v


def max_diff(a, b):
    return mx.max(mx.abs(a.astype(mx.float32) - b.astype(mx.float32))).item()


def as_metal(monkeypatch, kernels):
    monkeypatch.setattr(poc_module, "backend", lambda: "metal")
    monkeypatch.setitem(poc_module.KERNELS, "metal", kernels)


def test_cpu_runs_practical_and_says_so_once(said):
    q, k, v = inputs(mx.float32)
    for _ in range(2):
        out = poc(q, k, v, scale=0.2, mask="causal")
    assert poc.last_path == "practical"
    assert max_diff(out, practical(q, k, v, scale=0.2, mask="causal")) == 0
    warnings = [m for level, m in said.messages if level == logging.WARNING]
    assert len(warnings) == 1 and "no flash-attention kernel backend" in warnings[0]


def test_metal_compile_failure_warns_once_and_uses_practical(monkeypatch, said):
    calls = []
    as_metal(monkeypatch, fake_kernels("raise", calls))
    q, k, v = inputs()
    for _ in range(3):
        out = poc(q, k, v, scale=0.2, mask="causal")
    assert poc.last_path == "practical"
    assert len(calls) == 1  # the self-check ran once, not per call
    assert max_diff(out, practical(q, k, v, scale=0.2, mask="causal")) == 0
    warnings = [m for level, m in said.messages if level == logging.WARNING]
    assert len(warnings) == 1
    assert "self-check" in warnings[0] and "simulated compile failure" in warnings[0]


def test_metal_wrong_result_is_never_used(monkeypatch, said):
    as_metal(monkeypatch, fake_kernels("wrong"))
    q, k, v = inputs()
    out = poc(q, k, v, scale=0.2)
    assert poc.last_path == "practical"
    assert max_diff(out, practical(q, k, v, scale=0.2)) == 0
    (warning,) = [m for level, m in said.messages if level == logging.WARNING]
    assert "out relative error" in warning


def test_metal_verified_kernels_run_and_train(monkeypatch, said):
    calls = []
    as_metal(monkeypatch, fake_kernels("right", calls))
    q, k, v = inputs()

    def loss(fn, q, k, v):
        return fn(q, k, v, scale=0.2, mask="causal").astype(mx.float32).sum()

    grads = mx.grad(lambda *a: loss(poc, *a), argnums=(0, 1, 2))(q, k, v)
    assert poc.last_path == "metal"
    want = mx.grad(lambda *a: loss(practical, *a), argnums=(0, 1, 2))(q, k, v)
    for got, ref in zip(grads, want):
        assert max_diff(got, ref) < 0.05
    assert not [m for level, m in said.messages if level >= logging.WARNING]
    n_checks = len(calls)
    poc(q, k, v, scale=0.2, mask="causal")
    assert len(calls) == n_checks + 1  # verified variant: no second self-check


def test_each_variant_is_checked_separately(monkeypatch, said):
    calls = []
    as_metal(monkeypatch, fake_kernels("right", calls))
    q, k, v = inputs()
    poc(q, k, v, scale=0.2, mask="causal")
    poc(q, k, v, scale=0.2)  # non-causal: another variant, another check
    poc(q.astype(mx.float16), k.astype(mx.float16), v.astype(mx.float16), scale=0.2)
    assert set(poc_module._verdicts) == {
        ("metal", mx.bfloat16, 32, True),
        ("metal", mx.bfloat16, 32, False),
        ("metal", mx.float16, 32, False),
    }
    assert all(reason is None for reason in poc_module._verdicts.values())


@pytest.mark.parametrize("kind", ["metal", "cuda"])
def test_unsupported_cases_route_visibly(monkeypatch, said, kind):
    fallback = "practical"
    monkeypatch.setattr(poc_module, "backend", lambda: kind)
    monkeypatch.setitem(poc_module.KERNELS, kind, fake_kernels("raise"))
    q, k, v = inputs(mx.float32)
    out = poc(q, k, v, scale=0.2)  # float32: not a kernel dtype
    assert poc.last_path == fallback
    assert max_diff(out, get(fallback)(q, k, v, scale=0.2)) < 1e-5
    q, k, v = inputs()
    mask = mx.random.uniform(shape=(9, 13), key=mx.random.key(1)) > 0.3
    poc(q, k, v, scale=0.2, mask=mask)
    assert poc.last_path == fallback
    infos = [m for level, m in said.messages if level == logging.INFO]
    assert any("array masks" in m for m in infos) and any("float32" in m for m in infos)
    assert not poc_module._verdicts  # no kernel was asked for, so nothing was checked


def test_causal_rows_beyond_keys_are_zero(monkeypatch, said):
    as_metal(monkeypatch, fake_kernels("right"))
    q, k, v = inputs(L_q=13, L_k=9)
    out = poc(q, k, v, scale=0.2, mask="causal")
    assert poc.last_path == "metal"
    assert max_diff(out[:, :, :4], mx.zeros_like(out[:, :, :4])) == 0


def test_kernel_tables_agree():
    for kernels in (cuda_kernels, metal_kernels):
        assert set(kernels.DTYPES) == {mx.bfloat16, mx.float16}
        assert {64, 128} <= set(kernels.HEAD_DIMS)
        assert all(d % 16 == 0 for d in kernels.HEAD_DIMS)
    for D in cuda_kernels.HEAD_DIMS:  # within the H100's 227 KB of shared memory per block
        assert cuda_kernels.fwd_smem_bytes(D, *cuda_kernels.FWD_CONFIG[D]) <= 227 * 1024
        assert cuda_kernels.bwd_smem_bytes(D, cuda_kernels.BWD_WARPS[D]) <= 227 * 1024


def test_self_check_runs_inside_compiled_training_step(monkeypatch, said):
    """mlx-lm compiles its step: the first-use check must work under mx.compile and mx.grad."""
    as_metal(monkeypatch, fake_kernels("right"))
    q, k, v = inputs()

    @mx.compile
    def step(q, k, v):
        return mx.grad(lambda q: poc(q, k, v, scale=0.2, mask="causal").astype(mx.float32).sum())(q)

    got = step(q, k, v)
    assert poc.last_path == "metal"
    want = mx.grad(lambda q: practical(q, k, v, scale=0.2, mask="causal").astype(mx.float32).sum())(q)
    assert max_diff(got, want) < 0.05


def test_wgmma_forward_refuses_tile_sizes_that_were_not_checked():
    """Before any kernel runs (so on any device): keys per tile outside FWD_SM90_BLOCK_N, or a
    K/V buffer count other than the pipeline's 3."""
    q = mx.zeros((1, 1, 8, 64), dtype=mx.bfloat16)
    message = "192 keys per tile at head dim 64 is not one of the checked tile sizes (64, 128)"
    with pytest.raises(ValueError, match=re.escape(message)):
        cuda_kernels.forward(q, q, q, 0.125, True, config=(192, 1, 3), kernel="sm90")
    for stages in (2, 4):
        with pytest.raises(ValueError, match=f"{stages} K/V buffers; the pipeline has 3"):
            cuda_kernels.forward(q, q, q, 0.125, True, config=(128, 1, stages), kernel="sm90")
    assert (64, 1, 3) in cuda_kernels.sm90_launches(64)
    assert all(stages == 3 for D in (64, 128) for _, _, stages in cuda_kernels.sm90_launches(D))


def test_persistent_grid_is_what_fits_on_the_gpu(monkeypatch):
    """The wgmma forward's default grid: one CTA of two warpgroups or two of one per SM (all
    launches use over 128 registers per thread), fewer when shared memory is short; without
    an SM count (no driver) one CTA per tile."""
    monkeypatch.setattr(cuda_kernels, "sm_count", lambda: 132)
    assert cuda_kernels.resident_sm90_ctas(128, 128, 2, 3) == 132
    assert cuda_kernels.resident_sm90_ctas(64, 128, 1, 3) == 264
    assert cuda_kernels.resident_sm90_ctas(128, 128, 1, 3) == 132  # 210 KB of shared memory
    monkeypatch.setattr(cuda_kernels, "sm_count", lambda: None)
    assert cuda_kernels.resident_sm90_ctas(64, 128, 1, 3) is None


@pytest.mark.parametrize("D, config", [(64, (2, 1)), (128, (1, 3)), (96, None)], ids=str)
def test_wgmma_backward_refuses_launches_it_has_no_kernel_for(D, config):
    """Before any kernel runs (so on any device): a (warpgroups, query row tiles) that does
    not split dQ's tiles evenly or fit shared memory, or a head dim without a wgmma kernel."""
    q = mx.zeros((1, 2, 8, D), dtype=mx.bfloat16)
    lse = mx.zeros((1, 2, 8), dtype=mx.float32)
    valid = re.escape(f"head dim {D}; valid: {cuda_kernels.bwd_sm90_launches(D)}")
    with pytest.raises(ValueError, match=valid):
        cuda_kernels.backward(q, q, q, q, lse, q, 0.125, True, kernel="sm90", config=config)
    assert cuda_kernels.bwd_sm90_launches(64) == [(1, 1), (1, 2), (2, 2)]
    assert cuda_kernels.bwd_sm90_launches(128) == [(1, 1), (1, 2), (2, 1), (2, 2)]


# Packed sequences (segments) ------------------------------------------------------------------


def packed_ids(L=13):
    """Two rows: documents of 4, 1 and 5 slots then padding; one document then padding."""
    return mx.array([[0] * 4 + [1] + [2] * 5 + [-1] * (L - 10), [7] * (L - 2) + [-1] * 2], dtype=mx.int32)


def packed_inputs(dtype=mx.bfloat16, L=13):
    keys = mx.random.split(mx.random.key(4), 3)
    q = mx.random.normal((2, 4, L, 32), key=keys[0]).astype(dtype)
    k = mx.random.normal((2, 2, L, 32), key=keys[1]).astype(dtype)
    v = mx.random.normal((2, 2, L, 32), key=keys[2]).astype(dtype)
    return q, k, v, packed_ids(L)


def test_self_check_problem_is_packed_as_documented():
    rows = [list(r) for r in poc_module.CHECK_SEGMENTS]
    assert all(len(r) == poc_module.CHECK_SHAPE["L_q"] for r in rows) and len(rows) > 1
    assert 1 in [rows[0].count(d) for d in set(rows[0]) if d >= 0]  # a document of length 1
    assert all(r[-1] < 0 for r in rows) and len({d for d in rows[0] if d >= 0}) >= 3


def test_packed_rows_run_verified_kernels_and_train(monkeypatch, said):
    as_metal(monkeypatch, fake_kernels("right"))
    q, k, v, ids = packed_inputs()

    @mx.compile
    def step(q, k, v, ids):
        def loss(q):
            return poc(q, k, v, scale=0.2, mask="causal", segments=ids).astype(mx.float32).sum()

        return mx.grad(loss)(q)

    got = step(q, k, v, ids)
    assert poc.last_path == "metal"
    want = mx.grad(lambda q: practical(q, k, v, scale=0.2, mask="causal", segments=ids).astype(mx.float32).sum())(q)
    assert max_diff(got, want) < 0.05
    other = packed_ids()[::-1]  # new ids, same compiled step: they are an input, not a constant
    want = mx.grad(lambda q: practical(q, k, v, scale=0.2, mask="causal", segments=other).astype(mx.float32).sum())(q)
    assert max_diff(step(q, k, v, other), want) < 0.05
    assert ("metal", mx.bfloat16, 32, True, "segments") in poc_module._verdicts
    assert not [m for level, m in said.messages if level >= logging.WARNING]


@pytest.mark.parametrize("declared", [None, False], ids=["no SEGMENTS", "SEGMENTS False"])
def test_kernels_without_segments_send_packed_rows_to_practical(monkeypatch, said, declared):
    as_metal(monkeypatch, fake_kernels("right", segments=declared))
    q, k, v, ids = packed_inputs()
    for _ in range(2):
        out = poc(q, k, v, scale=0.2, mask="causal", segments=ids)
    assert poc.last_path == "practical"
    assert max_diff(out, practical(q, k, v, scale=0.2, mask="causal", segments=ids)) == 0
    (warning,) = [m for level, m in said.messages if level == logging.WARNING]
    assert "metal kernels take no segments" in warning
    poc(q, k, v, scale=0.2, mask="causal")  # unpacked rows still run the kernels
    assert poc.last_path == "metal"


@pytest.mark.parametrize(
    "mode, reason", [("ignore-segments", "relative error"), ("padding-leak", "not zero on padding slots")]
)
def test_packed_kernels_that_fail_their_check_are_never_used(monkeypatch, said, mode, reason):
    as_metal(monkeypatch, fake_kernels(mode))
    q, k, v, ids = packed_inputs()
    out = poc(q, k, v, scale=0.2, segments=ids)
    assert poc.last_path == "practical"
    assert max_diff(out, practical(q, k, v, scale=0.2, segments=ids)) == 0
    (warning,) = [m for level, m in said.messages if level == logging.WARNING]
    assert "segments self-check" in warning and reason in warning
    poc(q, k, v, scale=0.2)  # the unpacked variant is checked on its own, and passes
    assert poc.last_path == "metal"


def test_cuda_kernels_check_segments_before_launching():
    assert cuda_kernels.SEGMENTS is True
    q = mx.zeros((1, 2, 8, 64), dtype=mx.bfloat16)
    with pytest.raises(ValueError, match=r"shape \(B, L\).*got segments \(1, 9\)"):
        cuda_kernels.forward(q, q, q, 0.125, True, segments=mx.zeros((1, 9), dtype=mx.int32))
    with pytest.raises(ValueError, match="integer document ids; got mlx.core.float32"):
        cuda_kernels.backward(q, q, q, q, mx.zeros((1, 2, 8)), q, 0.125, True, segments=mx.zeros((1, 8)))
