"""The SASRec experiment tools in bench/: variant parsing and the code patches they train with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sasrec_patches import PATCHES  # noqa: E402
from bench.sasrec_variants import parse_variant  # noqa: E402
from bench.text_ablation_reasons import demographics_probe, ridge_cv_predict  # noqa: E402
from ur4rec.evaluation.ablations import (  # noqa: E402
    text_ablation_curve,
    text_ablation_reasons_table,
    text_ablation_table,
)


def test_parse_variant() -> None:
    assert parse_variant("lr:sasrec_lr=0.002,patience=10") == ("lr", {"sasrec_lr": "0.002", "patience": "10"})
    for bad in ("no-colon", ":sasrec_lr=0.002", "lr:sasrec_lr"):
        with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
            parse_variant(bad)


def _train(cmd: list[str], run_dir: Path, data_dir: Path) -> list[dict]:
    """``ur4rec train`` (or a patched one) on the quick profile, pretrain_sasrec for 2 epochs: its history."""
    args = ["--config", str(REPO / "configs" / "quick.yaml"), "--set", f"data_dir={data_dir}",
            "--set", "stages=[pretrain_sasrec]", "--set", "epochs_per_stage=2", "--run-dir", str(run_dir), "--json"]
    out = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def quick_default(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("bench")
    history = _train([str(Path(sys.executable).with_name("ur4rec")), "train"], root / "default", root / "data")
    return root, history


@pytest.mark.parametrize("patch", sorted(PATCHES))
def test_patch_trains_sasrec_and_changes_it(patch: str, quick_default: tuple[Path, list[dict]]) -> None:
    """Each patch trains pretrain_sasrec on the quick profile to a finite validation metric, and its
    history differs from the unpatched run's (the patch is in effect): the architecture patches change
    the training loss, the EMA patch the validated weights."""
    root, default = quick_default
    history = _train([sys.executable, str(REPO / "bench" / "sasrec_patches.py"), patch], root / patch, root / "data")
    assert len(history) == 2 and all(0.0 <= r["valid_ndcg@10"] <= 1.0 for r in history)
    trace = [(r["loss_sasrec"], r["valid_ndcg@10"]) for r in history]
    assert trace != [(r["loss_sasrec"], r["valid_ndcg@10"]) for r in default]


def test_text_ablation_runs_each_row_resumes_and_aggregates(tmp_path: Path) -> None:
    """bench/text_ablation.py on the quick profile (1 epoch a stage, one seed, two jobs): every row
    writes its ablation.json, the aggregate compares each row with ID-only SASRec on the same users, the
    cold-start curve's whole-history point is the row's test score, late fusion starts from the seed's
    sasrec run, and a second call trains nothing and gives the same table."""
    cmd = [sys.executable, str(REPO / "bench" / "text_ablation.py"), "--root", str(tmp_path / "runs"),
           "--config", str(REPO / "configs" / "quick.yaml"), "--set", f"data_dir={tmp_path / 'data'}",
           "--set", "epochs_per_stage=1", "--set", "sasrec_epochs=1", "--rows", "sasrec", "item-init",
           "late-fusion", "--seeds", "2020", "--jobs", "2", "--threads", "1", "--results", str(tmp_path), "--json"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert list(rows) == ["sasrec", "item-init", "late-fusion"] and result["threads"] == [1]
    for name in ("item-init", "late-fusion"):
        assert rows[name]["paired_vs_sasrec"]["users"] == 120  # the quick profile's users
    assert result["winner_on_validation"] == max(rows, key=lambda r: rows[r]["valid ndcg@10"]["mean"])
    for name in ("sasrec", "item-init"):
        curve = rows[name]["cold_start_curve"]
        assert list(curve) == ["1", "2", "3", "5", "10", "all"]
        assert curve["all"]["mean"] == pytest.approx(rows[name]["test ndcg@10"]["mean"])
    assert "cold_start_curve" not in rows["late-fusion"]  # its user text sees the whole history
    record = json.loads((tmp_path / "runs" / "late-fusion-2020" / "ablation.json").read_text())
    assert record["sasrec_from"] == str(tmp_path / "runs" / "sasrec-2020")
    assert (tmp_path / "text_ablation.md").read_text().count("| item-init |") == 3  # table, curve, segments
    table = text_ablation_table(tmp_path / "text_ablation.json")  # what notebook 05 shows
    assert list(table.index) == list(rows)
    assert table["chosen on validation"].tolist() == [r == result["winner_on_validation"] for r in rows]
    curve = text_ablation_curve(tmp_path / "text_ablation.json")
    assert list(curve.index) == ["sasrec", "item-init"] and list(curve.columns) == ["1", "2", "3", "5", "10", "all"]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and "training" not in again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["rows"] == rows


def test_demographics_probe_finds_a_planted_signal_and_not_noise() -> None:
    """The ridge probe of text_ablation_reasons: out-of-fold, so 64 noise dimensions for 400 users score
    no better than the majority rate (gender) and R² ≤ ~0 (age), while an attribute written into one
    dimension is recovered; users without the attribute are left out."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 400
    gender = np.where(rng.random(n) < 0.3, "F", "M")
    age = rng.integers(18, 70, n).astype(float)
    users = pd.DataFrame({"user": np.arange(n), "age": age, "gender": gender})
    noise = rng.normal(size=(n, 64))
    chance = demographics_probe(users, n, noise)
    assert chance["gender_majority"] == pytest.approx(max((gender == "F").mean(), (gender == "M").mean()))
    assert chance["gender_accuracy"] <= chance["gender_majority"] + 0.03 and chance["age_r2"] < 0.03
    planted = noise.copy()
    planted[:, 0] = (gender == "F") + 0.1 * rng.normal(size=n)
    planted[:, 1] = (age - age.mean()) / age.std() + 0.3 * rng.normal(size=n)
    found = demographics_probe(users, n, planted)
    assert found["gender_accuracy"] > 0.95 and found["age_r2"] > 0.8
    users.loc[:49, "gender"] = None  # unknown: left out, not counted as either
    assert demographics_probe(users, n, planted)["gender_accuracy"] > 0.95
    line = 2.0 * np.arange(50.0) + 1.0
    assert ridge_cv_predict(np.arange(50.0)[:, None], line) == pytest.approx(line, abs=0.5)


