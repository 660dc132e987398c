"""Command line: `python -m minigpt train|sample|eval|info|explain|bench|prepare|download ...`.

Every user error (a bad flag value, a missing file, a bad checkpoint) exits 2 with one line on
stderr; defaults come from the config dataclasses, so the CLI and the app agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from .limits import Limits

EXIT_USER_ERROR = 2
EXIT_SAVED_ELSEWHERE = 1  # the run was saved, but not at --out (the warning says where), or not at all


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# ---- train --------------------------------------------------------------------------------------

def add_train(sub):
    from .model import ACTIVATIONS, NORMS, GPTConfig
    from .train import TrainConfig
    m, t = GPTConfig(), TrainConfig()
    p = sub.add_parser("train", help="train a model and save a .safetensors checkpoint",
                       description="Train a GPT (or the bigram baseline) on Tiny Shakespeare or your own text. "
                                   "Example: python -m minigpt train --out runs/shakespeare.safetensors. "
                                   "Several GPUs or processes: torchrun --standalone --nproc_per_node=N "
                                   "-m minigpt train ... (DistributedDataParallel)")
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare', the path of a UTF-8 text file, or a folder written by `prepare`")
    p.add_argument("--tokenizer", default="char", choices=["char", "gpt2"],
                   help="char or GPT-2 BPE (default char; a prepared folder brings its own)")
    p.add_argument("--model", default=m.model, choices=["gpt", "bigram"], help="gpt or the bigram baseline")
    p.add_argument("--n-layer", type=int, default=m.n_layer, help=f"transformer blocks (default {m.n_layer})")
    p.add_argument("--n-head", type=int, default=m.n_head, help=f"attention heads (default {m.n_head})")
    p.add_argument("--n-embd", type=int, default=m.n_embd, help=f"embedding width (default {m.n_embd})")
    p.add_argument("--block-size", type=int, default=m.block_size, help=f"context length (default {m.block_size})")
    p.add_argument("--dropout", type=float, default=m.dropout, help=f"dropout (default {m.dropout})")
    arch = p.add_argument_group("architecture switches (GPT only; the defaults are the standard GPT)")
    arch.add_argument("--norm", default=m.norm, choices=list(NORMS),
                      help="normalisation before each sublayer: layer (default), batch (over batch × time in "
                           "training: leaks statistics across positions), rms, or none")
    arch.add_argument("--no-residual", dest="residual", action="store_false",
                      help="no residual connections: each sublayer's output replaces the stream")
    arch.add_argument("--no-mlp", dest="mlp", action="store_false", help="attention-only blocks (no MLP sublayer)")
    arch.add_argument("--no-pos-emb", dest="pos_emb", action="store_false",
                      help="no learned position embeddings (only the causal mask tells positions apart)")
    arch.add_argument("--activation", default=m.activation, choices=list(ACTIVATIONS),
                      help=f"the MLP's nonlinearity (default {m.activation})")
    p.add_argument("--batch-size", type=int, default=t.batch_size,
                   help=f"sequences per step, over all processes and micro-steps (default {t.batch_size})")
    p.add_argument("--grad-accum", type=int, default=t.grad_accum,
                   help="micro-steps per step: the same batch in smaller pieces, for less memory (default 1)")
    p.add_argument("--optimizer", default=None, choices=["adamw", "muon"],
                   help=f"muon: Muon on the blocks' matrices, AdamW on the rest; adamw: AdamW alone "
                        f"(default {t.optimizer}; with --resume, the checkpoint's)")
    p.add_argument("--lr", type=float, default=t.lr, help=f"AdamW's peak learning rate (default {t.lr})")
    p.add_argument("--muon-lr", type=float, default=t.muon_lr, help=f"Muon's peak learning rate (default {t.muon_lr})")
    p.add_argument("--min-lr", type=float, default=t.min_lr, help=f"final learning rate (default {t.min_lr})")
    p.add_argument("--warmup-iters", type=int, default=t.warmup_iters, help="warmup steps")
    p.add_argument("--max-iters", type=int, default=None,
                   help=f"training steps (default {t.max_iters}; with --max-seconds, no step limit)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="time budget; the learning-rate schedule then follows the clock")
    p.add_argument("--target-val-loss", type=float, default=None,
                   help="stop as soon as the full validation loss reaches this (the learning-rate "
                        "schedule is then planned to reach it: see plan_iters in minigpt/train.py)")
    p.add_argument("--eval-interval", type=int, default=t.eval_interval, help="steps between loss estimates")
    p.add_argument("--eval-iters", type=int, default=t.eval_iters, help="batches per loss estimate")
    p.add_argument("--seed", type=int, default=t.seed, help="random seed (init and batches)")
    p.add_argument("--device", default=t.device, help="auto | cpu | cuda | mps (or MINIGPT_DEVICE)")
    p.add_argument("--dtype", default=t.dtype, choices=["auto", "float32", "bfloat16"],
                   help="auto uses bf16 autocast where it is faster")
    p.add_argument("--fp32", action="store_true", help="force float32 (same as --dtype float32)")
    p.add_argument("--out", default="runs/model.safetensors", help="checkpoint to write")
    p.add_argument("--resume", default=None, help="continue training from this checkpoint")
    p.add_argument("--weights-only", action="store_true",
                   help="save without the optimizer state (a third of the size; --resume then starts a fresh optimizer)")
    p.add_argument("--log-json", action="store_true", help="one JSON object per event; a summary last")
    p.add_argument("--log-interval", type=int, default=10, help="steps between progress lines / step events")
    p.set_defaults(func=run_train)


def _splits(text: str, tokenizer):
    from .data import encode_ids, split_ids
    return split_ids(encode_ids(tokenizer, text))


def _data(source: str, kind: str, tokenizer=None):
    """(tokenizer, splits) of `source`: a prepared folder (memmaps and its own tokenizer, which a given
    `tokenizer` must equal), else a text tokenized in memory (by `tokenizer`, or a new one of `kind`)."""
    from pathlib import Path

    from .data import DataError, load_text
    from .prepare import is_prepared, load_prepared
    from .tokenizers import build_tokenizer

    if is_prepared(source):
        prepared, splits, _ = load_prepared(source)
        if tokenizer is not None and tokenizer.to_dict() != prepared.to_dict():
            raise UserError(f"{source} was prepared with another tokenizer than the checkpoint's "
                            f"({prepared.kind}, {prepared.vocab_size} tokens vs {tokenizer.kind}, "
                            f"{tokenizer.vocab_size}): evaluate or resume on the data it was trained on")
        return prepared, splits
    if Path(source).expanduser().is_dir():
        raise DataError(f"{source} is a folder without a meta.json: prepare it first "
                        f"(python -m minigpt prepare --data {source} --out DIR, then --data DIR)")
    text = load_text(source)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(kind, text)
    return tokenizer, _splits(text, tokenizer)


def build_run(args, limits: Limits, cfg=None):
    """The Run `train` works on: fresh from the flags, or resumed from a checkpoint (its optimizer
    state restored when it is complete and for the optimizer `cfg` uses, else a fresh one and a note)."""
    from .checkpoint import load_checkpoint
    from .device import pick_device, pick_precision
    from .model import GPTConfig
    from .optim import restore_optimizer
    from .train import Run, TrainConfig

    name = args.data if args.data == "shakespeare" else str(args.data)
    dtype = "float32" if args.fp32 else args.dtype
    if args.resume:
        ck = load_checkpoint(args.resume)
        _, splits = _data(args.data, ck.tokenizer.kind, ck.tokenizer)
        device = pick_device(args.device)
        run = Run(model=ck.model.to(device), tokenizer=ck.tokenizer, splits=splits,
                  precision=pick_precision(device, dtype, ck.config.n_embd), data_name=name,
                  iters=int(ck.training.get("iters", 0) or 0), seconds=float(ck.training.get("seconds", 0) or 0))
        if ck.optimizer_state is not None:
            cfg = cfg or TrainConfig()
            run.optimizer, note = restore_optimizer(run.model, cfg, device, ck.optimizer_state)
            if note:
                print(note, file=sys.stderr)
        return run
    tokenizer, splits = _data(args.data, args.tokenizer)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, model=args.model,
                    norm=args.norm, residual=args.residual, mlp=args.mlp, pos_emb=args.pos_emb,
                    activation=args.activation)
    cfg.validate(limits)
    return Run.create(cfg, tokenizer, splits, device=args.device, dtype=dtype, seed=args.seed, data_name=name)


def _max_iters(args, limits: Limits) -> int:
    """--max-iters, else the default; a time budget alone lifts the step limit (the clock decides)."""
    if args.max_iters is not None:
        return args.max_iters
    from .train import TrainConfig
    return limits.max_iters if args.max_seconds is not None else TrainConfig().max_iters


def _optimizer(args) -> str:
    """--optimizer; else on --resume the optimizer whose state the checkpoint holds (or that its run
    card names), so that a resume continues the same curve; else the default."""
    from .train import TrainConfig
    if args.optimizer or not args.resume:
        return args.optimizer or TrainConfig().optimizer
    from .checkpoint import CheckpointError, inspect_checkpoint
    try:
        _, _, training, header, metadata = inspect_checkpoint(args.resume)
    except CheckpointError:
        return TrainConfig().optimizer  # build_run reports what is wrong with the file
    if any(k.startswith("optimizer.") for k in header):
        return "muon" if json.loads(metadata.get("optimizer", "{}")).get("type") == "MuonAdamW" else "adamw"
    saved = training.get("train_config")
    saved = saved.get("optimizer") if isinstance(saved, dict) else None
    return saved if saved in ("adamw", "muon") else TrainConfig().optimizer


def run_train(args) -> int:
    """`train` in this process, or under torchrun this process's part of a DDP job (minigpt/distributed.py)."""
    from .distributed import process_group
    from .saving import sigterm_interrupts
    with process_group(args.device) as team:
        if team is not None:  # torchrun: SIGINT and SIGTERM set team.stop (minigpt/distributed.py)
            return _train(args, team)
        with sigterm_interrupts():  # SIGTERM (timeout, container stops, Space restarts) saves as Ctrl-C does
            return _train(args, team)


