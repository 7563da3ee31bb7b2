"""Data-parallel training (``ur4rec train --nproc N``, torchrun with gloo on the CPU).

- One optimizer step with 2 processes gives one process's parameters within 1e-6 (dropout 0, CE:
  nothing random in the step), for prefix samples (one target a row) and windows (rows with
  different numbers of targets: each process's loss is weighted by its share of the targets).
- After steps that write the user memory and the fused score spread, both processes hold the same
  weights and buffers (they are reduced, not left to drift apart).
- The quick config with ``--nproc 2`` finishes with one ``final.pt`` and rank-0-only files, and a
  run killed at an epoch end resumes with ``--nproc 2`` to the uninterrupted run's final model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import synthetic_ml, write_grouplens
from ur4rec.config import CONFIG_DIR, load_config
from ur4rec.data.batching import training_windows
from ur4rec.data.dataset import load_prepared
from ur4rec.errors import ConfigError
from ur4rec.models.ur4rec_v2 import ScoreScale
from ur4rec.training.distributed import DataParallel, without_option

ROOT = Path(__file__).resolve().parents[1]
STEP = ROOT / "tests" / "distributed_step.py"


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("UR4REC_KILL_AT", "WORLD_SIZE", "RANK")}
    return base | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)} | extra


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("distributed")
    folder = write_grouplens(root / "gl", synthetic_ml(n_users=24, n_items=40, per_user=14))
    overrides = [f"data_path={folder}", f"data_dir={root / 'data'}", f"runs_dir={root / 'runs'}",
                 f"reports_dir={root / 'reports'}", "allow_download=false", "max_seq_len=8",
                 "sampled_negatives=10", "rerank_top_r=10"]
    # fill the data and text caches once, before any pair of processes reads them
    subprocess.run([sys.executable, str(STEP), str(root / "warm.pt"), "1", *overrides, "stages=[pretrain_sasrec]"],
                   cwd=ROOT, env=env(), check=True, capture_output=True, timeout=600)
    return root, overrides


def step_state(root: Path, name: str, nproc: int, max_batches: int, overrides: list[str], **extra_env: str) -> dict:
    out = root / f"{name}-{nproc}.pt"
    cmd = (torchrun(nproc) if nproc > 1 else [sys.executable]) + [str(STEP), str(out), str(max_batches), *overrides]
    # torchrun leaves a torchelastic_* folder in the temporary directory: keep it in this test's
    done = subprocess.run(cmd, cwd=ROOT, env=env(TMPDIR=str(root), **extra_env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out, map_location="cpu", weights_only=False)


#: Adam's first step moves a weight by lr * g / (|g| + eps): lr (1e-3) for any gradient well above eps,
#: whatever its rounding. A gradient element that cancels to ~eps (many rows' terms summing to ~1e-8)
#: keeps only a few significant digits, so where the rows are summed (one process, or two halves then
#: the all-reduce) moves its update by up to ~1e-3 * lr: with windows (many targets a row) that was
#: 1.09e-6 on one weight of the FFN, with prefixes below 1e-6. The gradients themselves agree to 1e-5
#: of their scale (checked first): they are what the data-parallel arithmetic decides.
TOLERANCE = {"prefixes": 1e-6, "windows": 1e-5}


@pytest.mark.parametrize("sampling", ["prefixes", "windows"])
def test_one_step_on_two_processes_equals_one_process(data, sampling: str) -> None:
    root, overrides = data
    step = overrides + ["stages=[pretrain_sasrec]", "sasrec_dropout=0", f"sasrec_sampling={sampling}",
                        "sasrec_batch_size=16"]
    init = step_state(root, f"init-{sampling}", 1, 0, step)["model"]  # no step: the initial weights
    one = step_state(root, f"step-{sampling}", 1, 1, step)
    two = step_state(root, f"step-{sampling}", 2, 1, step)
    assert two["processes"] == 2 and two["environment"]["processes"] == 2 and not two["differ"]
    moved = max(float((one["model"][k] - init[k]).abs().max()) for k in init if init[k].is_floating_point())
    assert moved > 1e-4  # the step changed the weights, so agreeing below says something
    assert one["grads"].keys() == two["grads"].keys() and one["grads"]
    for name, g in one["grads"].items():  # the summed, clipped gradient is one process's
        assert float((two["grads"][name] - g).abs().max()) <= 1e-5 * float(g.abs().max()) + 1e-12, name
    diff = {k: float((two["model"][k].double() - v.double()).abs().max()) for k, v in one["model"].items()}
    assert max(diff.values()) <= TOLERANCE[sampling], sorted(diff.items(), key=lambda kv: -kv[1])[:5]


def test_processes_agree_after_steps_that_write_buffers(data) -> None:
    """The retriever stages write the user memory (quick.yaml: 2 slots), end_to_end the fused score
    spread, and joint_finetune alternates adaptively: after steps of each, both processes hold the
    same weights and buffers."""
    root, overrides = data
    adaptive = ["use_adaptive_alternating=true", "adaptive_min_steps=1"]  # switches on the batch's loss
    for stages, extra in (("[pretrain_retriever]", []), ("[end_to_end]", []), ("[joint_finetune]", adaptive)):
        # 3 steps of 8 windows: inside the first epoch, so no process has reloaded rank 0's checkpoint
        state = step_state(root, f"buffers-{stages[1:-1]}", 2, 3,
                           overrides + [f"stages={stages}", "batch_size=8", *extra])
        assert not state["differ"], (stages, state["differ"])
        if stages == "[end_to_end]":
            assert int(state["model"]["scale.updates"]) == 3  # the spread was observed (and reduced) each step
    assert (state["model"]["retriever.memory.slot_pos"] >= 0).any()  # slots were written


def test_user_memory_after_a_step_is_one_process_memory(data) -> None:
    """The first step's memory writes come from the initial weights (dropout 0): after merging, the
    slots and their positions are what one process writes from the whole batch. A wrong choice of the
    process a user's rows come from (or no merge) leaves other slots or positions."""
    root, overrides = data
    step = overrides + ["stages=[pretrain_retriever]", "batch_size=16", "moe_dropout=0", "interaction_threshold=2",
                        "final_model_selection=last_stage"]
    one, two = (step_state(root, "memory", n, 1, step)["model"] for n in (1, 2))
    assert (one["retriever.memory.slot_pos"] >= 0).sum() >= 4  # several users written
    assert torch.equal(one["retriever.memory.slot_pos"], two["retriever.memory.slot_pos"])
    assert torch.allclose(one["retriever.memory.slots"], two["retriever.memory.slots"], atol=1e-6)


