"""The configs as plain data: `GPTConfig` (the model), `TrainConfig` (the trainer) and
`SamplingConfig` (how a token is chosen), with their checks and the names they accept.

Torch-free on purpose: the page lays out its knobs from these defaults before torch is imported
(cold start), and the CLI's flags read them too. minigpt/model.py, train.py and sampling.py
re-export them. Core module: imports minigpt.limits only (never torch, gradio or matplotlib).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .limits import Limits, check_float, check_int

MODEL_KINDS = ("gpt", "bigram")
NORMS = ("layer", "batch", "rms", "none")
ACTIVATION_NAMES = ("gelu", "relu", "sigmoid", "tanh")  # the MLP nonlinearities (minigpt/model.py maps them)
SWITCHES = ("norm", "residual", "mlp", "pos_emb", "activation")  # GPTConfig's architecture switches


@dataclass
class GPTConfig:
    vocab_size: int = 65       # 65 characters in Tiny Shakespeare
    block_size: int = 64       # context length: the most tokens the model looks back on
    n_layer: int = 4           # transformer blocks (0: embeddings straight into the head)
    n_head: int = 4            # attention heads per block; must divide n_embd
    n_embd: int = 128          # width of the residual stream
    dropout: float = 0.0       # 0 for short runs on small data; ~0.2 for long runs of big models
    bias: bool = False         # biases in Linear/LayerNorm: slightly faster and no worse without
    model: str = "gpt"         # "gpt" or "bigram" (a lookup table of next-token logits)
    # Architecture switches (GPT only; the defaults are the standard GPT):
    norm: str = "layer"        # layer | batch | rms | none: what normalises each sublayer's input
    residual: bool = True      # x + f(x) around each sublayer; off: x = f(x), the plain deep stack
    mlp: bool = True           # the feed-forward sublayer of each block; off: attention only
    pos_emb: bool = True       # learned position embeddings (wpe); off: only the causal mask tells order
    activation: str = "gelu"   # the MLP's nonlinearity: gelu | relu | sigmoid | tanh

    def validate(self, limits: Limits | None = None) -> "GPTConfig":
        """Raise ValueError naming the field if this config cannot work (or breaks the limits)."""
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}, got {self.model!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            # A GPT with no blocks is embeddings straight into the head: the ladder's second rung.
            lowest = 0 if name == "n_layer" and self.model == "gpt" else 1
            if value < lowest:
                raise ValueError(f"{name} must be ≥ {lowest}, got {value}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be true or false, got {self.bias!r}")
        if self.model == "gpt" and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        self._validate_switches()
        if limits is not None:
            for name, cap in (("vocab_size", limits.max_vocab), ("block_size", limits.max_context),
                              ("n_layer", limits.max_layers), ("n_head", limits.max_heads),
                              ("n_embd", limits.max_embd)):
                if getattr(self, name) > cap:
                    raise ValueError(f"{name} = {getattr(self, name)} is over the limit of {cap}")
            n = estimate_params(self)
            if n > limits.max_params:
                raise ValueError(f"the model would have {n:,} parameters, over the limit of "
                                 f"{limits.max_params:,} (MINIGPT_MAX_PARAMS)")
        return self

    def _validate_switches(self):
        if not isinstance(self.norm, str) or self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATION_NAMES)}, got {self.activation!r}")
        for name in ("residual", "mlp", "pos_emb"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.model == "bigram" and arch_changes(self):
            raise ValueError(f"the bigram model has no blocks, norms or MLP: the architecture switches apply "
                             f"to the GPT only (got {arch_summary(self)})")
        if not self.mlp and self.activation != "gelu":
            raise ValueError(f"activation {self.activation!r} needs the MLP: without it (mlp off) there is "
                             f"no activation to change")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**known)


def arch_changes(cfg: GPTConfig) -> list[str]:
    """Each switch that differs from the standard GPT, in words ("BatchNorm", "no residual", ...)."""
    words = []
    if cfg.norm != "layer":
        words.append({"batch": "BatchNorm", "rms": "RMSNorm", "none": "no norm"}.get(cfg.norm, f"norm {cfg.norm}"))
    if not cfg.residual:
        words.append("no residual")
    if not cfg.mlp:
        words.append("no MLP")
    elif cfg.activation != "gelu":
        words.append(f"{cfg.activation} MLP")
    if not cfg.pos_emb:
        words.append("no position embeddings")
    return words


def arch_summary(cfg: GPTConfig) -> str:
    """One line for badges and run cards: "standard GPT", or the switches flipped ("no residual, sigmoid MLP")."""
    return ", ".join(arch_changes(cfg)) or "standard GPT"


def estimate_params(cfg: GPTConfig, non_embedding: bool = False) -> int:
    """Parameter count of the model `cfg` describes, without building it (tied head counted once);
    without the position embeddings (if it has any) when non_embedding, as GPT.num_params does."""
    V, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
    if cfg.model == "bigram":
        return V * V
    b = 1 if cfg.bias else 0
    norm = {"layer": C * (1 + b), "batch": C * (1 + b), "rms": C, "none": 0}[cfg.norm]
    attn = C * 3 * C + 3 * C * b + C * C + C * b
    mlp = C * 4 * C + 4 * C * b + 4 * C * C + C * b
    block = norm + attn + (norm + mlp if cfg.mlp else 0)
    return V * C + (T * C if cfg.pos_emb and not non_embedding else 0) + L * block + norm


# ---- training -----------------------------------------------------------------------------------

OPTIMIZERS = ("adamw", "muon")  # minigpt/optim.py builds them


@dataclass
class TrainConfig:
    batch_size: int = 48              # sequences per step: Muon's step costs the same at any batch, and
                                      # 48 spreads it over more tokens (README: Performance; AdamW alone: 16)
    grad_accum: int = 1               # micro-steps per step (per process); batch_size stays the step's total
    optimizer: str = "muon"           # muon (the blocks' matrices; AdamW for the rest) | adamw
    lr: float = 6e-3                  # AdamW's peak learning rate: high suits short runs of small models (3e-3: slower)
    muon_lr: float = 0.03             # Muon's peak learning rate (the same schedule scales both; 0.02 and
                                      # 0.04 ended 0.010 higher in the shipped model's 1750 steps)
    muon_momentum: float = 0.95       # Muon's (Nesterov) momentum; a short target plan takes 0.9
    min_lr: float = 6e-5              # the cosine decays to ~0: worth 0.03 of loss over 6000 steps vs lr/10
    warmup_iters: int = 50            # linear warmup from ~0 to lr
    max_iters: int = 3000             # steps in this call of train(): ~2.3 min on 2 CPU cores
    max_seconds: float | None = None  # wall-clock budget; the schedule then follows time, not steps
    target_val_loss: float | None = None  # stop once the full validation loss reaches this
    plan_iters: int | None = None     # a target run's cosine horizon (None: planned from the target)
    weight_decay: float = 0.1         # on matrices and embeddings only (AdamW's and Muon's)
    beta2: float = 0.99               # AdamW's second-moment decay; 0.99 suits small batches
    grad_clip: float = 1.0            # clip the global gradient norm (0 = off)
    eval_interval: int = 250          # steps between loss estimates
    eval_iters: int = 10              # batches per estimate (fixed batches, so estimates compare)
    sample_every: int = 2             # generate a sample every this many evals (0 = never)
    sample_tokens: int = 200
    seed: int = 1337
    device: str = "auto"              # auto | cpu | cuda | mps
    dtype: str = "auto"               # auto | float32 | bfloat16

    def validate(self, limits: Limits | None = None) -> "TrainConfig":
        """Raise ValueError naming the field for a value out of range."""
        limits = limits or Limits.from_env()
        self.batch_size = check_int("batch_size", self.batch_size, 1, limits.max_batch)
        self.grad_accum = check_int("grad_accum", self.grad_accum, 1, self.batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        self.lr = check_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        self.muon_lr = check_float("muon_lr", self.muon_lr, 0.0, 10.0, lo_open=True)
        self.muon_momentum = check_float("muon_momentum", self.muon_momentum, 0.0, 1.0, hi_open=True)
        self.min_lr = check_float("min_lr", self.min_lr, 0.0, self.lr)
        self.warmup_iters = check_int("warmup_iters", self.warmup_iters, 0, limits.max_iters)
        self.max_iters = check_int("max_iters", self.max_iters, 1, limits.max_iters)
        if self.max_seconds is not None:
            self.max_seconds = check_float("max_seconds", self.max_seconds, 0.0, limits.max_train_seconds,
                                           lo_open=True)
        if self.target_val_loss is not None:
            self.target_val_loss = check_float("target_val_loss", self.target_val_loss, 0.0, 100.0, lo_open=True)
        if self.plan_iters is not None:
            self.plan_iters = check_int("plan_iters", self.plan_iters, 1, limits.max_iters)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0, 10.0)
        self.beta2 = check_float("beta2", self.beta2, 0.0, 1.0, hi_open=True)
        self.grad_clip = check_float("grad_clip", self.grad_clip, 0.0, 1e6)
        self.eval_interval = check_int("eval_interval", self.eval_interval, 1, limits.max_iters)
        self.eval_iters = check_int("eval_iters", self.eval_iters, 1, 1000)
        self.sample_every = check_int("sample_every", self.sample_every, 0, 1000)
        self.sample_tokens = check_int("sample_tokens", self.sample_tokens, 1, limits.max_new_tokens)
        self.seed = check_int("seed", self.seed, 0, 2**63 - 1)
        return self


# ---- sampling -----------------------------------------------------------------------------------

STRATEGIES = ("greedy", "multinomial", "temperature")


@dataclass
class SamplingConfig:
    strategy: str = "temperature"  # greedy | multinomial | temperature
    temperature: float = 0.8       # used by `temperature`: < 1 sharpens, > 1 flattens
    top_k: int | None = None       # keep only the k most likely tokens
    top_p: float | None = None     # keep the smallest set of tokens whose probability reaches p

    def validate(self) -> "SamplingConfig":
        """Raise ValueError naming the field if a setting is out of range."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        self.temperature = check_float("temperature", self.temperature, 0.0, 100.0, lo_open=True)
        if self.top_k is not None:
            self.top_k = check_int("top_k", self.top_k, 1, 1_000_000)
        if self.top_p is not None:
            self.top_p = check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        return self

    def to_dict(self) -> dict:
        return asdict(self)