def _train(args, team) -> int:
    from .checkpoint import save_checkpoint
    from .saving import OutputError, check_writable, save_with_fallback, signals_ignored
    from .train import Done, Eval, Sample, Start, Step, TrainConfig, event_dict, train

    limits = Limits.from_env()
    if team is not None:
        args.device = team.device  # cuda:<local rank>, or cpu
    cfg = TrainConfig(batch_size=args.batch_size, grad_accum=args.grad_accum, optimizer=_optimizer(args),
                      lr=args.lr, muon_lr=args.muon_lr, min_lr=min(args.min_lr, args.lr),
                      warmup_iters=args.warmup_iters, max_iters=_max_iters(args, limits), max_seconds=args.max_seconds,
                      target_val_loss=args.target_val_loss, eval_interval=args.eval_interval,
                      eval_iters=args.eval_iters, seed=args.seed, device=args.device,
                      dtype="float32" if args.fp32 else args.dtype)
    cfg.validate(limits)
    if args.log_interval < 1:
        raise UserError("--log-interval must be >= 1")
    run = build_run(args, limits, cfg)
    if team is None or team.is_main:  # before the first step: a run must not be lost to an unwritable --out
        check_writable(args.out, "--out")
    stop = team.stop if team is not None else threading.Event()
    if team is not None and not team.is_main:  # rank 0 logs, evaluates and saves; the others train
        for _ in train(run, cfg, stop, limits, team):
            pass
        return 0
    last_val, last_print = None, 0.0
    done = None
    out = sys.stdout
    try:
        for ev in train(run, cfg, stop, limits, team):
            if args.log_json:
                if not isinstance(ev, Step) or ev.iter % args.log_interval == 0:
                    print(json.dumps(event_dict(ev)), file=out, flush=True)
            elif isinstance(ev, Start):
                procs = f" × {team.world_size} processes" if team is not None else ""
                attention = " | attention kernel" if ev.attention == "kernel" else ""
                print(f"device {ev.device} ({ev.dtype}){procs} | {ev.params:,} parameters | "
                      f"{ev.train_tokens:,} train / {ev.val_tokens:,} val tokens{attention}", file=out, flush=True)
            elif isinstance(ev, Step):
                now = time.monotonic()
                if ev.iter % args.log_interval == 0 and now - last_print >= 1.0:
                    last_print = now
                    val = f"{last_val:.4f}" if last_val is not None else "-"
                    print(f"iter {ev.iter:6d} | loss {ev.loss:.4f} | val {val} | {ev.tokens_per_s / 1000:.1f}k tok/s | "
                          f"lr {ev.lr:.2e} | {_fmt_time(ev.elapsed)} elapsed, ETA {_fmt_time(ev.eta)}",
                          file=out, flush=True)
            elif isinstance(ev, Eval):
                last_val = ev.val_loss
                train_loss = f"train {ev.train_loss:.4f} | " if ev.train_loss is not None else ""
                print(f"eval @ {ev.iter}: {train_loss}val {ev.val_loss:.4f}", file=out, flush=True)
            elif isinstance(ev, Sample):
                print("--- sample ---\n" + ev.text.strip("\n") + "\n--------------", file=out, flush=True)
            if isinstance(ev, Done):
                done = ev
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if str(e) == "SIGTERM" else "interrupted"
        print(f"{how}: saving the model trained so far", file=sys.stderr)
    with signals_ignored():  # a second Ctrl-C or SIGTERM must not cut the save short
        try:
            path, note = save_with_fallback(
                args.out, lambda p: save_checkpoint(p, run.model, run.tokenizer, run.run_card(),
                                                    None if args.weights_only else run.optimizer),
                what=f"the model ({run.iters} iterations)")
        except OutputError as e:  # nowhere to write: say exactly what was lost and why
            print(f"error: {e}", file=sys.stderr)
            return EXIT_SAVED_ELSEWHERE
    summary = {"val_loss": run.final_val_loss, "iters": run.iters,
               "train_seconds": round(run.seconds, 2),
               "tokens_per_s": round(done.tokens_per_s) if done else None,
               "reason": done.reason if done else "stopped", "out": str(path)}
    if done and done.message:
        print(done.message, file=sys.stderr)
    if note:
        summary["requested_out"] = str(args.out)
        print(f"warning: {note}", file=sys.stderr)
    if not args.log_json:
        val = f"{run.final_val_loss:.4f}" if run.final_val_loss is not None else "n/a"
        print(f"done ({summary['reason']}): {run.iters} iters in {run.seconds:.1f} s, full val loss {val}, "
              f"saved {path}")
    print(json.dumps(summary), flush=True)
    return EXIT_SAVED_ELSEWHERE if note else 0


