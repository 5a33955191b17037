// The subset of the Metal Shading Language (and of MLX's utils.h) that poc's kernels use,
// for compiling them as C++: scalar and vector types, address-space qualifiers, metal::
// math, threadgroup_barrier and SIMD-group reductions.
#pragma once

#include <array>
#include <cmath>
#include <coroutine>
#include <source_location>

#include "float16.h"
#include "memory.h"
#include "runtime.h"

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef half float16_t;  // MLX's names for the element types
typedef bfloat bfloat16_t;

struct uint2 {
  uint x, y;
};
struct uint3 {
  uint x, y, z;
};
inline uint3 make_uint3(const uint32_t v[3]) { return {v[0], v[1], v[2]}; }

namespace metal {

enum class mem_flags : int { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) {
  return static_cast<mem_flags>(static_cast<int>(a) | static_cast<int>(b));
}

struct BarrierAwait {
  int flags;
  mtlemu::Site site;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<>) const {
    mtlemu::arrive_barrier(flags, site);
  }
  void await_resume() const noexcept {}
};

inline BarrierAwait threadgroup_barrier(
    mem_flags flags, std::source_location loc = std::source_location::current()) {
  return {static_cast<int>(flags), mtlemu::Site::of(loc)};
}

struct SumOp {
  template <class T>
  static T apply(T a, T b) { return a + b; }
  template <class T>
  static T fill(T) { return T(0); }
};
struct MaxOp {
  template <class T>
  static T apply(T a, T b) { return a < b ? b : a; }
  template <class T>
  static T fill(T first) { return first; }
};
struct MinOp {
  template <class T>
  static T apply(T a, T b) { return b < a ? b : a; }
  template <class T>
  static T fill(T first) { return first; }
};

// A reduction over the simdgroup's lanes as a butterfly (lane i combines with lane i ^ k for
// k = 16, 8, 4, 2, 1), so every lane gets the same bits; the GPU's order is not specified.
template <class T, class Op>
struct SimdReduce final : mtlemu::SimdWaiter {
  T value, result;
  SimdReduce(T v, const char* name, mtlemu::Site where) : value(v), result(v) {
    op = name;
    site = where;
  }
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<>) { mtlemu::arrive_simd(this); }
  T await_resume() const noexcept { return result; }
  void resolve(mtlemu::SimdWaiter* const* lanes, uint32_t n_lanes) override {
    std::array<T, mtlemu::kSimdWidth> v, next;
    for (uint32_t i = 0; i < mtlemu::kSimdWidth; ++i)
      v[i] = i < n_lanes ? static_cast<SimdReduce*>(lanes[i])->value : Op::fill(v[0]);
    for (uint32_t k = mtlemu::kSimdWidth / 2; k > 0; k /= 2) {
      for (uint32_t i = 0; i < mtlemu::kSimdWidth; ++i) next[i] = Op::apply(v[i], v[i ^ k]);
      v = next;
    }
    for (uint32_t i = 0; i < n_lanes; ++i) static_cast<SimdReduce*>(lanes[i])->result = v[i];
  }
};

#define MTLEMU_SIMD_REDUCTION(NAME, OP, TYPE)                                               \
  inline SimdReduce<TYPE, OP> NAME(TYPE v,                                                 \
                                   std::source_location loc = std::source_location::current()) { \
    return {v, #NAME, mtlemu::Site::of(loc)};                                              \
  }
#define MTLEMU_SIMD_REDUCTIONS(TYPE)             \
  MTLEMU_SIMD_REDUCTION(simd_sum, SumOp, TYPE)   \
  MTLEMU_SIMD_REDUCTION(simd_max, MaxOp, TYPE)   \
  MTLEMU_SIMD_REDUCTION(simd_min, MinOp, TYPE)
MTLEMU_SIMD_REDUCTIONS(float)
MTLEMU_SIMD_REDUCTIONS(half)
MTLEMU_SIMD_REDUCTIONS(int)
MTLEMU_SIMD_REDUCTIONS(uint)

inline float exp2(float x) { return std::exp2(x); }
inline float exp(float x) { return std::exp(x); }
inline float log2(float x) { return std::log2(x); }
inline float log(float x) { return std::log(x); }
inline float sqrt(float x) { return std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float fabs(float x) { return std::fabs(x); }
inline float abs(float x) { return std::fabs(x); }
inline float floor(float x) { return std::floor(x); }
inline float ceil(float x) { return std::ceil(x); }
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline bool isinf(float x) { return std::isinf(x); }
inline bool isnan(float x) { return std::isnan(x); }
inline float clamp(float x, float lo, float hi) { return x < lo ? lo : (hi < x ? hi : x); }

#define MTLEMU_MIN_MAX(TYPE)                                    \
  inline TYPE max(TYPE a, TYPE b) { return a < b ? b : a; }      \
  inline TYPE min(TYPE a, TYPE b) { return b < a ? b : a; }
MTLEMU_MIN_MAX(int)
MTLEMU_MIN_MAX(uint)
MTLEMU_MIN_MAX(long)
MTLEMU_MIN_MAX(ulong)
MTLEMU_MIN_MAX(float)

}  // namespace metal

using namespace metal;  // as MLX's utils.h does

// Metal's address-space qualifiers: the generated signature carries the checked views, so the
// qualifiers left in kernel code have no meaning on the CPU.
#define device
#define constant
#define thread
