// What both kernels compute with: a vector of 16 floats (one AVX-512 register, two AVX ones, four
// NEON ones; GCC and Clang vector extensions, so the kernels compile on any CPU), bf16 bits to and
// from fp32 (one at a time or 16), Cephes' exp polynomial, and exp and erf on 16 floats.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
constexpr int64_t W = 16;

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }  // (0 + x would be an add)

// The sum of the 16 lanes as a tree of halves (a loop's reduction adds them one after another), by
// shuffles in registers (halves taken through memory cost a store and two loads).
inline float hsum(vf v) {
  const vf8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
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

// 16 values of an fp32 or bf16 array as fp32, and back (bf16: round to nearest even, NaN kept), in
// vector instructions; one instruction for the rounding where the CPU has AVX512-BF16.
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
inline vf load16(const float* p) { return vload(p); }
inline vf load16(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu u = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline void store16(float* p, vf v) { vstore(p, v); }
inline void store16(uint16_t* p, vf v) {
#ifdef __AVX512BF16__
  __m512 f;
  std::memcpy(&f, &v, sizeof f);
  const __m256bh h = _mm512_cvtneps_pbh(f);
#else
  vu u;
  std::memcpy(&u, &v, sizeof u);
  u = v != v ? vu{} + 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);
  const vh h = __builtin_convertvector(u >> 16, vh);
#endif
  std::memcpy(p, &h, sizeof h);
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

// e^x for 16 floats (Cephes' expf: x = n ln 2 + r, exp_reduced for e^r, 2^n put into the
// exponent's bits), within ~2 float roundings; below -87 it is 0 or tiny, as here it is used.
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vf z = x * splat(1.44269504088896341f);
  typedef int32_t vi __attribute__((vector_size(64)));
  const vi n = __builtin_convertvector(z + (z < splat(0.f) ? splat(-0.5f) : splat(0.5f)), vi);  // rounded
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * splat(0.693359375f) + nf * splat(2.12194440e-4f);
  const vi bits = (n + 127) << 23;  // 2^n
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return exp_reduced(r) * scale;
}

// erf for 16 floats (Abramowitz & Stegun 7.1.26, as ATen's vectorised erf): within 1.5e-7. It
// computes e^(-x²) on the way, which it leaves in `gauss` (GELU's derivative needs it too).
inline vf verf(vf x, vf& gauss) {
  typedef uint32_t vbits __attribute__((vector_size(64)));
  vbits u, sign;
  std::memcpy(&u, &x, sizeof u);
  sign = u & 0x80000000u;
  u &= 0x7fffffffu;
  vf a;
  std::memcpy(&a, &u, sizeof a);
  const vf t = splat(1.0f) / (splat(1.0f) + splat(0.3275911f) * a);
  vf r = splat(1.061405429f);
  r = r * t + splat(-1.453152027f);
  r = r * t + splat(1.421413741f);
  r = r * t + splat(-0.284496736f);
  r = r * t + splat(0.254829592f);
  gauss = vexp(-a * a);
  const vf e = splat(1.0f) - r * t * gauss;
  vbits eb;
  std::memcpy(&eb, &e, sizeof eb);
  eb |= sign;
  vf out;
  std::memcpy(&out, &eb, sizeof out);
  return out;
}
inline vf verf(vf x) {
  vf gauss;
  return verf(x, gauss);
}

}  // namespace
