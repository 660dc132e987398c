"""The page's look: a Gradio theme with local fonts (nothing fetched: works offline) and the CSS.

May import gradio and minigpt.plots / ladder_html (which hold the CSS their HTML views use).
"""

from __future__ import annotations

import gradio as gr

from minigpt import ladder_html, plots

SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]

CSS = plots.CSS + ladder_html.CSS

__all__ = ["CSS", "theme"]


def theme() -> gr.themes.Base:
    return gr.themes.Soft(text_size="lg", font=SANS, font_mono=MONO)
