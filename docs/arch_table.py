"""Build docs/arch-table.md's table from the --log-json outputs in /tmp/arch (no number typed in)."""
import json, sys
from pathlib import Path
RUNS = [("standard", ""), ("norm-batch", "--norm batch"), ("norm-rms", "--norm rms"), ("norm-none", "--norm none"),
        ("no-residual", "--no-residual"), ("no-mlp", "--no-mlp"), ("no-pos-emb", "--no-pos-emb"),
        ("act-relu", "--activation relu"), ("act-sigmoid", "--activation sigmoid"), ("act-tanh", "--activation tanh"),
        ("standard-8", "--n-layer 8"), ("vanishing-8", "--n-layer 8 --activation sigmoid --no-residual --norm none")]
d = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/arch")
rows, missing = [], []
for name, flags in RUNS:
    f = d / f"{name}.jsonl"
    lines = [json.loads(l) for l in f.read_text().splitlines()] if f.exists() else []
    summary = lines[-1] if lines and "out" in lines[-1] else None
    if summary is None:
        missing.append(f"`{flags or '(standard)'}`")
        continue
    start = next(e for e in lines if e.get("event") == "start")
    evals = [e for e in lines if e.get("event") == "eval"]
    last = evals[-1]
    g = last["layer_grad_norms"]
    first_g = evals[0]["layer_grad_norms"]
    ratio = lambda g: f"{g[0] / g[-1]:.2g}" if g[-1] > 0 else "n/a"
    rows.append(f"| {name} | `{flags}` | {start['params']:,} | {summary['iters']} | **{summary['val_loss']:.4f}** | "
                f"{last['train_loss']:.3f} | {last['val_loss']:.3f} | {last['val_loss'] - last['train_loss']:+.3f} | "
                f"{ratio(first_g)} / {ratio(g)} | {max(g) / min(g) if min(g) > 0 else float('inf'):.3g} | "
                f"{last['layer_act_std'][-1]:.3g} | {summary['tokens_per_s']:,} |")
print("| run | flags | params | steps | full-val loss | train (est.) | val (est.) | gap val − train | "
      "grad first / last (first eval / last eval) | grad max / min (last eval) | act std, last block | tok/s |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print("\n".join(rows))
if missing:
    print("\nNot measured (ran out of time on the shared machine): " + ", ".join(missing))
