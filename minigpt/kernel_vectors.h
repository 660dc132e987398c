// The vector type both kernels compute with: 16 floats, one AVX-512 register, two AVX ones, four
// NEON ones (GCC and Clang vector extensions, so the kernels compile on any CPU).
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

}  // namespace
