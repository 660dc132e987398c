"""Gradio input components whose refusals name the knob (drop-in subclasses, same front end).

Gradio checks a slider's range and a radio's choices before a handler runs, but its messages
("Value 0 is less than minimum value 1.") do not say which knob, and a value of the wrong type
or NaN, which a script can send, ends in an anonymous error. These subclasses say
"heads must be between 1 and 32, got 0" instead. `is_template` makes Gradio draw them with the
parent's front-end component (Gradio writes an `inputs.pyi` beside this file; it is ignored).
May import gradio only.
"""

from __future__ import annotations

import math

import gradio as gr


def _name(block) -> str:
    return str(block.label or block.elem_id or "this input")


def _number(block, payload):
    """A finite number within the block's range, or a gr.Error naming the block."""
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        raise gr.Error(f"{_name(block)} must be a number, got {payload!r}")
    if not math.isfinite(payload):
        raise gr.Error(f"{_name(block)} must be a finite number, got {payload!r}")
    lo, hi = block.minimum, block.maximum
    if (lo is not None and payload < lo) or (hi is not None and payload > hi):
        span = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
        raise gr.Error(f"{_name(block)} must be {span}, got {payload if isinstance(payload, int) else f'{payload:g}'}")
    return payload


def _choices(block, payload, preprocess):
    try:
        return preprocess(payload)
    except Exception:
        allowed = ", ".join(repr(v) for _, v in block.choices)
        raise gr.Error(f"{_name(block)} must be one of {allowed}; got {payload!r}") from None


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return super().preprocess(_number(self, payload))


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return None if payload is None else super().preprocess(_number(self, payload))


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return _choices(self, payload, super().preprocess)


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return _choices(self, payload, super().preprocess)


class CheckboxGroup(gr.CheckboxGroup):
    is_template = True

    def preprocess(self, payload):
        if not isinstance(payload, list):
            raise gr.Error(f"{_name(self)} must be a list of choices, got {payload!r}")
        return _choices(self, payload, super().preprocess)


class Checkbox(gr.Checkbox):
    is_template = True

    def preprocess(self, payload):
        if not isinstance(payload, bool):  # Gradio would take any truthy value, "no" included
            raise gr.Error(f"{_name(self)} must be true or false, got {payload!r}")
        return super().preprocess(payload)
