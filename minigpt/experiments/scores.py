"""Experiment 4: the real attention scores of a trained model per layer, with and without 1/sqrt(d).

Part of the minigpt.experiments package (see its docstring). Core module: imports torch and
minigpt.model only (never gradio or matplotlib).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import Table, _entropy, _Result, _single_threaded, fmt


# ---- 4. attention scores inside a model ----------------------------------------------------------------

@dataclass
class ModelScores(_Result):
    tokens: int                     # positions looked at (the text's last block_size tokens)
    head_dim: int                   # d = n_embd / n_head
    layers: list                    # 0 .. n_layer - 1
    score_std_unscaled: list        # std of q·k over every head's causal (query, key) pairs
    score_std_scaled: list          # std of q·k / sqrt(d): what the model gives softmax
    max_prob_scaled: list           # mean over rows (with 2+ keys) of the largest attention weight
    max_prob_unscaled: list         # the same if the model skipped the 1/sqrt(d)
    entropy_scaled: list            # mean attention entropy per row, nats
    entropy_unscaled: list
    uniform_entropy: float          # mean log(keys) over the same rows: every key equally weighted

    def tables(self) -> list[Table]:
        rows = [list(r) for r in zip(self.layers, self.score_std_unscaled, self.score_std_scaled,
                                     self.max_prob_unscaled, self.max_prob_scaled, self.entropy_unscaled,
                                     self.entropy_scaled)]
        return [Table(f"attention scores of the model over {self.tokens} tokens (d = {self.head_dim}, sqrt(d) = "
                      f"{fmt(math.sqrt(self.head_dim))}; a uniform row's entropy: {fmt(self.uniform_entropy)} nats)",
                      ["layer", "std q·k", "std q·k/√d", "max p (no √d)", "max p", "entropy (no √d)", "entropy"],
                      rows)]


def attention_scores(model, ids) -> list[torch.Tensor]:
    """The raw scores q·kᵀ (n_head, T, T) of every layer for one sequence, read from each block's
    q/k projection with forward hooks (the model itself is not changed). Causal: use the lower triangle."""
    from ..model import GPT
    if not isinstance(model, GPT):
        raise ValueError("the bigram model has no attention: each token looks only at itself. Train or load a GPT")
    cfg = model.config
    ids = list(ids)[-cfg.block_size:]
    if len(ids) < 2:
        raise ValueError("enter at least two tokens of text")
    hs = cfg.n_embd // cfg.n_head
    qkv = []
    hooks = [block.attn.c_attn.register_forward_hook(lambda _m, _i, out: qkv.append(out.detach()))
             for block in model.transformer.h]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    scores = []
    for out in qkv:
        q, k, _ = out[0].float().cpu().split(cfg.n_embd, dim=-1)        # (T, C) each
        q = q.view(len(ids), cfg.n_head, hs).transpose(0, 1)             # (nh, T, hs)
        k = k.view(len(ids), cfg.n_head, hs).transpose(0, 1)
        scores.append(q @ k.transpose(-2, -1))                           # (nh, T, T)
    return scores


@_single_threaded
def model_scores(model, ids) -> ModelScores:
    """Experiment 4: how big the real pre-softmax scores are in each layer, and what softmax would do
    with them without the 1/sqrt(d) (the model's own attention uses the scaled ones)."""
    scores = attention_scores(model, ids)
    T = scores[0].size(-1)
    hs = model.config.n_embd // model.config.n_head
    causal = torch.ones(T, T).tril().bool()
    rows = slice(1, T)                                                   # rows with at least two keys
    out = {k: [] for k in ("std_u", "std_s", "max_s", "max_u", "ent_s", "ent_u")}
    for raw in scores:
        values = raw[:, causal]
        out["std_u"].append(values.std().item())
        out["std_s"].append((values / math.sqrt(hs)).std().item())
        for key, logits in (("s", raw / math.sqrt(hs)), ("u", raw)):
            p = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)[:, rows]
            out["max_" + key].append(p.max(-1).values.mean().item())
            out["ent_" + key].append(_entropy(p).mean().item())
    uniform = torch.log(torch.arange(2, T + 1, dtype=torch.float64)).mean().item()
    return ModelScores(tokens=T, head_dim=hs, layers=list(range(len(scores))), score_std_unscaled=out["std_u"],
                       score_std_scaled=out["std_s"], max_prob_scaled=out["max_s"], max_prob_unscaled=out["max_u"],
                       entropy_scaled=out["ent_s"], entropy_unscaled=out["ent_u"], uniform_entropy=uniform)
