"""The Train tab's form as plain data: `TrainSpec` (what the knobs say) and an uploaded training text.

`TrainSpec.model_config` / `train_config` turn the knobs into validated configs, or raise a
ValueError naming the knob. Core module: imports the config, data and limits modules only (never torch, gradio or
matplotlib: the page builds its knobs from it before torch is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import DataError, decode_text
from .limits import Limits, check_float, check_int
from .config import OPTIMIZERS, SWITCHES, GPTConfig, TrainConfig, arch_summary

SHAKESPEARE = "shakespeare"


@dataclass
class TrainSpec:
    """Everything the Train tab's knobs say (the page starts from these values); `configs` validate it."""
    data: str = SHAKESPEARE     # "shakespeare" or "text" (pasted or uploaded)
    text: str = ""              # the training text when data == "text"
    tokenizer: str = "char"     # char | gpt2
    model: str = "gpt"          # gpt | bigram
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    block_size: int = 64
    dropout: float = 0.0
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    budget: str = "seconds"     # seconds | iterations
    amount: float = 60          # how many of them
    eval_interval: int = 100    # steps between loss estimates (a sample every 2 evals)
    seed: int = 1337
    sample_tokens: int = 200    # length of the samples shown while training
    # The architecture switches (GPTConfig's; the defaults are the standard GPT):
    norm: str = "layer"         # layer | batch | rms | none
    residual: bool = True       # x + f(x) around each sublayer
    mlp: bool = True            # the feed-forward sublayer of each block
    pos_emb: bool = True        # learned position embeddings
    activation: str = "gelu"    # the MLP's nonlinearity: gelu | relu | sigmoid | tanh
    optimizer: str = TrainConfig.optimizer  # muon (the blocks' matrices; AdamW for the rest) | adamw
    muon_lr: float = TrainConfig.muon_lr    # Muon's peak learning rate (lr stays AdamW's)

    def model_config(self, vocab_size: int, limits: Limits) -> GPTConfig:
        if self.model not in ("gpt", "bigram"):
            raise ValueError(f"model must be gpt or bigram, got {self.model!r}")
        cfg = GPTConfig(vocab_size=vocab_size, block_size=check_int("context length", self.block_size, 1, limits.max_context),
                        n_layer=check_int("layers", self.n_layer, 1, limits.max_layers),
                        n_head=check_int("heads", self.n_head, 1, limits.max_heads),
                        n_embd=check_int("embedding size", self.n_embd, 1, limits.max_embd),
                        dropout=check_float("dropout", self.dropout, 0.0, 1.0, hi_open=True), model=self.model,
                        **{name: getattr(self, name) for name in SWITCHES})
        if cfg.model == "gpt" and cfg.n_embd % cfg.n_head:
            raise ValueError(f"embedding size {cfg.n_embd} is not divisible by {cfg.n_head} heads: each head gets "
                             f"n_embd / n_head dimensions (try {cfg.n_head * max(1, round(cfg.n_embd / cfg.n_head))} "
                             f"or a head count that divides {cfg.n_embd})")
        return cfg.validate(limits)

    def shape_note(self, cfg: GPTConfig) -> str:
        """Continue keeps the model's shape and switches: say so when the knobs now ask for others."""
        if cfg.model == "bigram":
            same = self.model == "bigram"
        else:
            same = (self.model, self.n_layer, self.n_head, self.n_embd, self.block_size) == \
                (cfg.model, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size)
        if not same:
            return "Continue keeps this model's shape, architecture and data; the shape knobs apply to the next Start."
        if cfg.model == "gpt" and any(getattr(self, name) != getattr(cfg, name) for name in SWITCHES):
            return (f"Continue keeps this model's architecture ({arch_summary(cfg)}); the Architecture "
                    f"switches apply to the next Start.")
        return ""

    def train_config(self, limits: Limits) -> TrainConfig:
        if self.budget not in ("seconds", "iterations"):
            raise ValueError(f"budget must be seconds or iterations, got {self.budget!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.budget == "seconds":
            secs = check_float("seconds", self.amount, 0.0, limits.max_train_seconds, lo_open=True)
            iters = limits.max_iters  # the schedule follows the clock
        else:
            iters = check_int("iterations", self.amount, 1, limits.max_iters)
            secs = limits.max_train_seconds  # the time limit holds for every run
        cfg = TrainConfig(batch_size=check_int("batch size", self.batch_size, 1, limits.max_batch),
                          lr=check_float("learning rate", self.lr, 0.0, 1.0, lo_open=True),
                          optimizer=self.optimizer,
                          muon_lr=check_float("Muon learning rate", self.muon_lr, 0.0, 10.0, lo_open=True),
                          max_iters=iters, max_seconds=secs,
                          eval_interval=check_int("eval interval", self.eval_interval, 1, limits.max_iters),
                          warmup_iters=min(50, max(iters // 10, 1)),
                          seed=check_int("seed", self.seed, 0, 2**31 - 1),
                          sample_tokens=check_int("sample tokens", self.sample_tokens, 1, limits.max_new_tokens))
        cfg.min_lr = min(cfg.min_lr, cfg.lr / 10)
        return cfg.validate(limits)


def check_length(splits, block: int):
    """A text must give more training tokens than one context window."""
    if len(splits.train) <= block + 1:
        raise DataError(f"the text gives {len(splits.train)} training tokens, too few for a context of "
                        f"{block}: use more text or a shorter context")


def read_text_file(path, limits: Limits) -> str:
    """An uploaded training text: UTF-8, not binary, not empty, under the upload limit."""
    p = Path(path)
    if not p.is_file():
        raise DataError("the uploaded file is missing; upload it again")
    if p.stat().st_size > limits.max_upload_bytes:
        raise DataError(f"{p.name} is over the upload limit of {limits.max_upload_mb:g} MB (MINIGPT_MAX_UPLOAD_MB)")
    return decode_text(p.read_bytes(), name=p.name, max_bytes=limits.max_upload_bytes)
