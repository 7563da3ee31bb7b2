from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import write_grouplens, write_recbole
from ur4rec.cli import main
from ur4rec.data import PreparedData, locate_ml100k, prepare
from ur4rec.data.sources import recbole_wheel_folder
from ur4rec.errors import DataError
from ur4rec.plots.data import split_sanity_checks


def _processed(cfg) -> list[Path]:
    root = cfg.path("data_dir") / "processed"
    return sorted(p for p in root.rglob("*") if p.is_dir()) if root.exists() else []


def test_both_formats_give_identical_prepared_data(tmp_cfg, grouplens_dir: Path, recbole_dir: Path) -> None:
    a = PreparedData.load(prepare(tmp_cfg(data_path=str(grouplens_dir))).path)
    b = PreparedData.load(prepare(tmp_cfg(data_path=str(recbole_dir), data_dir=str(recbole_dir.parent / "d2"))).path)
    assert a.interactions.equals(b.interactions)
    assert a.items[["item", "raw_id", "title", "genres"]].equals(b.items[["item", "raw_id", "title", "genres"]])
    assert list(a.items["year"]) == list(b.items["year"])
    assert a.items["title"].iloc[0] == "Film 1"  # the year is stripped from GroupLens titles


def test_leave_one_out_holds_out_each_users_latest(tmp_cfg, grouplens_dir: Path, synthetic: dict) -> None:
    res = prepare(tmp_cfg(data_path=str(grouplens_dir)))
    data = PreparedData.load(res.path)
    n_users = len(synthetic["users"])
    assert (res.users, res.valid, res.test) == (n_users, n_users, n_users)
    assert res.train == len(synthetic["inter"]) - 2 * n_users
    assert split_sanity_checks(data)["passed"].all()
    inter = data.interactions
    last = inter.loc[inter.groupby("user")["position"].idxmax()]
    assert (last["split"] == "test").all()
    # history for test = train + valid, and never contains the test item
    for u, (hist, test) in enumerate(zip(data.history("test"), data.held_out("test"))):
        assert len(hist) == len(data.train_sequences()[u]) + 1
        assert test[0] not in hist[-1:]


def test_item_ids_are_contiguous_with_zero_padding(tmp_cfg, grouplens_dir: Path) -> None:
    data = PreparedData.load(prepare(tmp_cfg(data_path=str(grouplens_dir))).path)
    assert sorted(data.interactions["item"].unique()) == list(range(1, data.num_items + 1))
    assert list(data.items["item"]) == list(range(1, data.num_items + 1))
    assert data.item_popularity()[0] == 0


def test_ties_are_broken_independently_of_file_order(tmp_path: Path, tmp_cfg, synthetic: dict) -> None:
    shuffled = dict(synthetic, inter=list(reversed(synthetic["inter"])))
    a = PreparedData.load(prepare(tmp_cfg(data_path=str(write_grouplens(tmp_path / "a", synthetic)))).path)
    b = PreparedData.load(prepare(tmp_cfg(data_path=str(write_grouplens(tmp_path / "b", shuffled)),
                                          data_dir=str(tmp_path / "d2"))).path)
    assert a.interactions.equals(b.interactions)


def test_ratio_split_and_min_rating(tmp_cfg, grouplens_dir: Path, synthetic: dict) -> None:
    res = prepare(tmp_cfg(data_path=str(grouplens_dir), split="ratio", split_ratios=[0.6, 0.2, 0.2]))
    data = PreparedData.load(res.path)
    assert split_sanity_checks(data)["passed"].all()
    assert res.valid >= res.users and res.test >= res.users
    res4 = prepare(tmp_cfg(data_path=str(grouplens_dir), min_rating=4, min_user_interactions=3))
    kept = [r for r in synthetic["inter"] if r[2] >= 4]
    assert res4.interactions <= len(kept) and (PreparedData.load(res4.path).interactions["rating"] >= 4).all()


def test_rerun_does_nothing_and_says_so(tmp_cfg, grouplens_dir: Path, capsys) -> None:
    cfg = tmp_cfg(data_path=str(grouplens_dir))
    first = prepare(cfg)
    stamp = (Path(first.path) / "interactions.csv").stat().st_mtime_ns
    second = prepare(cfg)
    assert first.created and not second.created and first.fingerprint == second.fingerprint
    assert (Path(first.path) / "interactions.csv").stat().st_mtime_ns == stamp
    args = ["prepare", "--set", f"data_path={grouplens_dir}", "--set", f"data_dir={cfg.data_dir}"]
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_changed_source_changes_fingerprint(tmp_cfg, grouplens_dir: Path) -> None:
    cfg = tmp_cfg(data_path=str(grouplens_dir))
    fp1 = prepare(cfg).fingerprint
    with open(grouplens_dir / "u.data", "a") as fh:
        fh.write("1\t30\t5\t990000000\n")
    assert prepare(cfg).fingerprint != fp1


