"""From averaging to attention: each token's average with all the tokens before it, three ways.

The inputs are one-hot rows: token t of the text becomes a row with a 1 in the column of its
token (one column per distinct token of the text). Averaging rows 0..t then gives the share of
each token among the first t + 1, a "bag of tokens so far" that can be read off the heatmap,
which the model's learned embeddings could not. Three ways to compute it:

  (a) a loop: out[t] = mean(x[0..t]);
  (b) one matrix product: a lower-triangular matrix of ones, each row divided by its sum, times x;
  (c) the same weights as attention makes them: scores of zero, the future masked with -inf, softmax.

(b) and (c) give the same (T, T) weight matrix, so all three agree (computed in float64: the
largest difference is ~1e-16). Then (d): the current model's real attention weights for the same
tokens. Self-attention keeps (c)'s mask and softmax but replaces the zeros by q·k/√d, so the
uniform average becomes a weighting that depends on the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_TEXT = "ROMEO:\nBut soft, what light"
MAX_TOKENS = 32  # a bigger map is unreadable


def average_loop(x: torch.Tensor) -> torch.Tensor:
    """(a) out[t] = mean of x[0..t], one position at a time."""
    out = torch.zeros_like(x)
    for t in range(x.size(0)):
        out[t] = x[: t + 1].mean(dim=0)
    return out


def tril_weights(T: int, dtype=torch.float64) -> torch.Tensor:
    """(b) A lower-triangular matrix of ones, each row divided by its sum: row t holds 1/(t+1) t+1 times."""
    w = torch.tril(torch.ones(T, T, dtype=dtype))
    return w / w.sum(dim=1, keepdim=True)


def softmax_weights(T: int, dtype=torch.float64) -> torch.Tensor:
    """(c) Attention's recipe with every score 0: mask the future with -inf, softmax each row."""
    scores = torch.zeros(T, T, dtype=dtype)
    scores = scores.masked_fill(torch.tril(torch.ones(T, T, dtype=torch.bool)).logical_not(), float("-inf"))
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def model_attention(model, ids: list[int]) -> torch.Tensor | None:
    """The model's attention weights for `ids`, (n_layer, n_head, T, T) in float32; None if it has none.

    The same call the Attention tab makes: one forward pass in eval mode with return_attn."""
    from .model import GPT
    if not isinstance(model, GPT) or model.config.n_layer == 0:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        _, _, atts = model(torch.tensor([ids], dtype=torch.long, device=device), return_attn=True)
    finally:
        model.train(was_training)
    return torch.stack([a[0] for a in atts]).float().cpu()


@dataclass
class Averaging:
    tokens: list[str]              # the text's tokens, T of them (its last ones when it was long)
    columns: list[str]             # the distinct tokens: the one-hot features, in order of first use
    x: torch.Tensor                # (T, K) one-hot rows
    loop: torch.Tensor             # (T, K) (a)
    tril: torch.Tensor             # (T, K) (b)
    softmax: torch.Tensor          # (T, K) (c)
    weights: torch.Tensor          # (T, T) the weights of (b), equal to (c)'s
    diff_tril: float               # max |(b) - (a)|
    diff_softmax: float            # max |(c) - (a)|
    diff_weights: float            # max |weights (b) - weights (c)|
    attention: torch.Tensor | None  # (n_layer, n_head, T, T) of the model, or None
    cropped: bool                  # the text was longer than max_tokens (or the model's context)

    @property
    def max_diff(self) -> float:
        return max(self.diff_tril, self.diff_softmax)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "columns": self.columns, "loop": self.loop.tolist(),
                "tril": self.tril.tolist(), "softmax": self.softmax.tolist(), "weights": self.weights.tolist(),
                "diff_tril": self.diff_tril, "diff_softmax": self.diff_softmax, "diff_weights": self.diff_weights,
                "max_diff": self.max_diff, "cropped": self.cropped,
                "attention": None if self.attention is None else self.attention.tolist()}


def averaging(text: str, tokenizer, model=None, max_tokens: int = MAX_TOKENS) -> Averaging:
    """The three averages of `text`'s tokens and, with a GPT `model`, its attention for the same tokens.

    ValueError for an empty text or one with a token the tokenizer does not know."""
    if not isinstance(text, str) or not text:
        raise ValueError("enter some text to average")
    ids = tokenizer.encode(text)
    if model is not None and getattr(model.config, "model", "gpt") == "gpt":
        max_tokens = min(max_tokens, model.config.block_size)
    cropped = len(ids) > max_tokens
    ids = ids[-max_tokens:]
    columns = list(dict.fromkeys(ids))  # distinct ids, in order of first use
    x = torch.zeros(len(ids), len(columns), dtype=torch.float64)
    x[torch.arange(len(ids)), torch.tensor([columns.index(i) for i in ids])] = 1.0
    loop = average_loop(x)
    wb, wc = tril_weights(len(ids)), softmax_weights(len(ids))
    tril, soft = wb @ x, wc @ x
    return Averaging(tokens=tokenizer.pieces(ids), columns=tokenizer.pieces(columns), x=x, loop=loop, tril=tril,
                     softmax=soft, weights=wb, diff_tril=float((tril - loop).abs().max()),
                     diff_softmax=float((soft - loop).abs().max()), diff_weights=float((wb - wc).abs().max()),
                     attention=model_attention(model, ids) if model is not None else None, cropped=cropped)
