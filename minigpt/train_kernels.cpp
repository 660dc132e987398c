// Causal self-attention, LayerNorm and GELU for training on a CPU, forward and backward, and the
// two ends of a Muon step.
//
// Why: the eager attention of a small GPT (context 64, heads of 32) is ~12 torch ops a layer
// forward and ~20 backward: 64x64 batched products that run far below the CPU's peak, a softmax,
// the q/k/v split and its backward `cat`, and transposes. Here each (sequence, head) is one task:
// its q, k and v are read straight from the (B, T, 3C) output of c_attn, everything stays in the
// caches, only the causal half of the scores is computed, and the gradient is written straight
// into a (B, T, 3C) tensor for c_attn's backward. The arithmetic is fp32 whatever the input dtype
// (bf16 under autocast); the attention weights are kept for the backward in the input's dtype (in
// bf16 they are half the memory traffic, which in a training step costs more than the arithmetic).
// LayerNorm and GELU (below the attention) are there for the same reason: ATen's take ~150 and
// ~650 µs a call on this model where these take a fraction of it, and the norm writes its output in
// bf16 under autocast (the next Linear's input) where ATen's writes fp32 for a cast to copy.
// Muon's stack and update (the end of the file) replace ~10 small torch ops per group of matrices.
// Built on request with the decoding kernel (minigpt/decode_kernel.py); F.scaled_dot_product_attention,
// nn.LayerNorm and F.gelu are the references they are tested against (tests/test_train_kernels.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>
#ifdef __linux__
#include <sched.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernel_vectors.h"

namespace {

inline int64_t up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// C[r][0:16*NV] = sum over k in [k0, k1) of A(r, k) * B[k][0:16*NV], for the 4 rows r of a block,
// A(r, k) = A[r * ars + k * aks] (so A may be read transposed): 4 x NV accumulators stay in
// registers, and each loaded row of B feeds 4 products.
template <int NV>
inline void micro(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C, int64_t ldc,
                  int64_t k0, int64_t k1) {
  vf acc[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  for (int64_t k = k0; k < k1; ++k) {
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + k * ldb + v * W);
    for (int r = 0; r < 4; ++r) {
      const vf a = splat(A[r * ars + k * aks]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * W, acc[r][v]);
}

// The 4 rows of C = A B from row `r0`: columns [0, n) (n a multiple of 16) over k in [k0, k1).
inline void rows4(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C, int64_t ldc,
                  int64_t r0, int64_t n, int64_t k0, int64_t k1) {
  const float* a = A + r0 * ars;
  float* c = C + r0 * ldc;
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) micro<2>(a, ars, aks, B + j, ldb, c + j, ldc, k0, k1);
  if (j < n) micro<1>(a, ars, aks, B + j, ldb, c + j, ldc, k0, k1);
}

// exp(x) for x <= 0 (a softmax's shifted scores; 0 below -87): Cephes' expf, ~2 ulp, written so
// that a loop of it vectorises (std::exp would not without -ffast-math).
inline float exp_neg(float x) {
  const bool under = x < -87.0f;
  x = under ? -87.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return under ? 0.f : exp_reduced(r) * scale;
}

// Per-thread scratch for one (sequence, head): T and the head size padded to multiples of 16, every
// row 64-byte aligned (a vector load across two cache lines costs two).
struct Scratch {
  int64_t T, Tp, hs, hp;
  std::vector<float> buf;
  float *q, *k, *v, *kt, *vt, *o, *dout, *ds, *pf, *dq, *dk, *dv;
  Scratch(int64_t T_, int64_t hs_) : T(T_), Tp(up(T_, W)), hs(hs_), hp(up(hs_, W)) {
    const int64_t th = Tp * hp;
    buf.assign(10 * th + 2 * Tp * Tp + W, 0.f);
    float* at = buf.data() + (W - reinterpret_cast<uintptr_t>(buf.data()) / sizeof(float) % W) % W;
    for (float** m : {&q, &k, &v, &kt, &vt, &o, &dout, &dq, &dk, &dv}) {
      *m = at;
      at += th;
    }
    ds = at;
    pf = at + Tp * Tp;
  }
};

// f(float{}) or f(uint16_t{}) for an fp32 or bf16 tensor; data<T>(t) is its storage as T.
template <typename F>
void dispatch(const torch::Tensor& t, F&& f) {
  if (t.scalar_type() == torch::kBFloat16)
    f(uint16_t{});
  else
    f(float{});
}
template <typename T>
T* data(const torch::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// rows x cols of `src` (row stride `ld`, any dtype) into `dst` (row stride `ldd`) as fp32, times `mul`.
template <typename scalar_t>
void gather(const scalar_t* src, int64_t ld, float* dst, int64_t ldd, int64_t rows, int64_t cols, float mul) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < cols; ++d) dst[i * ldd + d] = to_f32(src[i * ld + d]) * mul;
}

template <typename scalar_t>
void scatter(const float* src, int64_t lds, scalar_t* dst, int64_t ld, int64_t rows, int64_t cols, float mul) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < cols; ++d) from_f32(src[i * lds + d] * mul, dst[i * ld + d]);
}

