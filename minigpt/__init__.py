"""minigpt: a small, fast, clear GPT playground (library, CLI and the Gradio app's engine)."""

__version__ = "0.1.0"
