"""The lecture's ladder: from a bigram table to a GPT, one idea per rung, every rung trained alike.

Each rung is a `GPTConfig` built from the architecture switches (minigpt/model.py), never model
code of its own; all rungs share the data, the width, the context, the seed and the budget
(steps or seconds), and train with the ordinary trainer (`train()` in minigpt/train.py), so the
difference between two rungs is the idea added and nothing else.

| rung | config |
| --- | --- |
| 1 bigram | `model="bigram"`: a (vocab × vocab) table of next-token logits |
| 2 embeddings | a GPT with `n_layer=0`, `norm="none"`: (wte[token] + wpe[position]) · wteᵀ (the head is tied) |
| 3 one head | one block, `n_head=1` (one head as wide as the model), attention only (`mlp=False`), no residual, no norm |
| 4 multi-head | the same block with 4 heads of width/4: the same parameters, split four ways |
| 5 feed-forward | + the block's MLP (`mlp=True`) |
| 6 residual | + residual connections (`residual=True`): no new parameters |
| 7 norm | + LayerNorm (or the chosen norm) before each sublayer and at the end: one standard block |
| 8 depth | the default model, `GPTConfig()` (4 standard blocks), with the chosen norm |

`run_ladder()` yields RungStarted, RungProgress (the trainer's own Start/Step/Eval events, tagged
with the rung), RungDone (full-validation loss, parameters, tokens/s, seconds, a sample at T = 0.8)
and LadderDone. A stop event ends it within a step, like the Train tab's Stop.

torch and the trainer are imported where a ladder runs: the page lays out its tab from the rungs,
settings and measured record here before torch is loaded.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .limits import Limits, check_float, check_int
from .config import GPTConfig, TrainConfig, arch_summary
from .events import Done, Eval

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "checkpoints" / "ladder.json"  # the ladder measured with the CLI, shipped for the page

LADDER_NORMS = ("layer", "batch", "rms")  # what rungs 7-8 may use ("none" would be rung 6 again)
NORM_NAMES = {"layer": "LayerNorm", "batch": "BatchNorm", "rms": "RMSNorm"}
DEFAULT_ITERS = 1000   # steps per rung: the default ladder in under 3 minutes on 2 quiet CPU cores (README)
NO_GAIN = 0.01         # a rung less than this below the one before has not clearly helped (seeds vary ±0.01)


@dataclass(frozen=True)
class Rung:
    name: str                 # short name, also the CLI table's first column
    idea: str                 # the one idea this rung adds, in a line
    notebook: str             # the seed notebook that shows it (000-004, see shared/seeds/README.md)
    lecture: float | None     # Karpathy's validation loss for the same step (GPU, 5000 iters, 384 wide)
    remark: str = ""          # what to know when reading its number


RUNGS = (
    Rung("bigram", "a token looks up the next token's logits in a table", "004", 2.49),
    Rung("embeddings", "token and position embeddings, read out by a linear head", "003", None,
         "the head is tied to the token embeddings (as in GPT-2), so the score of b after a is e_a·e_b, the "
         "same as a after b, and no smaller than a token's score for itself would allow: alone this is a "
         "poorer table than the bigram's, and the positions say nothing about the next token until "
         "attention lets a token look at the others"),
    Rung("one head", "one self-attention head: each token averages earlier tokens, weighted by q·k", "001", 2.4),
    Rung("multi-head", "four heads of a quarter width, each free to look for something else", "001", 2.28),
    Rung("feed-forward", "an MLP after attention: each token thinks about what it gathered", "003", 2.24),
    Rung("residual", "residual connections: x + f(x), so gradients flow straight through", "003", 2.08),
    Rung("norm", "normalise each sublayer's input: one standard transformer block", "003", 2.06),
    Rung("depth", "four blocks: the page's default model", "004", 1.48,
         "a deeper model starts slower: at a short budget one block can match four, and depth pays off "
         "with longer training (the lecture's last line is also a bigger model: 6 blocks, 384 wide)"),
)


def rung_name(index: int, norm: str = "layer") -> str:
    """The rung's name; rung 7 is named for its norm ("LayerNorm", "BatchNorm", "RMSNorm")."""
    return NORM_NAMES[norm] if RUNGS[index - 1].name == "norm" else RUNGS[index - 1].name


