"""A kernel body wrapped as MLX wraps it for mx.fast.metal_kernel, as C++ for the emulator.

MLX (mlx/backend/common/metal_kernel.cpp, ``write_signature``) puts the body inside a
templated ``[[kernel]]`` function whose parameters are: each input as a buffer (``constant``
when it has fewer than 8 elements), its ``_shape`` / ``_strides`` / ``_ndim`` when the body
names them, each output as a ``device`` buffer, and the thread attributes whose names occur
in the body. The emulator writes the same function with checked buffer views, makes it a
coroutine (``co_await`` at every barrier and SIMD-group function, ``co_return`` for
``return``) and turns each ``threadgroup`` array into shared, poisoned, race-checked memory.
"""

import re
from typing import Any

import mlx.core as mx

from flashtune.errors import EmulationError

# MLX's list of the attributes it adds when their name occurs in the body, with their types.
ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)
# How the launcher computes each attribute from mtlemu::ThreadAttributes `a`.
_ATTRIBUTE_VALUES = {
    "grid_origin": "uint3{0, 0, 0}",
    "grid_size": "make_uint3(a.threads_per_grid)",
    "thread_execution_width": "32u",
    "threads_per_simdgroup": "32u",
}
TYPE_NAMES = {
    mx.bool_: "bool",
    mx.uint8: "uint8_t",
    mx.uint16: "uint16_t",
    mx.uint32: "uint32_t",
    mx.uint64: "uint64_t",
    mx.int8: "int8_t",
    mx.int16: "int16_t",
    mx.int32: "int32_t",
    mx.int64: "int64_t",
    mx.float16: "float16_t",
    mx.bfloat16: "bfloat16_t",
    mx.float32: "float",
}
MAX_CONSTANT_ARRAY_SIZE = 8  # MLX passes smaller inputs in the constant address space
COLLECTIVES = ("threadgroup_barrier", "simd_sum", "simd_max", "simd_min")

_DECLARATION = re.compile(
    r"\bthreadgroup\s+(?P<type>[A-Za-z_][\w:]*)\s+(?P<name>[A-Za-z_]\w*)\s*"
    r"\[(?P<size>[^\[\]]+)\]\s*;"
)
_COLLECTIVE = re.compile(r"(?<![\w.])((?:metal::)?(?:" + "|".join(COLLECTIVES) + r"))\s*\(")


def strip_comments(source: str) -> str:
    """The source without // and /* */ comments, newlines kept (line numbers stay right)."""

    def blank(match):
        return re.sub(r"[^\n]", " ", match.group(0))

    return re.sub(r"//[^\n]*|/\*.*?\*/", blank, source, flags=re.S)


def _depth(text: str) -> int:
    return text.count("{") - text.count("}")


def rewrite_body(kernel_name: str, source: str) -> str:
    """The body as the emulator compiles it (module docstring); unsupported Metal raises.

    Raises:
        EmulationError: a threadgroup declaration that is not a one-dimensional array at
            kernel scope, or another use of the threadgroup address space.
    """
    body = strip_comments(source)

    def declaration(match):
        if _depth(body[: match.start()]) != 0:
            raise EmulationError(
                f"{kernel_name}: threadgroup array {match['name']} is declared inside a block; "
                "Metal allows threadgroup variables only at kernel function scope"
            )
        newlines = "\n" * match.group(0).count("\n")
        return (
            f"auto {match['name']} = ::mtlemu::threadgroup_array<{match['type']}, "
            f'static_cast<size_t>({match["size"]})>("{match["name"]}");{newlines}'
        )

    body = _DECLARATION.sub(declaration, body)
    leftover = re.search(r"\bthreadgroup\b[^\n]*", body)
    if leftover:
        raise EmulationError(
            f"{kernel_name}: the emulator handles threadgroup memory only as one-dimensional "
            f"arrays declared at kernel scope, one per declaration; got {leftover.group(0)!r}"
        )
    body = _COLLECTIVE.sub(r"co_await \1(", body)
    return re.sub(r"\breturn\b", "co_return", body)


def _template_value(value: Any) -> tuple[str, str]:
    """(parameter kind, argument) of one template constant, as MLX writes them."""
    if isinstance(value, bool):
        return "bool", "1" if value else "0"
    if isinstance(value, int):
        return "int", str(value)
    if isinstance(value, mx.Dtype):
        return "typename", TYPE_NAMES[value]
    raise EmulationError(f"template constant {value!r}: expected an int, a bool or an mx.Dtype")


def _type_name(dtype: mx.Dtype) -> str:
    if dtype not in TYPE_NAMES:
        raise EmulationError(f"the emulator has no element type for {dtype}; valid: {list(TYPE_NAMES)}")
    return TYPE_NAMES[dtype]


