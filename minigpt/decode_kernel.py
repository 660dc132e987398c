"""minigpt's compiled kernels for CPUs, and the decoding step that uses them.

One C++ extension holds the kernels: a decoding step (decode_step.cpp: one call per token instead
of ~80 torch ops; a large model's weights read from copies in huge pages, minigpt/hugepages.py)
and the draw of the next token from its logits (`draw`, what sample_next draws); and causal
self-attention, LayerNorm and GELU for training and Muon's stack and update (train_kernels.cpp,
used through minigpt/train_kernels.py and minigpt/optim.py). It is built with the machine's C++
compiler the first time it is asked for (`python -m minigpt kernel`, or `bench`), ~30 s, and kept in the cache folder
($MINIGPT_KERNEL_DIR, else ~/.cache/minigpt/kernels) under a name that carries the sources' hash, so
a changed source is a new build. Generation and training use it only once it is built: `load()`
never compiles unless asked, so a page or a command never waits on a compiler, and without one (or
on another device, dtype or norm) they stay on the eager model, the reference the kernels are
tested against.
"""

from __future__ import annotations

import functools
import hashlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hugepages
from .sampling import filters_act

# kernels.cpp includes the others (one translation unit); all of them make the build's name.
SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("kernels.cpp", "decode_step.cpp", "train_kernels.cpp", "kernel_vectors.h"))
NORM_CODES = {"none": 0, "layer": 1, "rms": 2}           # the norms the kernel knows, as it numbers them
ACTIVATION_CODES = {"gelu": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
STRATEGY_CODES = {"greedy": 0, "multinomial": 1, "temperature": 2}  # the sampling strategies `draw` knows


def kernel_dir() -> Path:
    return Path(os.environ.get("MINIGPT_KERNEL_DIR") or Path.home() / ".cache" / "minigpt" / "kernels").expanduser()


@functools.lru_cache(maxsize=1)  # the sources do not change under a running process
def _name() -> str:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + torch.__version__.encode()).hexdigest()[:12]
    return f"minigpt_kernels_{digest}"


def _build_dir() -> Path:
    return kernel_dir() / _name()


def _library() -> Path:
    return _build_dir() / f"{_name()}.so"


def is_built() -> bool:
    """True when this source's kernel has been compiled here (loading it is then quick)."""
    return _library().exists()


@functools.lru_cache(maxsize=1)
def _load():
    build, library = _build_dir(), _library()
    if library.exists():
        # Built for these sources and this torch (the name says so): import it as it is. torch's
        # `load` would run ninja first (~0.2 s of every process) and rebuild it (~45 s) for a checkout
        # at another path, whose build file names other source paths.
        import importlib.util
        try:
            spec = importlib.util.spec_from_file_location(_name(), library)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except ImportError:  # e.g. a build cut short: build it again below
            pass
    from torch.utils.cpp_extension import load
    build.mkdir(parents=True, exist_ok=True)
    return load(name=_name(), sources=[str(SOURCES[0])], build_directory=str(build), verbose=False,
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])


# The module once loaded, by the kernel folder it was found in ($MINIGPT_KERNEL_DIR as set then):
# training asks for it at every layer's attention, norm and GELU and at each Muon step (~18 times a
# step), and a `stat` of the build each time cost ~0.4 ms a step. Another folder is looked at afresh.
_loaded: dict[str | None, object] = {}


def load(build: bool = False):
    """The compiled module, or None: compiled now only if `build` (~30 s once), else only if built
    before. Raises RuntimeError with the compiler's reason when a requested build fails."""
    folder = os.environ.get("MINIGPT_KERNEL_DIR")
    if folder in _loaded:
        return _loaded[folder]
    if not build and not is_built():
        return None
    try:
        module = _loaded[folder] = _load()
        return module
    except Exception as e:  # a missing compiler or headers: the eager path still works
        if not build:
            return None
        raise RuntimeError(f"the kernels could not be built ({type(e).__name__}: {e})") from e