def rung_config(index: int, vocab_size: int, n_embd: int = GPTConfig.n_embd,
                block_size: int = GPTConfig.block_size, norm: str = "layer") -> GPTConfig:
    """The GPTConfig of rung `index` (1-8): only the architecture switches, n_layer and n_head change."""
    if not 1 <= index <= len(RUNGS):
        raise ValueError(f"rung must be 1..{len(RUNGS)}, got {index}")
    if norm not in LADDER_NORMS:
        raise ValueError(f"norm must be one of {', '.join(LADDER_NORMS)}, got {norm!r}")
    base = GPTConfig(vocab_size=vocab_size, n_embd=n_embd, block_size=block_size)
    if index == 1:
        return replace(base, model="bigram")
    # Rungs 2-6 have no norm; attention, MLP and residual come in one at a time.
    bare = replace(base, n_layer=1, n_head=1, norm="none", mlp=False, residual=False)
    steps = {
        2: dict(n_layer=0),
        3: {},
        4: dict(n_head=base.n_head),
        5: dict(n_head=base.n_head, mlp=True),
        6: dict(n_head=base.n_head, mlp=True, residual=True),
        7: dict(n_head=base.n_head, mlp=True, residual=True, norm=norm),
    }
    if index == 8:
        return replace(base, norm=norm)
    return replace(bare, **steps[index])


def ladder_configs(vocab_size: int, n_embd: int = GPTConfig.n_embd, block_size: int = GPTConfig.block_size,
                   norm: str = "layer") -> list[GPTConfig]:
    return [rung_config(i, vocab_size, n_embd, block_size, norm) for i in range(1, len(RUNGS) + 1)]


# ---- settings and events ------------------------------------------------------------------------

LADDER_BATCH = 16  # sequences per step in every rung


