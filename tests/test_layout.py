"""The tree as designed: the top level, a core that never imports the page, modules that say what
they hold and stay small, and `pip install .` giving a working `minigpt` command."""

import ast
import shutil
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, free_port

TOP_LEVEL = {"app.py", "minigpt", "checkpoints", "tests", "requirements.txt", "README.md", "pyproject.toml", "docs"}
LOCAL = {"runs", "test-output", "build", "dist", "__pycache__"}  # ignored by git: made by using the project
MAX_LINES = 450


def modules():
    return sorted((ROOT / "minigpt").rglob("*.py"))


def test_the_top_level_is_what_the_readme_promises():
    extra = {p.name for p in ROOT.iterdir()
             if not p.name.startswith(".") and p.name not in LOCAL and not p.name.endswith(".egg-info")} - TOP_LEVEL
    assert not extra, f"move these into the package: {sorted(extra)}"
    assert (ROOT / ".ci" / "run").is_file() and (ROOT / "minigpt" / "ui" / "layout.py").is_file()


def test_the_core_imports_neither_gradio_nor_pyplot():
    core = [f"minigpt.{p.stem}" for p in (ROOT / "minigpt").glob("*.py") if p.stem != "__main__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core)
            + "print(sorted(m for m in sys.modules if m == 'gradio' or m.startswith('gradio.') "
              "or m == 'matplotlib.pyplot'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"the core pulled in {out.stdout.strip()}"
    out = subprocess.run([sys.executable, "-c", "import sys, minigpt.cli, minigpt.train; print('gradio' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


HEAVY = ("torch", "matplotlib", "tiktoken", "safetensors")  # what the first page must not wait for


def test_building_the_page_loads_no_torch():
    """Cold start: app.py builds the page and the server answers before torch (and matplotlib,
    tiktoken, safetensors) load, and gradio loads without IPython or its stub writer; the Playground,
    made on first use, brings them in."""
    code = ("import sys\nimport app\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), sys.modules.get('IPython'), "
            "sys.modules['gradio.component_meta'].create_or_modify_pyi.__name__)\n"
            "print(len(app.demo.fns) > 20, app.PLAYGROUND._playground is None)\n"
            "app.PLAYGROUND.warm_up().join(120)\n"
            "print('torch' in sys.modules, app.PLAYGROUND.get() is app.PLAYGROUND.get(), "
            "app.PLAYGROUND.device in ('cpu', 'cuda', 'mps'))\n")
    assert _python(code)[:3] == ["[] None _write_no_stub", "True True", "True True True"]


@pytest.mark.parametrize("lighter", [False, True])
def test_a_lighter_gradio_writes_no_type_stubs(tmp_path, lighter):
    """gradio rewrites a `.pyi` stub beside the source of every component class it makes (re-parsing
    the file each time: ~1.5 s of its import); after `lighter_gradio_import()` it writes none, and
    the component still works."""
    (tmp_path / "knob.py").write_text("import gradio as gr\n\nclass Knob(gr.Textbox):\n"
                                      "    def preprocess(self, payload):\n        return payload.upper()\n")
    code = ("import sys\n" + ("from minigpt.ui import lighter_gradio_import\nlighter_gradio_import()\n" if lighter else "")
            + f"sys.path.insert(0, {str(tmp_path)!r})\nimport knob\nprint(knob.Knob().preprocess('ok'))\n")
    assert _python(code)[0] == "OK"
    assert (tmp_path / "knob.pyi").exists() is not lighter


def test_the_web_app_is_made_once_at_launch_and_serves_the_whole_page():
    """Building the page makes no web app of it (gradio would make two that launch() replaces, ~0.3 s of
    cold start); launch() makes the one that serves every event, and the function building it is put back."""
    code = ("import json, urllib.request\n"
            "from gradio.routes import App\n"
            "make, made = App.__dict__['create_app'].__func__, []\n"
            "App.create_app = counting = staticmethod(lambda b, *a, **k: made.append(len(b.fns)) or make(b, *a, **k))\n"
            "import app\n"
            "print(made, App.__dict__['create_app'] is counting)\n"
            f"app.demo.launch(**app.launch_kwargs(), server_name='127.0.0.1', server_port={free_port()}, "
            "prevent_thread_lock=True, quiet=True)\n"
            "config = json.load(urllib.request.urlopen(app.demo.local_url + 'config', timeout=30))\n"
            "print(made[1:] == [len(app.demo.fns)], len(config['dependencies']) == len(app.demo.fns) > 20)\n"
            "app.demo.close()\n")
    assert _python(code)[:2] == ["[0] True", "True True"]


def _python(code: str) -> list[str]:
    """The lines `python -c code` prints, run in the project's root; it must succeed."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")


def test_the_playground_is_made_once_by_concurrent_first_callers():
    from minigpt.ui.common import LIMITS, SharedPlayground
    shared = SharedPlayground(LIMITS)
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: shared.get(), range(8)))
    assert all(p is made[0] for p in made) and "nobody" not in shared


def test_only_the_page_imports_gradio():
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        in_ui = path.parent.name == "ui"
        assert in_ui or not any(n.split(".")[0] == "gradio" or n.startswith("minigpt.ui") for n in names), path


def test_every_module_says_what_it_holds_and_stays_small():
    for path in modules():
        text = path.read_text(encoding="utf-8")
        assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(ROOT)} has no opening docstring"
        assert text.count("\n") <= MAX_LINES, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines"


def test_app_py_only_builds_and_launches():
    tree = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len((ROOT / "app.py").read_text().splitlines()) < 30


def test_the_version_has_one_source():
    import minigpt
    assert 'version = { attr = "minigpt.__version__" }' in (ROOT / "pyproject.toml").read_text()
    assert minigpt.__version__.count(".") == 2


@pytest.mark.slow
def test_pip_install_gives_a_working_minigpt_command(tmp_path):
    """`pip install .` in a fresh virtual environment (its dependencies from this Python; no network)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "minigpt", src / "minigpt", ignore=shutil.ignore_patterns("__pycache__", "*.pyi"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)  # this Python's pip and setuptools
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-build-isolation",
                          "--no-deps", "--no-index", str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run([str(bin_dir / "minigpt"), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: minigpt") and "download" in out.stdout and "train" in out.stdout
    where = subprocess.run([str(bin_dir / "python"), "-c", "import minigpt, minigpt.ui; print(minigpt.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr
