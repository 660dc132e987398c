"""Shared decoding: concurrent Compare requests on the same model share one forward pass a token.

The model is tiny, so a decoding step costs Python and dispatch overhead, nearly whatever the
number of rows: thirty sessions comparing at once cost about the forwards of one. A
`DecodeBatcher` runs one decoding thread (started on demand, gone when idle). Each request (a
prompt, a token count, a list of SamplingConfigs and one seed) waits until the thread takes it;
the thread groups the waiting requests that can share a batch (the same model object, the same
prompt length after cropping to the context, the same cache setting), then decodes each group
in lockstep: one forward a token for every row of every request in it. Different prompt lengths
run as separate groups, stepped in turn (no per-row positions). A request that arrives while a
group of its kind runs joins the next group, or starts its own once it has waited `join_wait` s,
so one long request never holds the others for its whole length.

Same results as decoding each alone (`generate.generate`, the same seed), as in
`batch_generate`: each request's prompt is fed once at batch 1, exactly as alone, and its keys
and values copied into its rows; all rows of a group advance together, so they fill the cache at
the same step and, past the context window, all recompute on their own last block_size tokens
(the last position only, `last_only`, with the cache on, as alone); each row samples its own
logits with its own config and its own generator (`sample_rows`). Rows whose windows are the
same (the greedy rows of one prompt; Compares with the same prompt and seed) have the same
logits: a recomputation runs each window once. A request that has all its tokens (or whose
consumer stopped) leaves the batch: its cache rows are dropped.

Errors never hang a caller: anything raised while decoding reaches every request of the group
(or, if the thread itself fails, every request) as a DecodeError. Core module: no gradio.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import torch
import torch.nn.functional as F

from .generate import StepMaker, TokenStep, _device, make_generator, start_ids
from .model import KVCache, new_kv_cache
from .sampling import SamplingConfig, sample_rows
from .views import evaluating, one_thread


class DecodeError(RuntimeError):
    """The shared decoding thread failed while this request was in it."""


class _Request:
    """One caller's rows: what to decode, and the queue its steps (or its error) come back on."""

    def __init__(self, model, prompt: list[int], n: int, samplings, generators, use_cache: bool, top_n: int):
        self.model, self.prompt, self.n, self.use_cache, self.top_n = model, prompt, n, use_cache, top_n
        self.samplings, self.generators = samplings, generators
        self.rows = len(samplings)
        self.key = (id(model), len(prompt), use_cache)
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.made = 0                     # steps handed back so far
        self.cancelled = False            # set by the consumer; the thread drops the rows at its next step
        self.since = time.monotonic()     # when it started waiting