def test_text_ablation_reasons_reads_the_trained_runs(tmp_path: Path) -> None:
    """bench/text_ablation_reasons.py on a quick-profile ablation (sasrec, item-init and late fusion, one
    seed): it trains nothing, measures each SASRec-family row's validation score as the ablation did,
    bounded R² and cosines, late fusion's sampled scores on training and held-out targets, and notebook
    05's table shows one row per SASRec-family row."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    train = [sys.executable, str(REPO / "bench" / "text_ablation.py"), "--root", str(runs),
             "--config", str(REPO / "configs" / "quick.yaml"), "--set", f"data_dir={data}", "--set", "sasrec_epochs=1",
             "--set", "epochs_per_stage=1", "--rows", "sasrec", "item-init", "late-fusion", "--seeds", "2020",
             "--jobs", "1", "--threads", "1", "--results", str(tmp_path), "--json"]
    out = subprocess.run(train, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    ablation = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    before = sorted(p.stat().st_mtime_ns for p in runs.rglob("*.pt"))
    cmd = [sys.executable, str(REPO / "bench" / "text_ablation_reasons.py"), "--root", str(runs), "--seeds", "2020",
           "--results", str(tmp_path), "--json"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert list(rows) == ["sasrec", "item-init", "late-fusion"]
    assert sorted(p.stat().st_mtime_ns for p in runs.rglob("*.pt")) == before  # nothing trained or rewritten
    sampled = rows.pop("late-fusion")["2020"]["sampled_pretrain_retriever"]
    assert set(sampled) == {"valid", "train", "train_named"}
    assert sampled["train"]["users"] + sampled["train_named"]["users"] == sampled["valid"]["users"] == 120
    assert all(0.0 <= v[k] <= 1.0 for v in sampled.values() if v["users"]
               for k in ("scores", "sasrec_scores", "retriever_scores"))
    for name, per_seed in rows.items():
        rec = per_seed["2020"]
        assert rec["valid_ndcg@10"] == pytest.approx(ablation[name]["valid ndcg@10"]["mean"])
        assert -1.0 < rec["text_r2"] <= 1.0
        assert 0.5 <= rec["gender_majority"] <= 1.0 and 0.0 <= rec["gender_accuracy"] <= 1.0 and rec["age_r2"] <= 1.0
    assert -1.0 <= rows["item-init"]["2020"]["init_cosine"] <= 1.0 and "init_cosine" not in rows["sasrec"]["2020"]
    table = text_ablation_reasons_table(tmp_path / "text_ablation_reasons.json")
    assert list(table.index) == ["sasrec", "item-init"]
    assert table.loc["item-init", "cosine to the text start"] == pytest.approx(rows["item-init"]["2020"]["init_cosine"],
                                                                            abs=1e-4)
