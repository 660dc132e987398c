"""minigpt playground: build the page (minigpt/ui/) and launch it.

    python app.py            # then open http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)

Hugging Face Spaces runs this file (`app_file: app.py`). Tests import `demo` and `launch_kwargs`.
At start it removes the temporary files a killed server left behind (minigpt.recovery). torch
loads only once the server answers (the warm-up), so the page is up in a few seconds.
"""

from minigpt import prepare_torch_env

prepare_torch_env()  # before anything loads torch (the warm-up does)

from minigpt.ui import lighter_gradio_import  # noqa: E402

lighter_gradio_import()  # before gradio loads: no IPython, no type stubs rewritten

from minigpt.recovery import clean_at_start  # noqa: E402
from minigpt.ui.common import LIMITS, PLAYGROUND, SAVE_ROOT  # noqa: F401,E402  (the server's limits and sessions, for tests)
from minigpt.ui.layout import build_ui, launch_kwargs  # noqa: E402

clean_at_start(SAVE_ROOT)  # temporary files left by a killed server (kill -9 mid-save) never pile up
demo = build_ui()

if __name__ == "__main__":
    demo.launch(**launch_kwargs(), prevent_thread_lock=True)  # returns once the port answers
    PLAYGROUND.warm_up()  # torch and the shipped model load while the first visitor's page opens
    demo.block_thread()
