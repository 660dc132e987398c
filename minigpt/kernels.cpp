// minigpt's compiled kernels as one translation unit (built by minigpt/decode_kernel.py): the
// decoding step (decode_step.cpp) and training's attention (train_kernels.cpp), and their Python
// bindings. One unit, not three: each includes torch's headers, which are most of the compile time
// (~29 s here, against ~48 s for three units on 2 cores).
#include "decode_step.cpp"
#include "train_kernels.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_step", &decode_step, "one cached decoding step of minigpt's GPT (batch 1, fp32, CPU)");
  m.def("attention_forward", &attention_forward, "causal self-attention for training: (y, probs) from c_attn's output");
  m.def("attention_backward", &attention_backward, "the gradient of c_attn's output from (qkv, y, probs, dy)");
}