@dataclass
class LadderConfig:
    iters_per_rung: int | None = DEFAULT_ITERS  # steps per rung (None when seconds_per_rung is set)
    seconds_per_rung: float | None = None       # or a wall-clock budget per rung
    n_embd: int = GPTConfig.n_embd              # one width for every rung
    block_size: int = GPTConfig.block_size      # one context for every rung
    norm: str = "layer"                         # the norm of rungs 7-8: layer | batch | rms
    seed: int = TrainConfig.seed                # init and batches, the same for every rung
    evals: int = 15                             # loss estimates per rung (the points of its curve)
    sample_tokens: int = 150                    # the sample after each rung (T = 0.8, fixed seed)
    device: str = "auto"

    def validate(self, limits: Limits | None = None) -> "LadderConfig":
        limits = limits or Limits.from_env()
        if (self.iters_per_rung is None) == (self.seconds_per_rung is None):
            raise ValueError("give one budget per rung: iters_per_rung or seconds_per_rung")
        n = len(RUNGS)
        if self.iters_per_rung is not None:
            self.iters_per_rung = check_int("iters_per_rung", self.iters_per_rung, 1, limits.max_iters)
        else:  # the whole ladder is one training job: it must fit the one-run time limit
            self.seconds_per_rung = check_float("seconds_per_rung", self.seconds_per_rung, 0.0,
                                                limits.max_train_seconds / n, lo_open=True)
        self.n_embd = check_int("n_embd", self.n_embd, 1, limits.max_embd)
        self.block_size = check_int("block_size", self.block_size, 1, limits.max_context)
        if self.norm not in LADDER_NORMS:
            raise ValueError(f"norm must be one of {', '.join(LADDER_NORMS)}, got {self.norm!r}")
        self.seed = check_int("seed", self.seed, 0, 2**63 - 1)
        self.evals = check_int("evals", self.evals, 1, 1000)
        self.sample_tokens = check_int("sample_tokens", self.sample_tokens, 1, limits.max_new_tokens)
        return self

    def train_config(self, limits: Limits) -> TrainConfig:
        """The trainer's settings for every rung: the TrainConfig defaults under this budget."""
        n = len(RUNGS)
        if self.iters_per_rung is not None:
            # run_ladder gives each rung what is left of the one-job time limit
            iters, seconds = self.iters_per_rung, limits.max_train_seconds
            interval = max(1, iters // self.evals)
        else:
            iters, seconds = limits.max_iters, self.seconds_per_rung
            interval = 100
        warmup = min(TrainConfig.warmup_iters, iters // 10)  # a tiny budget is not all warmup
        # The lecture's optimizer for every rung: AdamW at batch 16 (round 1's recipe; the measured
        # ladder in checkpoints/ladder.json was made with it), so every rung learns with the same optimizer.
        return TrainConfig(max_iters=iters, max_seconds=seconds, eval_interval=interval, sample_every=0,
                           warmup_iters=warmup, seed=self.seed, device=self.device, optimizer="adamw",
                           batch_size=LADDER_BATCH)


@dataclass
class RungStarted:
    rung: int          # 1-based
    rungs: int         # how many rungs this ladder runs
    name: str
    idea: str
    notebook: str
    params: int
    architecture: str  # arch_summary of its config
    config: dict
    remark: str = ""   # what to know when reading its number (Rung.remark)


@dataclass
class RungProgress:
    rung: int
    event: object      # the trainer's Start, Step or Eval (minigpt/train.py), unchanged


@dataclass
class RungDone:
    rung: int
    name: str
    idea: str
    notebook: str
    params: int
    val_loss: float | None   # the full-validation protocol (minigpt/evaluate.py), at the end of the rung
    tokens_per_s: float
    seconds: float           # the rung's wall time: training, full validation and its sample
    train_seconds: float
    iters: int
    reason: str              # the trainer's stop reason (max_iters, max_seconds, stopped, diverged)
    sample: str
    note: str                # says so when the rung did not clearly beat the one before
    lecture: float | None
    remark: str = ""
    curve: list = field(default_factory=list)  # [iter, seconds, train estimate, val estimate] at each eval
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)  # the trained model

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["val_loss"] = None if self.val_loss is None else round(self.val_loss, 4)
        d["tokens_per_s"] = round(self.tokens_per_s)
        d["seconds"], d["train_seconds"] = round(self.seconds, 2), round(self.train_seconds, 2)
        d["curve"] = [[it, round(s, 2), round(tr, 4), round(va, 4)] for it, s, tr, va in self.curve]
        return d


@dataclass
class LadderDone:
    rungs: list           # RungDone of every rung that ran
    seconds: float        # wall time of the whole ladder
    cpu_seconds: float    # CPU time this process used meanwhile (what a shared machine's load does not inflate)
    stopped: bool         # a stop request (or a diverged rung) ended it early
    settings: dict
    device: str
    dtype: str


def gain_note(val: float | None, prev: float | None, prev_name: str) -> str:
    """Empty when the rung is clearly below the one before; otherwise what happened, in words."""
    if val is None or prev is None:
        return ""
    if val >= prev:
        return f"does not help at this budget: {val:.3f} vs {prev:.3f} for {prev_name}"
    if val > prev - NO_GAIN:
        return f"no clear gain at this budget: {val:.3f} vs {prev:.3f} for {prev_name} (seeds vary by ±{NO_GAIN})"
    return ""


# ---- running it ---------------------------------------------------------------------------------

def ladder_data(source: str = "shakespeare", kind: str = "char"):
    """(tokenizer, splits) of a text, as the trainer takes them: 'shakespeare' or a text file's path."""
    from .data import encode_ids, load_text, split_ids
    from .tokenizers import build_tokenizer
    text = load_text(source)
    tokenizer = build_tokenizer(kind, text)
    return tokenizer, split_ids(encode_ids(tokenizer, text))


def run_ladder(settings: LadderConfig, tokenizer, splits, stop: threading.Event | None = None,
               limits: Limits | None = None, rungs=None):
    """Train the rungs (all, or the 1-based indices in `rungs`) one after another; yield events.

    Every configuration is checked against the limits before anything trains. Stopping (the event
    set) ends the current rung within a step; that rung still reports its full-validation loss.
    """
    from .train import Run, sample_text, train
    limits = limits or Limits.from_env()
    settings.validate(limits)
    chosen = list(range(1, len(RUNGS) + 1)) if rungs is None else sorted(set(rungs))
    if not chosen or not all(isinstance(i, int) and 1 <= i <= len(RUNGS) for i in chosen):
        raise ValueError(f"rungs must be a non-empty selection of 1..{len(RUNGS)}, got {rungs!r}")
    configs = {i: rung_config(i, tokenizer.vocab_size, settings.n_embd, settings.block_size, settings.norm)
               .validate(limits) for i in chosen}
    tcfg = settings.train_config(limits)
    t0, c0 = time.perf_counter(), time.process_time()
    done: list[RungDone] = []
    stopped = False
    device = dtype = ""
    for i in chosen:
        if stop is not None and stop.is_set():
            stopped = True
            break
        rung_cfg = replace(tcfg)
        if settings.iters_per_rung is not None:
            # The whole ladder is one training job under the time limit. A rung's cap is what is left of
            # it, not limit / 8: a cap near the rung's real duration would let the clock, not the steps,
            # drive its learning-rate schedule on a slow machine.
            rung_cfg.max_seconds = limits.max_train_seconds - (time.perf_counter() - t0)
            if rung_cfg.max_seconds <= 0:
                stopped = True
                break
        r0 = time.perf_counter()
        cfg = configs[i]
        run = Run.create(cfg, tokenizer, splits, device=settings.device, seed=settings.seed, data_name="ladder")
        device, dtype = run.precision.device, run.precision.dtype
        name = rung_name(i, settings.norm)
        yield RungStarted(rung=i, rungs=len(chosen), name=name, idea=RUNGS[i - 1].idea,
                          notebook=RUNGS[i - 1].notebook, params=run.model.num_params(),
                          architecture=arch_summary(cfg) if cfg.model == "gpt" else "bigram table",
                          config=cfg.to_dict(), remark=RUNGS[i - 1].remark)
        end, curve = None, []
        for ev in train(run, rung_cfg, stop=stop, limits=limits):
            if isinstance(ev, Done):
                end = ev
                continue
            if isinstance(ev, Eval):
                curve.append((ev.iter, ev.elapsed, ev.train_loss, ev.val_loss))
            yield RungProgress(rung=i, event=ev)
        sample = _one_thread(sample_text, run, settings.sample_tokens, seed=settings.seed)
        prev = done[-1] if done and done[-1].rung == i - 1 else None
        result = RungDone(rung=i, name=name, idea=RUNGS[i - 1].idea, notebook=RUNGS[i - 1].notebook,
                          params=run.model.num_params(), val_loss=end.final_val_loss, tokens_per_s=end.tokens_per_s,
                          seconds=time.perf_counter() - r0, train_seconds=end.seconds, iters=end.iters,
                          reason=end.reason, sample=sample, lecture=RUNGS[i - 1].lecture, remark=RUNGS[i - 1].remark,
                          curve=curve, model=run.model,
                          note=gain_note(end.final_val_loss, prev.val_loss, prev.name) if prev else "")
        if end.reason == "diverged":
            result.note = end.message
        done.append(result)
        yield result
        if end.reason in ("stopped", "diverged"):
            stopped = True
            break
    yield LadderDone(rungs=done, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, stopped=stopped,
                     settings=asdict(settings), device=device, dtype=dtype)


def _one_thread(fn, *args, **kw):
    """Decoding is a chain of tiny ops: on a busy 2-core machine two threads mostly wait for each other
    (see one_thread in minigpt/session.py), so the sample runs on one."""
    import torch
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kw)
    finally:
        torch.set_num_threads(prev)