// The same, transposed: dst[d][i] = src[i][d] (strided reads, contiguous writes).
template <typename scalar_t>
void gather_t(const scalar_t* src, int64_t ld, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
  for (int64_t d = 0; d < cols; ++d)
    for (int64_t i = 0; i < rows; ++i) dst[d * ldd + i] = to_f32(src[i * ld + d]);
}

// One (sequence, head) forward: y = P v with P = softmax(causal((scale q) kᵀ)), P also written to
// `saved` (Tp x Tp in qkv's dtype, zeros right of the diagonal) for the backward pass.
template <typename scalar_t>
void forward_one(const scalar_t* qkv, scalar_t* y, scalar_t* saved, int64_t C, int64_t h, float scale, Scratch& w) {
  const int64_t T = w.T, Tp = w.Tp, hs = w.hs, hp = w.hp, ld = 3 * C;
  float* p = w.pf;
  gather(qkv + h * hs, ld, w.q, hp, T, hs, scale);
  gather_t(qkv + C + h * hs, ld, w.kt, Tp, T, hs);
  gather(qkv + 2 * C + h * hs, ld, w.v, hp, T, hs, 1.f);
  for (int64_t i0 = 0; i0 < T; i0 += 4)  // scores: each block of 4 rows up to its last column, rounded up to 16
    rows4(w.q, hp, 1, w.kt, Tp, p, Tp, i0, up(std::min(i0 + 4, T), W), 0, hs);
  for (int64_t i = 0; i < T; ++i) {
    // Whole vectors up to column n (the block's scores reach it): the columns right of the diagonal
    // are -inf, so they come out 0, and no loop has a scalar remainder.
    float* s = p + i * Tp;
    const int64_t n = up(i + 1, W);
    std::fill(s + i + 1, s + n, -std::numeric_limits<float>::infinity());
    float m = -std::numeric_limits<float>::infinity(), sum = 0.f;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      s[j] = exp_neg(s[j] - m);
      sum += s[j];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] *= inv;
    std::fill(s + n, s + Tp, 0.f);
  }
  std::fill(p + T * Tp, p + up(T, 4) * Tp, 0.f);  // the last block's rows past T, read below
  for (int64_t i0 = 0; i0 < T; i0 += 4)  // O = P v: row i needs the keys up to i only
    rows4(p, Tp, 1, w.v, hp, w.o, hp, i0, hp, 0, std::min(i0 + 4, T));
  scatter(p, Tp, saved, Tp, Tp, Tp, 1.f);  // P, in qkv's dtype, for the backward
  scatter(w.o, hp, y + h * hs, C, T, hs, 1.f);
}

