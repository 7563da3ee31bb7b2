"""The generic interaction log (``dataset: custom``): a CSV/TSV of user, item, timestamp [, rating] with
string ids, an optional item metadata file, the rules for repeats and ties, every malformed file, and
the whole pipeline on it (prepare, template texts + leakage audit, quick-profile training, evaluation)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ur4rec.cli import main
from ur4rec.config import CONFIG_DIR, load_config, read_yaml
from ur4rec.data import PreparedData, prepare
from ur4rec.errors import ConfigError, DataError
from ur4rec.evaluation.evaluate import evaluate_run
from ur4rec.pipeline import train
from ur4rec.plots.data import split_sanity_checks
from ur4rec.texts.leakage import audit_user_texts
from ur4rec.texts.pipeline import build_texts
from ur4rec.texts.prompts import TrainingView
from ur4rec.texts.template import item_text, template_texts, user_text

COLUMNS = {"user": "customer", "item": "product", "timestamp": "when", "rating": "stars"}
ITEM_COLUMNS = {"item": "asin", "title": "name", "year": "released", "genres": "categories", "text": "about"}


def synthetic_log(n_users: int = 30, n_items: int = 40, per_user: int = 10, seed: int = 1) -> list[tuple]:
    """(user, item, timestamp, rating) rows with Amazon-like string ids, interleaved across users, with
    timestamp ties and repeated user-item pairs on purpose."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        user = f"A{(u * 37) % 101:03d}Q"
        items = rng.choice(n_items, size=per_user + u % 4, replace=False)
        t = 1_300_000_000 + int(rng.integers(0, 50_000))
        for item in items:
            t += int(rng.integers(0, 3))  # 0 makes ties
            rows.append((user, f"B{item:04d}X", t, int(rng.integers(1, 6))))
        rows.append((user, f"B{items[0]:04d}X", t + 5, 1))  # a repeat, later: dropped
    order = rng.permutation(len(rows))  # the file interleaves users, as a real log does
    return [rows[i] for i in order]


def synthetic_items(n_items: int = 40) -> list[dict]:
    """Metadata for most items: quoted titles with commas, shared titles, dates, free text; one id twice;
    one item not in the log; a few items left out (no metadata)."""
    out = []
    for i in range(n_items):
        if i % 9 == 4:
            continue  # no metadata for this item
        title = "Same Title" if i in (3, 5) else (f"Gadget {i}, Deluxe" if i % 2 else f"Widget Number {i}")
        out.append({"asin": f"B{i:04d}X", "name": title, "released": f"{2000 + i % 15}-05-01" if i % 3 else "",
                    "categories": "Electronics|Audio" if i % 2 else "Home", "about": f"Made of part {i}."})
    out.append({"asin": "B0001X", "name": "Duplicate row", "released": "", "categories": "", "about": ""})
    out.append({"asin": "Z9999", "name": "Never bought", "released": "", "categories": "", "about": ""})
    return out


def write_log(path: Path, rows: list[tuple], columns: dict[str, str] = COLUMNS, sep: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=sep, lineterminator="\n")
        w.writerow([columns[k] for k in ("user", "item", "timestamp", "rating") if k in columns])
        for u, i, t, r in rows:
            w.writerow([u, i, t, r][: len([k for k in ("user", "item", "timestamp", "rating") if k in columns])])
    return path


def write_items(path: Path, items: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ITEM_COLUMNS.values()), lineterminator="\n")
        w.writeheader()
        w.writerows(items)
    return path


def custom(log: Path, items: Path | None = None, **extra) -> dict:
    """The config keys of a generic log written by write_log / write_items."""
    keys = {"dataset": "custom", "interactions_file": str(log), "interactions_columns": COLUMNS}
    if items is not None:
        keys |= {"items_file": str(items), "items_columns": ITEM_COLUMNS}
    return keys | extra


def expected_sequences(rows: list[tuple]) -> dict[str, list[str]]:
    """Each user's items by (timestamp, file row), a repeated pair keeping its first: the documented rules."""
    seqs: dict[str, list[tuple]] = {}
    for row, (u, i, t, _) in enumerate(rows):
        seqs.setdefault(u, []).append((t, row, i))
    out = {}
    for u, events in seqs.items():
        seen, seq = set(), []
        for _, _, i in sorted(events):
            if i not in seen:
                seen.add(i)
                seq.append(i)
        out[u] = seq
    return out


@pytest.fixture
def log_rows() -> list[tuple]:
    return synthetic_log()


