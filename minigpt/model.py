"""The models: a pre-norm GPT (nanoGPT layout and GPT-2 names) and the bigram baseline.

The GPT's architecture switches (`norm`, `residual`, `mlp`, `pos_emb`, `activation`) take parts
out or swap them, so the ideas of the Concepts tab can be seen in a real network; the defaults are
the standard GPT, with the same parameter names and the same code path as before the switches.

`forward(idx, targets=None, kv_cache=None, return_attn=False, last_only=False)`: attention runs through the fused
`F.scaled_dot_product_attention` by default and through the explicit q·kᵀ/√d → mask → softmax → ·v
path when the weights are asked for (the attention view) or when `explicit_attention` is set.
Training on a CPU takes the compiled attention of minigpt/train_kernels.py instead once it is built
(`python -m minigpt kernel`; the same function, fewer and faster ops), unless `set_training_kernels(False)`.
`last_only=True` (generation) computes only the last position's logits: the last block needs the
keys and values of every position but the query, attention, projection and MLP of the last only.
The GPT's matrices are `Linear` (an nn.Linear: same parameters) whose fp32 inference on a few rows
on a CPU (a decoding step) splits the weights between the threads, to stream them faster.
`GPTConfig` and its helpers live in minigpt/config.py (torch-free) and are importable from here.
"""

from __future__ import annotations

import functools
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import train_kernels
from .config import (ACTIVATION_NAMES, MODEL_KINDS, NORMS, SWITCHES, GPTConfig, arch_changes,  # noqa: F401
                     arch_summary, estimate_params)

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}  # ACTIVATION_NAMES


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over every token of the batch: (B, T, C) is normalised as (B·T, C).

    In training each feature's mean and variance are taken over batch × time, so a position's
    output depends on the other positions of the batch, future ones included: a causal model
    leaks a little of the future through the statistics. In eval mode (and generation) the running
    statistics are used, so each token is normalised alone and the KV cache equals recomputation.
    """

    def __init__(self, ndim: int, bias: bool):
        super().__init__(ndim)
        if not bias:
            self.register_parameter("bias", None)  # like LayerNorm(bias=False): a gain only

    def forward(self, x):
        return super().forward(x.reshape(-1, x.size(-1))).view(x.shape)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm in fp32, as CPU autocast runs LayerNorm (a bf16 input would take a slow unfused path);
    the output in the input's dtype (a model in bf16 passes bf16 on)."""

    def forward(self, x):
        weight = self.weight.float() if self.weight is not None else None  # (a bf16 gain would take it too)
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).to(x.dtype)


NORM_EPS = 1e-5  # LayerNorm's and RMSNorm's (the compiled decoding step reads it too)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) that training on a CPU runs through the compiled kernel once it
    is built: its output then comes in bf16 under autocast, as the Linear after it would cast it."""

    use_kernel = True  # GPT.set_training_kernels turns it off

    def forward(self, x):
        kernel = train_kernels.norm_kernel_for(x, self.weight) if self.use_kernel else None
        if kernel is None:
            return super().forward(x)
        return train_kernels.layer_norm(x, self.weight, self.bias, self.eps, kernel)

    def after_residual(self, x, a):
        """(x + a, this norm of it): one kernel while training on a CPU (see forward), else torch's."""
        kernel = train_kernels.norm_kernel_for(x, self.weight) if self.use_kernel else None
        if kernel is None or a.shape != x.shape or a.dtype not in (torch.float32, torch.bfloat16):
            x = x + a
            return x, self(x)
        return train_kernels.add_layer_norm(x, a, self.weight, self.bias, self.eps, kernel)


def make_norm(cfg: GPTConfig) -> nn.Module:
    """The normalisation `cfg.norm` names, from torch.nn (the formulas by hand are in experiments.py)."""
    if cfg.norm == "layer":
        return LayerNorm(cfg.n_embd, eps=NORM_EPS, bias=cfg.bias)
    if cfg.norm == "batch":
        return TokenBatchNorm(cfg.n_embd, cfg.bias)
    if cfg.norm == "rms":
        return RMSNorm(cfg.n_embd, eps=NORM_EPS)
    return nn.Identity()


class KVCache:
    """Preallocated per-layer keys and values for incremental decoding.

    Holds up to `block_size` positions; `pos` is how many are filled. Learned position embeddings
    end at block_size, so a full cache cannot roll: the caller then recomputes on the last window.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, device, dtype):
        hs = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = cfg.block_size
        self.pos = 0

    def reset(self):
        self.pos = 0

    def room(self) -> int:
        return self.block_size - self.pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, nh, T, hs) at the current position; return all keys/values so far."""
        T = k.size(2)
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int):
        self.pos += n


def causal_mask(t_query: int, t_key: int, device) -> torch.Tensor:
    """Boolean (t_query, t_key) mask: query i (the last t_query of t_key positions) sees keys ≤ it."""
    offset = t_key - t_query
    q = torch.arange(t_query, device=device)[:, None] + offset
    k = torch.arange(t_key, device=device)[None, :]
    return k <= q


