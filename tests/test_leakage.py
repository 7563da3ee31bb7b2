"""Leakage audit of user texts: title matching, the verdict, text_leakage, the CLI payload."""

from __future__ import annotations

import contextlib
import io
import json
import time

import pandas as pd
import pytest

from tests.conftest import synthetic_ml, write_grouplens
from ur4rec import data as urdata
from ur4rec.data.dataset import PreparedData
from ur4rec.errors import UR4RecError
from ur4rec.texts import build_texts
from ur4rec.texts.leakage import audit_user_texts, build_title_index, find_mentions, title_forms
from ur4rec.texts.pipeline import audit_path


def _items(rows: list[tuple[int, str, int | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item", "title", "year"]).astype({"year": "Int64"})


CATALOGUE = _items([
    (1, "Godfather, The", 1972), (2, "Godfather: Part II, The", 1974), (3, "Body Snatchers", 1993),
    (4, "Body Snatchers", 1993), (5, "Cape Fear", 1962), (6, "Cape Fear", 1991), (7, "unknown", None),
    (8, "unkonwn", None), (9, "Body Snatcher, The", 1945), (10, "Appartement, L'", 1996),
    (11, "Nikita (La Femme Nikita)", 1990), (12, "Schindler's List", 1993), (13, "M", 1931), (14, "187", 1997),
    (15, "Star Wars", 1977), (16, "Star Wars: Episode Two", 2002),
])


@pytest.fixture(scope="module")
def index():
    return build_title_index(CATALOGUE, 16)


@pytest.mark.parametrize("text, expected", [
    ("I adore The Godfather.", {1}),
    ("the GODFATHER", {1}),
    ("Godfather, The (1972) was great", {1}),
    ("Godfather, The", {1}),
    ("Godfathers of rock", set()),  # word boundary
    ("He loved The Godfather: Part II best", {2}),  # the contained title is not also counted
    ("The Godfather: Part II and The Godfather", {1, 2}),
    ("Godfather: Part II, The (1974)", {2}),
    ("Star Wars: Episode Two", {16}),
    ("Star Wars", {15}),
    ("Body Snatchers is scary", {3, 4}),  # a title shared by two films names both
    ("The Body Snatcher", {9}),
    ("Cape Fear", {5, 6}),
    ("Cape Fear (1962), the original", {5}),  # the year resolves the shared title
    ("Cape Fear 1991", {6}),
    ("Cape Fear (1980)", {5, 6}),  # a year neither has: still both
    ("unknown films, unkonwn titles", set()),  # placeholders never match
    ("L'Appartement", {10}),
    ("La Femme Nikita; Nikita", {11}),
    ("Schindler’s List", {12}),  # curly apostrophe
    ("I'm not M, 187 films", set()),  # too short / numeric titles never match
])
def test_find_mentions(index, text, expected):
    assert find_mentions(text, index) == expected


def test_title_forms():
    assert title_forms("Godfather, The") == {("godfather", "the"), ("the", "godfather")}
    assert title_forms("unknown") == set() and title_forms("unkonwn") == set()
    assert ("la", "femme", "nikita") in title_forms("Nikita (La Femme Nikita)")


def test_matching_is_fast_on_ml100k_size():
    items = _items([(i, f"Picture {i} of the {['Night', 'Day', 'Sea'][i % 3]}, The", 1900 + i % 99)
                    for i in range(1, 1683)])
    idx = build_title_index(items, 1682)
    text = " ".join(f"The Picture {i} of the Night and some words about genres" for i in range(1, 40))
    t0 = time.perf_counter()
    for _ in range(943):
        found = find_mentions(text, idx)
    assert time.perf_counter() - t0 < 5.0
    assert found == {i for i in range(1, 40) if i % 3 == 0}


# ---- audits of whole text sets -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """200 users, 120 films; even films have article-inverted titles ("Picture 4, The")."""
    ds = synthetic_ml(n_users=200, n_items=120, per_user=10, seed=3)
    ds["items"] = [(i, f"Picture {i}, The" if i % 2 == 0 else f"Movie Number {i}", y, g)
                   for i, _t, y, g in ds["items"]]
    tmp = tmp_path_factory.mktemp("leak")
    folder = write_grouplens(tmp / "gl", ds)
    return tmp, folder


@pytest.fixture
def leak_cfg(tmp_cfg, world):
    _tmp, folder = world

    def make(**kw):
        return tmp_cfg(data_path=str(folder), **kw)

    cfg = make()
    return make, PreparedData.load(urdata.prepare(cfg).path)


def spoken(title: str) -> str:
    """How a writer names a film: "Picture 4, The" -> "The Picture 4" (no year)."""
    return f"The {title[:-5]}" if title.endswith(", The") else title


def user_file(tmp_path, data: PreparedData, leak_every: int | None) -> str:
    titles = dict(zip(data.items["item"], data.items["title"]))
    raws = data.users["raw_id"].tolist()
    train, valid, test = data.train_sequences(), data.held_out("valid"), data.held_out("test")
    out = {}
    for u in range(data.num_users):
        named = [spoken(titles[int(i)]) for i in train[u][-3:]]
        if leak_every and u % leak_every == 0:
            named.append(spoken(titles[int((valid if u % 2 else test)[u][0])]))
        out[str(raws[u])] = "A viewer who enjoyed " + ", ".join(named) + "."
    path = tmp_path / "users.json"
    path.write_text(json.dumps(out))
    return str(path)


def test_leaky_files_are_refused_with_numbers(leak_cfg, tmp_path):
    make, data = leak_cfg
    cfg = make(text_source="files", user_text_file=user_file(tmp_path, data, leak_every=5))  # 20% of users
    with pytest.raises(UR4RecError) as err:
        build_texts(cfg, data, progress=False)
    msg = str(err.value)
    assert "leakage" in msg and "FAIL" in msg and "users.json" in msg and "text_leakage: warn" in msg
    assert "valid 10.00% (20/200)" in msg and "test 10.00% (20/200)" in msg, msg
    assert not list(tmp_path.rglob("user.npy"))  # nothing embedded from leaky texts
    recorded = [json.loads(p.read_text()) for p in (tmp_path / "data").rglob("leakage.json")]
    assert [(r["verdict"], r["source"], r["action"]) for r in recorded] == [("fail", "files", "error")]


def test_leaky_files_proceed_with_warn(leak_cfg, tmp_path):
    make, data = leak_cfg
    cfg = make(text_source="files", user_text_file=user_file(tmp_path, data, leak_every=5), text_leakage="warn")
    with pytest.warns(UserWarning, match="leakage"):
        res = build_texts(cfg, data, progress=False)
    leak = res.to_dict()["leakage"]
    assert leak["verdict"] == "fail" and leak["action"] == "warn"
    assert leak["splits"]["valid"]["leaked"] and leak["splits"]["valid"]["held_out"]["named"] == 20
    assert leak["splits"]["valid"]["p_value"] < 1e-3
    assert leak["splits"]["valid"]["cross_user"] < 0.01
    saved = json.loads(audit_path(res.texts.folder).read_text())
    assert saved["verdict"] == "fail" and saved["source"] == "files"


def test_training_titles_only_pass(leak_cfg, tmp_path):
    make, data = leak_cfg
    cfg = make(text_source="files", user_text_file=user_file(tmp_path, data, leak_every=None))
    leak = build_texts(cfg, data, progress=False).to_dict()["leakage"]
    assert leak["verdict"] == "pass" and leak["action"] == "error"
    assert leak["splits"]["valid"]["held_out"]["named"] == 0
    assert leak["train"]["named"] == 3 * 200  # the matcher does find the titles these texts name


def test_template_texts_pass_and_cli_reports(leak_cfg, monkeypatch):
    make, data = leak_cfg
    cfg = make()
    res = build_texts(cfg, data, progress=False)
    leak = res.to_dict()["leakage"]
    assert leak["verdict"] == "pass" and leak["users"] == 200
    assert leak["train"]["named"] >= 2 * 200  # template texts name best-rated training titles
    assert all(s["held_out"]["named"] == 0 for s in leak["splits"].values())
    from ur4rec import cli

    if "ur4rec.texts.cli" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "ur4rec.texts.cli"])
    sets = [f"{k}={v}" for k, v in (("data_dir", cfg.data_dir), ("data_path", cfg.data_path),
                                    ("allow_download", "false"))]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["texts", "--json", *sum((["--set", s] for s in sets), [])])
    assert code == 0
    js = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert js["leakage"]["verdict"] == "pass" and js["leakage"]["splits"]["test"]["held_out"]["pairs"] > 0