@pytest.fixture
def log_files(tmp_path: Path, log_rows: list[tuple]) -> tuple[Path, Path]:
    return write_log(tmp_path / "in" / "events.csv", log_rows), write_items(tmp_path / "in" / "meta.csv",
                                                                            synthetic_items())


def _no_processed_output(cfg) -> None:
    root = cfg.path("data_dir") / "processed"
    assert not root.exists() or not any(root.rglob("*")), sorted(root.rglob("*"))


def _sequences(data: PreparedData) -> dict[str, list[str]]:
    raw_user = dict(zip(data.users["user"], data.users["raw_id"]))
    raw_item = dict(zip(data.items["item"], data.items["raw_id"]))
    inter = data.interactions.sort_values(["user", "position"])
    return {raw_user[u]: [raw_item[i] for i in g["item"]] for u, g in inter.groupby("user")}


# ---------------------------------------------------------------------------- preparing
def test_generic_log_prepares_with_the_documented_rules(tmp_cfg, log_files, log_rows) -> None:
    log, items = log_files
    res = prepare(tmp_cfg(**custom(log, items)))
    expected = expected_sequences(log_rows)
    n_users, n_inter = len(expected), sum(len(s) for s in expected.values())
    assert (res.users, res.interactions, res.valid, res.test) == (n_users, n_inter, n_users, n_users)
    assert res.train == n_inter - 2 * n_users and res.items == len({i for s in expected.values() for i in s})
    assert (res.source, res.source_format) == ("file", "csv") and Path(res.path).parent.name == "custom"
    data = PreparedData.load(res.path)
    assert split_sanity_checks(data)["passed"].all()
    assert _sequences(data) == expected  # ties in file order; a repeated pair keeps its first interaction
    assert data.meta["source"]["duplicates_dropped"] == len(log_rows) - n_inter
    assert data.meta["source"]["has_rating"] is True
    # string ids -> contiguous ints in the sorted order of the ids (deterministic, file order aside)
    assert list(data.users["raw_id"]) == sorted(expected) and list(data.users["user"]) == list(range(n_users))
    assert list(data.items["raw_id"]) == sorted(data.items["raw_id"])
    assert list(data.items["item"]) == list(range(1, res.items + 1))
    assert data.users[["age", "gender", "occupation"]].isna().all().all()


def test_ties_keep_file_order_and_repeats_keep_their_first(tmp_cfg, tmp_path: Path) -> None:
    rows = [("u1", "c", 10, 5), ("u1", "a", 10, 4), ("u1", "b", 10, 3),  # a tie: file order c, a, b
            ("u1", "d", 30, 2), ("u1", "a", 5, 1),  # a repeat of a, earlier: it is the one kept (time 5)
            ("u1", "e", 40, 5), ("u1", "e", 40, 1)]  # a repeat at the same time: the earlier row is kept
    res = prepare(tmp_cfg(**custom(write_log(tmp_path / "log.csv", rows))))
    data = PreparedData.load(res.path)
    assert _sequences(data) == {"u1": ["a", "c", "b", "d", "e"]}
    inter = data.interactions.sort_values("position")
    assert list(inter["rating"]) == [1.0, 5.0, 3.0, 2.0, 5.0] and list(inter["timestamp"]) == [5, 10, 10, 30, 40]
    assert res.interactions == 5 and data.meta["source"]["duplicates_dropped"] == 2


def test_same_log_same_output_and_other_row_order_only_moves_ties(tmp_cfg, tmp_path: Path, log_rows) -> None:
    a = prepare(tmp_cfg(**custom(write_log(tmp_path / "a" / "log.csv", log_rows))))
    b = prepare(tmp_cfg(**custom(write_log(tmp_path / "b" / "log.csv", log_rows)), data_dir=str(tmp_path / "d2")))
    assert a.fingerprint == b.fingerprint
    for name in ("interactions.csv", "items.csv", "users.csv"):
        assert (Path(a.path) / name).read_bytes() == (Path(b.path) / name).read_bytes()
    assert not prepare(tmp_cfg(**custom(tmp_path / "a" / "log.csv"))).created
    # the same events in another row order: the same users/items/ids; only tied events may reorder
    shuffled = [log_rows[i] for i in np.random.default_rng(5).permutation(len(log_rows))]
    c = PreparedData.load(prepare(tmp_cfg(**custom(write_log(tmp_path / "c" / "log.csv", shuffled)),
                                          data_dir=str(tmp_path / "d3"))).path)
    assert _sequences(c) == expected_sequences(shuffled)
    assert list(c.items["raw_id"]) == list(PreparedData.load(a.path).items["raw_id"])