class _Group:
    """Requests decoded together: their rows in one batch (one KV cache), stepped in lockstep."""

    def __init__(self, reqs: list[_Request]):
        model = reqs[0].model
        self.model, self.key, self.reqs = model, reqs[0].key, reqs
        self.block = model.config.block_size
        self.device = _device(model)
        self.seqs = [list(r.prompt) for r in reqs for _ in range(r.rows)]
        one = new_kv_cache(model) if reqs[0].use_cache else None
        self.cache = KVCache(model.config, len(self.seqs), one.k.device, one.k.dtype) if one is not None else None
        firsts, row = [], 0
        with one_thread(), evaluating(model):
            for r in reqs:  # each prompt once, as alone; then its keys and values in each of its rows
                x = torch.tensor([r.prompt], dtype=torch.long, device=self.device)
                if one is None:
                    firsts.append(model(x)[0][0, -1].expand(r.rows, -1))
                    continue
                one.reset()
                firsts.append(model(x, kv_cache=one, last_only=True)[0][0, -1].expand(r.rows, -1))
                self.cache.k[:, row:row + r.rows, :, :one.pos] = one.k[:, :, :, :one.pos]
                self.cache.v[:, row:row + r.rows, :, :one.pos] = one.v[:, :, :, :one.pos]
                self.cache.pos = one.pos
                row += r.rows
        self.logits = torch.cat(firsts)  # (B, vocab): the next-token logits of every row

    def step(self) -> bool:
        """Sample a token for every row, hand each request its step, drop the rows that are done and
        run one forward for the rest. False when no row is left."""
        logits, toks, live, cfgs, gens, row = self.logits, [0] * len(self.seqs), [], [], [], 0
        for r in self.reqs:
            if not r.cancelled:
                live.extend(range(row, row + r.rows))
                cfgs.extend(r.samplings)
                gens.extend(r.generators)
            row += r.rows
        for b, t in zip(live, sample_rows(logits[live], cfgs, gens)):
            toks[b] = t
        # The read-outs of every row at once: one softmax and one top-N for the whole batch.
        probs = F.softmax(logits.float(), dim=-1)
        k = min(max(r.top_n for r in self.reqs), probs.size(-1))
        top = torch.topk(probs, k, dim=-1)
        chosen = probs[torch.arange(len(toks)), torch.tensor(toks)].tolist()
        top_ids, top_probs = top.indices.tolist(), top.values.tolist()
        keep, kept, row = [], [], 0
        for r in self.reqs:
            span = slice(row, row + r.rows)
            if not r.cancelled:
                r.out.put((toks[span], chosen[span], top_ids[span], top_probs[span], logits[span]))
                r.made += 1
                if r.made < r.n:
                    keep.extend(range(row, row + r.rows))
                    kept.append(r)
            row += r.rows
        if not kept:
            return False
        if len(keep) < len(toks):  # some requests are done or gone: their rows leave the batch
            self.reqs, self.seqs = kept, [self.seqs[i] for i in keep]
            toks = [toks[i] for i in keep]
            if self.cache is not None:
                idx = torch.tensor(keep, device=self.cache.k.device)
                self.cache.k, self.cache.v = self.cache.k.index_select(1, idx), self.cache.v.index_select(1, idx)
        for s, t in zip(self.seqs, toks):
            s.append(t)
        with one_thread(), evaluating(self.model):
            if self.cache is not None and self.cache.room() > 0:
                x = torch.tensor([[t] for t in toks], dtype=torch.long, device=self.device)
                self.logits = self.model(x, kv_cache=self.cache)[0][:, -1]
            else:  # the cache is full (or off): every row recomputes on its own last block_size tokens
                windows = [tuple(s[-self.block:]) for s in self.seqs]
                first: dict[tuple, int] = {}
                which = [first.setdefault(w, len(first)) for w in windows]  # each row's distinct window
                x = torch.tensor(list(first), dtype=torch.long, device=self.device)
                logits = self.model(x, last_only=self.cache is not None)[0][:, -1]
                self.logits = logits if len(first) == len(windows) else logits[which]
        return True


def _fail(reqs: list[_Request], error: BaseException, where: str = "decoding"):
    """Hand `error` to every request in `reqs`, as a DecodeError its caller raises."""
    for r in reqs:
        r.out.put(DecodeError(f"{where} failed: {type(error).__name__}: {error}"))