# ---- the measured ladder ------------------------------------------------------------------------

def machine() -> dict:
    """The CPU model and core count (and the GPU, if one trained), for a measured ladder's record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    import torch  # only to name the GPU
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def ladder_record(done: LadderDone, command: str) -> dict:
    """What the CLI's --json prints and what ships in checkpoints/ladder.json."""
    import torch
    return {
        "rungs": [r.to_dict() for r in done.rungs],
        "wall_seconds": round(done.seconds, 1),
        "cpu_seconds": round(done.cpu_seconds, 1),
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "stopped": done.stopped,
        "settings": done.settings,
        "command": command,
        "machine": machine(),
        "device": done.device,
        "dtype": done.dtype,
        "torch_version": torch.__version__,
        "minigpt_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


RUNG_KEYS = ("name", "idea", "params", "val_loss", "seconds")


def load_measured(path: str | Path | None = None) -> dict:
    """The shipped measured ladder (or the record at `path`); ValueError if it is not one."""
    path = Path(path) if path is not None else MEASURED
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the measured ladder {path}: {e}") from None
    rungs = record.get("rungs") if isinstance(record, dict) else None
    if not isinstance(rungs, list) or not rungs or not all(
            isinstance(r, dict) and all(k in r for k in RUNG_KEYS) for r in rungs):
        raise ValueError(f"{path} is not a measured ladder: it needs rungs with {', '.join(RUNG_KEYS)}")
    for key in ("command", "machine", "date"):
        if key not in record:
            raise ValueError(f"{path} is not a measured ladder: it has no {key!r}")
    return record
