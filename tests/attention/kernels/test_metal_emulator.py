"""The Metal emulator itself, on small kernels written for the purpose: it computes what Metal
computes, and stops, naming the kernel and the rule, where a kernel breaks one of Metal's rules."""

import mlx.core as mx
import numpy as np
import pytest

import flashtune  # noqa: F401  (loads the CPU BLAS before mlx)
from flashtune.attention.kernels import metal
from flashtune.attention.kernels import metal_emulator as emulator
from flashtune.attention.kernels.metal_emulator import source

N = 64  # threads in the one-threadgroup kernels below


def launch(body, inputs, outputs, grid=(N, 1, 1), threadgroup=(N, 1, 1), name="probe"):
    """A Launch of `body` with named inputs {name: array} and outputs {name: (shape, dtype)}."""
    kernel = metal.Kernel(name, tuple(inputs), tuple(outputs), body)
    return metal.Launch(
        kernel,
        tuple(inputs.values()),
        (),
        grid,
        threadgroup,
        tuple(s for s, _ in outputs.values()),
        tuple(d for _, d in outputs.values()),
    )


def ramp(n=N):
    return mx.arange(n, dtype=mx.float32)


def test_16_bit_stores_round_to_nearest_even():
    """Every float -> half / bfloat conversion rounds to nearest, ties to even, like the GPU;
    overflow gives infinity and tiny values become subnormals."""
    tricky = [
        1 + 2**-11,
        1 + 3 * 2**-11,
        1 + 2**-8,
        1 + 3 * 2**-8,
        65504,
        65519.99,
        65520,
        2**-25,
        3 * 2**-25,
        2**-14 - 2**-25,
        -0.0,
        float("inf"),
        1e-45,
        -(1 + 2**-8),
    ]
    x = np.concatenate([tricky, np.random.default_rng(0).normal(size=N - len(tricky)) * 300])
    body = """
        const uint i = thread_position_in_grid.x;
        h[i] = static_cast<float16_t>(x[i]);
        b[i] = static_cast<bfloat16_t>(x[i]);
    """
    x32 = mx.array(x.astype(np.float32))
    h, b = emulator.run(launch(body, {"x": x32}, {"h": ((N,), mx.float16), "b": ((N,), mx.bfloat16)}))
    with np.errstate(over="ignore"):
        want_h = x.astype(np.float32).astype(np.float16).view(np.uint16)
    assert np.array_equal(np.array(h.view(mx.uint16)), want_h)
    want_b = np.array(x32.astype(mx.bfloat16).view(mx.uint16))
    assert np.array_equal(np.array(b.view(mx.uint16)), want_b)
    assert np.array(h)[6] == np.inf and np.array(b.astype(mx.float32))[0] == 1.0


