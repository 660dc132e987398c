// One cached decoding step of minigpt's GPT (batch 1, CPU, fp32 or bf16 weights) in a single call.
//
// Why: the eager step runs ~80 small torch ops (~1.6 ms of dispatch and Python on a 2-core CPU)
// and torch's one-row matrix products stream the weights at about half the memory bandwidth. A
// decoding step reads every weight once, so its floor is the weights' bytes over the bandwidth;
// here each matrix-vector product is a loop over rows split among the OpenMP threads, the
// attention over the cache is split by heads, and the norms are a few microseconds of loops. The
// whole step is one parallel region (a region's start costs more than the barriers between the
// products, and a step has 25 of them). With bf16 weights (and caches) the step reads half the
// bytes; its arithmetic stays fp32 (each weight widened as it is read), so it is the fp32 model
// with rounded weights. Built on first use by minigpt/decode_kernel.py; the eager model is the
// reference it is tested against (tests/test_decode_kernel.py).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "kernel_vectors.h"

// The next token drawn from one row of fp32 logits as minigpt/sampling.py's sample_next draws it
// with no top-k / top-p filter (strategy 0 greedy: the argmax; 1 multinomial; 2 temperature: the
// logits divided by it), and what minigpt/generate.py's StepMaker says of it: (token, its
// probability at T = 1, the top_n most likely tokens, their probabilities). The same token from the
// same generator, the same probabilities. Why: between two decoding steps those ~15 torch ops
// (with multinomial's own) took ~160 us from Python, most of it refetching code and data that the
// step's stream of weights had pushed out of the caches; here 3-4 ops and loops.
py::tuple draw(const torch::Tensor& logits, int64_t strategy, double temperature, std::optional<at::Generator> gen,
               int64_t top_n);

// A model's weights for the decoding step, checked once: `w` holds, in order, wte, wpe (empty
// without position embeddings), then per layer ln_1 weight, ln_1 bias, c_attn weight, c_attn bias,
// attn c_proj weight, its bias, ln_2 weight, ln_2 bias, c_fc weight, its bias, mlp c_proj weight,
// its bias (empty tensors for what the model has not), then ln_f weight and bias. It keeps the
// tensors (views of the parameters, so training in place is seen, or copies of them: below) and
// their data pointers: a step then costs no conversion of ~75 tensors from Python.
//
// Copies: with `sources` (the parameters, one per weight), `w` are copies of them (in huge pages:
// minigpt/hugepages.py), and `seen` (int64, one per weight) holds each source's version when last
// copied (-1: never). Each step first copies the sources whose version moved, so training in place
// is seen by the next step as with views.
struct DecodePlan {
  std::vector<torch::Tensor> w, sources;
  torch::Tensor seen;
  std::vector<const void*> ptrs;
  int64_t n_layer, n_head, norm, act, vocab, width, positions;  // positions: wpe's rows (0: none)
  bool residual, mlp;
  double eps;
  torch::ScalarType type;

  DecodePlan(std::vector<torch::Tensor> weights, int64_t n_layer, int64_t n_head, int64_t norm, bool residual,
             bool mlp, int64_t act, double eps, std::vector<torch::Tensor> sources, std::optional<torch::Tensor> seen);
  // The logits (vocab) of `token` at position `pos`, writing its keys and values into the caches
  // (n_layer, 1, n_head, block, head_size) at `pos`.
  torch::Tensor step(int64_t token, int64_t pos, torch::Tensor kcache, torch::Tensor vcache);
  // Copies what changed in the sources since it was last copied (nothing without sources).
  void refresh();
};

namespace {

using bf16 = c10::BFloat16;

// A stored value as fp32 (bf16 is the top half of an fp32: a shift), and back.
inline float f32(float v) { return v; }
inline float f32(bf16 v) { return to_f32(v.x); }
inline void store(float* p, float v) { *p = v; }
inline void store(bf16* p, float v) { from_f32(v, p->x); }

// 16 stored values from p as fp32.
inline vf widen(const float* p) { return vload(p); }
inline vf widen(const bf16* p) { return load16(reinterpret_cast<const uint16_t*>(p)); }

// The dot product of n stored values with n floats: two vector sums, one tree at the end.
template <typename T>
inline float dot(const T* w, const float* x, int64_t n) {
  vf s0{}, s1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 += widen(w + i) * vload(x + i);
    s1 += widen(w + i + W) * vload(x + i + W);
  }
  for (; i + W <= n; i += W) s0 += widen(w + i) * vload(x + i);
  float s = hsum(s0 + s1);
  for (; i < n; ++i) s += f32(w[i]) * x[i];
  return s;
}

