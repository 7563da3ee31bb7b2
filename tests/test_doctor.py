"""``ur4rec doctor`` on a healthy run, a NaN weight, a changed config, a truncated file; and the
reproductions (c)-(e) of the NaN diagnosis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.test_training import small  # noqa: F401  (fixture)
from ur4rec.cli import main
from ur4rec.diagnostics.doctor import diagnose
from ur4rec.diagnostics.reproductions import (
    reproduce_inference_tensor_backward,
    reproduce_stale_checkpoint,
    skipped_batch_bias,
)
from ur4rec.pipeline import train


@pytest.fixture
def healthy_run(small, tmp_path: Path, monkeypatch):  # noqa: F811
    ws = small(epochs_per_stage=1)
    run = tmp_path / "run"
    train(ws.cfg, run, workspace=ws, progress=False)
    # the doctor rebuilds the workspace from the config: hand it this one (random test texts)
    monkeypatch.setattr("ur4rec.diagnostics.doctor.build_workspace", lambda cfg: small(**_overrides(cfg, ws.cfg)))
    return run, ws


def _overrides(cfg, base) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if base.to_dict().get(k) != v}


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_healthy_run_exits_0(healthy_run, capsys) -> None:
    run, _ = healthy_run
    assert main(["doctor", "--run-dir", str(run), "--json"]) == 0
    out = _last_json(capsys)
    assert out["healthy"] and out["sweep"] and all(r["nan"] == 0 for r in out["sweep"])


def test_nan_weight_exits_1_naming_the_tensor(healthy_run, tmp_path: Path, capsys) -> None:
    run, _ = healthy_run
    ck = torch.load(run / "final.pt", weights_only=False)
    ck["model"]["retriever.router.0.weight"][3, 3] = float("nan")
    torch.save(ck, tmp_path / "nan.pt")
    assert main(["doctor", "--checkpoint", str(tmp_path / "nan.pt"), "--config", str(run / "config.yaml"),
                 "--json"]) == 1
    out = _last_json(capsys)
    bad = [c for c in out["checks"] if not c["ok"]]
    assert bad and "retriever.router.0.weight" in bad[0]["detail"]


def test_nan_checkpoint_without_a_config_is_a_finding_not_a_failure(healthy_run, tmp_path: Path, capsys) -> None:
    run, _ = healthy_run
    ck = torch.load(run / "final.pt", weights_only=False)
    ck["model"]["sasrec.item_embedding.weight"][5, 0] = float("inf")
    torch.save(ck, tmp_path / "inf.pt")
    assert main(["doctor", "--checkpoint", str(tmp_path / "inf.pt"), "--json"]) == 1  # not 2: the file loads
    out = _last_json(capsys)
    assert out["checks"][0] == {"check": "checkpoint loads", "ok": True, "detail": str(tmp_path / "inf.pt")}
    assert [c["check"] for c in out["checks"] if not c["ok"]] == ["weights finite and sane"]
    assert "sasrec.item_embedding.weight" in out["checks"][1]["detail"]


def test_changed_config_exits_1_listing_keys(healthy_run, tmp_path: Path, capsys) -> None:
    run, _ = healthy_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(sasrec_dropout=0.0, sasrec_hidden_dim=32)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["doctor", "--checkpoint", str(run / "final.pt"), "--config", str(tmp_path / "other.yaml"),
                 "--json"]) == 1
    detail = " ".join(c["detail"] for c in _last_json(capsys)["checks"] if not c["ok"])
    assert "sasrec_dropout" in detail and "sasrec_hidden_dim" in detail


def test_truncated_checkpoint_exits_2_with_a_clear_message(healthy_run, tmp_path: Path, capsys) -> None:
    run, _ = healthy_run
    raw = (run / "final.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 3])
    assert main(["doctor", "--checkpoint", str(tmp_path / "cut.pt"), "--config", str(run / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err


def test_missing_run_and_bad_config_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["doctor", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    (tmp_path / "run").mkdir()
    shutil.copy(__file__, tmp_path / "run" / "final.pt")
    (tmp_path / "run" / "config.yaml").write_text("seed: [unclosed\n")
    assert main(["doctor", "--run-dir", str(tmp_path / "run")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_diagnose_names_the_module_when_scores_go_nan(healthy_run) -> None:
    run, ws = healthy_run
    ck = torch.load(run / "final.pt", weights_only=False)
    ws.model.load_state_dict(ck["model"])
    ws.model.retriever.log_temperature.data.fill_(float("-inf"))  # scores become inf/nan at run time
    torch.save({**ck, "model": ws.model.state_dict()}, run / "final.pt")
    verdict = diagnose(run_dir=str(run), workspace=ws)
    assert not verdict.healthy


def test_inference_tensor_reproduction() -> None:
    r = reproduce_inference_tensor_backward()
    assert r["naive_is_inference"] and "Inference tensors cannot be saved for backward" in r["naive_error"]
    assert not r["workbench_is_inference"] and r["workbench_backward_ok"]


def test_stale_checkpoint_reproduction(tmp_path: Path) -> None:
    r = reproduce_stale_checkpoint(str(tmp_path))
    assert r["naive_loads"] and r["workbench_refuses"] and set(r["differences"]) == {"sasrec_dropout"}


def test_skipping_nan_batches_biases_the_metric() -> None:
    # short-history users do worse here; skipping their batches inflates the mean
    lengths = np.array([5] * 256 + [80] * 256)
    metric = np.where(lengths < 50, 0.02, 0.10)
    bias = skipped_batch_bias(metric, lengths, max_seq_len=50, batch_size=256)
    assert bias["all users"] == {"users": 512, "mean": pytest.approx(0.06)}
    assert bias["NaN batches skipped (batch 256)"] == {"users": 256, "mean": pytest.approx(0.10)}
    assert bias["NaN users dropped"]["mean"] == pytest.approx(0.10)
