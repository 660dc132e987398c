"""Read-only views of a model for the page: the sampling comparison's columns and their share of
repeats, the next-token distribution at one step, and the attention weights of a text; and
`one_thread`, for the small inference steps the page runs.

Pure functions of a model, a tokenizer and ids; the model is put in eval mode for the call and
given back as it was. Core module: imports minigpt's model and sampling modules only (never gradio
or matplotlib).
"""

from __future__ import annotations

import contextlib
import math

import torch

from .limits import check_float, check_int
from .sampling import SamplingConfig


@contextlib.contextmanager
def one_thread():
    """Run a small inference step on one intra-op thread, then restore this thread's setting.

    Decoding one token at a time is a chain of tiny ops: on a busy 2-core machine (someone is
    training) two OpenMP threads spend their time waiting for each other, measured here 10-30x
    slower than one. The setting is per thread, so it must not span a `yield` (the next chunk of a
    streamed handler may run on another worker thread).
    """
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """The model in eval mode, without gradients, for the block; its mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def next_token_at(model, tok, context: list[int], chosen: int, top: int = 10, temperatures=(0.5, 1.0, 2.0)) -> dict:
    """The distribution `model` gives after `context` (its last block_size ids): the `top` tokens (plus
    `chosen` if it is not among them), the rank of `chosen`, and the same logits at each temperature."""
    context = context[-model.config.block_size:]
    device = next(model.parameters()).device
    with evaluating(model):
        logits = model(torch.tensor([context], dtype=torch.long, device=device))[0][0, -1].float().cpu()
    probs = torch.softmax(logits, -1)
    order = torch.argsort(probs, descending=True)
    ids = order[:top].tolist()
    if chosen not in ids:
        ids.append(chosen)
    rank = int((order == chosen).nonzero()[0, 0]) + 1
    return {"context": tok.decode(context[-40:]), "ids": ids, "pieces": tok.pieces(ids), "chosen": chosen,
            "chosen_piece": tok.pieces([chosen])[0], "chosen_rank": rank,
            "probs": {t: torch.softmax(logits / t, -1)[ids].tolist() for t in temperatures}}


def attention_weights(model, tok, ids: list[int], max_tokens: int = 96) -> dict:
    """Attention weights of every layer and head over `ids`: tokens, (L, nh, T, T). Long inputs keep
    their last min(context, max_tokens) ids: a bigger map is unreadable."""
    block = model.config.block_size
    keep = min(block, max_tokens)
    cropped = len(ids) > keep
    ids = ids[-keep:]
    device = next(model.parameters()).device
    with evaluating(model):
        _, _, atts = model(torch.tensor([ids], dtype=torch.long, device=device), return_attn=True)
    weights = torch.stack([a[0] for a in atts]).float().cpu()  # (L, nh, T, T)
    return {"tokens": tok.pieces(ids), "weights": weights, "cropped": cropped, "block_size": block,
            "shown_max": max_tokens, "n_layer": model.config.n_layer, "n_head": model.config.n_head}


def repeat_fraction(ids, n: int = 4) -> float:
    """Share of the n-grams of `ids` that already occurred earlier (greedy decoding loops score high)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    seen, again = set(), 0
    for g in grams:
        again += g in seen
        seen.add(g)
    return again / len(grams)


def sampling_columns(greedy: bool = True, multinomial: bool = True, low_t: float | None = 0.5,
                     high_t: float | None = 2.0, top_k: int | None = None, top_p: float | None = None):
    """The comparison's (name, SamplingConfig) columns from the Generate tab's switches."""
    cols = []
    if greedy:
        cols.append(("greedy", SamplingConfig("greedy")))
    if multinomial:
        cols.append(("multinomial (T = 1)", SamplingConfig("multinomial")))
    for t in (low_t, high_t):
        if t is not None:
            t = check_float("temperature", t, 0.0, 100.0, lo_open=True)
            name = f"temperature T = {t:g}"
            if name not in [c[0] for c in cols]:
                cols.append((name, SamplingConfig("temperature", t)))
    if top_k is not None:
        k = check_int("top-k", top_k, 1, 1_000_000)
        cols.append((f"top-k (k = {k})", SamplingConfig("multinomial", top_k=k)))
    if top_p is not None:
        p = check_float("top-p", top_p, 0.0, 1.0, lo_open=True)
        cols.append((f"top-p (p = {p:g})", SamplingConfig("multinomial", top_p=p)))
    return cols


def add_steps(cols, row, spent: float, tokenizer):
    """Append one step's TokenSteps (one per column) to a comparison's columns, which waited `spent` s for it."""
    for c, step in zip(cols, row):
        c["seconds"] += spent
        c["ids"].append(step.id)
        c["text"] += step.text
        c["tokens"].append((step.text, step.prob, [(tokenizer.pieces([j])[0], p)
                                                   for j, p in zip(step.top_ids, step.top_probs)], step.logprob))


def comparison_view(cols, prompt: str) -> list[dict]:
    """A comparison's columns as drawn (copies): text, tokens, perplexity, repeats, tokens/s, done."""
    out = []
    for c in cols:
        lps = [t[3] for t in c["tokens"]]
        mean_ll = sum(lps) / len(lps) if lps else float("nan")
        out.append({"name": c["name"], "sampling": c["sampling"], "prompt": prompt, "text": c["text"],
                    "tokens": list(c["tokens"]), "n": len(lps), "mean_loglik": mean_ll,
                    "perplexity": math.exp(-mean_ll) if lps else float("nan"),
                    "repeats": repeat_fraction(c["ids"]),
                    "tokens_per_s": len(lps) / max(c["seconds"], 1e-9), "done": c["done"]})
    return out