// The same for bf16 weights, with x split into its even and odd elements (xe, xo: n / 2 each):
// 32 bf16 loaded as 16 pairs give the odd ones by a mask and the even ones by a shift, two
// instructions for 32 weights where widening 16 at a time takes ~6.
inline float dot_pairs(const bf16* w, const float* xe, const float* xo, const float* x, int64_t n) {
  vf s0{}, s1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    vu u;
    std::memcpy(&u, w + i, sizeof u);
    const vu lo = u << 16, hi = u & 0xffff0000u;
    vf e, o;
    std::memcpy(&e, &lo, sizeof e);
    std::memcpy(&o, &hi, sizeof o);
    s0 += e * vload(xe + i / 2);
    s1 += o * vload(xo + i / 2);
  }
  float s = hsum(s0 + s1);
  for (; i < n; ++i) s += f32(w[i]) * x[i];
  return s;
}

// act: 0 GELU (exact, erf), 1 ReLU, 2 sigmoid, 3 tanh; 16 at a time.
inline vf activate(vf v, int act) {
  if (act == 0) return splat(0.5f) * v * (splat(1.0f) + verf(v * splat(0.70710678118654752f)));
  if (act == 1) return v > splat(0.f) ? v : splat(0.f);
  float f[W];
  vstore(f, v);
  for (int i = 0; i < W; ++i) f[i] = act == 2 ? 1.0f / (1.0f + std::exp(-f[i])) : std::tanh(f[i]);
  return vload(f);
}

// y = act(M x + b) (act < 0: none; b may be null): M is (out, in), row-major. Called by every
// thread of the step's team, which share the rows in blocks of 16 (and wait for each other at
// the end); each block's activation is done on the 16 at once.
template <typename T>
void gemv(const T* M, const float* x, const T* b, float* y, int64_t out, int64_t in, int act = -1) {
  const float *xe = nullptr, *xo = nullptr;
  if constexpr (std::is_same_v<T, bf16>) {  // each thread its own even / odd split of x (for dot_pairs)
    static thread_local std::vector<float> split;
    split.resize(in + W);
    for (int64_t i = 0; i < in / 2; ++i) split[i] = x[2 * i], split[in / 2 + i] = x[2 * i + 1];
    xe = split.data(), xo = split.data() + in / 2;
  }
  const int64_t blocks = (out + W - 1) / W;
#pragma omp for schedule(static)
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t j0 = k * W, n = std::min(W, out - j0);
    float s[W] = {};
    for (int64_t j = 0; j < n; ++j) {
      const T* row = M + (j0 + j) * in;
      if constexpr (std::is_same_v<T, bf16>) s[j] = dot_pairs(row, xe, xo, x, in);
      else s[j] = dot(row, x, in);
      s[j] += b ? f32(b[j0 + j]) : 0.f;
    }
    if (act >= 0) vstore(s, activate(vload(s), act));
    std::copy(s, s + n, y + j0);
  }
}

// norm: 0 none, 1 LayerNorm, 2 RMSNorm (as torch.nn's, eps inside the square root).
template <typename T>
void normalise(const float* x, float* out, int64_t n, int norm, const T* w, const T* b, double eps) {
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
    out[i] = (w ? v * f32(w[i]) : v) + (b ? f32(b[i]) : 0.f);
  }
}

