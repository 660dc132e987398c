"""minigpt/ui/gradio_costs.py: a new session computes no component configs until one is needed, and the
queue's analytics table is summarised rarely; the page still works through them (tests/test_app.py)."""

import os

import app  # noqa: F401  (builds the page: the workarounds are in place)


def test_a_new_session_computes_no_component_configs_until_needed():
    from gradio.state_holder import SessionState

    state = SessionState(app.demo)
    assert state.config_values == {}  # gradio computed all 260 here: 16 ms a new tab
    assert len(state.blocks_config.blocks) == len(app.demo.blocks)
    key, block = next((k, b) for k, b in app.demo.blocks.items() if type(b).__name__ == "Textbox")
    assert state[key] is state.blocks_config.blocks[key]  # components come from the session's copy, as before
    state._update_value_in_config(key, "a value the session set")  # what Gradio does after an event
    assert state.config_values[key]["props"]["value"] == "a value the session set"
    assert state.config_values[key]["type"] == "textbox"


def test_the_queue_summarises_its_analytics_rarely():
    assert int(os.environ["GRADIO_ANALYTICS_MAX_EVENTS"]) <= 1000
    assert int(os.environ["GRADIO_ANALYTICS_CACHE_FREQUENCY"]) >= 50


def test_the_workaround_is_applied_once():
    from minigpt.ui.gradio_costs import lazy_session_configs
    assert lazy_session_configs() is True  # already in place: says so, wraps nothing twice
    from gradio.state_holder import SessionState
    assert SessionState(app.demo).config_values == {}


def test_another_gradios_sessions_are_left_alone(monkeypatch):
    from gradio import state_holder

    from minigpt.ui.gradio_costs import lazy_session_configs

    class Unknown:  # a SessionState without the method the workaround relies on
        def __init__(self, blocks):
            self.blocks = blocks

    monkeypatch.setattr(state_holder, "SessionState", Unknown)
    assert lazy_session_configs() is False
    assert state_holder.SessionState is Unknown and Unknown(app.demo).blocks is app.demo
