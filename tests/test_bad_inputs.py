"""Bad input, table-driven: every case gets a clear message, the server keeps serving, nothing changes.

The API cases run against the page's real endpoints (gradio_client, and raw HTTP for what a JSON
client cannot send, such as NaN). Before the table, the test client's session trains a tiny model
of its own; after every case the server must answer a normal request and that model, its run and
its weights must be exactly as they were. The CLI cases call `python -m minigpt`'s entry point and
expect exit code 2 with one line on stderr.
"""

import hashlib
import json
import pickle
import re
import struct

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import save_file

from conftest import SMALL_TEXT

TRAIN = dict(data="shakespeare", text="", upload=None, tokenizer="char", model="gpt", n_embd=32, n_head=2, n_layer=2,
             block_size=32, dropout=0.0, batch_size=16, lr=3e-3, budget="iterations", amount=20, eval_interval=10,
             seed=1, norm="layer", residual=True, mlp=True, pos_emb=True, activation="gelu", optimizer="muon",
             muon_lr=0.02)
COMPARE = dict(prompt="ROMEO:", tokens=8, seed=3, strategies=["greedy", "multinomial"], low_t=0.5, high_t=2.0,
               top_k=10, top_p=0.9, colour=True, use_cache=True)
GENERATE = dict(prompt="ROMEO:", tokens=8, strategy="temperature", temperature=0.8, top_k=0, top_p=1.0, seed=1,
                use_cache=True)
BASE = {"/train": TRAIN, "/continue_training": TRAIN, "/estimate": TRAIN, "/compare_sampling": COMPARE,
        "/generate": GENERATE, "/attention": dict(text="ROMEO:", layer=0, head="all"), "/tokenize": dict(text="hi"),
        "/attention_scores": dict(text="ROMEO:"),
        "/next_token_distribution": dict(column="greedy", step=1), "/load_checkpoint": dict(file=None),
        "/ladder": dict(iters_per_rung=10, norm="layer", n_embd=16, block_size=16, seed=1),
        "/averaging": dict(text="First", layer=0, head=0)}
ORDER = {name: list(kw) for name, kw in BASE.items()}  # positional order, for raw HTTP calls

