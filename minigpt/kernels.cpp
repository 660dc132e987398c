// minigpt's compiled kernels as one translation unit (built by minigpt/decode_kernel.py): the
// decoding step (decode_step.cpp), training's attention, LayerNorm, GELU and Muon's two ends
// (train_kernels.cpp), and their Python bindings. One unit, not three: each includes torch's headers,
// which are most of the compile time (~29 s here, against ~48 s for three units on 2 cores).
#include "decode_step.cpp"
#include "train_kernels.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<DecodePlan>(m, "DecodePlan", py::module_local(), "a model's weights for the decoding step (batch 1, CPU, fp32 or bf16)")
      .def(py::init<std::vector<torch::Tensor>, int64_t, int64_t, int64_t, bool, bool, int64_t, double,
                    std::vector<torch::Tensor>, std::optional<torch::Tensor>>(),
           py::arg("weights"), py::arg("n_layer"), py::arg("n_head"), py::arg("norm"), py::arg("residual"),
           py::arg("mlp"), py::arg("act"), py::arg("eps"), py::arg("sources") = std::vector<torch::Tensor>{},
           py::arg("seen") = py::none())
      .def("step", &DecodePlan::step, "the next-token logits of one token, its keys and values written into the caches")
      .def("refresh", &DecodePlan::refresh, "copy the sources changed since they were last copied (with copies)");
  m.def("draw", &draw, "the next token from one row of logits as sample_next draws it, and StepMaker's summary of it");
  m.def("attention_forward", &attention_forward, "causal self-attention for training: (y, probs) from c_attn's output");
  m.def("attention_backward", &attention_backward, "the gradient of c_attn's output from (qkv, y, probs, dy)");
  m.def("layer_norm_forward", &layer_norm_forward, "LayerNorm for training, after a residual add if given: (y, mean, rstd, sum)");
  m.def("layer_norm_backward", &layer_norm_backward, "LayerNorm's (dx, dweight, dbias, dx in bf16), the residual's gradient added");
  m.def("gelu_forward", &gelu_forward, "GELU for training: (gelu(u), its derivative)");
  m.def("gelu_backward", &gelu_backward, "GELU's backward: dy times the saved derivative, in their dtype");
  m.def("set_team_affinity", &set_team_affinity, "the CPUs each thread of the calling thread's OpenMP team may run on");
  m.def("muon_stack", &muon_stack, "Muon: the normalised bf16 stack of one shape's updates (tall ones transposed)");
  m.def("muon_apply", &muon_apply, "Muon: params = params * decay + scale * ortho, in place");
}