def test_thread_attributes_and_partial_threadgroups():
    """MLX's dispatch: the grid counts threads, edge threadgroups are partial, and simd_sum
    sums the lanes that exist (the 6 x 2 and 6 x 1 edge threadgroups are one short simdgroup)."""
    body = """
        const uint3 p = thread_position_in_grid;
        const uint i = p.y * 70 + p.x;
        pos[i] = float(p.x + 1000 * p.y);
        group[i] = float(threadgroup_position_in_grid.x + 10 * threadgroup_position_in_grid.y);
        index[i] = float(thread_index_in_threadgroup);
        lanes[i] = simd_sum(1.0f);
    """
    outputs = {name: ((3 * 70,), mx.float32) for name in ("pos", "group", "index", "lanes")}
    ex = emulator.execute(launch(body, {"x": ramp()}, outputs, grid=(70, 3, 1), threadgroup=(64, 2, 1)))
    pos, group, index, lanes = (np.array(o).reshape(3, 70) for o in ex.outputs)
    x, y = np.meshgrid(np.arange(70), np.arange(3))
    assert np.array_equal(pos, x + 1000 * y)
    assert np.array_equal(group, x // 64 + 10 * (y // 2))
    width = np.where(x < 64, 64, 6)  # the x-edge threadgroup is 6 threads wide
    assert np.array_equal(index, x % 64 + width * (y % 2))
    assert np.array_equal(lanes, np.where(x < 64, 32, np.where(y < 2, 12, 6)))
    assert ex.stats.threadgroups == 4 and ex.stats.threads == 210


def test_simd_reductions_cover_their_own_simdgroup():
    body = """
        const uint i = thread_index_in_threadgroup;
        s[i] = simd_sum(x[i]);
        hi[i] = simd_max(x[i]);
        lo[i] = simd_min(x[i]);
    """
    outs = {n: ((N,), mx.float32) for n in ("s", "hi", "lo")}
    s, hi, lo = (np.array(o) for o in emulator.run(launch(body, {"x": ramp()}, outs)))
    groups = np.arange(N).reshape(2, 32)
    assert np.array_equal(s, np.repeat(groups.sum(1), 32))
    assert np.array_equal(hi, np.repeat(groups.max(1), 32))
    assert np.array_equal(lo, np.repeat(groups.min(1), 32))


def test_threadgroup_memory_is_shared_and_ordered_by_barriers():
    body = """
        threadgroup float a[64];
        const uint i = thread_index_in_threadgroup;
        a[i] = x[i];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        out[i] = a[63 - i];
    """
    (out,) = emulator.run(launch(body, {"x": ramp()}, {"out": ((N,), mx.float32)}))
    assert np.array_equal(np.array(out), np.arange(N)[::-1])
    racy = body.replace("mem_flags::mem_threadgroup", "mem_flags::mem_none")
    with pytest.raises(
        emulator.EmulationError,
        match=r"probe: .*data race on threadgroup a\[63\]: "
        r"read after a write by thread 63 with no threadgroup_barrier",
    ):
        emulator.run(launch(racy, {"x": ramp()}, {"out": ((N,), mx.float32)}))


def test_uninitialised_threadgroup_memory_is_poison_not_zero():
    body = """
        threadgroup float a[64];
        threadgroup int b[64];
        const uint i = thread_index_in_threadgroup;
        out[i] = a[i];
        iout[i] = b[i];
    """
    out, iout = emulator.run(launch(body, {"x": ramp()}, {"out": ((N,), mx.float32), "iout": ((N,), mx.int32)}))
    assert np.all(np.isnan(np.array(out)))
    assert np.all((np.array(iout) != 0) & (np.array(iout) != -1))


@pytest.mark.parametrize(
    "floats, message",
    [
        (8188, None),
        (8192, r"exceeds the 32768 bytes an Apple GPU threadgroup may use: a 32768 \+ b 16 = 32784 bytes"),
    ],
)
def test_threadgroup_memory_limit_is_32KB(floats, message):
    body = f"""
        threadgroup float a[{floats}];
        threadgroup float b[4];
        const uint i = thread_index_in_threadgroup;
        a[i] = 1.0f;
        b[i % 4] = 2.0f;
        out[i] = 0.0f;
    """
    body = body.replace("b[i % 4] = 2.0f;", "if (i < 4) b[i] = 2.0f;")
    probe = launch(body, {"x": ramp()}, {"out": ((N,), mx.float32)})
    if message is None:
        assert emulator.execute(probe).stats.threadgroup_bytes == 32768
    else:
        with pytest.raises(emulator.EmulationError, match=message):
            emulator.run(probe)


@pytest.mark.parametrize(
    "line, message",
    [
        ("out[i] = x[i + 1];", r"thread 63 .*buffer x\[64\] is out of bounds \(64 elements\)"),
        ("out[i + 1] = x[i];", r"buffer out\[64\] is out of bounds"),
        ("out[i] = x[int(i) - 1];", r"thread 0 .*buffer x\[-1\] has a negative index"),
        ("a[i + 1] = x[i]; out[i] = 0.0f;", r"threadgroup array a\[64\] is out of bounds"),
        ("out[0] = x[i];", r"buffer out\[0\] is written by two threads"),
    ],
)
def test_out_of_bounds_and_double_writes_are_errors(line, message):
    body = f"""
        threadgroup float a[64];
        const uint i = thread_index_in_threadgroup;
        {line}
    """
    with pytest.raises(emulator.EmulationError, match=message):
        emulator.run(launch(body, {"x": ramp()}, {"out": ((N,), mx.float32)}))


@pytest.mark.parametrize(
    "code, message",
    [
        (
            "if (i >= 40) return;\n threadgroup_barrier(mem_flags::mem_threadgroup);",
            r"threadgroup_barrier at line 5:\d+ is reached by threads 0-39 only; threads 40-63 have exited",
        ),
        (
            "if (i < 32) { threadgroup_barrier(mem_flags::mem_threadgroup); }\n"
            " else { threadgroup_barrier(mem_flags::mem_threadgroup); }",
            r"wait at different barriers: thread 0 at line 4:\d+ .*thread 32 at line 5:\d+",
        ),
        (
            "float s = x[i];\n if (thread_index_in_simdgroup < 16) s = simd_sum(s);",
            r"simd_sum at line 5:\d+ in simdgroup 0 is reached by lanes 0-15 only; lanes 16-31 have exited",
        ),
        (
            "float s = x[i];\n if (i < 16) s = simd_sum(s);\n threadgroup_barrier(mem_flags::mem_none);",
            r"simd_sum .* reached by lanes 0-15 only; lanes 16-31 wait at a barrier",
        ),
    ],
)
def test_divergent_barriers_and_simd_functions_are_errors(code, message):
    body = f"""
        const uint i = thread_index_in_threadgroup;
        out[i] = 0.0f;
        {code}
    """
    with pytest.raises(emulator.EmulationError, match=message):
        emulator.run(launch(body, {"x": ramp()}, {"out": ((N,), mx.float32)}))


def test_compile_errors_cite_the_kernel_line():
    body = "\n    const uint i = thread_index_in_threadgroup;\n    out[i] = no_such_name;\n"
    message = r"(?s)probe: the C\+\+ compiler rejected.*probe:3"
    with pytest.raises(emulator.EmulationError, match=message):
        emulator.run(launch(body, {"x": ramp()}, {"out": ((N,), mx.float32)}))


def test_threadgroup_arrays_only_at_kernel_scope():
    body = "if (true) { threadgroup float a[4]; }"
    with pytest.raises(emulator.EmulationError, match="only at kernel function scope"):
        source.rewrite_body("probe", body)
    with pytest.raises(emulator.EmulationError, match="threadgroup float\\* p"):
        source.rewrite_body("probe", "threadgroup float* p = nullptr;")


def test_signature_follows_mlx():
    """Shapes only for inputs whose names the body uses, and the attributes it names."""
    body = "const int n = x_shape[0]; out[thread_position_in_grid.x] = float(n);"
    unit = source.translation_unit(launch(body, {"x": ramp(), "y": ramp(3)}, {"out": ((N,), mx.float32)}), checked=True)
    assert "DeviceIn<int> x_shape" in unit and "y_shape" not in unit and "x_strides" not in unit
    assert "uint3 thread_position_in_grid" in unit and "thread_index_in_simdgroup" not in unit