# (endpoint, changed inputs, what the message must say). A value "FILE:name" is a file made by `files`.
API_CASES = [
    # Train: shapes, ranges, types, limits
    ("/train", dict(n_embd=48, n_head=5), "not divisible by 5 heads"),
    ("/train", dict(n_head=0), "heads must be between 1 and"),
    ("/train", dict(n_head=-3), "heads must be between 1 and"),
    ("/train", dict(n_layer=10**6), "layers must be between 1 and"),
    ("/train", dict(n_embd=0), "embedding size must be between"),
    ("/train", dict(n_embd="abc"), "embedding size must be a number"),
    ("/train", dict(n_embd=None), "embedding size must be a number"),
    ("/train", dict(block_size=10**9), "context length must be between"),
    ("/train", dict(dropout=0.99), "dropout must be between 0 and 0.5"),
    ("/train", dict(dropout=-0.1), "dropout must be between 0 and 0.5"),
    ("/train", dict(batch_size=0), "batch size must be between 1 and"),
    ("/train", dict(batch_size=1e9), "batch size must be between 1 and"),
    ("/train", dict(lr=0), "learning rate must be between"),
    ("/train", dict(lr=-1), "learning rate must be between"),
    ("/train", dict(lr=5), "learning rate must be between"),
    ("/train", dict(amount=0), "budget must be at least 1"),
    ("/train", dict(budget="seconds", amount=10**9), "seconds must be in"),
    ("/train", dict(amount=10**12), "iterations must be between"),
    ("/train", dict(budget="forever"), "Budget in must be one of"),
    ("/train", dict(tokenizer="word"), "Tokenizer must be one of"),
    ("/train", dict(model="lstm"), "Model must be one of"),
    ("/train", dict(data="wikipedia"), "Data must be one of"),
    ("/train", dict(seed=-5), "seed must be at least 0"),
    ("/train", dict(seed=2**40), "seed must be between"),
    ("/train", dict(eval_interval=0), "must be between 10 and 1000"),
    ("/train", dict(n_embd=1536, n_layer=24, n_head=16), "over the limit of 30,000,000"),
    ("/train", dict(tokenizer="gpt2", n_embd=1536, n_layer=2, n_head=8), "parameters, over the limit"),
    # Train: the text to learn from
    ("/train", dict(data="paste", text=""), "paste some text"),
    ("/train", dict(data="paste", text=" \n\t "), "paste some text"),
    ("/train", dict(data="paste", text="ab"), "too few for a context of 32"),
    ("/train", dict(data="upload", upload=None), "upload a UTF-8 .txt file first"),
    ("/train", dict(data="upload", upload="FILE:empty.txt"), "empty"),
    ("/train", dict(data="upload", upload="FILE:binary.txt"), "binary"),
    ("/train", dict(data="upload", upload="FILE:latin1.txt"), "not UTF-8"),
    ("/train", dict(data="upload", upload="FILE:blank.txt"), "empty"),
    ("/continue_training", dict(batch_size=0), "batch size must be between 1 and"),  # (shape knobs keep the model's)
    ("/continue_training", dict(lr=0), "learning rate must be between"),
    # Train: the architecture switches
    ("/train", dict(norm="group"), "norm must be one of 'layer', 'batch', 'rms', 'none'; got 'group'"),
    ("/train", dict(norm=None), "norm must be one of"),
    ("/train", dict(activation="swish"), "MLP activation must be one of 'gelu', 'relu', 'sigmoid', 'tanh'"),
    ("/train", dict(residual="no"), "residual connections must be true or false, got 'no'"),
    ("/train", dict(mlp=1), "MLP must be true or false, got 1"),
    ("/train", dict(pos_emb=None), "position embeddings must be true or false"),
    ("/train", dict(mlp=False, activation="sigmoid"), "activation 'sigmoid' needs the MLP"),
    ("/train", dict(model="bigram", norm="batch"), "the bigram model has no blocks.*got BatchNorm"),
    ("/continue_training", dict(norm="group"), "norm must be one of"),
    ("/continue_training", dict(residual="off"), "residual connections must be true or false"),
    ("/estimate", dict(mlp=False, activation="tanh"), "Cannot start.*needs the MLP"),
    ("/estimate", dict(model="bigram", residual=False), "Cannot start.*bigram model has no blocks"),
    # The optimizer
    ("/train", dict(optimizer="sgd"), "Optimizer must be one of 'muon', 'adamw'; got 'sgd'"),
    ("/train", dict(optimizer=None), "[Oo]ptimizer must be one of"),
    ("/train", dict(muon_lr=0), "Muon learning rate must be between"),
    ("/train", dict(muon_lr=50), "Muon learning rate must be between"),
    ("/train", dict(muon_lr="fast"), "Muon learning rate must be a number"),
    ("/continue_training", dict(optimizer="lion"), "Optimizer must be one of"),
    ("/continue_training", dict(muon_lr=-0.02), "Muon learning rate must be between"),
    ("/estimate", dict(n_embd=48, n_head=5), "Cannot start.*not divisible"),
    ("/estimate", dict(n_layer=24, n_embd=1536, n_head=16), "Cannot start.*over the limit"),
    # Generate and compare sampling
    ("/compare_sampling", dict(prompt="hi 🙂"), "character not in the model's vocabulary: '🙂'"),
    ("/compare_sampling", dict(prompt="Zebra€ and ¥"), "2 characters not in the model's vocabulary: '¥', '€'"),
    ("/compare_sampling", dict(prompt="x" * 200_001), "prompt is 200,001 characters long; the limit is 100,000"),
    ("/compare_sampling", dict(tokens=0), "tokens must be between 1 and"),
    ("/compare_sampling", dict(tokens=10**6), "tokens must be between 1 and"),
    ("/compare_sampling", dict(strategies=[]), "choose at least one sampling strategy"),
    ("/compare_sampling", dict(strategies=["beam"]), "Strategies must be one of"),
    ("/compare_sampling", dict(strategies="greedy"), "Strategies must be a list"),
    ("/compare_sampling", dict(low_t=0), "low T must be between 0.05 and 1"),
    ("/compare_sampling", dict(high_t=-2), "high T must be between 1 and 5"),
    ("/compare_sampling", dict(top_k=0), "k \\(top-k\\) must be between 1 and 100"),
    ("/compare_sampling", dict(top_p=1.5), "p \\(top-p\\) must be between 0.05 and 1"),
    ("/compare_sampling", dict(seed=-1), "seed must be at least 0"),
    ("/generate", dict(strategy="beam"), "strategy must be one of"),
    ("/generate", dict(temperature=0), "temperature must be between 0.05 and 5"),
    ("/generate", dict(temperature=-1), "temperature must be between 0.05 and 5"),
    ("/generate", dict(top_k=-3), "top-k \\(0 = off\\) must be at least 0"),
    ("/generate", dict(top_p=0), "top-p \\(1 = off\\) must be between 0.01 and 1"),
    ("/generate", dict(top_p=2), "top-p \\(1 = off\\) must be between 0.01 and 1"),
    ("/generate", dict(tokens="many"), "tokens must be a number"),
    ("/generate", dict(tokens=10**9), "tokens must be between 1 and"),
    ("/generate", dict(prompt="naïve"), "not in the model's vocabulary: 'ï'"),
    ("/next_token_distribution", dict(column="beam search"), "no column"),
    ("/next_token_distribution", dict(step=0), "step must be between 1 and"),
    # Attention and tokenizer views
    ("/attention", dict(layer=99), "layer must be between 0 and 1"),
    ("/attention", dict(layer="abc"), "layer must be an integer"),
    ("/attention", dict(head="7"), "head must be 'all' or between 0 and 1"),
    ("/attention", dict(head="x"), "head must be 'all' or between 0 and 1"),
    ("/attention", dict(text="€uro"), "not in the model's vocabulary: '€'"),
    ("/attention", dict(text="ab" * 60_000), "text is 120,000 characters long"),
    ("/tokenize", dict(text="x" * 100_001), "text is 100,001 characters long"),
    ("/attention_scores", dict(text="Zebra€"), "not in the model's vocabulary: .*'€'"),
    ("/attention_scores", dict(text="ab" * 60_000), "text is 120,000 characters long"),
    ("/attention_scores", dict(text="R"), "at least two tokens"),
    # Build it up: the ladder's budget, norm and shape; averaging's text, layer and head
    ("/ladder", dict(iters_per_rung=0), "iterations per rung must be between 10 and"),
    ("/ladder", dict(iters_per_rung=10**9), "iterations per rung must be between 10 and"),
    ("/ladder", dict(iters_per_rung="many"), "iterations per rung must be a number"),
    ("/ladder", dict(norm="group"), "norm of rungs 7–8 must be one of"),
    ("/ladder", dict(n_embd=18), "must be divisible by n_head"),
    ("/ladder", dict(n_embd=10**6), "width \\(n_embd\\) must be between"),
    ("/ladder", dict(block_size=0), "context must be between"),
    ("/ladder", dict(seed=-1), "seed must be at least 0"),
    ("/averaging", dict(text=""), "enter some text"),
    ("/averaging", dict(text="€uro"), "not in the model's vocabulary: '€'"),
    ("/averaging", dict(text="x" * 100_001), "text is 100,001 characters long"),
    ("/averaging", dict(layer=5), "layer must be between 0 and 1, got 5"),
    ("/averaging", dict(layer=99), "layer must be between 0 and"),
    ("/averaging", dict(head=2), "head must be between 0 and 1, got 2"),
    # Hostile checkpoint files
    ("/load_checkpoint", dict(file=None), "choose a .safetensors file"),
    ("/load_checkpoint", dict(file="FILE:pickle.safetensors"), "not a safetensors file"),
    ("/load_checkpoint", dict(file="FILE:random.safetensors"), "not a safetensors file"),
    ("/load_checkpoint", dict(file="FILE:empty.safetensors"), "not a safetensors file|too short|empty"),
    ("/load_checkpoint", dict(file="FILE:text.safetensors"), "not a safetensors file"),
    ("/load_checkpoint", dict(file="FILE:truncated.safetensors"), "truncated|outside the file|not a safetensors"),
    ("/load_checkpoint", dict(file="FILE:huge.safetensors"), "outside the file"),
    ("/load_checkpoint", dict(file="FILE:nometa.safetensors"), "not a minigpt checkpoint"),
    ("/load_checkpoint", dict(file="FILE:bigconfig.safetensors"), "n_layer"),
    ("/load_checkpoint", dict(file="FILE:shape.safetensors"), "shape"),
    ("/load_checkpoint", dict(file="FILE:dtype.safetensors"), "dtype"),
    ("/load_checkpoint", dict(file="FILE:extra.safetensors"), "unexpected tensors: backdoor"),
    ("/load_checkpoint", dict(file="FILE:vocab.safetensors"), "vocabulary"),
    # Checkpoints whose optimizer state is damaged: refused whole, though the page never resumes from it
    ("/load_checkpoint", dict(file="FILE:adamw-missing.safetensors"), "optimizer state is incomplete"),
    ("/load_checkpoint", dict(file="FILE:muon-missing.safetensors"), "optimizer state is incomplete"),
    ("/load_checkpoint", dict(file="FILE:muon-misfit.safetensors"), "does not fit the model"),
    ("/load_checkpoint", dict(file="FILE:adamw-nan.safetensors"), "NaN"),
    ("/load_checkpoint", dict(file="FILE:muon-mislabelled.safetensors"), "optimizer state"),
    ("/load_checkpoint", dict(file="FILE:unknown-optimizer.safetensors"), "unknown optimizer"),
]

