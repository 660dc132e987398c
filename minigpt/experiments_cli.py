"""`python -m minigpt explain softmax|gradients|norms`: the Concepts experiments in a terminal.

    python -m minigpt explain softmax --dims 4,64,1024
    python -m minigpt explain gradients --depth 20 --activations sigmoid,relu --init kaiming
    python -m minigpt explain norms --batch 1 --json
    python -m minigpt explain scores checkpoints/shakespeare-char.safetensors --text "ROMEO: ..."

Prints the same numbers as the Concepts tab (a table, then what to look for), or with --json one
JSON object on the last line. Flags, ranges and defaults come from the knobs in experiments/common.py;
a bad value exits 2 with one line on stderr.
"""

from __future__ import annotations

import json
import sys
import textwrap

from . import experiments as E

TOPICS = {  # name -> (function, knobs, explanation keys, help)
    "softmax": (E.softmax_scaling, E.SOFTMAX_KNOBS, ("softmax_variance", "softmax_peakiness", "softmax_example"),
                "why attention divides q·k by sqrt(d): score variance and softmax peakiness vs d"),
    "gradients": (E.gradient_flow, E.GRADIENT_KNOBS, ("gradient_flow", "gradient_clipping"),
                  "vanishing gradients per layer of a deep MLP; exploding ones and clip_grad_norm_"),
    "norms": (E.norm_compare, E.NORM_KNOBS, ("norm_heatmaps", "norm_stats"),
              "LayerNorm vs BatchNorm: per-sample and per-feature statistics, batch size 1, eval mode"),
}


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _add_knobs(parser, knobs: dict):
    # Values stay strings here: the library checks them, so a bad one gives one clear line, not a usage dump.
    for name, knob in knobs.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=knob.default, metavar="N",
                            help=f"{knob.help} ({_num(knob.lo)}..{_num(knob.hi)}, default {_num(knob.default)})")


def register(subparsers):
    p = subparsers.add_parser("explain", help="run a teaching experiment: softmax | gradients | norms | scores",
                              description="Run one of the Concepts experiments and print its numbers. "
                                          "Example: python -m minigpt explain softmax --json")
    topics = p.add_subparsers(dest="topic", required=True, metavar="{softmax,gradients,norms,scores}")
    for name, (_, knobs, _, help_) in TOPICS.items():
        t = topics.add_parser(name, help=help_, description=help_)
        t.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
        if name == "softmax":
            t.add_argument("--dims", default=",".join(map(str, E.DEFAULT_DIMS)),
                           help=f"comma-separated head dimensions d ({_num(E.DIM.lo)}..{_num(E.DIM.hi)})")
            t.add_argument("--example-logits", dest="example_logits",
                           default=",".join(f"{z:g}" for z in E.EXAMPLE_LOGITS),
                           help="the example row of logits (write --example-logits=-1,2,0.5 when the first is "
                                "negative)")
        if name == "gradients":
            t.add_argument("--activations", default=",".join(E.DEFAULT_ACTIVATIONS),
                           help=f"comma-separated, one line each: {', '.join(E.ACTIVATIONS)}")
            t.add_argument("--init", default="default",
                           help="weight init: " + "; ".join(f"{k}: {v}" for k, v in E.INITS.items()))
            t.add_argument("--residual", action="store_true", help="add residual connections (x + f(x))")
            t.add_argument("--layernorm", action="store_true", help="LayerNorm before each layer (pre-norm)")
        _add_knobs(t, knobs)
        t.set_defaults(func=run)
    help_ = "the real attention scores of a trained model per layer, with and without 1/sqrt(d)"
    t = topics.add_parser("scores", help=help_, description=help_)
    t.add_argument("checkpoint", help="a .safetensors checkpoint written by minigpt")
    t.add_argument("--text", default="ROMEO:\nBut soft, what light through yonder window breaks?\n"
                                     "It is the east, and Juliet is the sun.",
                   help="the text to look at (its last block_size tokens)")
    t.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
    t.set_defaults(func=run_scores)
    p.set_defaults(func=run)


def _kwargs(args) -> dict:
    _, knobs, _, _ = TOPICS[args.topic]
    kw = {name: getattr(args, name) for name in knobs}
    if args.topic == "softmax":
        kw.update(dims=E.parse_names(args.dims, "dims"), example_logits=args.example_logits)
    if args.topic == "gradients":
        kw.update(activations=args.activations, init=args.init, residual=args.residual, layernorm=args.layernorm)
    return kw


def run(args) -> int:
    fn, _, keys, _ = TOPICS[args.topic]
    try:
        result = fn(**_kwargs(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return show(result, keys, args.json)


def run_scores(args) -> int:
    from .checkpoint import load_checkpoint
    from .limits import Limits, check_text
    ck = load_checkpoint(args.checkpoint)  # a bad file: CheckpointError, one line and exit 2 from main()
    text = check_text("--text", args.text, Limits.from_env().max_prompt_chars)
    return show(E.model_scores(ck.model, ck.tokenizer.encode(text)), ("model_scores",), args.json)


def show(result, keys, as_json: bool) -> int:
    """Print a result's tables and what to look for, or one JSON object."""
    if as_json:
        print(json.dumps(result.to_dict(), allow_nan=False))
        return 0
    print(E.tables_text(result.tables()))
    print("What to look for:")
    for key in keys:
        print(textwrap.fill(E.EXPLANATIONS[key], width=100, initial_indent="  - ", subsequent_indent="    "))
    return 0