// One (sequence, head) backward from the forward's P, writing dq, dk, dv into dqkv's columns of this head.
template <typename scalar_t>
void backward_one(const scalar_t* qkv, const scalar_t* y, const scalar_t* saved, const scalar_t* dy, scalar_t* dqkv,
                  int64_t C, int64_t h, float scale, Scratch& w) {
  const int64_t T = w.T, Tp = w.Tp, hs = w.hs, hp = w.hp, ld = 3 * C;
  gather(qkv + h * hs, ld, w.q, hp, T, hs, scale);
  gather(qkv + C + h * hs, ld, w.k, hp, T, hs, 1.f);
  gather_t(qkv + 2 * C + h * hs, ld, w.vt, Tp, T, hs);
  gather(y + h * hs, C, w.o, hp, T, hs, 1.f);
  gather(dy + h * hs, C, w.dout, hp, T, hs, 1.f);
  float* p = w.pf;
  gather(saved, Tp, p, Tp, Tp, Tp, 1.f);
  for (int64_t i0 = 0; i0 < T; i0 += 4)  // dP = dO vᵀ, causal part
    rows4(w.dout, hp, 1, w.vt, Tp, w.ds, Tp, i0, up(std::min(i0 + 4, T), W), 0, hs);
  for (int64_t i = 0; i < T; ++i) {  // dS = P (dP - rowsum(dO o))
    const float* o = w.o + i * hp;
    const float* g = w.dout + i * hp;
    float di = 0.f;
#pragma omp simd reduction(+ : di)
    for (int64_t d = 0; d < hs; ++d) di += o[d] * g[d];
    const float* pi = p + i * Tp;
    float* ds = w.ds + i * Tp;
    const int64_t n = up(i + 1, W);  // P is 0 right of the diagonal, so dS is too
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) ds[j] = pi[j] * (ds[j] - di);
    std::fill(ds + n, ds + Tp, 0.f);
  }
  for (int64_t i0 = 0; i0 < T; i0 += 4)  // dq = scale dS k
    rows4(w.ds, Tp, 1, w.k, hp, w.dq, hp, i0, hp, 0, std::min(i0 + 4, T));
  // dk = dSᵀ (scale q) and dv = Pᵀ dO, dS and P read transposed: key j was seen by the queries i >= j.
  for (int64_t j0 = 0; j0 < T; j0 += 4) {
    rows4(w.ds, 1, Tp, w.q, hp, w.dk, hp, j0, hp, j0, T);
    rows4(p, 1, Tp, w.dout, hp, w.dv, hp, j0, hp, j0, T);
  }
  scatter(w.dq, hp, dqkv + h * hs, ld, T, hs, scale);
  scatter(w.dk, hp, dqkv + C + h * hs, ld, T, hs, 1.f);
  scatter(w.dv, hp, dqkv + 2 * C + h * hs, ld, T, hs, 1.f);
}

void check(const torch::Tensor& qkv, int64_t n_head) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 3 && qkv.is_contiguous(), "qkv must be a contiguous (B, T, 3C) CPU tensor");
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat || qkv.scalar_type() == torch::kBFloat16, "qkv must be float32 or bfloat16");
  TORCH_CHECK(n_head > 0 && qkv.size(2) % (3 * n_head) == 0, "the width must split into 3 x n_head heads");
}

}  // namespace

// (y (B, T, C) and P (B, n_head, Tp, Tp) in qkv's dtype: the attention weights, T padded to a
// multiple of 16, kept for the backward) for qkv (B, T, 3C) = c_attn's output.
std::vector<torch::Tensor> attention_forward(torch::Tensor qkv, int64_t n_head) {
  check(qkv, n_head);
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, hs = C / n_head, Tp = up(T, W);
  auto y = torch::empty({B, T, C}, qkv.options());
  auto probs = torch::empty({B, n_head, Tp, Tp}, qkv.options());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  dispatch(qkv, [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* in = data<scalar_t>(qkv);
    scalar_t* out = data<scalar_t>(y);
    scalar_t* p = data<scalar_t>(probs);
    at::parallel_for(0, B * n_head, 1, [&](int64_t begin, int64_t end) {
      Scratch w(T, hs);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / n_head, h = t % n_head;
        forward_one(in + b * T * 3 * C, out + b * T * C, p + t * Tp * Tp, C, h, scale, w);
      }
    });
  });
  return {y, probs};
}

// dqkv (B, T, 3C) for the forward's qkv, y and P, and the gradient dy of y.
torch::Tensor attention_backward(torch::Tensor qkv, torch::Tensor y, torch::Tensor probs, torch::Tensor dy, int64_t n_head) {
  check(qkv, n_head);
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, hs = C / n_head, Tp = up(T, W);
  TORCH_CHECK(y.sizes() == dy.sizes() && y.size(0) == B && y.size(1) == T && y.size(2) == C, "y and dy must be (B, T, C)");
  TORCH_CHECK(probs.scalar_type() == qkv.scalar_type() && probs.is_contiguous() && probs.numel() == B * n_head * Tp * Tp,
              "probs must be the forward's (B, n_head, Tp, Tp) tensor");
  y = y.to(qkv.scalar_type()).contiguous();
  dy = dy.to(qkv.scalar_type()).contiguous();
  auto dqkv = torch::empty_like(qkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  dispatch(qkv, [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* in = data<scalar_t>(qkv);
    const scalar_t* out = data<scalar_t>(y);
    const scalar_t* g = data<scalar_t>(dy);
    scalar_t* dg = data<scalar_t>(dqkv);
    const scalar_t* p = data<scalar_t>(probs);
    at::parallel_for(0, B * n_head, 1, [&](int64_t begin, int64_t end) {
      Scratch w(T, hs);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / n_head, h = t % n_head;
        backward_one(in + b * T * 3 * C, out + b * T * C, p + t * Tp * Tp, g + b * T * C, dg + b * T * 3 * C, C, h, scale, w);
      }
    });
  });
  return dqkv;
}

