"""One user's session of the playground: what the page's handlers call, as plain Python.

A `Session` is one browser tab (or one gradio_client Client): its model, training run and stop
flag. It trains (a generator of throttled `TrainView`s), stops, continues, resets, saves and loads
checkpoints, generates, compares sampling strategies and reads attention weights. Bad input raises
ValueError (or CheckpointError / DataError, both ValueErrors) and never touches the current model.
Sessions live in a `Playground` (minigpt/playground.py), which shares the shipped model and the
data between them. A dropped session's generation and comparison end at their next token (`closed`:
Gradio goes on running a closed tab's event). Core module: minigpt's core only (no gradio, no pyplot)."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__
from .checkpoint import load_checkpoint, save_checkpoint
from .data import split_ids
from .device import pick_precision
from .estimate import run_seconds
from .experiments import model_scores
from .generate import generate, perplexity, start_ids
from .limits import check_int, check_text
from .model import GPT, arch_summary
from .sampling import SamplingConfig
from .train import Done, Run
from .train_spec import SHAKESPEARE, TrainSpec, check_length
from .training_view import LEFT_QUEUE, LiveTraining, StopFlag, Thinned, TrainView, ghost_of, layer_records, waiting_views
from .views import add_steps, attention_weights, comparison_view, next_token_at, one_thread

if TYPE_CHECKING:
    from .playground import Playground

TEMPERATURES = (0.5, 1.0, 2.0)  # the next-token chart shows the same logits at each


@dataclass
class ModelRef:
    """The model a session uses now, and where it came from."""
    model: torch.nn.Module
    tokenizer: object
    source: str                                 # e.g. "shipped", "trained in this session", "uploaded x.safetensors"
    card: dict = field(default_factory=dict)    # the run card (checkpoint metadata or run.run_card())
    shared: bool = False                        # the shipped model: read-only, never trained in place


class Session:
    """One browser tab (or one gradio_client Client): its model, run, stop flag and last results."""

    def __init__(self, playground: Playground, key: str):
        self.pg = playground
        self.key = key
        self.last_seen = time.monotonic()
        self.stop_event = StopFlag()
        self.closed = threading.Event()       # set when the tab has gone: its generation ends at the next token
        self._train_lock = threading.Lock()   # one training at a time in a session
        self._idle = threading.Event()        # set whenever no training runs
        self._idle.set()
        self.run: Run | None = None
        self.owned: ModelRef | None = None    # None: the shipped model
        self.view = TrainView()
        self.comparison: dict = {}            # column name -> {"prompt_ids", "ids", ...} of the last comparison
        self.last_columns: list = []          # the last comparison as drawn (for re-colouring)
        self.last_prompt = ""
        self.cache_speed: dict = {}           # "on"/"off" -> tokens/s measured by `generate`
        self.version = 0                      # bumped whenever the current model changes
        self._old_steps: list = []            # the batch-loss curve so far, for Continue
        self._live: LiveTraining | None = None  # the run going on now
        self.ladder = None                    # the Build-it-up tab's ladder (minigpt/ladder_session.py)
        self._before_wait = self.view         # the view before the current wait in the training queue

    # -- the current model --

    @property
    def training(self) -> bool:
        return not self._idle.is_set()

    def current(self) -> ModelRef:
        return self.owned if self.owned is not None else self.pg.shipped()

    def resident_params(self) -> int:
        """Parameters this session alone keeps in memory (0 while it uses the shared shipped model)."""
        ref = self.owned  # read once: another thread may reset it meanwhile
        return ref.model.num_params() if ref is not None else 0

    def inference_model(self) -> ModelRef:
        """The current model, or a copy of it while it trains (generation flips eval mode; training must not see that)."""
        ref = self.current()
        if self.training and not ref.shared:
            return ModelRef(copy.deepcopy(ref.model).eval().requires_grad_(False), ref.tokenizer, ref.source, ref.card)
        return ref

    def info(self) -> dict:
        """Config, parameter count, device and training summary of the current model."""
        ref = self.current()
        model, cfg = ref.model, ref.model.config
        device = str(next(model.parameters()).device)
        # Training may use bf16 autocast; generation and the views always run the fp32 weights as they are.
        training_dtype = self.run.precision.dtype if (self.run is not None and model is self.run.model) \
            else ref.card.get("dtype")
        return {"source": ref.source, "config": cfg.to_dict(), "architecture": arch_summary(cfg),
                "params": model.num_params(), "tokenizer": ref.tokenizer.kind, "vocab_size": ref.tokenizer.vocab_size,
                "device": device, "dtype": "float32", "training_dtype": training_dtype, "training": dict(ref.card),
                "training_now": self.training, "minigpt_version": __version__, "torch_version": torch.__version__}

    # -- training --

    def train(self, spec: TrainSpec, resume: bool = False, interval: float = 0.5):
        """Train (a fresh run, or continue this session's run), yielding a TrainView every `interval` s.

        It first waits its turn in the playground's training queue, yielding "waiting" views (place,
        estimated wait); leaving the queue (the stream closed, as when the tab closes; Stop; the
        session dropped) means it never starts. Setup errors raise ValueError before it joins.

        The trainer runs in a thread of its own, exactly as the CLI runs it: the page only takes
        snapshots of what its events say, so a slow browser never slows training, and the loop
        stays on one thread for the whole run (torch's thread settings are per thread; a streamed
        handler's chunks run on whichever worker thread is free). If the consumer stops early (the
        browser's Stop cancels the request), the run is stopped and finishes cleanly all the same,
        in the background; the session counts as training (and keeps its queue slot) until it has."""
        limits = self.pg.limits
        if not self._train_lock.acquire(blocking=False):
            raise ValueError("this session is already training: stop it first")
        ticket = None
        try:
            # 1. Check everything before joining the queue (errors at once, nothing changed).
            tcfg = spec.train_config(limits)
            if resume:
                run = self._resumed_run(spec)
                cfg, make = run.model.config, None
            else:
                cfg, make = self._new_run(spec)
            self._idle.clear()
            self.stop_event.clear()
            # 2. Wait for a training slot; the view before the wait comes back (with a note) if it leaves.
            self._before_wait = self.view
            seconds = run_seconds(spec.budget, tcfg, cfg, self.pg.speed)  # for the queue's estimated waits
            ticket = yield from waiting_views(self.pg.training_queue, self.key, seconds, self.stop_event,
                                              show=lambda v: setattr(self, "view", v))
            if ticket is not None and make is not None:
                self._old_steps = []
                run = make()
        except BaseException:
            self._release(ticket)
            raise
        if ticket is None:  # left the queue: nothing ran
            self.view = dataclasses.replace(self._before_wait, message=LEFT_QUEUE)
            self._release(None)
            yield self.view
            return
        # 3. Start the run in its own thread.
        try:
            self.run = run
            self.owned = ModelRef(run.model, run.tokenizer, "trained in this session", run.run_card())
            self.version += 1
            view = TrainView(state="training", iter=run.iters, start_iter=run.iters,
                             evals=[(e.iter, e.train_loss, e.val_loss) for e in run.history],
                             layers=layer_records(run.history), **ghost_of(self.view, resume),
                             sample=self.view.sample if resume else "",
                             message=spec.shape_note(run.model.config) if run.iters else "")
            steps = Thinned()
            for it, loss in (self._old_steps if resume else []):
                steps.add((it, loss))
            live = self._live = LiveTraining(run, tcfg, self.stop_event, limits, self.pg.threads, view, steps,
                                             on_done=self._done, name=f"minigpt-train-{self.key[:8]}")
            self.view = live.start().snapshot()
        except BaseException:
            self._release(ticket)
            raise
        # 4. Stream its views; wrap up (and free the slot) when it has ended.
        closed_early = True
        try:
            yield from live.views(interval)
            closed_early = False
        finally:
            if closed_early and live.thread.is_alive():
                # Closed early (the browser's Stop cancels the request, and Gradio closes the generator on
                # its event loop): stop the run and let it end whole (model, card, full validation) in the
                # background, so the server is not held up meanwhile. The session stays busy until then.
                live.stop.set()
                threading.Thread(target=self._wrap_up, args=(live, steps, ticket), name=f"minigpt-wrap-{self.key[:8]}",
                                 daemon=True).start()
            else:
                self._wrap_up(live, steps, ticket)

    def _release(self, ticket):
        """Free the session for the next training (and the queue slot or place, if it has one)."""
        try:
            if ticket is not None:
                self.pg.training_queue.release(ticket)
        finally:
            self._idle.set()
            self._train_lock.release()

    def _wrap_up(self, live: LiveTraining, steps: Thinned, ticket=None):
        """After a run: keep its final view and curve, model in inference mode, the session free again."""
        try:
            live.finish()
            self._old_steps = list(steps.items)
            self.view = live.snapshot()
            live.run.model.eval()  # inference mode between trainings (train() switches it back)
            self.version += 1
            self._live = None
        finally:
            self._release(ticket)

    def _done(self, view: TrainView, ev: Done):
        """The run ended (trainer thread): keep its card with the model, calibrate the time estimate."""
        run = self.run
        if self.owned is not None and self.owned.model is run.model:
            self.owned.card = view.card
        batch = run.last_train_config["batch_size"]
        if run.iters - view.start_iter >= 50 and ev.tokens_per_s > 0:
            self.pg.speed.calibrate(run.model.config, batch, batch * run.model.config.block_size / ev.tokens_per_s)

    def _new_run(self, spec: TrainSpec):
        """Check a fresh run's data and config now; returns (config, a function that builds the run): the
        model is made only when the run's turn comes."""
        tok, ids, _ = self.pg.text_and_ids(spec.data, spec.text, spec.tokenizer)
        cfg = spec.model_config(tok.vocab_size, self.pg.limits)
        splits = split_ids(ids)
        check_length(splits, cfg.block_size)
        name = SHAKESPEARE if spec.data == SHAKESPEARE else "pasted text"
        return cfg, lambda: Run.create(cfg, tok, splits, device=self.pg.device, seed=int(spec.seed), data_name=name)

    def _resumed_run(self, spec: TrainSpec) -> Run:
        """This session's run, or a new run that fine-tunes a copy of the current (shipped/uploaded) model."""
        if self.run is not None and self.owned is not None and self.owned.model is self.run.model:
            return self.run
        ref = self.current()
        tok, ids, _ = self.pg.text_and_ids(spec.data, spec.text, None, tokenizer=ref.tokenizer)
        splits = split_ids(ids)
        check_length(splits, ref.model.config.block_size)
        model = copy.deepcopy(ref.model).requires_grad_(True).to(self.pg.device)
        cfg = ref.model.config
        precision = pick_precision(self.pg.device, "auto", cfg.n_embd if cfg.model == "gpt" else None)
        self._old_steps = []
        return Run(model=model, tokenizer=ref.tokenizer, splits=splits, precision=precision,
                   data_name=SHAKESPEARE if spec.data == SHAKESPEARE else "pasted text",
                   iters=int(ref.card.get("iters", 0) or 0), seconds=float(ref.card.get("seconds", 0) or 0))

    def stop_soon(self, wait: float = 0.5) -> TrainView:
        """Ask the training to stop and answer within about `wait` s: the view says it stopped at
        iteration N and the model is kept; `stop()` then waits for the full-validation loss."""
        live = self._live
        if live is None:
            self.stop_event.set()
            if self.view.state == "waiting" and self.pg.training_queue.cancel_key(self.key):
                return dataclasses.replace(self._before_wait, message=LEFT_QUEUE)  # its run never starts
            return self.view
        return live.stopping(wait)

    def stop(self, wait: float = 15.0) -> TrainView:
        """Ask the training to stop (it checks every step) and wait for it to wrap up; the model stays."""
        self.stop_event.set()
        self.pg.training_queue.cancel_key(self.key)  # waiting for its turn: leave the queue
        self._idle.wait(wait)
        return self.view

    def reset(self) -> None:
        """Forget this session's run and model: back to the shipped one."""
        if self.training:
            self.stop()
        self.run, self.owned, self.view, self._old_steps = None, None, TrainView(), []
        self.comparison, self.last_columns = {}, []
        self.version += 1

    # -- checkpoints --

    def save(self, folder) -> Path:
        """Write the current model (weights, tokenizer, run card) to a .safetensors file in `folder`."""
        ref = self.current()
        card = self.run.run_card() if (self.run is not None and ref.model is self.run.model) else ref.card
        name = "minigpt-" + ("shipped" if ref.shared else f"{ref.model.config.model}-{card.get('iters', 0)}it")
        path = Path(folder) / f"{name}.safetensors"
        model = copy.deepcopy(ref.model) if self.training else ref.model
        return save_checkpoint(path, model, ref.tokenizer, card)

    def load(self, path) -> dict:
        """Load and validate a checkpoint; on success it becomes the current model (CheckpointError otherwise)."""
        if self.training:
            raise ValueError("stop the training before loading another model")
        if path is None:
            raise ValueError("choose a .safetensors file to upload")
        p = Path(path)
        if p.is_file() and p.stat().st_size > self.pg.limits.max_upload_bytes:
            raise ValueError(f"{p.name} is over the upload limit of {self.pg.limits.max_upload_mb:g} MB")
        ck = load_checkpoint(p, device=self.pg.device, limits=self.pg.limits)
        ck.model.eval()
        self.owned = ModelRef(ck.model, ck.tokenizer, f"uploaded {p.name}", ck.training)
        self.run, self.comparison, self.last_columns, self.view, self._old_steps = None, {}, [], TrainView(), []
        self.version += 1
        return self.info()

    def load_shipped(self) -> dict:
        if self.training:
            raise ValueError("stop the training before loading another model")
        self.pg.shipped()
        self.owned, self.run, self.comparison, self.last_columns = None, None, {}, []
        self.view, self._old_steps = TrainView(), []
        self.version += 1
        return self.info()

    # -- generation --

    def generate(self, prompt: str, tokens: int, sampling: SamplingConfig, seed: int, use_cache: bool = True,
                 interval: float = 0.1):
        """Stream (text so far, stats) for one strategy; records tokens/s for the cache on/off read-out.
        Ends without final stats once the session is dropped (`closed`)."""
        n = check_int("tokens", tokens, 1, self.pg.limits.max_new_tokens)
        seed = check_int("seed", seed, 0, 2**63 - 1)
        prompt = check_text("prompt", prompt, self.pg.limits.max_prompt_chars)
        ref = self.inference_model()
        steps = generate(ref.model, ref.tokenizer, prompt, n, sampling.validate(), seed=seed,
                         use_cache=bool(use_cache), top_n=1)
        self.last_prompt = prompt
        t0 = time.perf_counter()
        out, last = [], 0.0
        text = ""
        while True:
            if self.closed.is_set():
                return
            with one_thread():
                step = next(steps, None)
            if step is None:
                break
            out.append(step)
            text += step.text
            now = time.perf_counter()
            if now - last >= interval:
                last = now
                yield text, self._gen_stats(out, now - t0, use_cache, final=False)
        stats = self._gen_stats(out, time.perf_counter() - t0, use_cache, final=True)
        stats["context"] = ref.model.config.block_size
        stats["cache_full_after"] = max(0, ref.model.config.block_size - len(start_ids(ref.tokenizer, prompt)))
        self.cache_speed["on" if use_cache else "off"] = stats["tokens_per_s"]
        yield text, stats

    def prompt_note(self, prompt: str) -> str | None:
        """A sentence when the prompt is longer than the model's context (generation keeps only its end)."""
        prompt = check_text("prompt", prompt, self.pg.limits.max_prompt_chars)
        ref = self.current()
        n, block = len(start_ids(ref.tokenizer, prompt)), ref.model.config.block_size
        if n <= block:
            return None
        return f"The prompt is {n} tokens long and the model's context is {block}: it sees only the last {block}."

    def _gen_stats(self, steps, seconds, use_cache, final):
        mean_ll, ppl = perplexity(steps)
        return {"tokens": len(steps), "seconds": round(seconds, 3), "tokens_per_s": len(steps) / max(seconds, 1e-9),
                "mean_loglik": mean_ll, "perplexity": ppl, "kv_cache": bool(use_cache), "done": final}

    def compare(self, prompt: str, tokens: int, seed: int, strategies: list[tuple[str, SamplingConfig]],
                use_cache: bool = True, interval: float = 0.15):
        """Run every (name, sampling) from the same prompt and seed as one batch, yielding the columns so far.

        Each column: name, sampling, tokens (text, prob, top alternatives), text, stats (its seconds:
        the time spent waiting for its steps, batched with any concurrent Compares on the model). The last
        comparison is kept so `next_token` can explain any of its steps."""
        n = check_int("tokens", tokens, 1, self.pg.limits.max_new_tokens)
        seed = check_int("seed", seed, 0, 2**63 - 1)
        if not strategies:
            raise ValueError("choose at least one sampling strategy")
        if len({name for name, _ in strategies}) != len(strategies):
            raise ValueError("strategy names must be distinct")
        prompt = check_text("prompt", prompt, self.pg.limits.max_prompt_chars)
        ref = self.inference_model()
        prompt_ids = start_ids(ref.tokenizer, prompt)  # fails here on unknown characters, before any output
        self.last_prompt = prompt
        cols = []
        for name, sampling in strategies:
            sampling.validate()
            cols.append({"name": name, "sampling": sampling.to_dict(), "tokens": [], "text": "", "ids": [],
                         "seconds": 0.0, "done": False})
        # One batch for every strategy, shared with other sessions' Compares on the same model (the
        # playground's batcher): one forward pass a token, the same tokens as each alone.
        steps = self.pg.batcher.generate(ref.model, ref.tokenizer, prompt, n, [s for _, s in strategies], seed=seed,
                                         use_cache=use_cache, top_n=5)
        last = time.perf_counter()
        try:
            while True:
                if self.closed.is_set():
                    return  # the tab has gone: its rows leave the batch (finally) and nothing is kept
                t = time.perf_counter()
                row = next(steps, None)
                spent = time.perf_counter() - t  # waiting for this step: its turn, then the batched forward
                if row is None:
                    break
                add_steps(cols, row, spent, ref.tokenizer)
                now = time.perf_counter()
                if now - last >= interval:
                    last = now
                    yield comparison_view(cols, prompt)
        finally:
            steps.close()  # closed early (the tab closed, Stop): its rows leave the shared batch now
        for c in cols:
            c["done"] = True
        self.last_columns = comparison_view(cols, prompt)
        self.comparison = {c["name"]: {"prompt_ids": prompt_ids, "ids": list(c["ids"]), "sampling": c["sampling"],
                                       "version": self.version} for c in cols}
        yield self.last_columns

    def next_token(self, name: str, step: int, top: int = 10) -> dict:
        """The distribution the model gave at `step` (1-based) of the last comparison's column `name`,
        the token that column chose, and the same logits at several temperatures."""
        if not self.comparison:
            raise ValueError("run a sampling comparison first (Generate tab, Compare)")
        if name not in self.comparison:
            raise ValueError(f"no column {name!r} in the last comparison (have: {', '.join(self.comparison)})")
        col = self.comparison[name]
        step = min(check_int("step", step, 1, 1_000_000), len(col["ids"]))  # a longer run's step: its last
        ref = self.inference_model()
        with one_thread():
            info = next_token_at(ref.model, ref.tokenizer, col["prompt_ids"] + col["ids"][:step - 1],
                                 col["ids"][step - 1], top, TEMPERATURES)
        return {"column": name, "step": step, **info, "sampling": col["sampling"],
                "changed": self.training or self.version != col["version"]}

    # -- attention --

    def attention(self, text: str | None = None, max_tokens: int = 96) -> dict:
        """Attention weights of every layer and head for `text` (or the last prompt): tokens, (L, nh, T, T).

        Long texts keep their last min(context, max_tokens) tokens: a bigger map is unreadable."""
        ref = self.inference_model()
        if not isinstance(ref.model, GPT):
            raise ValueError("the bigram model has no attention: each token looks only at itself. Train or load a GPT")
        ids = ref.tokenizer.encode(self._view_text(text))
        if not ids:
            raise ValueError("enter some text to look at")
        with one_thread():
            return attention_weights(ref.model, ref.tokenizer, ids, max_tokens)

    def score_scale(self, text: str | None = None):
        """Experiment 4 on the current model: per layer, the spread of its real q·k scores over `text`
        (or the last prompt; its last block_size tokens) with and without 1/sqrt(d) (a ModelScores)."""
        ref = self.inference_model()
        return model_scores(ref.model, ref.tokenizer.encode(self._view_text(text)))

    def _view_text(self, text) -> str:
        """The text a view looks at: the one given, else the last prompt, else a line of Romeo."""
        text = check_text("text", text, self.pg.limits.max_prompt_chars)
        return text if text.strip() else (self.last_prompt or "ROMEO:\nBut soft, what light")
