// What both kernels compute with: a vector of 16 floats (one AVX-512 register, two AVX ones, four
// NEON ones; GCC and Clang vector extensions, so the kernels compile on any CPU), bf16 bits to and
// from fp32, and Cephes' exp polynomial.
#pragma once

#include <cstdint>
#include <cstring>

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
constexpr int64_t W = 16;

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }  // (0 + x would be an add)

// The sum of the 16 lanes as a tree of halves (a loop's reduction adds them one after another).
inline float hsum(vf v) {
  vf8 lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const vf8 s8 = lo + hi;
  vf4 l4, h4;
  std::memcpy(&l4, &s8, sizeof l4);
  std::memcpy(&h4, reinterpret_cast<const char*>(&s8) + sizeof l4, sizeof h4);
  const vf4 s4 = l4 + h4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// bf16 tensors are read and written as their bits (uint16_t): c10::BFloat16's own conversions keep
// GCC from vectorising a loop (a bf16 elementwise loop ran 15x slower than the fp32 one).
inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline void from_f32(float f, float& out) { out = f; }
inline void from_f32(float f, uint16_t& out) {  // round to nearest even, as torch's cast; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u = f != f ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);
  out = static_cast<uint16_t>(u >> 16);
}

// e^r for |r| <= ln(2) / 2 (what is left of x = n ln 2 + r): Cephes' expf polynomial, for one
// float or 16. The caller multiplies by 2^n.
inline float constant(float, float c) { return c; }
inline vf constant(vf, float c) { return splat(c); }
template <typename F>
inline F exp_reduced(F r) {
  F p = constant(r, 1.9875691500e-4f);
  p = p * r + constant(r, 1.3981999507e-3f);
  p = p * r + constant(r, 8.3334519073e-3f);
  p = p * r + constant(r, 4.1665795894e-2f);
  p = p * r + constant(r, 1.6666665459e-1f);
  p = p * r + constant(r, 5.0000001201e-1f);
  return p * r * r + r + constant(r, 1.0f);
}

}  // namespace