def _inputs(launch, checked: bool) -> tuple[list[str], list[str]]:
    """(parameters, launcher arguments) for the inputs, with shape/strides/ndim as MLX adds them."""
    params, args = [], []
    source = launch.kernel.source
    for i, (name, x) in enumerate(zip(launch.kernel.input_names, launch.inputs)):
        t = _type_name(x.dtype)
        if x.ndim == 0:
            params.append(f"const {t} {name}")
            args.append(f"*static_cast<const {t}*>(buffers[{i}])")
            continue
        _read_only(params, args, checked, t, name, f"static_cast<const {t}*>(buffers[{i}])", f"sizes[{i}]")
        for suffix, elem, table in (("shape", "int", "shapes"), ("strides", "int64_t", "strides")):
            if f"{name}_{suffix}" in source:
                _read_only(params, args, checked, elem, f"{name}_{suffix}", f"{table}[{i}]", f"uint64_t(ndims[{i}])")
        if f"{name}_ndim" in source:
            params.append(f"const int {name}_ndim")
            args.append(f"ndims[{i}]")
    return params, args


def _read_only(params: list[str], args: list[str], checked: bool, t: str, name: str, pointer: str, size: str) -> None:
    """Appends a read-only buffer: a bounds-checked view when ``checked``, else a plain pointer."""
    if checked:
        params.append(f"::mtlemu::DeviceIn<{t}> {name}")
        args.append(f'{{{pointer}, {size}, "{name}"}}')
    else:
        params.append(f"const {t}* {name}")
        args.append(pointer)


def _outputs(launch, checked: bool) -> tuple[list[str], list[str]]:
    params, args = [], []
    first = len(launch.inputs)
    for j, (name, dtype) in enumerate(zip(launch.kernel.output_names, launch.output_dtypes)):
        t, i = _type_name(dtype), first + j
        if checked:
            params.append(f"::mtlemu::DeviceOut<{t}> {name}")
            args.append(f'{{static_cast<{t}*>(buffers[{i}]), sizes[{i}], "{name}", writers_{j}.data}}')
        else:
            params.append(f"{t}* {name}")
            args.append(f"static_cast<{t}*>(buffers[{i}])")
    return params, args


def _attributes(source: str) -> tuple[list[str], list[str]]:
    params, args = [], []
    for name, kind in ATTRIBUTES:
        if name in source:  # a substring test, as MLX's
            params.append(f"{kind} {name}")
            default = f"make_uint3(a.{name})" if kind == "uint3" else f"a.{name}"
            args.append(_ATTRIBUTE_VALUES.get(name, default))
    return params, args


def translation_unit(launch, checked: bool) -> str:
    """The C++ file for one launch's kernel instance: the wrapped kernel and its launcher.

    Args:
        launch: a ``metal.Launch`` (its kernel, inputs' dtypes and ranks, template, outputs).
        checked: bounds-checked buffers and race-checked threadgroup memory (tests use it).

    Returns:
        Source that defines ``extern "C" int mtlemu_launch(...)`` (see runner.py).
    """
    kernel = launch.kernel
    template = [(name, *_template_value(value)) for name, value in launch.template]
    in_params, in_args = _inputs(launch, checked)
    out_params, out_args = _outputs(launch, checked)
    attr_params, attr_args = _attributes(kernel.source)
    header = ""
    if template:
        header = "template <" + ", ".join(f"{kind} {name}" for name, kind, _ in template) + ">\n"
    instance = kernel.name + ("<" + ", ".join(arg for _, _, arg in template) + ">" if template else "")
    params = ",\n    ".join(in_params + out_params + attr_params)
    args = ",\n        ".join(in_args + out_args + attr_args)
    n_outputs, first_output = len(kernel.output_names), len(launch.inputs)
    writers = (
        "".join(f"  ::mtlemu::Writers writers_{j}(sizes[{first_output + j}]);\n" for j in range(n_outputs))
        if checked
        else ""
    )
    return f"""{"#define MTLEMU_CHECKED 1" if checked else ""}
#include "metal_shim.h"

{header}::mtlemu::KernelTask {kernel.name}(
    {params}) {{
#line 1 "{kernel.name}"
{rewrite_body(kernel.name, kernel.source)}
co_return;
}}

extern "C" int mtlemu_launch(void* const* buffers, const uint64_t* sizes,
                             const int32_t* const* shapes, const int64_t* const* strides,
                             const int32_t* ndims, const uint32_t* grid,
                             const uint32_t* threadgroup, ::mtlemu::Stats* stats, char* error,
                             size_t error_size) {{
{writers}  (void)shapes; (void)strides; (void)ndims;
  auto make = [&](const ::mtlemu::ThreadAttributes& a) {{
    (void)a;
    return {instance}(
        {args});
  }};
  return ::mtlemu::launch(grid, threadgroup, stats, error, error_size,
                          [](const ::mtlemu::ThreadAttributes& a, void* context) {{
                            return (*static_cast<decltype(make)*>(context))(a);
                          }}, &make);
}}
"""
