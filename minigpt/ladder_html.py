"""The Build-it-up tab's HTML views: the rung table, the samples and the status line of a ladder.

Plain data in (rung dicts as `RungDone.to_dict()` and checkpoints/ladder.json give them, a
`LadderView` from minigpt/ladder_session.py, the measured record), an HTML string out; every text
is escaped. Nothing here knows about Gradio. Core module: imports minigpt's core only.
"""

from __future__ import annotations

import html
from datetime import datetime

from .ladder import NORM_NAMES, RUNGS, rung_name
from .plots import fmt_time

CSS = """
.mg-ladder { width: 100%; border-collapse: collapse; font-size: .98rem; }
.mg-ladder th, .mg-ladder td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e4e4e7;
                               vertical-align: top; }
.mg-ladder td:nth-child(3) { width: 46%; }
.mg-ladder td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.mg-ladder .mg-note { color: #c2410c; font-weight: 600; }
.mg-ladder .mg-remark { color: #71717a; font-size: .88rem; }
.mg-ladder tr.mg-running td { background: #eef2ff; }
.mg-samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: .6rem; }
.mg-samples pre { white-space: pre-wrap; font-size: .9rem; margin: .2rem 0 0 0; max-height: 9rem; overflow-y: auto; }
"""


def _rung_label(r: dict) -> str:
    return f"{r.get('rung', '')} {r['name']}".strip()


def measured_label(record: dict) -> str:
    """'Measured on <machine>, <date>, with `<command>`' and what it ran, for the shipped record."""
    m = record.get("machine", {}) or {}
    machine = m.get("cpu", "?") + (f" ({m['cores']} cores)" if m.get("cores") else "")
    if m.get("gpu"):
        machine += f", {m['gpu']}"
    try:
        when = datetime.fromisoformat(record["date"]).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        when = str(record.get("date"))
    s = record.get("settings", {}) or {}
    load = f", load average {record['load_average']}" if record.get("load_average") is not None else ""
    return (f"<b>Measured</b> on {html.escape(machine)}, {html.escape(when)}, with "
            f"<code>{html.escape(str(record['command']))}</code>: {settings_text(s)}; "
            f"{html.escape(str(record.get('device', '')))} {html.escape(str(record.get('dtype', '')))}, "
            f"wall {record.get('wall_seconds', 0):.0f} s, CPU {record.get('cpu_seconds', 0):.0f} s{load}. "
            "Press <b>Run the ladder</b> to measure it here, live.")


def settings_text(s: dict) -> str:
    budget = (f"{s['iters_per_rung']:,} steps" if s.get("iters_per_rung") else
              f"{s.get('seconds_per_rung', 0):g} s" if s.get("seconds_per_rung") else "?")
    norm = NORM_NAMES.get(s.get("norm", "layer"), s.get("norm"))
    return (f"{len(RUNGS)} rungs × {budget}, {s.get('n_embd', '?')} wide, context {s.get('block_size', '?')}, "
            f"{html.escape(str(norm))} in rungs 7–8, seed {s.get('seed', '?')}")


def status_html(view, record: dict | None = None) -> str:
    """Where a ladder is (a LadderView), or the measured record's label before any run."""
    if view.state == "idle":
        body = measured_label(record) if record else "No measured ladder is shipped: press <b>Run the ladder</b>."
        extra = f'<p class="mg-warn">{html.escape(view.message)}</p>' if view.message else ""
        return f'<div class="mg-status"><p>{body}</p>{extra}</div>'
    done = len(view.done)
    live = view.live or {}
    frac = (done + (live.get("iter", 0) / live["max_iters"] if live.get("max_iters") else 0)) / max(view.rungs, 1)
    pct = 100 * (1.0 if view.state == "done" else min(frac, 1.0))
    where = f" · {html.escape(view.device)} ({html.escape(view.dtype)})" if view.device else ""
    if view.state == "waiting":
        head = html.escape(view.message)
    elif view.state == "done":
        how = "stopped" if view.stopped else "finished"
        head = (f"<b>Live run in this session</b>, {how} after {done} of {view.rungs} rungs in "
                f"{fmt_time(view.seconds)} (CPU {fmt_time(view.cpu_seconds)}): {settings_text(view.settings)}{where}")
    else:
        step = (f"step <b>{live.get('iter', 0):,}</b> / {live.get('max_iters', 0):,}" if live else "starting")
        speed = f" · {live['tokens_per_s'] / 1000:.1f} k tokens/s" if live.get("tokens_per_s") else ""
        name = html.escape(str(live.get("name", "")))
        head = (f"<b>Live run in this session</b>: rung <b>{view.rung}</b> of {view.rungs} ({name}) · {step}{speed} · "
                f"{fmt_time(view.elapsed)} elapsed{where}")
    extra = f'<p class="mg-warn">{html.escape(view.message)}</p>' if view.message and view.state != "waiting" else ""
    return (f'<div class="mg-status"><div class="mg-bar"><div style="width:{pct:.1f}%"></div></div>'
            f"<p>{head}</p>{extra}</div>")