// One head of attention for the query q at position pos over the cache's (block, hs) keys K and
// values V (this position's already written): out (hs), scores (block) its scratch. As it reads
// each key it asks for the value it will weigh, and for the next head's key and value at that
// position (nextK, nextV; null for none): a head's cache is ~2 x 32 KB at position 128, short
// streams whose first misses the hardware's prefetcher does not hide (the fp32 step 4-10% faster,
// bf16 3-5%).
template <typename T>
void attend(const float* q, const T* K, const T* V, int64_t pos, int64_t hs, float scale, float* scores, float* out,
            const T* nextK = nullptr, const T* nextV = nullptr) {
  float top = -INFINITY;
  for (int64_t t = 0; t <= pos; ++t) {  // the causal mask: positions up to this one
    for (int64_t i = 0; i < hs; i += 64 / sizeof(T)) {
      __builtin_prefetch(V + t * hs + i);
      if (nextK) __builtin_prefetch(nextK + t * hs + i), __builtin_prefetch(nextV + t * hs + i);
    }
    scores[t] = dot(K + t * hs, q, hs) * scale;
    top = std::max(top, scores[t]);
  }
  float total = 0.f;
  for (int64_t t = 0; t <= pos; ++t) total += (scores[t] = std::exp(scores[t] - top));
  for (int64_t t = 0; t <= pos; ++t) scores[t] /= total;
  // 16 columns of the weighted sum at a time, kept in registers over the positions (adding
  // into memory would make each position wait on the last one's store).
  int64_t i = 0;
  for (; i + W <= hs; i += W) {
    vf s0{}, s1{};
    int64_t t = 0;
    for (; t + 1 <= pos; t += 2) {
      s0 += splat(scores[t]) * widen(V + t * hs + i);
      s1 += splat(scores[t + 1]) * widen(V + (t + 1) * hs + i);
    }
    if (t <= pos) s0 += splat(scores[t]) * widen(V + t * hs + i);
    vstore(out + i, s0 + s1);
  }
  for (; i < hs; ++i) {
    float s = 0.f;
    for (int64_t t = 0; t <= pos; ++t) s += scores[t] * f32(V[t * hs + i]);
    out[i] = s;
  }
}

// The step for weights and caches of type T (float or bf16); see DecodePlan::step below.
template <typename T>
torch::Tensor step(const DecodePlan& plan, int64_t token, int64_t pos, torch::Tensor& kcache, torch::Tensor& vcache) {
  const int64_t n_layer = plan.n_layer, n_head = plan.n_head, norm = plan.norm;
  const bool residual = plan.residual, mlp = plan.mlp;
  const double eps = plan.eps;
  const int64_t V = plan.vocab, C = plan.width, hs = C / n_head, block = kcache.size(3), H = 4 * C;
  auto P = [&](int64_t i) { return static_cast<const T*>(plan.ptrs[i]); };  // the i-th weight (null: none)
  std::vector<float> x(C), a(C), qkv(3 * C), y(C), h(mlp ? H : 0), scores(n_head * block);
  const T* wte = P(0);
  const T* wpe = P(1);
  for (int64_t i = 0; i < C; ++i) x[i] = f32(wte[token * C + i]) + (wpe ? f32(wpe[pos * C + i]) : 0.f);
  T* K = kcache.data_ptr<T>();
  T* Vc = vcache.data_ptr<T>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  auto logits = torch::empty({V}, kcache.options().dtype(torch::kFloat32));
  float* out = logits.data_ptr<float>();
  const int a_ = static_cast<int>(plan.act);
  // Every thread runs this block. The residual stream and the normalised vector are each thread's
  // own (xp, np: the same values in each): the norms and the residual adds are ~1 us of work, so
  // every thread does them instead of one doing them while the others wait at a barrier. What the
  // threads share (qkv, y, h, a) is written by one product and read after its barrier.
#pragma omp parallel if (C * C * n_layer >= 65536)
  {
    std::vector<float> xp(x), np(C);
    for (int64_t l = 0; l < n_layer; ++l) {
      const int64_t p = 2 + 12 * l;  // this layer's first weight
      normalise(xp.data(), np.data(), C, norm, P(p + 0), P(p + 1), eps);
      gemv(P(p + 2), np.data(), P(p + 3), qkv.data(), 3 * C, C);
#pragma omp for schedule(static)
      for (int64_t head = 0; head < n_head; ++head) {
        const int64_t base = ((l * n_head) + head) * block * hs;  // this layer's and head's (block, hs)
        for (int64_t i = 0; i < hs; ++i) {  // this position's key and value, as the cache stores them
          store(K + base + pos * hs + i, qkv[C + head * hs + i]);
          store(Vc + base + pos * hs + i, qkv[2 * C + head * hs + i]);
        }
        const bool more = head + 1 < n_head;
        attend(qkv.data() + head * hs, K + base, Vc + base, pos, hs, scale, scores.data() + head * block,
               y.data() + head * hs, more ? K + base + block * hs : nullptr,
               more ? Vc + base + block * hs : nullptr);
      }
      gemv(P(p + 4), y.data(), P(p + 5), a.data(), C, C);
      for (int64_t i = 0; i < C; ++i) xp[i] = residual ? xp[i] + a[i] : a[i];
      if (mlp) {
        normalise(xp.data(), np.data(), C, norm, P(p + 6), P(p + 7), eps);
        gemv(P(p + 8), np.data(), P(p + 9), h.data(), H, C, a_);  // the activation of each row as it is done
        gemv(P(p + 10), h.data(), P(p + 11), a.data(), C, H);  // (a is rewritten after the barrier above)
        for (int64_t i = 0; i < C; ++i) xp[i] = residual ? xp[i] + a[i] : a[i];
      }
    }
    const int64_t f = 2 + 12 * n_layer;
    normalise(xp.data(), np.data(), C, norm, P(f), P(f + 1), eps);
    gemv(wte, np.data(), static_cast<const T*>(nullptr), out, V, C);  // the head is the tied embedding
  }
  return logits;
}

}  // namespace