namespace {

// ---- LayerNorm -------------------------------------------------------------------------------------

// R rows of x (R x C, fp32) from `x`: y = (x - mean) rstd w (+ b) in out_t, mean and rstd kept. The R
// rows go side by side: one row's sums are a chain of dependent adds, R of them overlap (4 rows
// took 45 µs for the default model's 2048 rows where one at a time took 100).
template <int R, typename out_t>
void ln_forward_block(const float* x, const float* w, const float* b, out_t* y, float* mean, float* rstd,
                      int64_t C, float eps) {
  const int64_t Cv = C / W * W;
  vf s[R], q[R];
  float m[R], rs[R];
  for (int r = 0; r < R; ++r) s[r] = q[r] = vf{};
  for (int64_t j = 0; j < Cv; j += W)
    for (int r = 0; r < R; ++r) s[r] += vload(x + r * C + j);
  for (int r = 0; r < R; ++r) {
    m[r] = hsum(s[r]);
    for (int64_t j = Cv; j < C; ++j) m[r] += x[r * C + j];
    m[r] /= static_cast<float>(C);
  }
  for (int64_t j = 0; j < Cv; j += W)
    for (int r = 0; r < R; ++r) {
      const vf d = vload(x + r * C + j) - splat(m[r]);
      q[r] += d * d;
    }
  for (int r = 0; r < R; ++r) {
    float var = hsum(q[r]);
    for (int64_t j = Cv; j < C; ++j) var += (x[r * C + j] - m[r]) * (x[r * C + j] - m[r]);
    rs[r] = 1.0f / std::sqrt(var / static_cast<float>(C) + eps);
    mean[r] = m[r];
    rstd[r] = rs[r];
  }
  for (int r = 0; r < R; ++r) {
    const float* xr = x + r * C;
    out_t* yr = y + r * C;
    for (int64_t j = 0; j < Cv; j += W) {
      vf v = (vload(xr + j) - splat(m[r])) * splat(rs[r]) * vload(w + j);
      if (b) v += vload(b + j);
      store16(yr + j, v);
    }
    for (int64_t j = Cv; j < C; ++j) from_f32((xr[j] - m[r]) * rs[r] * w[j] + (b ? b[j] : 0.f), yr[j]);
  }
}

// R rows: dx = rstd (g - mean(g) - x̂ mean(g x̂)) with g = dy w and x̂ = (x - mean) rstd, plus `dres`
// (the residual stream's own gradient; may be null), also written in bf16 to `dx16` (may be null);
// the rows' dy x̂ and dy added into dw and db (this chunk's own sums).
template <int R, typename g_t>
void ln_backward_block(const float* x, const float* w, const float* mean, const float* rstd, const g_t* dy,
                       const float* dres, float* dx, uint16_t* dx16, float* dw, float* db, int64_t C) {
  const int64_t Cv = C / W * W;
  vf sg[R], sgx[R];
  float a[R], c[R];
  for (int r = 0; r < R; ++r) sg[r] = sgx[r] = vf{};
  for (int64_t j = 0; j < Cv; j += W) {
    const vf wv = vload(w + j);
    vf dwv = vload(dw + j), dbv = vload(db + j);
    for (int r = 0; r < R; ++r) {
      const vf d = load16(dy + r * C + j), xh = (vload(x + r * C + j) - splat(mean[r])) * splat(rstd[r]), g = d * wv;
      sg[r] += g;
      sgx[r] += g * xh;
      dwv += d * xh;
      dbv += d;
    }
    vstore(dw + j, dwv);
    vstore(db + j, dbv);
  }
  for (int r = 0; r < R; ++r) {
    a[r] = hsum(sg[r]);
    c[r] = hsum(sgx[r]);
    for (int64_t j = Cv; j < C; ++j) {
      const float d = to_f32(dy[r * C + j]), xh = (x[r * C + j] - mean[r]) * rstd[r], g = d * w[j];
      a[r] += g;
      c[r] += g * xh;
      dw[j] += d * xh;
      db[j] += d;
    }
    a[r] /= static_cast<float>(C);
    c[r] /= static_cast<float>(C);
  }
  for (int r = 0; r < R; ++r) {
    const float* xr = x + r * C;
    const g_t* gr = dy + r * C;
    const float* res = dres ? dres + r * C : nullptr;
    float* dr = dx + r * C;
    uint16_t* d16 = dx16 ? dx16 + r * C : nullptr;
    const float m = mean[r], rs = rstd[r];
    for (int64_t j = 0; j < Cv; j += W) {
      const vf xh = (vload(xr + j) - splat(m)) * splat(rs);
      vf v = splat(rs) * (load16(gr + j) * vload(w + j) - splat(a[r]) - xh * splat(c[r]));
      if (res) v += vload(res + j);
      vstore(dr + j, v);
      if (d16) store16(d16 + j, v);
    }
    for (int64_t j = Cv; j < C; ++j) {
      dr[j] = rs * (to_f32(gr[j]) * w[j] - a[r] - (xr[j] - m) * rs * c[r]) + (res ? res[j] : 0.f);
      if (d16) from_f32(dr[j], d16[j]);
    }
  }
}

// s = x + a for n elements (x fp32, a fp32 or bf16): the residual add the norm after it is fused with.
template <typename a_t>
void add_rows(const float* x, const a_t* a, float* s, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(s + i, vload(x + i) + load16(a + i));
  for (; i < n; ++i) s[i] = x[i] + to_f32(a[i]);
}

constexpr int LN_ROWS = 4;  // rows side by side (above)

// Row chunks for the backward's per-chunk dw and db: a few per thread.
inline int64_t ln_chunks(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * at::get_num_threads())); }