def table_html(done: list[dict], norm: str = "layer", running: dict | None = None,
               measured: list[dict] | None = None, measured_note: str = "") -> str:
    """All the rungs: name, idea, seed notebook, parameters, full-validation loss, the lecture's number,
    and beside a rung that does not help at this budget, the note saying so (and its remark). With
    `measured` (the shipped record's rungs), its losses as a column beside a live run's."""
    by_rung = {int(r.get("rung", k + 1)): r for k, r in enumerate(done)}
    shipped = {int(r.get("rung", k + 1)): r for k, r in enumerate(measured or [])}
    rows = []
    for i, rung in enumerate(RUNGS, start=1):
        r = by_rung.get(i)
        name = r["name"] if r else rung_name(i, norm)
        is_running = running is not None and running.get("rung") == i and r is None
        if r and r.get("val_loss") is not None:
            val = f"<b>{r['val_loss']:.3f}</b>"
        elif is_running:
            val = f"training… step {running.get('iter', 0):,}"
        else:
            val = "—"
        params = f"{r['params']:,}" if r else f"{running['params']:,}" if is_running and running.get("params") else "—"
        note = f'<div class="mg-note">{html.escape(r["note"])}</div>' if r and r.get("note") else ""
        remark = r.get("remark") if r else ""
        if note and remark:
            note += f'<div class="mg-remark">{html.escape(remark)}</div>'
        lecture = f"{rung.lecture:.2f}" if rung.lecture is not None else "—"
        cls = ' class="mg-running"' if is_running else ""
        m = shipped.get(i)
        if measured is not None:
            lecture = (f"{m['val_loss']:.3f}" if m and m.get("val_loss") is not None else "—") + \
                f"</td><td class='n'>{lecture}"
        rows.append(f"<tr{cls}><td>{i}</td><td><b>{html.escape(name)}</b></td><td>{html.escape(rung.idea)}{note}</td>"
                    f"<td>{html.escape(rung.notebook)}</td><td class='n'>{params}</td><td class='n'>{val}</td>"
                    f"<td class='n'>{lecture}</td></tr>")
    return ('<table class="mg-ladder"><thead><tr><th>#</th><th>rung</th><th>the idea it adds</th>'
            '<th>notebook</th><th>params</th><th>val loss</th>'
            + (f'<th>measured<div class="mg-remark">{html.escape(measured_note)}</div></th>'
               if measured is not None else "") + '<th>lecture</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def samples_html(done: list[dict]) -> str:
    """The sample each rung wrote after training (150 characters at T = 0.8, the same seed for all)."""
    if not done:
        return '<div class="mg-empty">Each rung\'s sample appears here as it finishes.</div>'
    cards = []
    for r in done:
        val = f" · val {r['val_loss']:.3f}" if r.get("val_loss") is not None else ""
        cards.append(f'<div class="mg-card"><div class="mg-card-head"><b>{html.escape(_rung_label(r))}</b>'
                     f"<span>sample at T = 0.8{val}</span></div><pre>{html.escape(r.get('sample', ''))}</pre></div>")
    return '<div class="mg-samples">' + "".join(cards) + "</div>"