def test_audit_counts_match_a_direct_count(leak_cfg):
    _make, data = leak_cfg
    titles = dict(zip(data.items["item"], data.items["title"]))
    valid = data.held_out("valid")
    texts = [f"Loved {spoken(titles[int(valid[u][0])])}" if u < 50 else "Likes films." for u in range(200)]
    audit = audit_user_texts(data, texts)
    v = audit.to_dict()["splits"]["valid"]
    assert v["held_out"]["named"] == 50 and v["leaked"]
    # other users' texts name these films only where the film is also someone else's validation film
    assert v["cross_user"] < 0.02
    assert audit.to_dict()["splits"]["test"]["leaked"] is False


def test_report_index_shows_the_audit(leak_cfg, tmp_path):
    from ur4rec.reports.runner import NotebookResult, write_index

    make, data = leak_cfg
    cfg = make(text_source="files", user_text_file=user_file(tmp_path, data, leak_every=5), text_leakage="warn")
    with pytest.warns(UserWarning):
        res = build_texts(cfg, data, progress=False)
    meta = {"profile": "quick", "date_utc": "now", "git": {"commit": None, "dirty": None}, "config_hash": "x",
            "seed": 0, "dataset_fingerprint": "x", "run_dir": None, "text_source": "files", "python": "3",
            "platform": "p", "cpu": "c", "cpu_count": 1, "device": "cpu", "versions": {}, "config": {},
            "text_audit_file": str(audit_path(res.texts.folder))}
    out = tmp_path / "reports"
    write_index(out, [NotebookResult("01b_texts", "ok", 1.0, None, None)], meta)
    page = (out / "index.html").read_text()
    assert "FAIL (text_leakage: warn): held-out titles named valid 10.00% vs cross-user" in page
    index = json.loads((out / "index.json").read_text())
    assert index["text_leakage"]["verdict"] == "fail" and index["text_leakage"]["held_out"]["test"]["rate"] == 0.1
    write_index(out, [], meta | {"text_audit_file": str(tmp_path / "missing.json")})
    assert "not available (texts not built yet)" in (out / "index.html").read_text()


def test_template_texts_with_demographics_pass_and_state_them(leak_cfg):
    make, data = leak_cfg
    res = build_texts(make(template_demographics=True), data, progress=False)
    leak = res.to_dict()["leakage"]
    assert leak["verdict"] == "pass" and all(s["held_out"]["named"] == 0 for s in leak["splits"].values())
    row = data.users.set_index("user").loc[0]
    gender = {"M": "male", "F": "female"}[row["gender"]]
    assert f"Age {int(row['age'])}, {gender}, {row['occupation']}." in res.texts.users[0]
    plain = build_texts(make(), data, progress=False)
    assert plain.texts.folder != res.texts.folder  # its own cache: the texts without demographics are kept
    assert "Age " not in plain.texts.users[0]
