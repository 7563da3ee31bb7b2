"""Exact resume: a real ``ur4rec train`` process is SIGKILLed at a chosen moment (``UR4REC_KILL_AT``,
see ``ur4rec.training.checkpoint``), then ``ur4rec train --resume`` finishes the run, and everything
must equal one uninterrupted run with the same seed and thread count: every history value but the
timings, the final model's every tensor, and eval.json's full, sampled, paired_test and
final_selection. The quick config's stages and epochs (4 stages x 2 epochs) on a tiny synthetic
dataset, one thread; the kill points are every epoch end (just before and just after ``last.pt``
is written, so every stage boundary too), one mid-epoch batch, a fresh run before its first
``last.pt``, final-model selection, and after ``final.pt``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import synthetic_ml, write_grouplens
from ur4rec.cli import main
from ur4rec.config import CONFIG_DIR, load_config
from ur4rec.pipeline import ensure_trained

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["pretrain_sasrec", "pretrain_retriever", "joint_finetune", "end_to_end"]  # configs/quick.yaml
EPOCHS = 2  # quick.yaml's epochs_per_stage (patience 2: no stage stops early)
EPOCH_ENDS = [(s, e) for s in STAGES for e in range(EPOCHS)]
POINTS = (["before_first_last", "mid_epoch:joint_finetune:0:2"]
          + [f"epoch_end:{s}:{e}:{when}" for s, e in EPOCH_ENDS for when in ("before_last", "after_last")]
          + ["selection", "after_final"])
EVAL_KEYS = ("full", "sampled", "paired_test", "final_selection")


@contextlib.contextmanager
def one_thread():
    """torch's float sums depend on the thread count: run in process as the subprocesses do (1 thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    folder = write_grouplens(root / "gl", synthetic_ml(n_users=24, n_items=40, per_user=14))
    overrides = {"data_path": folder, "data_dir": root / "data", "runs_dir": root / "runs",
                 "reports_dir": root / "reports", "allow_download": "false", "batch_size": 8, "max_seq_len": 8,
                 "sampled_negatives": 10, "rerank_top_r": 10}
    args = ["--config", str(CONFIG_DIR / "quick.yaml")]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return root, args


def train_process(args: list[str], run_dir: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UR4REC_KILL_AT"}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}
    if kill_at:
        env["UR4REC_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "ur4rec.cli", "train", *args, "--run-dir", str(run_dir), "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def evaluate(run_dir: Path) -> dict:
    with one_thread(), contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", "--run-dir", str(run_dir), "--json"]) == 0
    results = json.loads((run_dir / "eval.json").read_text())
    return {k: results[k] for k in EVAL_KEYS}


def history(run_dir: Path) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def reference(setup):
    root, args = setup
    run_dir = root / "uninterrupted"
    done = train_process(args, run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["environment"]["torch_threads"] == 1
    return {"history": history(run_dir), "model": checkpoint(run_dir / "final.pt")["model"],
            "eval": evaluate(run_dir)}


@pytest.fixture(scope="module")
def killed(setup, reference, request):
    """The killed process of every selected kill point, started in the background as soon as the
    reference run has filled the data and text caches, and awaited by each test: the processes'
    start-up (importing torch) overlaps the tests' in-process resumes. Each is one thread."""
    root, args = setup
    mine = [item for item in request.session.items if getattr(item, "module", None) is request.module]  # not nbval
    points = [item.callspec.params["point"] for item in mine
              if hasattr(item, "callspec") and "point" in item.callspec.params]
    pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1))
    futures = {p: pool.submit(train_process, args, root / p.replace(":", "_"), p) for p in points}
    yield futures
    pool.shutdown(cancel_futures=True)


def check_killed_state(point: str, run_dir: Path) -> None:
    """The process died where it was told to: what is on disk says so."""
    lines = len((run_dir / "history.jsonl").read_text().splitlines()) if (run_dir / "history.jsonl").exists() else 0
    last = checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
    if point == "before_first_last":
        assert (run_dir / "config.yaml").is_file() and last is None and lines == 0
    elif point.startswith("mid_epoch:"):
        _, stage, epoch, _ = point.split(":")
        assert lines == EPOCH_ENDS.index((stage, int(epoch))) and last["history_lines"] == lines
    elif point.startswith("epoch_end:"):
        _, stage, epoch, when = point.split(":")
        done = EPOCH_ENDS.index((stage, int(epoch))) + 1  # epochs with a history line
        assert lines == done
        if when == "before_last":
            assert (last is None) if done == 1 else last["history_lines"] == done - 1
        else:
            assert last["history_lines"] == done and last["position"]["next_epoch"] == int(epoch) + 1
    else:  # selection, after_final: every stage done
        assert lines == len(EPOCH_ENDS) and last["position"]["stage_done"]
        assert last["position"]["stage_idx"] == len(STAGES) - 1
        assert (run_dir / "final.pt").is_file() == (point == "after_final")


@pytest.mark.parametrize("point", POINTS)
def test_killed_run_resumes_to_the_uninterrupted_result(setup, reference, killed, point: str, capsys) -> None:
    root, args = setup
    run_dir = root / point.replace(":", "_")
    process = killed[point].result()
    assert process.returncode == -signal.SIGKILL, f"not killed at {point}: {process.stderr[-3000:]}"
    check_killed_state(point, run_dir)
    final_before = (run_dir / "final.pt").stat().st_mtime_ns if (run_dir / "final.pt").exists() else None
    capsys.readouterr()
    with one_thread():
        assert main(["train", *args, "--run-dir", str(run_dir), "--resume", "--json"]) == 0
    out = capsys.readouterr()
    resumed = json.loads(out.out.splitlines()[-1])
    assert resumed["complete"] and resumed["already_finished"] == (point == "after_final")
    if point == "after_final":  # nothing left to do: said so, nothing retrained or rewritten
        assert "had already finished" in out.err
        assert (run_dir / "final.pt").stat().st_mtime_ns == final_before
    assert history(run_dir) == reference["history"]
    model = checkpoint(run_dir / "final.pt")["model"]
    assert model.keys() == reference["model"].keys()
    different = [k for k, v in model.items() if not torch.equal(v, reference["model"][k])]
    assert not different, f"final model differs from the uninterrupted run's in {different[:8]}"
    assert evaluate(run_dir) == reference["eval"]


def test_ensure_trained_trains_only_a_run_without_its_final_model(setup, reference) -> None:
    root, args = setup
    cfg = load_config(args[1], args[3::2])
    done = root / "uninterrupted"
    before = (done / "final.pt").stat().st_mtime_ns
    with one_thread():
        assert ensure_trained(cfg, done, progress=False) == done
        assert (done / "final.pt").stat().st_mtime_ns == before  # finished: not retrained
        fresh = ensure_trained(cfg, root / "ensured", progress=False)
    assert history(fresh) == reference["history"]
    model = checkpoint(fresh / "final.pt")["model"]
    assert all(torch.equal(v, reference["model"][k]) for k, v in model.items())