class Decoder:
    """`step(token, cache)` → next-token logits (vocab,) for one sequence, through the kernel."""

    def __init__(self, module, model):
        from .model import NORM_EPS
        self.module = module
        cfg, tr = model.config, model.transformer
        none = torch.empty(0)

        def pair(mod):  # weight and bias of a norm or Linear; None for what the model has not
            return [getattr(mod, name, None) if mod is not None else None for name in ("weight", "bias")]

        tensors = [tr.wte.weight, tr["wpe"].weight if cfg.pos_emb else None]
        for block in tr.h:
            a, m = block.attn, block.mlp
            tensors += [*pair(block.ln_1), *pair(a.c_attn), *pair(a.c_proj), *pair(getattr(block, "ln_2", None)),
                        *pair(m and m.c_fc), *pair(m and m.c_proj)]
        tensors += pair(tr.ln_f)
        # Views of the parameters: training in place is seen by the next step. A large model's
        # weights are read from copies in huge pages instead, which the step keeps up to date.
        self.plan_tensors = [none if t is None else t.detach() for t in tensors]
        self.plan_args = (cfg.n_layer, cfg.n_head, NORM_CODES[cfg.norm], cfg.residual, cfg.mlp,
                          ACTIVATION_CODES[cfg.activation], NORM_EPS)
        held = _copies(model, self.plan_tensors)
        self.plan = (module.DecodePlan(held.copies, *self.plan_args, sources=self.plan_tensors, seen=held.seen)
                     if held else module.DecodePlan(self.plan_tensors, *self.plan_args))
        self.plan.refresh()  # what changed since the last generation is copied now, not in the first step

    def step(self, token: int, cache) -> torch.Tensor:
        logits = self.plan.step(token, cache.pos, cache.k, cache.v)
        cache.advance(1)
        return logits

    def drawer(self, sampling, top_n: int):
        """`draw(logits, generator)` → (token, its probability at T = 1, top_n ids, their probabilities):
        what sample_next draws and StepMaker reports, in one compiled call; None when the sampling
        has a top-k or top-p filter that would act (sample_next does those)."""
        if sampling.strategy != "greedy" and any(filters_act(sampling, self.plan_tensors[0].size(0))):
            return None
        code, temperature, module = STRATEGY_CODES[sampling.strategy], sampling.temperature, self.module
        return lambda logits, generator: module.draw(logits, code, temperature, generator, top_n)


# Weights of at least this many bytes are read from copies in huge pages (minigpt/hugepages.py): a
# smaller model's pages all fit in the TLB (this CPU's holds 3,072 of 4 KiB, 12 MB).
COPY_MIN_BYTES = 8 << 20


@dataclass
class _Copies:
    sources: list  # the tensors copied (kept: their storage cannot be reused while they are compared)
    copies: list
    seen: torch.Tensor  # each source's version when last copied, -1 never: the step's to keep


_held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its _Copies


def _copies(model, tensors: list[torch.Tensor]) -> _Copies | None:
    """Copies in huge pages of a large model's weights, made once per model and kept (a new set when
    a parameter was replaced, not changed in place); None for a small model or where the OS has no
    huge pages."""
    if sum(t.numel() * t.element_size() for t in tensors) < COPY_MIN_BYTES or not hugepages.available():
        return None
    held = _held.get(model)
    if held is None or len(held.sources) != len(tensors) or any(
            a.data_ptr() != b.data_ptr() or a.shape != b.shape or a.dtype != b.dtype
            for a, b in zip(held.sources, tensors)):
        held = _held[model] = _Copies(list(tensors), hugepages.copies(tensors),
                                      torch.full((len(tensors),), -1, dtype=torch.int64))
    return held


def decoder_for(model, cache, build: bool = False) -> Decoder | None:
    """A Decoder for `model` and its `cache` when the kernel can run them: a GPT on the CPU with fp32
    or bf16 weights (the cache in the same dtype), in eval mode, batch 1, a norm it knows, the kernel
    built (or `build`). Else None: use the model."""
    from .model import GPT
    if not isinstance(model, GPT) or cache is None or model.training or cache.k.size(1) != 1:
        return None
    cfg, p = model.config, model.transformer.wte.weight
    if (p.device.type != "cpu" or p.dtype not in (torch.float32, torch.bfloat16) or cache.k.dtype != p.dtype
            or cfg.norm not in NORM_CODES or cfg.activation not in ACTIVATION_CODES or cfg.n_layer < 1):
        return None
    module = load(build)
    return Decoder(module, model) if module is not None else None