// ---- GELU -------------------------------------------------------------------------------------------

// y = gelu(u) = u Φ(u) and its derivative d = Φ(u) + u φ(u) for elements [i0, i1), 16 at a time (the
// last few through a padded copy). erf gives e^(-u²/2) on the way, so the derivative costs a few
// multiplies: the backward is then dy · d, no erf or exp again.
template <typename T>
void gelu_range(const T* u, T* y, T* d, int64_t i0, int64_t i1) {
  const vf half = splat(0.5f), one = splat(1.0f), rsqrt2 = splat(0.70710678118654752f),
           rsqrt2pi = splat(0.39894228040143268f);
  auto one16 = [&](vf x, vf& out, vf& der) {
    vf gauss;
    const vf cdf = half * (one + verf(x * rsqrt2, gauss));
    out = x * cdf;
    der = cdf + x * gauss * rsqrt2pi;
  };
  int64_t i = i0;
  for (; i + W <= i1; i += W) {
    vf out, der;
    one16(load16(u + i), out, der);
    store16(y + i, out);
    store16(d + i, der);
  }
  if (i < i1) {
    T in[W] = {}, o[W], g[W];
    std::memcpy(in, u + i, (i1 - i) * sizeof(T));
    vf out, der;
    one16(load16(in), out, der);
    store16(o, out);
    store16(g, der);
    std::memcpy(y + i, o, (i1 - i) * sizeof(T));
    std::memcpy(d + i, g, (i1 - i) * sizeof(T));
  }
}

void check_ln(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat,
              "x must be a contiguous (rows, C) float32 CPU tensor");
  TORCH_CHECK(w.scalar_type() == torch::kFloat && w.is_contiguous() && w.numel() == x.size(1), "weight must be (C,) float32");
  TORCH_CHECK(b.numel() == 0 || (b.scalar_type() == torch::kFloat && b.is_contiguous() && b.numel() == x.size(1)),
              "bias must be (C,) float32 or empty");
}

}  // namespace