DecodePlan::DecodePlan(std::vector<torch::Tensor> weights, int64_t n_layer_, int64_t n_head_, int64_t norm_,
                       bool residual_, bool mlp_, int64_t act_, double eps_, std::vector<torch::Tensor> sources_,
                       std::optional<torch::Tensor> seen_)
    : w(std::move(weights)), sources(std::move(sources_)), n_layer(n_layer_), n_head(n_head_), norm(norm_), act(act_),
      residual(residual_), mlp(mlp_), eps(eps_) {
  TORCH_CHECK(n_layer >= 1 && n_head >= 1 && static_cast<int64_t>(w.size()) == 4 + 12 * n_layer,
              "expected ", 4 + 12 * n_layer, " weights for ", n_layer, " layers, got ", w.size());
  TORCH_CHECK(w[0].dim() == 2 && w[0].size(1) % n_head == 0, "wte must be (vocab, width), the width a multiple of the heads");
  vocab = w[0].size(0), width = w[0].size(1), type = w[0].scalar_type();
  TORCH_CHECK(type == torch::kFloat32 || type == torch::kBFloat16, "the weights must be float32 or bfloat16");
  const int64_t C = width;
  // Each weight's size (0: the model may lack it; required ones are checked below): a wrong one
  // would be read past its end.
  std::vector<int64_t> size{vocab * C, -1};
  for (int64_t l = 0; l < n_layer; ++l)
    size.insert(size.end(), {C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C});
  size.insert(size.end(), {C, C});
  for (size_t i = 0; i < w.size(); ++i) {
    const auto& t = w[i];
    TORCH_CHECK(!t.numel() || (t.scalar_type() == type && t.is_contiguous() && t.device().is_cpu()),
                "every weight must be on the CPU, contiguous, with one dtype");
    const int64_t want = size[i], at = i < 2 ? -1 : (static_cast<int64_t>(i) - 2) % 12;
    const bool required = at == 2 || at == 4 || (mlp && (at == 8 || at == 10));
    TORCH_CHECK(want < 0 ? t.numel() % C == 0 : (t.numel() == want || (!required && !t.numel())),
                "weight ", i, " has ", t.numel(), " elements, expected ", want);
    ptrs.push_back(t.numel() ? t.data_ptr() : nullptr);
  }
  positions = w[1].numel() / C;
  if (sources.empty()) return;
  TORCH_CHECK(sources.size() == w.size() && seen_ && seen_->scalar_type() == torch::kInt64 &&
              seen_->is_contiguous() && seen_->numel() == static_cast<int64_t>(w.size()),
              "copies need one source and one version per weight");
  seen = *seen_;
  for (size_t i = 0; i < w.size(); ++i)
    TORCH_CHECK(sources[i].numel() == w[i].numel() && (!w[i].numel() || (sources[i].scalar_type() == type &&
                sources[i].is_contiguous() && sources[i].device().is_cpu())), "source ", i, " is not its weight's shape");
}

void DecodePlan::refresh() {
  int64_t* version = sources.empty() ? nullptr : seen.data_ptr<int64_t>();
  for (size_t i = 0; i < sources.size(); ++i) {
    const auto& s = sources[i];
    if (!s.numel() || s._version() == version[i]) continue;
    std::memcpy(const_cast<void*>(ptrs[i]), s.data_ptr(), s.numel() * s.element_size());
    version[i] = s._version();
  }
}

