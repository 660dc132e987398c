"""`python -m minigpt ladder`: train the lecture's ladder, from a bigram table to a GPT, and print its table.

    python -m minigpt ladder                          # the default: 8 rungs × 1000 steps, < 3 min on 2 cores
    python -m minigpt ladder --iters-per-rung 300 --json
    python -m minigpt ladder --seconds-per-rung 10 --norm rms

Progress goes to stderr; stdout gets the table (rung, idea, parameters, full-validation loss,
tokens/s, seconds) with a note beside every rung that did not clearly beat the one before, or
with --json one JSON object as the last line: {"rungs": [{"name", "idea", "params", "val_loss",
"seconds", ...}], "command", "machine", "date", ...}. Ctrl-C stops after the current step (the
rungs done so far are still printed).
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import time

from .ladder import DEFAULT_ITERS, LADDER_NORMS, NORM_NAMES, RUNGS, LadderConfig, LadderDone, RungDone, \
    RungProgress, RungStarted, ladder_data, ladder_record, run_ladder
from .model import GPTConfig
from .train import Eval, Step


def register(subparsers):
    m = GPTConfig()
    p = subparsers.add_parser("ladder", help="train the lecture's ladder (bigram table → GPT) and print its table",
                              description="Train every rung of the ladder, from a bigram table to the default GPT, "
                                          "under one budget and seed, and print what each idea is worth. "
                                          "Example: python -m minigpt ladder --json")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters-per-rung", type=int, default=None, metavar="N",
                        help=f"training steps per rung (default {DEFAULT_ITERS})")
    budget.add_argument("--seconds-per-rung", type=float, default=None, metavar="S",
                        help="a wall-clock budget per rung instead of steps")
    p.add_argument("--n-embd", type=int, default=m.n_embd, metavar="E", help=f"width of every rung (default {m.n_embd})")
    p.add_argument("--block-size", type=int, default=m.block_size, metavar="T",
                   help=f"context length of every rung (default {m.block_size})")
    p.add_argument("--norm", default="layer", choices=list(LADDER_NORMS),
                   help="the norm of rungs 7-8: layer (default), batch or rms")
    p.add_argument("--data", default="shakespeare", help="'shakespeare' (default) or the path of a UTF-8 text file")
    p.add_argument("--seed", type=int, default=LadderConfig.seed, help="random seed, the same for every rung")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
    p.add_argument("--out", default=None, metavar="PATH", help="also write the JSON record to PATH")
    p.set_defaults(func=run)


def run(args) -> int:
    from .data import atomic_write
    settings = LadderConfig(iters_per_rung=args.iters_per_rung if args.seconds_per_rung is None
                            else None, seconds_per_rung=args.seconds_per_rung, n_embd=args.n_embd,
                            block_size=args.block_size, norm=args.norm, seed=args.seed, device=args.device)
    if settings.iters_per_rung is None and settings.seconds_per_rung is None:
        settings.iters_per_rung = DEFAULT_ITERS
    settings.validate()
    tokenizer, splits = ladder_data(args.data)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        done = _run(settings, tokenizer, splits, stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    record = ladder_record(done, command_line(args))
    if args.out:
        from pathlib import Path
        atomic_write(Path(args.out), (json.dumps(record, indent=1, allow_nan=False) + "\n").encode())
    if args.json:
        print(json.dumps(record, allow_nan=False), flush=True)
    else:
        print(table(record))
    return 0


def command_line(args) -> str:
    """The command as typed, rebuilt from the flags (the defaults left out), for the record."""
    parts = ["python", "-m", "minigpt", "ladder"]
    for flag, value in (("--iters-per-rung", args.iters_per_rung), ("--seconds-per-rung", args.seconds_per_rung),
                        ("--n-embd", args.n_embd), ("--block-size", args.block_size), ("--norm", args.norm),
                        ("--seed", args.seed), ("--data", args.data), ("--device", args.device), ("--out", args.out)):
        if value is not None and value != _DEFAULTS.get(flag):
            parts += [flag, str(value)]
    return shlex.join(parts + (["--json"] if args.json else []))


_DEFAULTS = {"--n-embd": GPTConfig.n_embd, "--block-size": GPTConfig.block_size, "--norm": "layer",
             "--seed": LadderConfig.seed, "--data": "shakespeare", "--device": "auto"}


def _run(settings, tokenizer, splits, stop) -> LadderDone:
    """Drive the ladder, printing one progress line per rung (and now and then a step) on stderr."""
    last = 0.0
    val = None
    for ev in run_ladder(settings, tokenizer, splits, stop):
        if isinstance(ev, RungStarted):
            val = None
            print(f"rung {ev.rung}/{len(RUNGS)} {ev.name}: {ev.idea} ({ev.params:,} parameters)",
                  file=sys.stderr, flush=True)
        elif isinstance(ev, RungProgress):
            if isinstance(ev.event, Eval):
                val = ev.event.val_loss
            elif isinstance(ev.event, Step) and time.monotonic() - last >= 5.0:
                last = time.monotonic()
                v = f" | val {val:.3f}" if val is not None else ""
                print(f"  step {ev.event.iter} | loss {ev.event.loss:.3f}{v} | "
                      f"{ev.event.tokens_per_s / 1000:.1f}k tok/s", file=sys.stderr, flush=True)
        elif isinstance(ev, RungDone):
            loss = f"{ev.val_loss:.4f}" if ev.val_loss is not None else "n/a"
            print(f"  done: full val {loss} in {ev.seconds:.1f} s{' — ' + ev.note if ev.note else ''}",
                  file=sys.stderr, flush=True)
        elif isinstance(ev, LadderDone):
            if ev.stopped:
                print("stopped: the rungs done so far follow", file=sys.stderr, flush=True)
            return ev
    raise RuntimeError("the ladder ended without its LadderDone event")


def table(record: dict) -> str:
    """The ladder as a text table, the notes below it and a line on how it was measured."""
    rows = [("rung", "idea", "params", "val loss", "tokens/s", "seconds")]
    for k, r in enumerate(record["rungs"], 1):
        rows.append((f"{r.get('rung', k)} {r['name']}" + (" *" if r.get("note") else ""), r["idea"],
                     f"{r['params']:,}", f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "n/a",
                     f"{r['tokens_per_s']:,}", f"{r['seconds']:.1f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    align = ("<", "<", ">", ">", ">", ">")
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in record["rungs"]:
        if r.get("note"):
            lines.append(f"* {r['name']}: {r['note']}")
    s = record["settings"]
    budget = f"{s['iters_per_rung']} steps" if s.get("iters_per_rung") else f"{s['seconds_per_rung']:g} s"
    lines.append(f"{len(record['rungs'])} rungs × {budget}, {s['n_embd']} wide, context {s['block_size']}, "
                 f"{NORM_NAMES[s['norm']]} in rungs 7-8, seed {s['seed']}; {record['device']} {record['dtype']}; "
                 f"wall {record['wall_seconds']:.1f} s, CPU {record['cpu_seconds']:.1f} s, load average "
                 f"{record['load_average']}" + (" (stopped early)" if record["stopped"] else ""))
    return "\n".join(lines)