@pytest.mark.skipif(recbole_wheel_folder() is None, reason="make setup installs recbole==1.2.1 --no-deps")
def test_ml100k_counts_from_the_recbole_wheel(tmp_cfg, capsys) -> None:
    cfg = tmp_cfg()
    assert main(["prepare", "--json", "--set", f"data_dir={cfg.data_dir}", "--set", "allow_download=false"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["users"], out["items"], out["interactions"]) == (943, 1682, 100000)
    assert (out["valid"], out["test"], out["train"]) == (943, 943, 100000 - 2 * 943)
    assert out["source"] == "recbole_wheel" and len(out["fingerprint"]) == 64 and Path(out["path"]).is_dir()
    data = PreparedData.load(out["path"])
    assert split_sanity_checks(data)["passed"].all()
    assert data.items.loc[data.items["raw_id"] == 1, "title"].item() == "Toy Story"


# ---------------------------------------------------------------------------- bad input
def _assert_no_output(cfg) -> None:
    root = cfg.path("data_dir") / "processed"
    leftovers = [p for p in root.rglob("*")] if root.exists() else []
    assert not [p for p in leftovers if p.name == "meta.json" or ".tmp" in p.name], leftovers


def test_missing_dataset_says_how_to_get_it(tmp_cfg, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("ur4rec.data.sources.recbole_wheel_folder", lambda: None)
    cfg = tmp_cfg(allow_download=False)
    with pytest.raises(DataError) as err:
        prepare(cfg)
    assert "not found" in str(err.value) and "u.data" in str(err.value) and "recbole" in str(err.value)
    _assert_no_output(cfg)


def test_explicit_path_without_files_is_an_error(tmp_cfg, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No MovieLens-100K files"):
        locate_ml100k("auto", tmp_path / "empty", tmp_path / "data", allow_download=False)


@pytest.mark.parametrize("fmt", ["grouplens", "recbole"])
def test_truncated_interaction_file_names_line_and_writes_nothing(tmp_cfg, tmp_path: Path, synthetic, fmt) -> None:
    folder = (write_grouplens if fmt == "grouplens" else write_recbole)(tmp_path / fmt, synthetic)
    name = "u.data" if fmt == "grouplens" else "ml-100k.inter"
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2 - 3])  # cut mid-line
    cfg = tmp_cfg(data_path=str(folder))
    with pytest.raises(DataError) as err:
        prepare(cfg)
    assert name in str(err.value) and "line" in str(err.value) and "truncated" in str(err.value)
    _assert_no_output(cfg)


def test_corrupt_value_is_named(tmp_cfg, grouplens_dir: Path) -> None:
    text = (grouplens_dir / "u.data").read_text().splitlines()
    text[3] = text[3].replace("\t", "\tx", 1)
    (grouplens_dir / "u.data").write_text("\n".join(text) + "\n")
    cfg = tmp_cfg(data_path=str(grouplens_dir))
    with pytest.raises(DataError, match="non-numeric"):
        prepare(cfg)
    _assert_no_output(cfg)


def test_binary_garbage_is_a_clear_error(tmp_cfg, grouplens_dir: Path) -> None:
    (grouplens_dir / "u.user").write_bytes(b"\xff\xfe\x00garbage\x81\n")
    with pytest.raises(DataError, match="u.user"):
        prepare(tmp_cfg(data_path=str(grouplens_dir)))


def test_truncated_item_file_is_detected(tmp_cfg, grouplens_dir: Path) -> None:
    lines = (grouplens_dir / "u.item").read_text(encoding="latin-1").splitlines(keepends=True)
    (grouplens_dir / "u.item").write_text("".join(lines[:10]), encoding="latin-1")
    with pytest.raises(DataError, match="item file looks truncated"):
        prepare(tmp_cfg(data_path=str(grouplens_dir)))


def test_filters_that_leave_no_users(tmp_cfg, grouplens_dir: Path) -> None:
    cfg = tmp_cfg(data_path=str(grouplens_dir), min_user_interactions=500)
    with pytest.raises(DataError, match="left no users"):
        prepare(cfg)
    _assert_no_output(cfg)


def test_failed_rebuild_keeps_the_previous_output(tmp_cfg, grouplens_dir: Path, monkeypatch) -> None:
    cfg = tmp_cfg(data_path=str(grouplens_dir))
    good = prepare(cfg)
    before = sorted(p.name for p in Path(good.path).iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sys.modules["ur4rec.data.prepare"], "atomic_write_json", boom)
    with pytest.raises(RuntimeError):
        prepare(cfg, force=True)
    assert sorted(p.name for p in Path(good.path).iterdir()) == before
    assert not [p for p in Path(good.path).parent.iterdir() if p.name.startswith(".")]
    assert PreparedData.load(good.path).meta["fingerprint"] == good.fingerprint


def test_training_prefixes_give_each_target_its_own_sample_read_at_the_last_position() -> None:
    import numpy as np

    from ur4rec.data.batching import training_prefixes

    inputs, targets, owners = training_prefixes([np.arange(1, 8), np.arange(20, 23)], 4)
    assert inputs.shape == targets.shape == (6 + 2, 4)
    assert (targets[:, :-1] == 0).all()  # the loss is on the last position only
    assert targets[:, -1].tolist() == [2, 3, 4, 5, 6, 7, 21, 22]
    assert owners.tolist() == [0] * 6 + [1] * 2
    # the input is the target's <= max_len predecessors, left-padded, most recent last
    assert inputs[0].tolist() == [0, 0, 0, 1]
    assert inputs[3].tolist() == [1, 2, 3, 4]
    assert inputs[5].tolist() == [3, 4, 5, 6]  # cut to max_len
    assert inputs[7].tolist() == [0, 0, 20, 21]


def test_training_windows_use_every_target_once_with_or_without_overlap() -> None:
    import numpy as np

    from ur4rec.data.batching import training_windows

    seq = np.arange(1, 13)
    for stride in (None, 4, 3, 1):
        inputs, targets, owners = training_windows([seq], 4, stride)
        assert sorted(t for t in targets.flatten().tolist() if t) == list(range(2, 13)), stride
        for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
            for pos, t in enumerate(row_t):
                if t:  # the target follows its input, and sees >= max_len - stride + 1 items (all it has, if fewer)
                    assert row_in[pos] == t - 1
                    seen = sum(1 for x in row_in[: pos + 1] if x)
                    assert seen >= min(4 - (stride or 4) + 1, t - 1), (stride, t, seen)
        assert owners.tolist() == [0] * len(inputs)
    # owners say which sequence each window came from (the trainer samples negatives per user)
    inputs, targets, owners = training_windows([np.arange(1, 4), np.arange(10, 22), np.arange(30, 32)], 4, 2)
    for row_in, row_t, owner in zip(inputs.tolist(), targets.tolist(), owners.tolist()):
        items = {x for x in row_in + row_t if x}
        assert items <= set(range(1, 4)) if owner == 0 else items <= set(range(10, 22)) if owner == 1 \
            else items <= set(range(30, 32)), (owner, items)
    assert sorted(set(owners.tolist())) == [0, 1, 2]


def test_grouped_prefixes_cover_every_target_once_with_its_prefix_in_the_last_columns() -> None:
    """``training_prefixes(group=g)``: one sample per g consecutive targets (cut from the end, so only
    a sequence's earliest group may be short); the input is the group's last target's prefix and
    each target sits in the column after its own last predecessor, seeing all of them when it has
    <= max_len, else at least max_len - g + 1."""
    import numpy as np

    from ur4rec.data.batching import prefix_target_positions, training_prefixes

    seqs = [np.arange(1, 13), np.arange(20, 23), np.arange(40, 42)]
    for group in (1, 2, 3, 4):
        inputs, targets, owners = training_prefixes(seqs, 4, group)
        flat = sorted(t for t in targets.flatten().tolist() if t)
        assert flat == sorted([*range(2, 13), 21, 22, 41]), group  # every target exactly once
        assert (targets[:, :-group] == 0).all(), group  # the loss is on the last `group` columns only
        for row_in, row_t, owner in zip(inputs.tolist(), targets.tolist(), owners.tolist()):
            seq = seqs[owner].tolist()
            for pos, t in enumerate(row_t):
                if t:
                    k = seq.index(t)  # the target's index in its sequence: k predecessors
                    seen = [x for x in row_in[: pos + 1] if x]
                    assert seen == seq[k - len(seen):k], (group, t)  # its most recent predecessors, in order
                    assert len(seen) >= min(k, 4 - group + 1), (group, t, seen)
        last = prefix_target_positions(seqs, group)
        assert last.tolist() == [seqs[o].tolist().index(r[-1]) for o, r in zip(owners.tolist(), targets.tolist())]
    # group 1 is the per-target layout, in time order
    one_in, one_t, _ = training_prefixes(seqs, 4)
    assert one_t[:, -1].tolist() == [*range(2, 13), 21, 22, 41]
    with pytest.raises(ValueError, match="group"):
        training_prefixes(seqs, 4, 5)