// (y in bf16 if `bf16_out` else fp32, mean, rstd, s) for LayerNorm over the last dim of s (rows, C) fp32,
// where s = x + residual when `residual` (rows, C, fp32 or bf16) is given (the residual add and the norm
// after it in one pass: s is returned for the stream), else s = x (and the 4th tensor is empty); `bias`
// empty for none.
std::vector<torch::Tensor> layer_norm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, double eps,
                                              bool bf16_out, torch::Tensor residual) {
  check_ln(x, weight, bias);
  const int64_t N = x.size(0), C = x.size(1);
  const bool add = residual.numel() > 0;
  TORCH_CHECK(!add || (residual.sizes() == x.sizes() && residual.is_contiguous() &&
                       (residual.scalar_type() == torch::kFloat || residual.scalar_type() == torch::kBFloat16)),
              "residual must be x's shape, contiguous, float32 or bfloat16");
  auto y = torch::empty({N, C}, x.options().dtype(bf16_out ? torch::kBFloat16 : torch::kFloat));
  auto mean = torch::empty({N}, x.options()), rstd = torch::empty({N}, x.options());
  auto sum = add ? torch::empty({N, C}, x.options()) : torch::empty({0}, x.options());
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  dispatch(y, [&](auto tag) {
    using out_t = decltype(tag);
    dispatch(add ? residual : x, [&](auto atag) {
      using a_t = decltype(atag);
      const float* w = weight.data_ptr<float>();
      const a_t* a = add ? data<a_t>(residual) : nullptr;
      float* s = add ? sum.data_ptr<float>() : nullptr;
      const float* in = add ? s : x.data_ptr<float>();
      out_t* out = data<out_t>(y);
      float *mu = mean.data_ptr<float>(), *rs = rstd.data_ptr<float>();
      const float e = static_cast<float>(eps);
      at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
        if (a) add_rows(x.data_ptr<float>() + r0 * C, a + r0 * C, s + r0 * C, (r1 - r0) * C);
        int64_t r = r0;
        for (; r + LN_ROWS <= r1; r += LN_ROWS)
          ln_forward_block<LN_ROWS>(in + r * C, w, b, out + r * C, mu + r, rs + r, C, e);
        for (; r < r1; ++r) ln_forward_block<1>(in + r * C, w, b, out + r * C, mu + r, rs + r, C, e);
      });
    });
  });
  return {y, mean, rstd, sum};
}

// (dx fp32, dweight, dbias, dx in bf16 or empty) of LayerNorm from the forward's input x, weight, mean
// and rstd and dy (fp32 or bf16); plus `dres` (fp32, x's shape) when given: the gradient the residual
// stream brings (for the fused add, whose two inputs get dx; `bf16_dx` also writes it in bf16 for a
// bf16 one).
std::vector<torch::Tensor> layer_norm_backward(torch::Tensor x, torch::Tensor weight, torch::Tensor mean,
                                               torch::Tensor rstd, torch::Tensor dy, torch::Tensor dres, bool bf16_dx) {
  check_ln(x, weight, torch::empty({0}));
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() &&
              (dy.scalar_type() == torch::kFloat || dy.scalar_type() == torch::kBFloat16), "dy must be x's shape, float32 or bfloat16");
  TORCH_CHECK(dres.numel() == 0 || (dres.sizes() == x.sizes() && dres.is_contiguous() && dres.scalar_type() == torch::kFloat),
              "dres must be x's shape, contiguous float32, or empty");
  TORCH_CHECK(mean.numel() == N && rstd.numel() == N, "mean and rstd must have a value per row");
  auto dx = torch::empty({N, C}, x.options());
  auto dx16 = bf16_dx ? torch::empty({N, C}, x.options().dtype(torch::kBFloat16)) : torch::empty({0}, x.options());
  const int64_t chunks = ln_chunks(N);
  auto parts = torch::zeros({2, chunks, C}, x.options());  // each chunk's dw and db, summed below
  dispatch(dy, [&](auto tag) {
    using g_t = decltype(tag);
    const float *in = x.data_ptr<float>(), *w = weight.data_ptr<float>();
    const float *mu = mean.data_ptr<float>(), *rs = rstd.data_ptr<float>();
    const float* res = dres.numel() ? dres.data_ptr<float>() : nullptr;
    const g_t* g = data<g_t>(dy);
    float *out = dx.data_ptr<float>(), *sums = parts.data_ptr<float>();
    uint16_t* out16 = bf16_dx ? data<uint16_t>(dx16) : nullptr;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        float *dw = sums + c * C, *db = sums + (chunks + c) * C;
        int64_t r = c * N / chunks;
        const int64_t end = (c + 1) * N / chunks;
        auto at_row = [&](auto block, int64_t r) {
          block(in + r * C, w, mu + r, rs + r, g + r * C, res ? res + r * C : nullptr, out + r * C,
                out16 ? out16 + r * C : nullptr, dw, db, C);
        };
        for (; r + LN_ROWS <= end; r += LN_ROWS) at_row(ln_backward_block<LN_ROWS, g_t>, r);
        for (; r < end; ++r) at_row(ln_backward_block<1, g_t>, r);
      }
    });
  });
  auto sums = parts.sum(1);
  return {dx, sums[0], sums[1], dx16};
}

