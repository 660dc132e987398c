// One cached decoding step of minigpt's GPT (batch 1, fp32, CPU) in a single call.
//
// Why: the eager step runs ~80 small torch ops (~1.6 ms of dispatch and Python on a 2-core CPU)
// and torch's one-row matrix products stream the weights at about half the memory bandwidth. A
// decoding step reads every weight once, so its floor is the weights' bytes over the bandwidth;
// here each matrix-vector product is a plain loop over rows split among the OpenMP threads, and
// everything else (norms, attention over the cache, the activation) is a few microseconds of
// loops. Built on first use by minigpt/decode_kernel.py; the eager model is the reference it is
// tested against (tests/test_decode_kernel.py).
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

const float* ptr(const torch::Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

// y = W x (+ b): W is (out, in), row-major. Rows are shared among the threads.
void gemv(const float* W, const float* x, const float* b, float* y, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static) if (out * in >= 32768)
  for (int64_t j = 0; j < out; ++j) {
    const float* row = W + j * in;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < in; ++i) s += row[i] * x[i];
    y[j] = b ? s + b[j] : s;
  }
}

// norm: 0 none, 1 LayerNorm, 2 RMSNorm (as torch.nn's, eps inside the square root).
void normalise(const float* x, float* out, int64_t n, int norm, const float* w, const float* b, double eps) {
  if (norm == 0) {
    std::copy(x, x + n, out);
    return;
  }
  double mean = 0.0, sq = 0.0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean = norm == 1 ? mean / n : 0.0;
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.0f / std::sqrt(static_cast<float>(sq / n + eps));
  for (int64_t i = 0; i < n; ++i) {
    float v = (x[i] - static_cast<float>(mean)) * inv;
    out[i] = (w ? v * w[i] : v) + (b ? b[i] : 0.f);
  }
}

// act: 0 GELU (exact, erf), 1 ReLU, 2 sigmoid, 3 tanh.
void activate(float* x, int64_t n, int act) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    if (act == 0) x[i] = 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    else if (act == 1) x[i] = v > 0.f ? v : 0.f;
    else if (act == 2) x[i] = 1.0f / (1.0f + std::exp(-v));
    else x[i] = std::tanh(v);
  }
}

}  // namespace

// The logits (vocab) of `token` at position `pos`, writing its keys and values into the caches
// (n_layer, 1, n_head, block, head_size) at `pos`. `w` holds, in order: wte, wpe (empty without
// position embeddings), then per layer ln_1 weight, ln_1 bias, c_attn weight, c_attn bias,
// attn c_proj weight, its bias, ln_2 weight, ln_2 bias, c_fc weight, its bias, mlp c_proj weight,
// its bias (empty tensors for what the model has not), then ln_f weight and bias.
torch::Tensor decode_step(int64_t token, int64_t pos, const std::vector<torch::Tensor>& w, torch::Tensor kcache,
                          torch::Tensor vcache, int64_t n_layer, int64_t n_head, int64_t norm, bool residual,
                          bool mlp, int64_t act, double eps) {
  const int64_t V = w[0].size(0), C = w[0].size(1), hs = C / n_head, block = kcache.size(3), H = 4 * C;
  // Out of range would read or write past the tables and the caches: refuse instead.
  TORCH_CHECK(token >= 0 && token < V, "token ", token, " is outside the vocabulary of ", V);
  TORCH_CHECK(pos >= 0 && pos < block, "position ", pos, " is outside the context of ", block, " (the cache is full)");
  TORCH_CHECK(kcache.is_contiguous() && vcache.is_contiguous() && kcache.size(0) == n_layer && kcache.size(1) == 1,
              "the caches must be contiguous (n_layer, 1, n_head, block, head_size)");
  std::vector<float> x(C), a(C), qkv(3 * C), y(C), h(mlp ? H : 0), scores(block);
  const float* wte = ptr(w[0]);
  const float* wpe = ptr(w[1]);
  for (int64_t i = 0; i < C; ++i) x[i] = wte[token * C + i] + (wpe ? wpe[pos * C + i] : 0.f);
  float* K = kcache.data_ptr<float>();
  float* Vc = vcache.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  for (int64_t l = 0; l < n_layer; ++l) {
    const torch::Tensor* p = &w[2 + 12 * l];
    normalise(x.data(), a.data(), C, norm, ptr(p[0]), ptr(p[1]), eps);
    gemv(ptr(p[2]), a.data(), ptr(p[3]), qkv.data(), 3 * C, C);
    for (int64_t head = 0; head < n_head; ++head) {
      const int64_t base = ((l * n_head) + head) * block * hs;  // this layer's and head's (block, hs)
      const float* q = qkv.data() + head * hs;
      std::copy(qkv.data() + C + head * hs, qkv.data() + C + (head + 1) * hs, K + base + pos * hs);
      std::copy(qkv.data() + 2 * C + head * hs, qkv.data() + 2 * C + (head + 1) * hs, Vc + base + pos * hs);
      float top = -INFINITY;
      for (int64_t t = 0; t <= pos; ++t) {  // the causal mask: positions up to this one
        const float* k = K + base + t * hs;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < hs; ++i) s += q[i] * k[i];
        scores[t] = s * scale;
        top = std::max(top, scores[t]);
      }
      float total = 0.f;
      for (int64_t t = 0; t <= pos; ++t) total += (scores[t] = std::exp(scores[t] - top));
      float* out = y.data() + head * hs;
      std::fill(out, out + hs, 0.f);
      for (int64_t t = 0; t <= pos; ++t) {
        const float* v = Vc + base + t * hs;
        const float pt = scores[t] / total;
        for (int64_t i = 0; i < hs; ++i) out[i] += pt * v[i];
      }
    }
    gemv(ptr(p[4]), y.data(), ptr(p[5]), a.data(), C, C);
    for (int64_t i = 0; i < C; ++i) x[i] = residual ? x[i] + a[i] : a[i];
    if (mlp) {
      normalise(x.data(), a.data(), C, norm, ptr(p[6]), ptr(p[7]), eps);
      gemv(ptr(p[8]), a.data(), ptr(p[9]), h.data(), H, C);
      activate(h.data(), H, static_cast<int>(act));
      gemv(ptr(p[10]), h.data(), ptr(p[11]), a.data(), C, H);
      for (int64_t i = 0; i < C; ++i) x[i] = residual ? x[i] + a[i] : a[i];
    }
  }
  const torch::Tensor* f = &w[2 + 12 * n_layer];
  normalise(x.data(), a.data(), C, norm, ptr(f[0]), ptr(f[1]), eps);
  auto logits = torch::empty({V}, w[0].options());
  gemv(wte, a.data(), nullptr, logits.data_ptr<float>(), V, C);  // the head is the tied embedding
  return logits;
}
