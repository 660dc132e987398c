"""Sampling: pure functions from next-token logits to a chosen token, with a seeded generator.

Strategies: `greedy` (argmax), `multinomial` (sample softmax(logits) as is, T = 1) and
`temperature` (sample softmax(logits / T)). The `top_k` and `top_p` filters work with either
sampling strategy; greedy ignores them (the argmax survives every filter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import STRATEGIES, SamplingConfig  # noqa: F401  (defined torch-free there)

def filters_act(cfg: SamplingConfig, vocab: int) -> tuple[bool, bool]:
    """(top-k acts, top-p acts) on a vocabulary of `vocab`: a k that keeps every token, or p = 1, is no filter."""
    return cfg.top_k is not None and cfg.top_k < vocab, cfg.top_p is not None and cfg.top_p < 1.0


def scaled_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Logits after temperature and the top-k / top-p filters (filtered entries are -inf)."""
    logits = logits.float()
    if cfg.strategy == "temperature":
        logits = logits / cfg.temperature
    top_k, top_p = filters_act(cfg, logits.size(-1))
    if top_k:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach p (the top token always stays).
        drop_sorted = (cum - F.softmax(sorted_logits, dim=-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution the strategy samples from (one-hot for greedy)."""
    if cfg.strategy == "greedy":
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    return F.softmax(scaled_logits(logits, cfg), dim=-1)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (B,) chosen from logits (B, vocab) by the strategy."""
    if cfg.strategy == "greedy":
        return logits.argmax(dim=-1)
    probs = F.softmax(scaled_logits(logits, cfg), dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def sample_rows(logits: torch.Tensor, cfgs: list[SamplingConfig], generators: list) -> list[int]:
    """One token id per row of logits (B, vocab), row b exactly what
    `sample_next(logits[b:b + 1], cfgs[b], generators[b])` draws (the same random numbers).

    Rows with the same settings are filtered and normalised as one batch; only the draws run row by
    row, each from its own generator (a batched draw would share one stream of random numbers).
    """
    out = [0] * len(cfgs)
    groups: dict[tuple, list[int]] = {}
    for b, cfg in enumerate(cfgs):
        key = ("greedy",) if cfg.strategy == "greedy" else (cfg.strategy, cfg.temperature, cfg.top_k, cfg.top_p)
        groups.setdefault(key, []).append(b)
    for rows in groups.values():
        cfg, part = cfgs[rows[0]], logits[rows]
        if cfg.strategy == "greedy":
            toks = part.argmax(dim=-1).tolist()
        else:
            probs = F.softmax(scaled_logits(part, cfg), dim=-1).cpu()
            toks = [int(torch.multinomial(probs[i:i + 1], 1, generator=generators[b])) for i, b in enumerate(rows)]
        for b, t in zip(rows, toks):
            out[b] = t
    return out


def temperature_from_probs(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The seed notebook's form: probs ** (1/T), renormalised. Equals softmax(logits / T)."""
    p = probs.double() ** (1.0 / temperature)
    return (p / p.sum(dim=-1, keepdim=True)).to(probs.dtype)
