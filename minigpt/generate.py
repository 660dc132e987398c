"""Text generation: a streaming generator with a KV cache, and the naive reference it must match.

The cached path feeds the prompt once, then one token per step; when the cache is full (learned
position embeddings end at block_size) it recomputes on the last block_size tokens each step, what
the naive reference does all along. The cached path asks the model for the last position's logits
only (`last_only`: the last block skips the rest); the reference runs the full forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from .decode_kernel import decoder_for
from .model import new_kv_cache
from .sampling import SamplingConfig, sample_next


@dataclass
class TokenStep:
    """One generated token and what the model thought of it (probabilities at T = 1)."""
    id: int
    text: str                    # new text this step ("" while a multi-byte character is incomplete)
    piece: str                   # the token's own text
    prob: float                  # model probability of the chosen token
    logprob: float
    top_ids: list[int] = field(default_factory=list)     # the model's top-N next tokens
    top_probs: list[float] = field(default_factory=list)
    logits: torch.Tensor | None = None                   # raw logits (vocab,), when asked for


def start_ids(tokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts from a newline (char) or <|endoftext|> (BPE)."""
    if prompt:
        return tokenizer.encode(prompt)
    for candidate in ("\n", " "):
        try:
            return tokenizer.encode(candidate)[:1]
        except ValueError:
            continue
    return [0]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def stream_ids(model, ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
               generator: torch.Generator | None = None, use_cache: bool = True,
               kernel: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (token id, next-token logits it was drawn from) max_new_tokens times. With the cache,
    the steps after the prompt go through the compiled decoding kernel when it is built and fits
    the model (minigpt/decode_kernel.py; `kernel=False`: always the eager model)."""
    for tok, logits, _ in _stream(model, ids, max_new_tokens, sampling, generator, use_cache, kernel):
        yield tok, logits


@torch.no_grad()
def _stream(model, ids: list[int], max_new_tokens: int, sampling: SamplingConfig, generator: torch.Generator | None,
            use_cache: bool, kernel: bool, top_n: int | None = None):
    """stream_ids' steps as (token id, logits, summary): with `top_n`, a token the compiled kernel
    drew comes with StepMaker's summary of it (probability, top ids, top probabilities), else None."""
    block = model.config.block_size
    device = _device(model)
    seq = list(ids)[-block:]
    if not seq:
        raise ValueError("generation needs at least one prompt token")
    was_training = model.training
    model.eval()
    try:
        cache = new_kv_cache(model) if use_cache else None

        def recompute():
            x = torch.tensor([seq[-block:]], dtype=torch.long, device=device)
            return model(x, last_only=cache is not None)[0][0, -1]

        if cache is not None:
            logits = model(torch.tensor([seq], dtype=torch.long, device=device), kv_cache=cache,
                           last_only=True)[0][0, -1]
        else:
            logits = recompute()
        fast = decoder_for(model, cache) if kernel else None
        draw = fast.drawer(sampling, top_n) if fast is not None and top_n is not None else None
        summary = None
        for i in range(max_new_tokens):
            if summary is None:
                tok = int(sample_next(logits[None], sampling, generator)[0])
            yield tok, logits, summary
            if i == max_new_tokens - 1:
                break  # the last token's own logits would never be used
            seq.append(tok)
            summary = None
            if cache is None or cache.room() == 0:
                logits = recompute()
            elif fast is not None:
                logits = fast.step(tok, cache)
                if draw is not None:  # the next token drawn at once, in the same call as its summary
                    tok, *summary = draw(logits, generator)
            else:
                logits = model(torch.tensor([[tok]], dtype=torch.long, device=device), kv_cache=cache)[0][0, -1]
    finally:
        model.train(was_training)


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed) if seed is not None else torch.seed())
    return g


def generate(model, tokenizer, prompt: str, max_new_tokens: int, sampling: SamplingConfig | None = None,
             seed: int | None = 1337, use_cache: bool = True, top_n: int = 10,
             keep_logits: bool = False, kernel: bool = True) -> Iterator[TokenStep]:
    """Stream TokenSteps for `prompt`; the same seed and settings give the same text.

    A prompt longer than the context keeps its last block_size tokens. Raises ValueError
    (e.g. UnknownCharactersError) before yielding anything if the prompt cannot be encoded.
    """
    sampling = (sampling or SamplingConfig()).validate()
    ids = start_ids(tokenizer, prompt)
    generator = make_generator(seed)
    steps = StepMaker(tokenizer, top_n, keep_logits)
    for tok, logits, summary in _stream(model, ids, max_new_tokens, sampling, generator, use_cache, kernel, top_n):
        yield steps(tok, logits) if summary is None else steps.make(tok, *summary, logits)


class StepMaker:
    """Turns one stream's (token, logits) into TokenSteps, keeping the text emitted so far."""

    def __init__(self, tokenizer, top_n: int = 10, keep_logits: bool = False):
        self.tokenizer, self.top_n, self.keep_logits = tokenizer, top_n, keep_logits
        self.out: list[int] = []
        self.emitted = ""
        self.char_level = tokenizer.kind == "char"

    def __call__(self, tok: int, logits: torch.Tensor) -> TokenStep:
        probs = F.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, min(self.top_n, probs.numel()))
        return self.make(tok, float(probs[tok]), top.indices.tolist(), top.values.tolist(), logits)

    def make(self, tok: int, p: float, top_ids: list[int], top_probs: list[float], logits: torch.Tensor) -> TokenStep:
        """The TokenStep of `tok`, drawn with model probability p (at T = 1), given the top-N already computed."""
        self.out.append(tok)
        piece = self.tokenizer.pieces([tok])[0]
        if self.char_level:
            text = piece
        else:  # emit BPE text only when it does not end inside a multi-byte character
            decoded = self.tokenizer.decode(self.out)
            text = "" if decoded.endswith("\ufffd") else decoded[len(self.emitted):]
            self.emitted = self.emitted if decoded.endswith("\ufffd") else decoded
        return TokenStep(id=tok, text=text, piece=piece, prob=p, logprob=math.log(max(p, 1e-45)),
                         top_ids=top_ids, top_probs=top_probs,
                         logits=logits.detach().cpu() if self.keep_logits else None)


def perplexity(steps: list[TokenStep]) -> tuple[float, float]:
    """(mean log-likelihood per token, perplexity) of generated tokens under the model."""
    if not steps:
        return float("nan"), float("nan")
    mean_ll = sum(s.logprob for s in steps) / len(steps)
    return mean_ll, math.exp(-mean_ll)


@torch.no_grad()
def generate_naive(model, ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
                   generator: torch.Generator | None = None) -> list[tuple[int, torch.Tensor]]:
    """Reference: recompute the whole (cropped) context for every token. Slow and obviously right."""
    return list(stream_ids(model, ids, max_new_tokens, sampling, generator, use_cache=False))
