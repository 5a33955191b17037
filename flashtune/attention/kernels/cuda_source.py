"""The device code of poc's CUDA kernels: which .cu files each entry point compiles, the calls
MLX's generated kernels make into them, and the source handed to ``mx.fast.cuda_kernel``."""

import functools
import re
from pathlib import Path

# The device code each entry point compiles with, in order (later files use earlier ones).
SM80 = ("flash_common.cu", "flash_attention.cu")
DELTA = ("flash_common.cu",)
FWD_SM90 = ("flash_common.cu", "flash_forward_sm90.cu")
BWD_SM90 = ("flash_common.cu", "flash_forward_sm90.cu", "flash_backward_sm90.cu")
ALL_SOURCES = tuple(dict.fromkeys(SM80 + BWD_SM90))  # every file, in order (nvcc report)

FWD_BODY = """
    ftpoc::flash_fwd<T, HEAD_DIM, NWARPS, MTILES, CAUSAL>(
        q, k, v, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2], out, lse);
"""

FWD_SEG_BODY = """
    ftpoc::flash_fwd<T, HEAD_DIM, NWARPS, MTILES, CAUSAL, true>(
        q, k, v, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2], out, lse, segments);
"""

FWD_SM90_BODY = """
    ftpoc::flash_fwd_sm90<T, HEAD_DIM, BLOCK_N, WARPGROUPS, STAGES, CAUSAL>(
        q, k, v, params, q_shape[0], q_shape[1], q_shape[2], k_shape[1], k_shape[2], out, lse);
"""

BWD_SM90_BODY = """
    ftpoc::flash_bwd_sm90<T, HEAD_DIM, WARPGROUPS, QTILES, CAUSAL>(
        q, k, v, dout, lse, delta, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2],
        dq, dk, dv);
"""

DELTA_BODY = """
    ftpoc::softmax_delta<T, HEAD_DIM>(dout, o, delta, o_shape[0] * o_shape[1] * o_shape[2]);
"""

BWD_BODY = """
    ftpoc::flash_bwd<T, HEAD_DIM, NWARPS, CAUSAL>(
        q, k, v, dout, lse, delta, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2],
        dq, dk, dv);
"""

BWD_SEG_BODY = """
    ftpoc::flash_bwd<T, HEAD_DIM, NWARPS, CAUSAL, true>(
        q, k, v, dout, lse, delta, params, q_shape[1], q_shape[2], k_shape[1], k_shape[2],
        dq, dk, dv, segments);
"""


@functools.cache
def header(files: tuple[str, ...] = ALL_SOURCES) -> str:
    """The device code of ``files`` without comments (line count kept, so compiler messages
    point at the files' lines). MLX hashes a kernel's whole source on every launch: the
    hash of all four files with comments (56 KB) cost ~0.014 ms per call on the H100's host
    (docs/kernels.md, Hopper forward)."""
    text = "\n".join(Path(__file__).with_name(name).read_text() for name in files)
    return re.sub(r"[ \t]*//[^\n]*", "", text)


FWD_IO = (("q", "k", "v", "params"), ("out", "lse"))
BWD_IO = (("q", "k", "v", "dout", "lse", "delta", "params"), ("dq", "dk", "dv"))
DELTA_IO = (("dout", "o"), ("delta",))
# Packed rows: the mma.sync kernels with the document ids (B, L) int32 after v.
FWD_SEG_IO = (("q", "k", "v", "segments", "params"), ("out", "lse"))
BWD_SEG_IO = (("q", "k", "v", "segments", "dout", "lse", "delta", "params"), ("dq", "dk", "dv"))