def test_a_step_non_finite_on_one_process_is_skipped_by_all(data) -> None:
    """on_nonfinite: skip decides on the whole batch's loss: both processes skip the step (one that
    skipped alone would hang the other in the all-reduce, and the 300 s timeout would fail this)."""
    root, overrides = data
    state = step_state(root, "nan", 2, 3, overrides + ["stages=[pretrain_sasrec]", "on_nonfinite=skip",
                                                      "sasrec_batch_size=16"], STEP_NAN_RANK="1")
    assert state["skipped_steps"] == 1 and not state["differ"]


def train_cli(overrides: list[str], run_dir: Path, *extra: str,
              kill_at: str | None = None) -> subprocess.CompletedProcess:
    args = ["--config", str(CONFIG_DIR / "quick.yaml")] + [a for o in overrides for a in ("--set", o)]
    more = {"UR4REC_KILL_AT": kill_at} if kill_at else {}
    return subprocess.run([sys.executable, "-m", "ur4rec.cli", "train", *args, "--run-dir", str(run_dir),
                           "--nproc", "2", "--json", *extra], cwd=ROOT, env=env(**more),
                          capture_output=True, text=True, timeout=900)


def history(run_dir: Path) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_quick_config_on_two_processes_writes_once_and_resumes(data) -> None:
    root, overrides = data
    run = root / "runs" / "nproc2"
    done = train_cli(overrides, run)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.splitlines()[-1])  # rank 0's result, printed once
    assert result["complete"] and result["environment"]["processes"] == 2
    assert sum(line.startswith("{") for line in done.stdout.splitlines()) == 1
    stages = load_config(CONFIG_DIR / "quick.yaml").stages
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.yaml", "history.jsonl", "last.pt", "final.pt", *(f"best-{s}.pt" for s in stages)])
    reference = history(run)
    assert [(r["stage"], r["epoch"]) for r in reference] == [(s, e) for s in stages for e in range(2)]
    final = torch.load(run / "final.pt", map_location="cpu", weights_only=False)

    killed = root / "runs" / "nproc2-killed"
    died = train_cli(overrides, killed, kill_at="epoch_end:joint_finetune:0:after_last")
    assert died.returncode != 0 and not (killed / "final.pt").exists()
    last = torch.load(killed / "last.pt", map_location="cpu", weights_only=False)  # killed where it was told
    assert last["history_lines"] == 5 and last["position"]["stage_idx"] == 2 and last["position"]["next_epoch"] == 1
    assert json.loads(died.stdout.splitlines()[-1])["ok"] is False  # one JSON line, the parent's
    resumed = train_cli(overrides, killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert history(killed) == reference
    model = torch.load(killed / "final.pt", map_location="cpu", weights_only=False)["model"]
    different = [k for k, v in model.items() if not torch.equal(v, final["model"][k])]
    assert not different, different[:8]


def test_a_process_error_is_the_runs_error(data) -> None:
    """A ConfigError raised in the processes (here: a last step of one sample for two processes) is
    what ``ur4rec train --nproc`` reports, in its one JSON line."""
    root, overrides = data
    cfg = load_config(CONFIG_DIR / "quick.yaml", overrides)
    assert cfg.sasrec_sampling == "windows"  # quick.yaml's: pretrain_sasrec steps over windows
    samples = len(training_windows(load_prepared(cfg).train_sequences(), cfg.max_seq_len, cfg.train_window_stride)[0])
    done = train_cli(overrides + ["stages=[pretrain_sasrec]", f"sasrec_batch_size={samples - 1}"], root / "bad")
    assert done.returncode == 2
    json_lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1 and "leave a last step of 1" in json.loads(json_lines[0])["error"]


def test_a_last_step_smaller_than_the_processes_is_refused() -> None:
    parallel = DataParallel(rank=0, world=4)
    parallel.check_batches(samples=96, batch_size=32, what="pretrain_sasrec")  # 3 full steps
    parallel.check_batches(samples=100, batch_size=32, what="pretrain_sasrec")  # last step of 4
    with pytest.raises(ConfigError) as err:
        parallel.check_batches(samples=97, batch_size=32, what="pretrain_sasrec")
    assert "last step of 1" in str(err.value) and "--nproc 4" in str(err.value)
    DataParallel().check_batches(samples=97, batch_size=32, what="pretrain_sasrec")  # one process: any batch


def test_shards_cover_the_global_batch_once() -> None:
    rows = torch.arange(11)
    shards = [DataParallel(rank=r, world=3).shard(rows) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == rows.tolist()
    owner = DataParallel(rank=0, world=3).owner_of_rows(11)
    assert all(int(owner[i]) == r for r, s in enumerate(shards) for i in s.tolist())


def test_score_spread_reduced_over_processes_is_the_global_mean() -> None:
    """Two processes with the same rows see the same spread as one process with those rows."""
    torch.manual_seed(0)
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    alone, reduced = ScoreScale(), ScoreScale()
    reduced.reduce = lambda t: 2 * t  # the sum over two processes holding the same rows
    alone.observe(a, b)
    reduced.observe(a, b)
    assert torch.allclose(alone.spread, reduced.spread, rtol=1e-6)


def test_without_option() -> None:
    argv = ["train", "--nproc", "2", "--set", "seed=1", "--nproc=3", "--json"]
    assert without_option(argv, "--nproc") == ["train", "--set", "seed=1", "--json"]


def test_train_refuses_nproc_below_one(capsys) -> None:
    from ur4rec.cli import main

    assert main(["train", "--nproc", "0", "--json"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err