torch::Tensor DecodePlan::step(int64_t token, int64_t pos, torch::Tensor kcache, torch::Tensor vcache) {
  const int64_t block = kcache.size(3);
  // Out of range would read or write past the tables and the caches: refuse instead.
  TORCH_CHECK(token >= 0 && token < vocab, "token ", token, " is outside the vocabulary of ", vocab);
  TORCH_CHECK(pos >= 0 && pos < block, "position ", pos, " is outside the context of ", block, " (the cache is full)");
  TORCH_CHECK(!positions || pos < positions, "position ", pos, " has no position embedding (", positions, " rows)");
  TORCH_CHECK(kcache.is_contiguous() && vcache.is_contiguous() && kcache.size(0) == n_layer && kcache.size(1) == 1 &&
              kcache.size(2) == n_head && kcache.size(4) == width / n_head && vcache.sizes() == kcache.sizes(),
              "the caches must be contiguous (n_layer, 1, n_head, block, head_size)");
  TORCH_CHECK(kcache.scalar_type() == type && vcache.scalar_type() == type, "the caches must have the weights' dtype");
  refresh();
  return type == torch::kBFloat16 ? ::step<bf16>(*this, token, pos, kcache, vcache)
                                  : ::step<float>(*this, token, pos, kcache, vcache);
}

py::tuple draw(const torch::Tensor& logits, int64_t strategy, double temperature, std::optional<at::Generator> gen,
               int64_t top_n) {
  TORCH_CHECK(logits.dim() == 1 && logits.scalar_type() == torch::kFloat32 && logits.device().is_cpu() &&
              logits.is_contiguous() && logits.numel(), "draw takes one row of fp32 logits on the CPU");
  TORCH_CHECK(strategy >= 0 && strategy <= 2 && temperature > 0 && top_n >= 0, "draw: no such strategy or settings");
  const int64_t V = logits.size(0);
  // NaN counts as the largest, as in torch's argmax and topk (a diverged model's logits).
  auto above = [](float a, float b) { return (a > b) || (a != a && b == b); };
  const auto probs = at::softmax(logits, -1);  // StepMaker's: the model's view at T = 1
  const float* p = probs.data_ptr<float>();
  int64_t token = 0;
  if (strategy == 0) {  // the first largest logit, as argmax
    const float* l = logits.data_ptr<float>();
    for (int64_t i = 1; i < V; ++i) token = above(l[i], l[token]) ? i : token;
  } else {
    // torch.multinomial's single draw as ATen makes it (Distributions.cpp): it checks the
    // probabilities, then takes the argmax of p / q with q ~ Exp(1) from the generator. The same
    // softmax and exponential_, so the same token (the suite checks it against sample_next).
    const auto row = strategy == 2 ? at::softmax(logits.unsqueeze(0) / temperature, -1) : probs.unsqueeze(0);
    const float* a = row.data_ptr<float>();
    double total = 0;
    for (int64_t i = 0; i < V; ++i) {
      TORCH_CHECK(a[i] >= 0 && a[i] < INFINITY, "probability tensor contains either `inf`, `nan` or element < 0");
      total += a[i];
    }
    TORCH_CHECK(total > 0, "invalid multinomial distribution (sum of probabilities <= 0)");
    const auto q = at::empty_like(row).exponential_(1, gen);
    const float* b = q.data_ptr<float>();
    for (int64_t i = 1; i < V; ++i) token = above(a[i] / b[i], a[token] / b[token]) ? i : token;
  }
  // The top_n most likely tokens, the larger probability first (equal ones: the smaller id first),
  // in one pass that keeps them in order.
  std::vector<int64_t> top;
  const size_t k = static_cast<size_t>(std::min(top_n, V));
  for (int64_t i = 0; i < V; ++i) {
    if (top.size() == k && (k == 0 || !above(p[i], p[top.back()]))) continue;
    auto at = top.end();
    while (at != top.begin() && above(p[i], p[*(at - 1)])) --at;
    top.insert(at, i);
    if (top.size() > k) top.pop_back();
  }
  py::list ids, chances;
  for (int64_t i : top) ids.append(i), chances.append(p[i]);
  return py::make_tuple(token, p[token], ids, chances);
}