class DecodeBatcher:
    """One decoding thread shared by every caller; see the module docstring. Thread-safe."""

    def __init__(self, join_wait: float = 1.0, max_rows: int = 256, name: str = "minigpt-decode"):
        self.join_wait = join_wait    # s a request waits for a running group of its kind before starting its own
        self.max_rows = max_rows      # rows per group (the batch KV cache grows with them)
        self.name = name
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._groups: list[_Group] = []
        self._thread: threading.Thread | None = None
        self._paused = False

    def generate(self, model, tokenizer, prompt: str, max_new_tokens: int, samplings: list[SamplingConfig],
                 seed: int | None = 1337, use_cache: bool = True, top_n: int = 10,
                 keep_logits: bool = False) -> Iterator[list[TokenStep]]:
        """Stream one list of TokenSteps a step (one per sampling config), all from `prompt` and `seed`:
        what `batch_generate.generate_batch` yields, decoded in a batch shared with concurrent callers.

        Column b equals `generate(model, tokenizer, prompt, max_new_tokens, samplings[b], seed, ...)`.
        Raises ValueError before yielding anything if the request is invalid, DecodeError if the
        decoding fails. Closing the generator takes the request's rows out of the batch.
        """
        if not samplings:
            raise ValueError("at least one sampling config")
        samplings = [s.validate() for s in samplings]
        prompt_ids = start_ids(tokenizer, prompt)[-model.config.block_size:]
        if not prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        if seed is None:
            seed = torch.seed()  # one seed shared by every row, as a Compare does
        makers = [StepMaker(tokenizer, top_n, keep_logits) for _ in samplings]
        req = _Request(model, prompt_ids, int(max_new_tokens), samplings, [make_generator(seed) for _ in samplings],
                       bool(use_cache), top_n)
        if req.n <= 0:
            return
        self._submit(req)
        try:
            for _ in range(req.n):
                toks, chosen, top_ids, top_probs, logits = self._next(req)
                yield [m.make(t, chosen[b], top_ids[b][:top_n], top_probs[b][:top_n], logits[b])
                       for b, (m, t) in enumerate(zip(makers, toks))]
        finally:
            req.cancelled = True  # done or abandoned: nothing more is decoded for it

    # -- a test hook: hold requests back, so that several are deterministically in one group --

    def pause(self):
        """Start no new group until `resume` (running groups go on)."""
        with self._cond:
            self._paused = True

    def resume(self):
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def waiting(self) -> int:
        """Requests submitted and not yet in a group."""
        with self._cond:
            return len(self._waiting)

    # -- the decoding thread --

    def _submit(self, req: _Request):
        with self._cond:
            self._waiting.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _next(self, req: _Request):
        """The request's next step from the thread; its error raised; DecodeError if the thread died."""
        while True:
            try:
                item = req.out.get(timeout=0.5)
            except queue.Empty:
                t = self._thread
                if t is not None and t.is_alive():
                    continue
                try:  # the thread may have handed it over and ended just now
                    item = req.out.get_nowait()
                except queue.Empty:
                    raise DecodeError("the decoding thread stopped before this request was done") from None
            if isinstance(item, BaseException):
                raise item
            return item

    def _admit(self) -> list[_Request]:
        """Under the lock: the waiting requests that start a group now (the first one's kind), or []."""
        now = time.monotonic()
        running = {g.key for g in self._groups}
        for first in self._waiting:
            if first.cancelled:
                continue
            if first.key in running and now - first.since < self.join_wait:
                continue  # a group of its kind runs: join the next one, unless it has waited long enough
            take, rows = [], 0
            for r in self._waiting:
                if r.key == first.key and r.model is first.model and not r.cancelled and (
                        not take or rows + r.rows <= self.max_rows):
                    take.append(r)
                    rows += r.rows
            return take
        return []

    def _run(self):
        try:
            while True:
                with self._cond:
                    self._waiting = [r for r in self._waiting if not r.cancelled]
                    starting = [] if self._paused else self._admit()
                    self._waiting = [r for r in self._waiting if r not in starting]
                    if not starting and not self._groups:
                        if not self._waiting:
                            self._thread = None
                            return
                        self._cond.wait(0.1)  # paused, or waiting for its time
                        continue
                if starting:
                    try:
                        self._groups.append(_Group(starting))
                    except Exception as e:
                        _fail(starting, e)
                for g in list(self._groups):
                    try:
                        alive = g.step()
                    except Exception as e:
                        _fail(g.reqs, e)
                        alive = False
                    if not alive:
                        self._groups.remove(g)
        except BaseException as e:  # a bug in the loop itself: no caller may wait for ever
            with self._cond:
                _fail(self._waiting + [r for g in self._groups for r in g.reqs], e, "the decoding thread")
                self._waiting, self._groups, self._thread = [], [], None
            raise