# ---- sample -------------------------------------------------------------------------------------

def add_sample(sub):
    from .sampling import SamplingConfig
    s = SamplingConfig()
    p = sub.add_parser("sample", help="generate text from a checkpoint (streams to stdout)")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by minigpt")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--tokens", type=int, default=300, help="tokens to generate")
    p.add_argument("--strategy", default=s.strategy, choices=["greedy", "multinomial", "temperature"])
    p.add_argument("--temperature", type=float, default=s.temperature)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | mps")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every token")
    p.add_argument("--weights", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: generate with the weights rounded to bf16, half the bytes read a token (with the "
                        "compiled kernel ~2x faster on a CPU; its next-token probabilities within ~1e-4 of fp32's "
                        "with those weights)")
    p.set_defaults(func=run_sample)


def run_sample(args) -> int:
    from .checkpoint import load_checkpoint
    from .device import pick_device
    from .generate import generate, start_ids
    from .limits import check_int
    from .sampling import SamplingConfig

    limits = Limits.from_env()
    n = check_int("--tokens", args.tokens, 1, limits.max_new_tokens)
    check_int("--seed", args.seed, 0, 2**63 - 1)
    sampling = SamplingConfig(args.strategy, args.temperature, args.top_k, args.top_p).validate()
    ck = load_checkpoint(args.checkpoint, device=pick_device(args.device))
    if args.weights == "bfloat16":
        import torch
        ck.model.to(torch.bfloat16)
    steps = generate(ck.model, ck.tokenizer, args.prompt, n, sampling, seed=args.seed, use_cache=not args.no_cache)
    t0 = time.perf_counter()
    first = next(steps)  # encodes the prompt: an unknown character fails here, before any output
    sys.stdout.write(args.prompt + first.text)
    count = 1
    for step in steps:
        sys.stdout.write(step.text)
        sys.stdout.flush()
        count += 1
    sys.stdout.write("\n")
    print(f"[{count} tokens, {count / (time.perf_counter() - t0):.0f} tokens/s, "
          f"{'no cache' if args.no_cache else 'kv cache'}{', bf16 weights' if args.weights == 'bfloat16' else ''}]",
          file=sys.stderr)
    n_prompt, block = len(start_ids(ck.tokenizer, args.prompt)), ck.model.config.block_size
    if n_prompt > block:
        print(f"[the prompt is {n_prompt} tokens long and the context is {block}: the model saw only its last "
              f"{block}]", file=sys.stderr)
    return 0


# ---- eval / info --------------------------------------------------------------------------------

def add_eval(sub):
    p = sub.add_parser("eval", help="full-validation loss of a checkpoint (last line: JSON)")
    p.add_argument("checkpoint")
    p.add_argument("--data", default="shakespeare",
                   help="'shakespeare', a text file path, or a prepared folder (its first 1M validation tokens)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import val_tensor
    from .device import pick_device
    from .evaluate import full_val_loss

    ck = load_checkpoint(args.checkpoint, device=pick_device(args.device))
    _, splits = _data(args.data, ck.tokenizer.kind, ck.tokenizer)
    val = val_tensor(splits.val)
    loss = full_val_loss(ck.model, val, ck.config.block_size)
    part = f" (its first {len(val):,} of {len(splits.val):,} validation tokens)" if len(val) < len(splits.val) else ""
    print(f"full validation loss of {args.checkpoint} on {args.data}{part}: {loss:.4f}")
    print(json.dumps({"val_loss": round(loss, 4)}))
    return 0


def add_info(sub):
    p = sub.add_parser("info", help="config, parameter count and training summary of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)


def checkpoint_info(path) -> dict:
    """What `info` shows, as a dict (also used by the app)."""
    from .checkpoint import inspect_checkpoint
    from .model import arch_summary, estimate_params
    config, tokenizer, training, header, metadata = inspect_checkpoint(path)
    return {"config": config.to_dict(), "params": estimate_params(config), "architecture": arch_summary(config),
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "training": training,
            "has_optimizer_state": any(k.startswith("optimizer.") for k in header),
            "minigpt_version": metadata.get("minigpt_version"), "saved_at": metadata.get("saved_at")}


def run_info(args) -> int:
    info = checkpoint_info(args.checkpoint)
    if args.json:
        print(json.dumps(info))
        return 0
    c, t = info["config"], info["training"]
    print(f"{args.checkpoint}")
    print(f"  model      {c['model']}: {c['n_layer']} layers, {c['n_head']} heads, {c['n_embd']} wide, "
          f"context {c['block_size']}, dropout {c['dropout']}, bias {c['bias']}")
    if c["model"] == "gpt":
        print(f"  arch       {info['architecture']} (norm {c['norm']}, residual {c['residual']}, mlp {c['mlp']}, "
              f"pos_emb {c['pos_emb']}, activation {c['activation']})")
    print(f"  params     {info['params']:,}")
    print(f"  tokenizer  {info['tokenizer']} ({info['vocab_size']} tokens)")
    if t:
        val = t.get("val_loss")
        print(f"  training   {t.get('iters')} iters, {t.get('seconds')} s on {t.get('device')} ({t.get('dtype')}), "
              f"data {t.get('data')}, seed {t.get('seed')}")
        print(f"  val loss   {val:.4f}" if isinstance(val, (int, float)) else "  val loss   n/a")
    print(f"  saved      {info['saved_at']} by minigpt {info['minigpt_version']}"
          f"{' (with optimizer state)' if info['has_optimizer_state'] else ''}")
    return 0


# ---- entry point --------------------------------------------------------------------------------

def _register_optional(sub):
    """Subcommands that live in their own modules."""
    import importlib
    for module in ("experiments_cli", "bench", "prepare", "download", "ladder_cli", "decode_kernel"):
        try:
            mod = importlib.import_module(f"minigpt.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"minigpt.{module}":
                raise
            continue
        mod.register(sub)


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m minigpt" if sys.argv[0].endswith("__main__.py") else "minigpt"  # the console script
    parser = argparse.ArgumentParser(prog=prog, description="minigpt: a small, fast, clear GPT playground")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_sample(sub)
    add_eval(sub)
    add_info(sub)
    _register_optional(sub)
    return parser


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `sample ... | head`
        return 0
    except (UserError, CheckpointError, DataError, ValueError, OSError) as e:
        print(f"error: {str(e) or type(e).__name__}", file=sys.stderr)
        return EXIT_USER_ERROR