// (gelu(u), its derivative at u) for a contiguous fp32 or bf16 u, both in u's dtype.
std::vector<torch::Tensor> gelu_forward(torch::Tensor u) {
  TORCH_CHECK(u.device().is_cpu() && u.is_contiguous() &&
              (u.scalar_type() == torch::kFloat || u.scalar_type() == torch::kBFloat16), "u must be a contiguous float32 or bfloat16 CPU tensor");
  auto y = torch::empty_like(u), d = torch::empty_like(u);
  dispatch(u, [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, u.numel(), 1 << 14, [&](int64_t i0, int64_t i1) {
      gelu_range(data<T>(u), data<T>(y), data<T>(d), i0, i1);
    });
  });
  return {y, d};
}

// dy · d (the saved derivative), both fp32 or both bf16, in their dtype: GELU's backward in one pass
// over the elements (1.57 M bf16 elements: ~120 µs, ATen's multiply ~150).
torch::Tensor gelu_backward(torch::Tensor dy, torch::Tensor d) {
  TORCH_CHECK(dy.device().is_cpu() && dy.is_contiguous() && d.is_contiguous() && dy.sizes() == d.sizes() &&
              dy.scalar_type() == d.scalar_type() &&
              (dy.scalar_type() == torch::kFloat || dy.scalar_type() == torch::kBFloat16),
              "dy and d must be contiguous CPU tensors of one shape, both float32 or both bfloat16");
  auto dx = torch::empty_like(dy);
  dispatch(dy, [&](auto tag) {
    using T = decltype(tag);
    const T *g = data<T>(dy), *s = data<T>(d);
    T* out = data<T>(dx);
    at::parallel_for(0, dy.numel(), 1 << 14, [&](int64_t i0, int64_t i1) {
      int64_t i = i0;
      for (; i + W <= i1; i += W) store16(out + i, load16(g + i) * load16(s + i));
      for (; i < i1; ++i) from_f32(to_f32(g[i]) * to_f32(s[i]), out[i]);
    });
  });
  return dx;
}

// ---- Threads ---------------------------------------------------------------------------------------

// Sets the CPU affinity of each thread of the calling thread's OpenMP team, the threads torch's CPU
// ops and these kernels run on: thread t may run on cpus[t % cpus.size()]. Returns the team's size,
// or 0 where it could not (not Linux, or the system refused).
int64_t set_team_affinity(std::vector<std::vector<int64_t>> cpus) {
#ifdef __linux__
  TORCH_CHECK(!cpus.empty(), "one list of CPUs at least");
  const int n = at::get_num_threads();
  int ok = 1;
#pragma omp parallel num_threads(n) reduction(min : ok)
  {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (const int64_t c : cpus[omp_get_thread_num() % cpus.size()]) CPU_SET(static_cast<int>(c), &set);
    ok = sched_setaffinity(0, sizeof set, &set) == 0;
  }
  return ok ? n : 0;
#else
  return 0;
#endif
}

// ---- Muon ------------------------------------------------------------------------------------------

namespace {

void check_muon_list(const std::vector<torch::Tensor>& ts, const std::vector<bool>& tall, int64_t& m, int64_t& n) {
  TORCH_CHECK(!ts.empty() && ts.size() == tall.size(), "one tall flag per matrix");
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous() && t.scalar_type() == torch::kFloat,
                "Muon's matrices must be contiguous 2-D float32 CPU tensors");
    const int64_t r = tall[i] ? t.size(1) : t.size(0), c = tall[i] ? t.size(0) : t.size(1);
    if (i == 0) {
      m = r;
      n = c;
    }
    TORCH_CHECK(r == m && c == n, "the matrices of a stack must have one shape (tall ones transposed)");
  }
}

}  // namespace

// v rounded to bf16 and back (the value torch's bf16 tensor would hold).
inline vf round_bf16(vf v) {
  uint16_t h[W];
  store16(h, v);
  return load16(h);
}
inline float round_bf16(float v) {
  uint16_t h;
  from_f32(v, h);
  return to_f32(h);
}

