// The Python bindings of minigpt's compiled kernels (one extension, built by minigpt/decode_kernel.py):
// the decoding step (decode_step.cpp) and training's attention (train_kernels.cpp).
#include <torch/extension.h>

#include <vector>

torch::Tensor decode_step(int64_t token, int64_t pos, const std::vector<torch::Tensor>& w, torch::Tensor kcache,
                          torch::Tensor vcache, int64_t n_layer, int64_t n_head, int64_t norm, bool residual,
                          bool mlp, int64_t act, double eps);
std::vector<torch::Tensor> attention_forward(torch::Tensor qkv, int64_t n_head);
torch::Tensor attention_backward(torch::Tensor qkv, torch::Tensor y, torch::Tensor probs, torch::Tensor dy, int64_t n_head);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_step", &decode_step, "one cached decoding step of minigpt's GPT (batch 1, fp32, CPU)");
  m.def("attention_forward", &attention_forward, "causal self-attention for training: (y, probs) from c_attn's output");
  m.def("attention_backward", &attention_backward, "the gradient of c_attn's output from (qkv, y, probs, dy)");
}