# What a JSON client cannot send but a raw HTTP request can: NaN and infinities.
RAW_CASES = [
    ("/train", dict(lr=float("nan")), "learning rate must be a finite number"),
    ("/train", dict(dropout=float("inf")), "dropout must be a finite number"),
    ("/train", dict(muon_lr=float("nan")), "Muon learning rate must be a finite number"),
    ("/train", dict(n_embd=float("-inf")), "embedding size must be a finite number"),
    ("/compare_sampling", dict(high_t=float("nan")), "high T must be a finite number"),
    ("/generate", dict(temperature=float("nan")), "temperature must be a finite number"),
    ("/generate", dict(top_p=float("inf")), "top-p \\(1 = off\\) must be a finite number"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad uploads: texts that cannot be trained on and checkpoints that must never be loaded."""
    import torch

    from minigpt.checkpoint import save_checkpoint
    from minigpt.model import GPT, GPTConfig
    from minigpt.tokenizers import CharTokenizer

    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text(" \n\n\t \n")
    (d / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    (d / "latin1.txt").write_bytes(("Café au lait, naïve façade. " * 40).encode("latin-1"))

    class Boom:
        def __reduce__(self):
            return (exec, ("open('/tmp/minigpt-pwned', 'w').write('pwned')",))

    (d / "pickle.safetensors").write_bytes(pickle.dumps({"model": Boom()}))
    (d / "random.safetensors").write_bytes(bytes((i * 7919 + 13) % 256 for i in range(4096)))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "text.safetensors").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4 * 10**18]}}).encode()
    (d / "huge.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)

    tok = CharTokenizer.from_text(SMALL_TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    good = save_checkpoint(d / "good.safetensors", model, tok, {"iters": 5})
    raw = good.read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])

    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, str(d / "nometa.safetensors"))
    config = json.loads(meta["config"])
    save_file(tensors, str(d / "bigconfig.safetensors"),
              metadata={**meta, "config": json.dumps({**config, "n_layer": 10_000})})
    save_file({**tensors, "transformer.wpe.weight": tensors["transformer.wpe.weight"][:8].clone()},
              str(d / "shape.safetensors"), metadata=meta)
    save_file({k: v.half() for k, v in tensors.items()}, str(d / "dtype.safetensors"), metadata=meta)
    save_file({**tensors, "backdoor": torch.zeros(3)}, str(d / "extra.safetensors"), metadata=meta)
    save_file(tensors, str(d / "vocab.safetensors"),
              metadata={**meta, "tokenizer": json.dumps({"type": "char", "chars": "abc"})})
    _hostile_optimizer_states(d, model, tok)
    return d


def _hostile_optimizer_states(d, model, tok):
    """Checkpoints whose optimizer state (AdamW's, or Muon + AdamW's) is incomplete, misfit or poisoned."""
    import torch

    from minigpt.checkpoint import save_checkpoint
    from minigpt.optim import make_optimizer
    from minigpt.train import TrainConfig

    (d / "small.txt").write_text(SMALL_TEXT)
    for kind in ("adamw", "muon"):
        opt = make_optimizer(model, TrainConfig(optimizer=kind), "cpu")
        x = torch.randint(0, tok.vocab_size, (2, 16))
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        path = save_checkpoint(d / f"{kind}-state.safetensors", model, tok, {"iters": 1}, opt)
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        key = "exp_avg" if kind == "adamw" else "momentum_buffer"
        victim = next(k for k in tensors if k.endswith("." + key))
        save_file({k: v for k, v in tensors.items() if k != victim}, str(d / f"{kind}-missing.safetensors"),
                  metadata=meta)
        save_file({**tensors, victim: tensors[victim][:1].clone()}, str(d / f"{kind}-misfit.safetensors"),
                  metadata=meta)
        save_file({**tensors, victim: torch.full_like(tensors[victim], float("nan"))},
                  str(d / f"{kind}-nan.safetensors"), metadata=meta)
        other = {"adamw": "MuonAdamW", "muon": "AdamW"}[kind]  # tensors of one, labelled as the other
        save_file(tensors, str(d / f"{kind}-mislabelled.safetensors"),
                  metadata={**meta, "optimizer": json.dumps({"type": other, "param_groups": []})})
    save_file(tensors, str(d / "unknown-optimizer.safetensors"),
              metadata={**meta, "optimizer": json.dumps({"type": "Frobnicator", "param_groups": []})})
    no_meta = {k: v for k, v in meta.items() if k != "optimizer"}
    save_file(tensors, str(d / "state-without-meta.safetensors"), metadata=no_meta)


def fingerprint(session) -> tuple:
    """What must not change: which model is current, its run, and every weight's bytes."""
    ref = session.current()
    digest = hashlib.sha256()
    for name, t in ref.model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    run = session.run
    return (id(ref.model), ref.source, session.version, run.iters if run else None, digest.hexdigest())


@pytest.fixture(scope="module")
def owner(app_server):
    """A client whose session trained a tiny model of its own (so there is something to protect)."""
    app, url = app_server
    client = Client(url, verbose=False)
    try:
        last = client.predict(**TRAIN, api_name="/train")
        assert "Finished" in last[1] and last[3]["iters"] == 20
        client.predict(**COMPARE, api_name="/compare_sampling")  # so the next-token view has a comparison
        session = app.PLAYGROUND.session(client.session_hash)
        assert session.current().source == "trained in this session"
        yield client, session, url
    finally:
        client.close()


def inputs(endpoint, changes, files):
    kw = {**BASE[endpoint], **changes}
    for k, v in kw.items():
        if isinstance(v, str) and v.startswith("FILE:"):
            kw[k] = handle_file(str(files / v[5:]))
    return kw


def still_serving(client, session, before):
    info = client.predict(api_name="/model_info")[0]
    assert info["source"] == "trained in this session" and info["training"]["iters"] == 20
    assert fingerprint(session) == before


@pytest.mark.parametrize("endpoint,changes,message", API_CASES,
                         ids=[f"{e[1:]}-{'-'.join(c)}-{i}" for i, (e, c, _) in enumerate(API_CASES)])
def test_api_refuses_bad_input_clearly(owner, files, endpoint, changes, message):
    client, session, _ = owner
    before = fingerprint(session)
    if endpoint == "/estimate":  # the estimate answers with why Start is disabled, not with an error
        html = client.predict(**inputs(endpoint, changes, files), api_name=endpoint)
        assert re.search(message, html, re.S), html
    else:
        with pytest.raises(AppError) as err:
            client.predict(**inputs(endpoint, changes, files), api_name=endpoint)
        text = str(err.value)
        assert re.search(message, text), text
        assert "Traceback" not in text and "upstream Gradio app has raised an exception" not in text
    still_serving(client, session, before)


def test_a_damaged_optimizer_state_is_a_toast_and_continue_goes_on_with_the_current_model(app_server, files):
    """Upload a checkpoint whose Muon state lacks a tensor: an error naming it (the page's toast), the
    session keeps the model it trained, and Continue resumes that model, with the optimizer asked for."""
    app, url = app_server
    client = Client(url, verbose=False)
    try:
        client.predict(**{**TRAIN, "amount": 10}, api_name="/train")
        session = app.PLAYGROUND.session(client.session_hash)
        before = fingerprint(session)
        with pytest.raises(AppError, match="optimizer state is incomplete"):
            client.predict(handle_file(str(files / "muon-missing.safetensors")), api_name="/load_checkpoint")
        assert fingerprint(session) == before
        last = client.predict(**{**TRAIN, "amount": 5, "optimizer": "adamw"}, api_name="/continue_training")
        assert "Finished" in last[1] and last[3]["iters"] == 15 and last[3]["optimizer"] == "adamw"
        assert "trained with AdamW" in last[4] and session.current().source == "trained in this session"
    finally:
        client.close()


@pytest.mark.parametrize("endpoint,changes,message", RAW_CASES,
                         ids=[f"{e[1:]}-{'-'.join(c)}" for e, c, _ in RAW_CASES])
def test_raw_http_nan_and_infinity_are_refused(owner, endpoint, changes, message):
    client, session, url = owner
    before = fingerprint(session)
    kw = {**BASE[endpoint], **changes}
    body = json.dumps({"data": [kw[k] for k in ORDER[endpoint]], "session_hash": client.session_hash})
    api = f"{url.rstrip('/')}/gradio_api/call{endpoint}"
    event = httpx.post(api, content=body, headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
    reply = httpx.get(f"{api}/{event}", timeout=60).text
    assert "event: error" in reply, reply
    assert re.search(message, json.loads(reply.split("data:", 1)[1])["error"]), reply
    still_serving(client, session, before)


@pytest.mark.parametrize("path", ["checkpoints/shakespeare-char.safetensors", "/etc/hostname", "../../etc/hostname"])
def test_a_file_the_client_did_not_upload_is_never_read(owner, path):
    """A request naming a server path instead of an upload is refused by Gradio before any handler."""
    client, session, url = owner
    before = fingerprint(session)
    body = json.dumps({"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}],
                       "session_hash": client.session_hash})
    api = f"{url.rstrip('/')}/gradio_api/call/load_checkpoint"
    event = httpx.post(api, content=body, headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
    assert "event: error" in httpx.get(f"{api}/{event}", timeout=60).text
    still_serving(client, session, before)


def test_oversized_upload_is_refused_by_the_server(owner, tmp_path):
    client, session, url = owner
    before = fingerprint(session)
    import app
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (app.LIMITS.max_upload_bytes + 1))
    with big.open("rb") as f:
        r = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": (big.name, f)}, timeout=60)
    assert r.status_code == 413 and "maximum allowed size" in r.text
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks it first
        client.predict(handle_file(str(big)), api_name="/load_checkpoint")
    still_serving(client, session, before)


def test_the_pickle_was_never_run():
    import os
    assert not os.path.exists("/tmp/minigpt-pwned")


def test_there_are_at_least_fifty_api_cases():
    assert len(API_CASES) + len(RAW_CASES) >= 50


# ---- the command line ----------------------------------------------------------------------------

CLI_CASES = [
    (["train", "--n-layer", "-1"], "n_layer"),
    (["train", "--n-embd", "-8"], "n_embd"),
    (["train", "--n-embd", "100", "--n-head", "3"], "divisible"),
    (["train", "--dropout", "1.0"], "dropout"),
    (["train", "--block-size", "100000"], "block_size"),
    (["train", "--batch-size", "0"], "batch_size"),
    (["train", "--lr", "nan"], "lr"),
    (["train", "--lr", "inf"], "lr"),
    (["train", "--max-iters", "0"], "max_iters"),
    (["train", "--max-seconds", "-1"], "max_seconds"),
    (["train", "--n-layer", "24", "--n-embd", "1536", "--n-head", "16"], "over the limit"),
    (["train", "--data", "/no/such/file.txt"], "no such text file"),
    (["train", "--data", "FILE:empty.txt"], "empty"),
    (["train", "--data", "FILE:binary.txt"], "binary"),
    (["train", "--data", "FILE:latin1.txt"], "not UTF-8"),
    (["train", "--resume", "FILE:pickle.safetensors"], "not a safetensors file"),
    # --out is checked before the first step: a run is never trained only to be thrown away
    (["train", "--out", "FILE:"], "is a folder: give a file name"),
    (["train", "--out", "FILE:good.safetensors/run.safetensors"], "good.safetensors is a file, not a folder"),
    (["train", "--out", "FILE:latin1.txt/deeper/run.safetensors"], "latin1.txt is a file, not a folder"),
    (["train", "--out", "/proc/minigpt-no-such/run.safetensors"], "cannot be created"),
    (["train", "--out", "/sys/run.safetensors"], "cannot be written"),  # read-only, even for root
    (["train", "--out", ""], "--out is empty"),
    # hostile optimizer states: refused before any training, never a traceback from inside the optimizer
    (["train", "--resume", "FILE:adamw-missing.safetensors", "--data", "FILE:small.txt"], "optimizer state is incomplete"),
    (["train", "--resume", "FILE:muon-missing.safetensors", "--data", "FILE:small.txt"], "optimizer state is incomplete"),
    (["train", "--resume", "FILE:adamw-misfit.safetensors", "--data", "FILE:small.txt"], "does not fit the model"),
    (["train", "--resume", "FILE:muon-misfit.safetensors", "--data", "FILE:small.txt"], "does not fit the model"),
    (["train", "--resume", "FILE:adamw-nan.safetensors", "--data", "FILE:small.txt"], "NaN"),
    (["train", "--resume", "FILE:muon-nan.safetensors", "--data", "FILE:small.txt"], "NaN"),
    (["train", "--resume", "FILE:adamw-mislabelled.safetensors", "--data", "FILE:small.txt"], "optimizer state"),
    (["train", "--resume", "FILE:muon-mislabelled.safetensors", "--data", "FILE:small.txt"], "optimizer state"),
    (["train", "--resume", "FILE:unknown-optimizer.safetensors", "--data", "FILE:small.txt"], "unknown optimizer"),
    (["train", "--resume", "FILE:state-without-meta.safetensors", "--data", "FILE:small.txt"], "'optimizer' metadata"),
    (["train", "--optimizer", "muon", "--muon-lr", "nan"], "muon_lr"),
    (["sample", "FILE:good.safetensors", "--tokens", "0"], "--tokens"),
    (["sample", "FILE:good.safetensors", "--tokens", str(10**9)], "--tokens"),
    (["sample", "FILE:good.safetensors", "--temperature", "0"], "temperature"),
    (["sample", "FILE:good.safetensors", "--temperature", "-1"], "temperature"),
    (["sample", "FILE:good.safetensors", "--temperature", "nan"], "temperature"),
    (["sample", "FILE:good.safetensors", "--top-k", "0"], "top_k"),
    (["sample", "FILE:good.safetensors", "--top-p", "0"], "top_p"),
    (["sample", "FILE:good.safetensors", "--top-p", "1.5"], "top_p"),
    (["sample", "FILE:good.safetensors", "--seed", "-1"], "--seed"),
    (["sample", "FILE:good.safetensors", "--prompt", "Zebra€"], "not in the model's vocabulary: .*'€'"),
    (["sample", "FILE:truncated.safetensors"], "truncated|outside the file|not a safetensors"),
    (["sample", "/no/such.safetensors"], "cannot read"),
    (["eval", "FILE:pickle.safetensors"], "not a safetensors file"),
    (["eval", "FILE:huge.safetensors"], "outside the file"),
    (["info", "FILE:random.safetensors"], "not a safetensors file"),
    (["info", "FILE:bigconfig.safetensors"], "n_layer"),
    (["info", "FILE:vocab.safetensors"], "vocabulary"),
    (["info", "FILE:dtype.safetensors"], "dtype"),
]
ARGPARSE_CASES = [
    ["train", "--tokenizer", "word"],
    ["train", "--max-iters", "many"],
    ["train", "--optimizer", "sgd"],
    ["sample", "x.safetensors", "--strategy", "beam"],
    ["sample"],
    ["frobnicate"],
]


@pytest.mark.parametrize("args,message", CLI_CASES, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(CLI_CASES)])
def test_cli_refuses_bad_input_with_exit_2_and_one_line(files, capsys, args, message):
    from minigpt.cli import main
    argv = [str(files / a[5:]) if a.startswith("FILE:") else a for a in args]
    if argv[0] == "train":  # should a case slip through, it trains 2 steps, not the default 6000
        out = [] if "--out" in argv else ["--out", str(files / "never-written.safetensors")]
        argv = ["train", "--max-iters", "2", "--eval-iters", "1", *argv[1:], *out]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (files / "never-written.safetensors").exists()


@pytest.mark.parametrize("kind,other", [("adamw", "muon"), ("muon", "adamw")])
def test_cli_resume_with_the_other_optimizer_starts_it_fresh_with_a_note(files, capsys, tmp_path, kind, other):
    from minigpt.cli import main
    out = tmp_path / "m.safetensors"
    argv = ["train", "--resume", str(files / f"{kind}-state.safetensors"), "--data", str(files / "small.txt"),
            "--optimizer", other, "--max-iters", "2", "--eval-iters", "1", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: ") and "fresh optimizer" in err[0], err
    assert out.exists()


@pytest.mark.parametrize("args", ARGPARSE_CASES, ids=lambda a: " ".join(a))
def test_cli_refuses_bad_flags_with_exit_2(capsys, args):
    from minigpt.cli import main
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    assert "error:" in capsys.readouterr().err