@functools.lru_cache(maxsize=64)  # a read-only constant per shape and device
def causal_bias(t_query: int, t_key: int, device) -> torch.Tensor:
    """`causal_mask` as an additive (t_query, t_key) fp32 bias: 0 where a query may look, -inf where not."""
    return torch.zeros(t_query, t_key, device=device).masked_fill(~causal_mask(t_query, t_key, device),
                                                                  float("-inf"))


def _slow_fused_backward(x: torch.Tensor) -> bool:
    """True when training under CPU bf16 autocast, where SDPA's fused backward is ~5x slower than
    the explicit path (measured on a 2-core AVX512-BF16 CPU, PyTorch 2.13); inference keeps SDPA."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")


# A decoding step multiplies a few rows by each weight matrix: it streams the weights from memory.
# torch's matmul for one row (a gemv) streams at ~9 GB/s on the 2-core build machine whatever the
# threads, against 34-42 GB/s for a plain sum; split into column blocks of Wᵀ, one per thread, a
# batched matmul streams at ~23-27 GB/s. Only for fp32 matrices too large to stay in the caches (bf16
# weights gained 10% alone and lost it in a whole decoding step: 3.8 -> 4.3 ms).
SPLIT_MIN_BYTES = 1 << 20   # smaller weights stay in the caches: the plain matmul is as fast
SPLIT_MAX_ROWS = 8          # a decoding step's rows (a Compare decodes 4-8 at once)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose fp32 inference on a few rows on a CPU runs as one
    batched matmul over column blocks of Wᵀ, one block per intra-op thread, so that every core
    streams its share of the weights (see SPLIT_MIN_BYTES). The blocks are a copy made when first
    needed and again whenever the weight has changed (training, loading). Results equal F.linear's
    to float rounding."""

    def forward(self, x):
        parts = self._split_parts(x)
        if not parts:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(1, -1, self.in_features).expand(parts, -1, -1)
        y = torch.bmm(rows, self._blocks(parts)).permute(1, 0, 2).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _split_parts(self, x) -> int:
        """Blocks to split into for this call (one per thread), or 0 for the plain matmul. Training (with
        gradients) is answered by the first test."""
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return 0
        parts = torch.get_num_threads()
        if (parts < 2 or self.weight.dtype != torch.float32 or self.out_features % parts
                or x.numel() > SPLIT_MAX_ROWS * self.in_features or self.weight.numel() * 4 < SPLIT_MIN_BYTES):
            return 0
        return parts

    def _blocks(self, parts: int) -> torch.Tensor:
        """Wᵀ as `parts` column blocks (parts, in, out / parts), remade when the weight changed."""
        w = self.weight
        key = (w._version, w.data_ptr(), parts)
        cached = getattr(self, "_split", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                blocks = w.t().reshape(self.in_features, parts, -1).permute(1, 0, 2).contiguous()
            cached = self._split = (key, blocks)
        return cached[1]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.n_embd, self.layer = cfg.n_head, cfg.n_embd, layer
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.explicit = False  # force the explicit path (tests, teaching)
        self.use_kernel = True  # training on a CPU may take the compiled attention once it is built

    def forward(self, x, kv_cache: KVCache | None = None, return_attn: bool = False, last_only: bool = False):
        """(output, attention weights or None); with last_only the output (and query) of the last position only."""
        B, Tx, C = x.shape
        hs = C // self.n_head
        if last_only and Tx > 1:  # keys and values of every position (the cache needs them), the query of the last one
            w, b = self.c_attn.weight, self.c_attn.bias
            q = F.linear(x[:, -1:], w[:C], None if b is None else b[:C])
            k, v = F.linear(x, w[C:], None if b is None else b[C:]).split(C, dim=2)
        else:
            qkv = self.c_attn(x)
            kernel = (train_kernels.kernel_for(qkv, self.dropout if self.training else 0.0)
                      if self.use_kernel and not (return_attn or self.explicit) and kv_cache is None else None)
            if kernel is not None:
                return self.resid_dropout(self.c_proj(train_kernels.attention(qkv, self.n_head, kernel))), None
            q, k, v = qkv.split(C, dim=2)
        T = q.size(1)  # query positions: Tx, or 1 with last_only
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, Tx, self.n_head, hs).transpose(1, 2)
        v = v.view(B, Tx, self.n_head, hs).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, nh, Tk, hs), Tk = cached + Tx
        Tk = k.size(2)
        att = None
        if return_attn or self.explicit or _slow_fused_backward(x):
            # scale · q·kᵀ + mask in one baddbmm (the mask adds -inf above the diagonal): ~5% of a
            # CPU bf16 training step less than a matmul, a multiply and a masked_fill.
            att = torch.baddbmm(causal_bias(T, Tk, x.device), q.reshape(B * self.n_head, T, hs),
                                k.reshape(B * self.n_head, Tk, hs).transpose(1, 2),
                                alpha=1.0 / math.sqrt(hs)).view(B, self.n_head, T, Tk)  # (B, nh, T, Tk)
            att = F.softmax(att, dim=-1)
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
            att = att if return_attn or self.explicit else None
        else:
            p = self.dropout if self.training else 0.0
            if Tk == T:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            elif T == 1:  # one new token sees every cached position
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, Tk, x.device), dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), att


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.act = ACTIVATIONS[cfg.activation]
        self.use_kernel = cfg.activation == "gelu"  # training on a CPU may take the compiled GELU

    def forward(self, x):
        h = self.c_fc(x)
        kernel = train_kernels.gelu_kernel_for(h) if self.use_kernel else None
        h = train_kernels.gelu(h, kernel) if kernel is not None else self.act(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.residual = cfg.residual
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        if cfg.mlp:
            self.ln_2 = make_norm(cfg)
            self.mlp = MLP(cfg)
        else:
            self.mlp = None

    def forward(self, x, kv_cache=None, return_attn=False, last_only=False):
        a, att = self.attn(self.ln_1(x), kv_cache, return_attn, last_only)  # pre-norm: normalise, then add
        x = x[:, -1:] if last_only else x  # (B, 1, C): the other positions are needed no further
        if self.mlp is None:
            return (x + a if self.residual else a), att
        if self.residual and isinstance(self.ln_2, LayerNorm):
            x, h = self.ln_2.after_residual(x, a)  # the add and the norm in one kernel while training
        else:
            x = x + a if self.residual else a
            h = self.ln_2(x)
        m = self.mlp(h)
        x = x + m if self.residual else m
        return x, att


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            **({"wpe": nn.Embedding(cfg.block_size, cfg.n_embd)} if cfg.pos_emb else {}),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        ))
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)
        # Residual projections add into the stream once per layer: scale them so its variance stays put.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied head counted once; without position embeddings if non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_emb:
            n -= self.transformer.wpe.weight.numel()
        return n

    def set_explicit_attention(self, on: bool = True):
        for block in self.transformer.h:
            block.attn.explicit = on

    training_kernels = True  # what set_training_kernels last said (an optimizer made for the model reads it)

    def set_training_kernels(self, on: bool = True):
        """Let training on a CPU use the compiled attention, LayerNorm and GELU (and Muon's stack and
        update, for an optimizer made after this) when they are built (the default), or not."""
        self.training_kernels = on
        for block in self.transformer.h:
            block.attn.use_kernel = on
            if block.mlp is not None:
                block.mlp.use_kernel = on and self.config.activation == "gelu"
        for m in self.modules():
            if isinstance(m, LayerNorm):
                m.use_kernel = on

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, return_attn: bool = False,
                last_only: bool = False):
        """Logits (B, T, vocab); loss if targets; attention weights per layer if return_attn.

        With a kv_cache, idx holds only the new tokens and positions continue from the cache.
        Returns (logits, loss) or (logits, loss, [att per layer (B, nh, T, Tk)]). last_only (for
        generation, in eval mode): logits (B, 1, vocab) of the last position, equal to the full
        forward's to float rounding, the cache filled as by it; no targets or return_attn with it.
        """
        if last_only and (targets is not None or return_attn or self.training):
            raise ValueError("last_only is for generation (eval mode): the last position's logits only, "
                             "no loss and no attention weights")
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.config.block_size})")
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pos_emb:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.transformer.drop(x)
        atts = []
        for i, block in enumerate(self.transformer.h):
            x, att = block(x, kv_cache, return_attn, last_only and i == len(self.transformer.h) - 1)
            atts.append(att)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = x[:, -1:] if last_only else x  # (with no blocks, the embeddings are cropped here)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return (logits, loss, atts) if return_attn else (logits, loss)


class Bigram(nn.Module):
    """The first model of the lecture: each token looks up a row of next-token logits."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.token_logits = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.normal_(self.token_logits.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, kv_cache=None, return_attn=False, last_only=False):
        logits = self.token_logits(idx[:, -1:] if last_only else idx)  # (B, T, vocab)
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return (logits, loss, []) if return_attn else (logits, loss)


def build_model(cfg: GPTConfig) -> nn.Module:
    """The model `cfg.model` names."""
    return GPT(cfg) if cfg.validate().model == "gpt" else Bigram(cfg)


def new_kv_cache(model: nn.Module, batch_size: int = 1) -> KVCache | None:
    """A KV cache fitting `model` (None for the bigram, which needs no context)."""
    if not isinstance(model, GPT):
        return None
    p = model.transformer.wte.weight
    return KVCache(model.config, batch_size, p.device, p.dtype)


def decay_split(model: nn.Module) -> tuple[list, list]:
    """(matrices and embeddings, which get weight decay; gains and biases, which do not).

    The order is fixed by named_parameters, so optimizer state saved with it lines up on load.
    """
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    return [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