def test_tsv_integer_ids_and_no_rating_column(tmp_cfg, tmp_path: Path) -> None:
    """A .tsv is tab-separated by default; integer ids keep numeric order (9 before 10); without a
    rating column every interaction counts 1 and the item texts say "interactions"."""
    rows = [(str(u), str(i), 100 * u + k, 0) for u in (10, 9, 11) for k, i in enumerate((30, 4, 200, 7, 12))]
    cols = {"user": "uid", "item": "iid", "timestamp": "t"}
    log = write_log(tmp_path / "log.tsv", rows, cols, sep="\t")
    data = PreparedData.load(prepare(tmp_cfg(**custom(log, interactions_columns=cols))).path)
    assert list(data.users["raw_id"]) == ["9", "10", "11"] and list(data.items["raw_id"]) == ["4", "7", "12", "30",
                                                                                                "200"]
    assert (data.interactions["rating"] == 1.0).all() and data.meta["source"]["has_rating"] is False
    assert item_text(TrainingView(data), 1) == "Item (template). 3 training interactions."
    with pytest.raises(DataError, match="no rating column") as err:
        prepare(tmp_cfg(**custom(log, interactions_columns=cols), min_rating=4))
    assert "min_rating" in err.value.where


def test_explicit_separator_and_raw_ids_kept_as_text(tmp_cfg, tmp_path: Path) -> None:
    rows = [(f"00{u}", f"007-{i}", 10 * i, 3) for u in range(1, 4) for i in range(5)]
    log = write_log(tmp_path / "log.txt", rows, sep=";")
    data = PreparedData.load(prepare(tmp_cfg(**custom(log), interactions_sep=";")).path)
    assert list(data.users["raw_id"]) == ["001", "002", "003"]  # "001" is an id, not the number 1
    assert data.items["raw_id"].iloc[0] == "007-0"


def test_item_metadata_feeds_the_item_texts(tmp_cfg, log_files) -> None:
    log, items = log_files
    data = PreparedData.load(prepare(tmp_cfg(**custom(log, items))).path)
    view = TrainingView(data)
    by_raw = dict(zip(data.items["raw_id"], data.items["item"]))
    meta = data.items.set_index("raw_id")
    assert meta.loc["B0001X", "title"] == "Gadget 1, Deluxe"  # the first row of a repeated id, commas kept
    assert "Z9999" not in meta.index  # metadata of an item nobody interacted with is dropped
    assert (meta.loc["B0001X", "year"], meta.loc["B0002X", "year"]) == (2001, 2002)
    assert pd.isna(meta.loc["B0006X", "year"]) and meta.loc["B0006X", "title"] == "Widget Number 6"
    text = item_text(view, by_raw["B0001X"])
    assert text.startswith("Item (template): Gadget 1, Deluxe, 2001. Genres: Audio, Electronics. ")
    assert "training ratings, mean" in text and "/5" not in text and text.endswith(" Made of part 1.")
    bare = item_text(view, by_raw["B0004X"])  # no metadata: only the counts
    assert re.fullmatch(r"Item \(template\)\. (\d+ training ratings, mean \d\.\d|No training interactions)\.", bare)
    # user texts call a log's items "items" and leave untitled ones out of "Best rated"
    texts = [user_text(view, u) for u in range(data.num_users)]
    assert all(" items." in t.split("Top genres")[0] and "films" not in t for t in texts)
    assert not any("; ;" in t or "Best rated: ;" in t or "Best rated: ." in t for t in texts)


def test_titles_with_a_year_and_no_year_column(tmp_cfg, tmp_path: Path) -> None:
    """MovieLens' own CSVs (movieId,title,genres with "Title (1995)"): the year comes from the title."""
    rows = [(f"u{u}", str(i), 100 * u + i, 4) for u in range(3) for i in range(1, 6)]
    log = write_log(tmp_path / "ratings.csv", rows)
    items = tmp_path / "movies.csv"
    items.write_text('movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
                     "2,Heat (1995),(no genres listed)\n", encoding="utf-8")
    cfg = tmp_cfg(**custom(log, interactions_columns={"user": "customer", "item": "product", "timestamp": "when",
                                                      "rating": "stars"}),
                  items_file=str(items), items_columns={"item": "movieId"})
    data = PreparedData.load(prepare(cfg).path)
    meta = data.items.set_index("raw_id")
    assert (meta.loc["1", "title"], meta.loc["1", "year"], meta.loc["1", "genres"]) == (
        "American President, The", 1995, "Comedy|Drama|Romance")
    assert (meta.loc["2", "title"], meta.loc["2", "genres"]) == ("Heat", "")


