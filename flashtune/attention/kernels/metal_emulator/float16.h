// Metal's 16-bit float types on the CPU: half and bfloat, rounded to nearest even on every
// conversion from float, as Apple GPUs round stores and casts.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mtlemu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;  // NaN stays NaN (quiet)
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and up round to infinity
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half; f * 2^24 is exact, rint rounds to even
    return sign | static_cast<uint16_t>(std::rint(std::fabs(f) * 16777216.0f));
  }
  uint32_t h = (a - 0x38000000u) >> 13;  // rebias the exponent (127 - 15), drop 13 bits
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return sign | static_cast<uint16_t>(h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24 is exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t float_to_bfloat_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bfloat_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// A 16-bit float stored as its bits. Arithmetic between two values of the same type rounds
// the float result back (exact: float has more than 2p + 2 bits for p = 11 or 8); mixed
// with float it promotes to float, as in Metal.
template <uint16_t (*Encode)(float), float (*Decode)(uint16_t)>
struct Float16 {
  uint16_t bits;
  Float16() = default;
  Float16(float f) : bits(Encode(f)) {}
  operator float() const { return Decode(bits); }
  Float16 operator-() const { return Float16(-Decode(bits)); }
};

template <class T>
struct is_float16 : std::false_type {};
template <uint16_t (*E)(float), float (*D)(uint16_t)>
struct is_float16<Float16<E, D>> : std::true_type {};

template <class T, class = std::enable_if_t<is_float16<T>::value>>
T operator+(T a, T b) { return T(float(a) + float(b)); }
template <class T, class = std::enable_if_t<is_float16<T>::value>>
T operator-(T a, T b) { return T(float(a) - float(b)); }
template <class T, class = std::enable_if_t<is_float16<T>::value>>
T operator*(T a, T b) { return T(float(a) * float(b)); }
template <class T, class = std::enable_if_t<is_float16<T>::value>>
T operator/(T a, T b) { return T(float(a) / float(b)); }

}  // namespace mtlemu

typedef mtlemu::Float16<mtlemu::float_to_half_bits, mtlemu::half_bits_to_float> half;
typedef mtlemu::Float16<mtlemu::float_to_bfloat_bits, mtlemu::bfloat_bits_to_float> bfloat;