// The stack Newton–Schulz starts from: (k, m, n) bf16, matrix i = updates[i] (transposed when tall[i])
// divided by max(its Frobenius norm × norm_scale, eps), with torch's bf16 steps (BatchedMuon's torch
// path: the update rounded to bf16, its norm and the divisor rounded, the quotient rounded). The same
// roundings keep the same robustness: an update that differs in its last fp32 bits (a sum of micro-
// batches against the whole batch, DDP against one process) rounds to the same bf16 stack.
torch::Tensor muon_stack(std::vector<torch::Tensor> updates, std::vector<bool> tall, double norm_scale, double eps) {
  int64_t m = 0, n = 0;
  check_muon_list(updates, tall, m, n);
  const int64_t k = static_cast<int64_t>(updates.size());
  auto out = torch::empty({k, m, n}, updates[0].options().dtype(torch::kBFloat16));
  uint16_t* o = data<uint16_t>(out);
  at::parallel_for(0, k, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* u = updates[i].data_ptr<float>();
      const int64_t size = m * n, rows = updates[i].size(0), cols = updates[i].size(1);
      vf acc{};
      int64_t j = 0;
      for (; j + W <= size; j += W) {
        const vf r = round_bf16(vload(u + j));
        acc += r * r;
      }
      float sq = hsum(acc);
      for (; j < size; ++j) sq += round_bf16(u[j]) * round_bf16(u[j]);
      const float d = std::max(round_bf16(round_bf16(std::sqrt(sq)) * static_cast<float>(norm_scale)),
                               round_bf16(static_cast<float>(eps)));
      uint16_t* oi = o + i * size;
      if (!tall[i]) {
        for (j = 0; j + W <= size; j += W) store16(oi + j, round_bf16(vload(u + j)) / splat(d));
        for (; j < size; ++j) from_f32(round_bf16(u[j]) / d, oi[j]);
      } else {  // oi[c][r] = u[r][c]: 16 rows of a column at a time, written as one vector
        for (int64_t r0 = 0; r0 < rows; r0 += W) {
          const int64_t nr = std::min<int64_t>(W, rows - r0);
          for (int64_t c = 0; c < cols; ++c) {
            float col[W] = {};
            for (int64_t r = 0; r < nr; ++r) col[r] = u[(r0 + r) * cols + c];
            const vf q = round_bf16(vload(col)) / splat(d);
            if (nr == W) {
              store16(oi + c * rows + r0, q);
            } else {
              float f[W];
              vstore(f, q);
              for (int64_t r = 0; r < nr; ++r) from_f32(f[r], oi[c * rows + r0 + r]);
            }
          }
        }
      }
    }
  });
  return out;
}

// params[i] = params[i] × decay + scales[i] × ortho[i] (ortho (k, m, n) bf16; transposed back when
// tall[i]): Muon's weight decay and update, in place, each parameter's version bumped as an in-place
// torch op would (caches keyed on it see the change).
void muon_apply(std::vector<torch::Tensor> params, torch::Tensor ortho, std::vector<bool> tall, std::vector<double> scales,
                double decay) {
  int64_t m = 0, n = 0;
  check_muon_list(params, tall, m, n);
  const int64_t k = static_cast<int64_t>(params.size());
  TORCH_CHECK(ortho.scalar_type() == torch::kBFloat16 && ortho.is_contiguous() && ortho.dim() == 3 && ortho.size(0) == k &&
              ortho.size(1) == m && ortho.size(2) == n, "ortho must be the (k, m, n) bf16 stack of these matrices");
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == k, "one scale per matrix");
  const uint16_t* o = data<uint16_t>(ortho);
  const float d = static_cast<float>(decay);
  at::parallel_for(0, k, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* p = params[i].data_ptr<float>();
      const uint16_t* oi = o + i * m * n;
      const float sc = static_cast<float>(scales[i]);
      const int64_t rows = params[i].size(0), cols = params[i].size(1), size = rows * cols;
      if (!tall[i]) {
        int64_t j = 0;
        for (; j + W <= size; j += W) vstore(p + j, vload(p + j) * splat(d) + splat(sc) * load16(oi + j));
        for (; j < size; ++j) p[j] = p[j] * d + sc * to_f32(oi[j]);
      } else {  // p[r][c] from oi[c][r]
        for (int64_t r0 = 0; r0 < rows; r0 += W) {
          const int64_t nr = std::min<int64_t>(W, rows - r0);
          for (int64_t c = 0; c < cols; ++c) {
            float col[W];
            if (nr == W) {
              vstore(col, load16(oi + c * rows + r0));
            } else {
              for (int64_t r = 0; r < nr; ++r) col[r] = to_f32(oi[c * rows + r0 + r]);
            }
            for (int64_t r = 0; r < nr; ++r) p[(r0 + r) * cols + c] = p[(r0 + r) * cols + c] * d + sc * col[r];
          }
        }
      }
    }
  });
  for (auto& p : params) p.unsafeGetTensorImpl()->bump_version();
}