# ---------------------------------------------------------------------------- texts and the leakage audit
def test_leakage_audit_on_missing_and_shared_titles(tmp_cfg, log_files) -> None:
    log, items = log_files
    data = PreparedData.load(prepare(tmp_cfg(**custom(log, items))).path)
    assert (data.items["title"] == "").any() and data.items["title"].duplicated().any()
    texts = template_texts(data, "user", demographics=True)
    assert audit_user_texts(data, texts).verdict == "pass"
    # texts that name each user's held-out titles are caught, shared and missing titles notwithstanding
    title = dict(zip(data.items["item"], data.items["title"]))
    leaky = [f"Enjoys {title[data.held_out('test')[u][0]]} and {title[data.held_out('valid')[u][0]]}."
             for u in range(data.num_users)]
    audit = audit_user_texts(data, leaky)
    assert audit.verdict == "fail" and all(s.held_out.pairs > 0 for s in audit.splits)


def test_files_source_matches_string_ids(tmp_cfg, log_files, tmp_path: Path) -> None:
    """text_source: files on a log with string ids: keys are the raw ids as the log writes them."""
    log, items = log_files
    cfg = tmp_cfg(**custom(log, items))
    data = PreparedData.load(prepare(cfg).path)
    raw_users, raw_items = data.users["raw_id"].astype(str).tolist(), data.items["raw_id"].astype(str).tolist()
    (tmp_path / "u.json").write_text(json.dumps({r: f"Shopper {r} buys audio gear." for r in raw_users[:3]}))
    (tmp_path / "i.json").write_text(json.dumps({raw_items[0]: "A deluxe gadget.", "NOPE": "not an item"}))
    res = build_texts(tmp_cfg(**custom(log, items), text_source="files", user_text_file=str(tmp_path / "u.json"),
                              item_text_file=str(tmp_path / "i.json")), data, progress=False)
    js = res.to_dict()
    assert js["coverage"] == {"users": 3, "items": 1}
    assert res.texts.users[0] == f"Shopper {raw_users[0]} buys audio gear." and res.texts.items[1] == "A deluxe gadget."
    assert js["stats"]["unknown_ids"] == {"user": 0, "item": 1}


# ---------------------------------------------------------------------------- malformed files and configs
def _as_tabs(log: Path) -> None:
    log.write_text(log.read_text().replace(",", "\t"))


def _drop_timestamp_column(log: Path) -> None:
    lines = [line.split(",") for line in log.read_text().splitlines()]
    log.write_text("".join(",".join(p[:2] + p[3:]) + "\n" for p in lines))


