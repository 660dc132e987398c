"""Batched decoding: several sampling strategies from one prompt as one batch through the KV cache.

A Compare runs greedy, multinomial and temperatures from the same prompt and seed. The model is
tiny, so each decoding step costs Python overhead (dozens of small modules), not arithmetic: B
strategies decoded one after the other cost B forward passes a token, decoded as a batch one.

Same results as decoding each alone (`generate.generate` with the same seed):
- the prompt is fed once, exactly as alone (batch 1), and its keys and values are copied into
  every row of a batch cache; every row then advances in lockstep, so all rows fill the cache at
  the same step and, past the context window, all recompute on their own last block_size tokens;
- each row samples from its own logits with its own config and its own torch.Generator seeded
  with the same seed (`sample_rows`: what `sample_next` draws for the row), so it draws the same
  random numbers;
- with the cache, the prefill and the recomputations past the context ask for the last position
  only (`last_only`), as `stream_ids` does; without it both run the full forward.
The tokens are the same token for token. The probabilities agree to float rounding (~1e-6): a
matrix product over B rows may round differently from one over a single row.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .generate import StepMaker, TokenStep, _device, make_generator, start_ids
from .model import KVCache, new_kv_cache
from .sampling import SamplingConfig, sample_rows


@torch.no_grad()
def stream_ids_batch(model, ids: list[int], max_new_tokens: int, samplings: list[SamplingConfig],
                     generators: list[torch.Generator | None], use_cache: bool = True
                     ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (one token id per row, next-token logits (B, vocab) they were drawn from) max_new_tokens times.

    Row b is what `stream_ids(model, ids, max_new_tokens, samplings[b], generators[b], use_cache)`
    yields alone.
    """
    if len(samplings) != len(generators) or not samplings:
        raise ValueError("one generator per sampling config, and at least one")
    block = model.config.block_size
    device = _device(model)
    prompt = list(ids)[-block:]
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    B = len(samplings)
    seqs = [list(prompt) for _ in range(B)]
    was_training = model.training
    model.eval()
    try:
        one = new_kv_cache(model) if use_cache else None
        cache = None

        def recompute():
            x = torch.tensor([s[-block:] for s in seqs], dtype=torch.long, device=device)
            return model(x, last_only=use_cache)[0][:, -1]

        if one is not None:  # the prompt once, as alone; then its keys and values in every row
            first = model(torch.tensor([prompt], dtype=torch.long, device=device), kv_cache=one,
                          last_only=True)[0][0, -1]
            logits = first.expand(B, -1)
            cache = KVCache(model.config, B, one.k.device, one.k.dtype)
            cache.k[:, :, :, :one.pos] = one.k[:, :, :, :one.pos]
            cache.v[:, :, :, :one.pos] = one.v[:, :, :, :one.pos]
            cache.pos = one.pos
        else:
            x = torch.tensor([prompt], dtype=torch.long, device=device)
            logits = model(x)[0][0, -1].expand(B, -1)
        for i in range(max_new_tokens):
            toks = sample_rows(logits, samplings, generators)
            yield toks, logits
            if i == max_new_tokens - 1:
                break  # the last tokens' own logits would never be used
            for s, t in zip(seqs, toks):
                s.append(t)
            if cache is not None and cache.room() > 0:
                x = torch.tensor([[t] for t in toks], dtype=torch.long, device=device)
                logits = model(x, kv_cache=cache)[0][:, -1]
            else:
                logits = recompute()
    finally:
        model.train(was_training)


def generate_batch(model, tokenizer, prompt: str, max_new_tokens: int, samplings: list[SamplingConfig],
                   seed: int | None = 1337, use_cache: bool = True, top_n: int = 10,
                   keep_logits: bool = False) -> Iterator[list[TokenStep]]:
    """Stream one list of TokenSteps a step (one per sampling config), all from `prompt` and `seed`.

    Column b equals `generate(model, tokenizer, prompt, max_new_tokens, samplings[b], seed, ...)`.
    Raises ValueError before yielding anything if the prompt cannot be encoded.
    """
    samplings = [s.validate() for s in samplings]
    ids = start_ids(tokenizer, prompt)
    if seed is None:
        seed = torch.seed()  # one seed shared by every row, as a Compare does
    generators = [make_generator(seed) for _ in samplings]
    makers = [StepMaker(tokenizer, top_n, keep_logits) for _ in samplings]
    rows = None
    for toks, logits in stream_ids_batch(model, ids, max_new_tokens, samplings, generators, use_cache):
        # The per-token read-outs of every row at once: one softmax and one top-N for the batch.
        probs = F.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, min(top_n, probs.size(-1)), dim=-1)
        rows = rows if rows is not None else torch.arange(len(toks))
        chosen = probs[rows, torch.tensor(toks)].tolist()
        top_ids, top_probs = top.indices.tolist(), top.values.tolist()
        yield [m.make(t, chosen[b], top_ids[b], top_probs[b], logits[b])
               for b, (m, t) in enumerate(zip(makers, toks))]
