"""The Concepts tab served by Gradio: the three named endpoints answer, and a bad knob is a clear error."""

import os
import socket

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402

from minigpt.ui.concepts_tab import build_concepts_tab  # noqa: E402
from minigpt import experiments as E  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    with gr.Blocks() as demo:
        build_concepts_tab()
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    c = Client(url, verbose=False)
    try:
        yield c
    finally:
        c.close()
        demo.close()


def test_three_named_endpoints(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/softmax_scaling", "/gradient_flow", "/norm_compare"} <= set(info)
    assert [p["parameter_name"] for p in info["/norm_compare"]["parameters"]] == list(E.NORM_KNOBS)


def test_softmax_endpoint(client):
    *plots, numbers = client.predict([4, 64, 256], 32, 500, 8.0, "0.1, -0.2, 0.3, -0.2, 0.5", 0,
                                     api_name="/softmax_scaling")
    assert len(plots) == 3 and all(p and p["type"] == "matplotlib" for p in plots)
    assert "256" in numbers and "0.8" in numbers  # the d = 256 row and softmax(8z)'s top probability


def test_gradient_endpoint(client):
    *plots, numbers = client.predict(12, 16, ["sigmoid", "relu"], "default", False, False, 1.5, 1.0, 0.05, 4, 0,
                                     api_name="/gradient_flow")
    assert len(plots) == 2 and all(p["plot"].startswith("data:image/") for p in plots)
    assert "sigmoid" in numbers and "first/last" in numbers


def test_norm_endpoint_batch_of_one(client):
    *plots, numbers = client.predict(1, 8, 3.0, 2.0, 2.0, 3, 0, api_name="/norm_compare")
    assert len(plots) == 2
    assert "Expected more than 1 value per channel" in numbers


def test_out_of_range_is_a_clear_error(client):
    with pytest.raises(Exception, match="example_logits"):
        client.predict([4], 32, 500, 8.0, "0.1, oops", 0, api_name="/softmax_scaling")
    with pytest.raises(Exception, match="depth must be between 1 and 50, got 99"):  # the slider check names the knob
        client.predict(99, 16, ["relu"], "default", False, False, 1.5, 1.0, 0.05, 4, 0, api_name="/gradient_flow")