def _text_timestamp(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    p = lines[3].split(",")
    lines[3] = ",".join([p[0], p[1], "last tuesday", p[3]])
    log.write_text("".join(lines))


def _no_final_newline(log: Path) -> None:
    log.write_bytes(log.read_bytes()[:-3])


def _cut_row(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    lines[6] = ",".join(lines[6].split(",")[:2]) + "\n"
    log.write_text("".join(lines))


def _empty_user(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    lines[8] = "," + lines[8].split(",", 1)[1]
    log.write_text("".join(lines))


def _bad_quote(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = '"Ax"y,' + lines[2].split(",", 1)[1]
    log.write_text("".join(lines))


def _header_only(log: Path) -> None:
    log.write_text(log.read_text().splitlines(keepends=True)[0])


MALFORMED = {
    # name: (break the log, line named in `where` or None, words of the message)
    "wrong separator": (_as_tabs, 1, "the file is not comma-separated"),
    "missing column": (_drop_timestamp_column, 1, "No column 'when' (the timestamp column)"),
    "non-numeric timestamp": (_text_timestamp, 4, "non-numeric value 'last tuesday'"),
    "no final newline": (_no_final_newline, None, "truncated"),
    "cut row": (_cut_row, 7, "2 fields, expected 4"),
    "empty id": (_empty_user, 9, "empty id"),
    "bad quoting": (_bad_quote, 3, "Malformed line"),
    "header only": (_header_only, None, "no rows"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_logs_are_clear_errors_and_write_nothing(tmp_cfg, log_files, case: str) -> None:
    log, _ = log_files
    breaker, line, words = MALFORMED[case]
    breaker(log)
    cfg = tmp_cfg(**custom(log))
    with pytest.raises(DataError) as err:
        prepare(cfg)
    e = err.value
    assert words in e.what and e.fix, str(e)
    assert e.where == (f"{log}, line {line}" if line is not None else e.where) and e.where.startswith(str(log))
    if case == "no final newline":
        assert e.where.startswith(f"{log}, line ")
    _no_processed_output(cfg)


@pytest.mark.parametrize("case, change, words", [
    ("missing item column", lambda s: s.replace("asin,", "sku,", 1), "No column 'asin' (the item column)"),
    ("explicit column missing", lambda s: s.replace(",about", ",notes", 1), "No column 'about' (the text column)"),
    ("bad year", lambda s: s.replace("2001-05-01", "soon", 1), "'soon', not a year"),
    ("cut row", lambda s: s.replace('"Gadget 1, Deluxe",2001-05-01', '"Gadget 1, Deluxe"', 1), "4 fields, expected 5"),
])
def test_malformed_item_files_are_clear_errors(tmp_cfg, log_files, case, change, words) -> None:
    log, items = log_files
    items.write_text(change(items.read_text()))
    cfg = tmp_cfg(**custom(log, items))
    with pytest.raises(DataError) as err:
        prepare(cfg)
    assert words in err.value.what and err.value.where.startswith(f"{items}, line "), str(err.value)
    _no_processed_output(cfg)


def test_missing_log_file_and_config_errors(tmp_cfg, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="interactions_file does not exist"):
        prepare(tmp_cfg(dataset="custom", interactions_file=str(tmp_path / "nope.csv")))
    with pytest.raises(ConfigError, match="interactions_file: set it"):
        tmp_cfg(dataset="custom")
    with pytest.raises(ConfigError, match="need dataset: custom"):
        tmp_cfg(interactions_file="x.csv")
    with pytest.raises(ConfigError, match="not data_path"):
        tmp_cfg(dataset="custom", interactions_file="x.csv", data_path="somewhere")
    with pytest.raises(ConfigError, match="'user', 'item', 'timestamp' or 'rating'"):
        tmp_cfg(dataset="custom", interactions_file="x.csv", interactions_columns={"person": "p"})
    with pytest.raises(ConfigError, match="non-empty field separator"):
        tmp_cfg(dataset="custom", interactions_file="x.csv", interactions_sep="")
    for alias in ("tab", "\\t", "\t"):
        assert tmp_cfg(dataset="custom", interactions_file="x.csv", interactions_sep=alias).interactions_sep == "\t"


# ---------------------------------------------------------------------------- the whole pipeline
def test_generic_log_trains_and_evaluates_on_the_quick_profile(tmp_path: Path, capsys, one_thread) -> None:
    """prepare (CLI), template texts + leakage audit (CLI), 1 epoch per stage of the quick profile, evaluation.
    The catalogue is larger than the other tests' so that evaluation's 100 sampled negatives exist."""
    log_rows = synthetic_log(n_users=40, n_items=160, per_user=12, seed=7)
    log = write_log(tmp_path / "in" / "events.csv", log_rows)
    items = write_items(tmp_path / "in" / "meta.csv", synthetic_items(160))
    keys = read_yaml(CONFIG_DIR / "quick.yaml") | custom(log, items) | {
        "epochs_per_stage": 1, "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
        "reports_dir": str(tmp_path / "reports"), "allow_download": False}
    config = tmp_path / "custom_quick.yaml"
    config.write_text(yaml.safe_dump(keys, sort_keys=False))

    assert main(["prepare", "--config", str(config), "--json"]) == 0
    prep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_users = len(expected_sequences(log_rows))
    assert (prep["users"], prep["valid"], prep["test"], prep["source_format"]) == (n_users, n_users, n_users, "csv")

    assert main(["texts", "--config", str(config), "--json"]) == 0
    texts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (texts["source"], texts["users"], texts["items"], texts["complete"]) == ("template", n_users,
                                                                                   prep["items"], True)
    assert texts["leakage"]["verdict"] == "pass"

    cfg = load_config(config)
    result, ws = train(cfg, tmp_path / "runs" / "custom", progress=False)
    assert result.complete and ws.data.num_items == prep["items"]
    assert ws.texts.item_texts[1].startswith("Item (template)")
    ev = evaluate_run(tmp_path / "runs" / "custom")
    for split in ("valid", "test"):
        for model in ("ur4rec", "sasrec"):
            ndcg = ev["full"][split][model]["metrics"]["ndcg@10"]
            assert 0.0 <= ndcg <= 1.0 and math.isfinite(ndcg), (split, model, ndcg)
    assert (tmp_path / "runs" / "custom" / "eval.md").is_file()