def self_check(module, seed: int = 0) -> float:
    """Largest |logit difference| between the kernel and the eager model over 20 steps of a small
    random GPT (a check that the compiled code is right on this machine)."""
    from .model import GPTConfig, build_model, new_kv_cache
    torch.manual_seed(seed)
    model = build_model(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=64)).eval()
    eager, fast = new_kv_cache(model), new_kv_cache(model)
    step, worst = Decoder(module, model), 0.0
    with torch.no_grad():
        for t in range(20):
            want = model(torch.tensor([[t * 7 % 50]]), kv_cache=eager)[0][0, -1]
            worst = max(worst, (step.step(t * 7 % 50, fast) - want).abs().max().item())
    return worst


def training_check(module, seed: int = 0) -> float:
    """Largest difference between the training kernels and their references (attention and
    F.scaled_dot_product_attention, LayerNorm alone and after the residual add and F.layer_norm,
    GELU and F.gelu: output and gradient; Muon's stack and torch's bf16 ops), on random fp32 input
    (sizes no multiples of 16)."""
    import torch.nn.functional as F
    from .train_kernels import add_layer_norm, attention, gelu, layer_norm, reference_attention
    gen = torch.Generator().manual_seed(seed)
    w, b, a = torch.randn(36, generator=gen), torch.randn(36, generator=gen), torch.randn(2, 21, 36, generator=gen)
    pairs = [(torch.randn(2, 21, 3 * 36, generator=gen), lambda x: attention(x, 3, module),
              lambda x: reference_attention(x, 3)),
             (torch.randn(2, 21, 36, generator=gen), lambda x: layer_norm(x, w, b, 1e-5, module),
              lambda x: F.layer_norm(x, (36,), w, b, 1e-5)),
             (torch.randn(2, 21, 36, generator=gen), lambda x: add_layer_norm(x, a, w, b, 1e-5, module)[1],
              lambda x: F.layer_norm(x + a, (36,), w, b, 1e-5)),
             (3 * torch.randn(2, 21, 36, generator=gen), lambda x: gelu(x, module), F.gelu)]
    worst = 0.0
    for x, fast, ref in pairs:
        x.requires_grad_()
        (y1, g1), (y2, g2) = [(y.detach(), *torch.autograd.grad(y, x, torch.ones_like(y))) for y in (fast(x), ref(x))]
        worst = max(worst, (y1 - y2).abs().max().item(), (g1 - g2).abs().max().item())
    u = torch.randn(36, 100, generator=gen)
    want = u.bfloat16() / (u.bfloat16().norm() * 1.01).clamp(min=1e-7)
    return max(worst, (module.muon_stack([u], [False], 1.01, 1e-7)[0].float() - want.float()).abs().max().item())


def register(subparsers):
    p = subparsers.add_parser("kernel", help="build the compiled kernels (~30 s once; needs a C++ compiler)",
                              description="Compile minigpt's kernels (a decoding step; training's attention, "
                                          "LayerNorm and GELU) with this machine's C++ compiler and check them against "
                                          "the eager model. From then on generation (a GPT on the CPU in fp32 or bf16) "
                                          "and training on the CPU use them. Example: python -m minigpt kernel")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys
    import time
    t0 = time.perf_counter()
    was_built = is_built()
    try:
        module = load(build=True)
    except RuntimeError as e:  # the compiler's words; generation and training stay on the eager model
        print(f"error: {e}", file=sys.stderr)
        return 1
    worst, attn = self_check(module), training_check(module)
    verb = "already built" if was_built else f"built in {time.perf_counter() - t0:.1f} s"
    print(f"kernels {verb}: {_build_dir()}")
    if worst > 1e-4 or attn > 1e-4:
        print(f"error: the kernels differ from the eager model: decoding logits by {worst:.2g}, "
              f"training kernels by {attn:.2g}", flush=True)
        return 1
    print(f"checked against the eager model: decoding logits within {worst:.2g}, training kernels (attention, "
          f"LayerNorm, the residual add, GELU, Muon's stack) within {attn:.2g}")
    return 0
