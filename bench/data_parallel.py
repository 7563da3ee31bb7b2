"""Data-parallel SASRec training: ``ur4rec train --nproc N`` against one process, same machine, one run.

    python bench/data_parallel.py [--epochs 2] [--nproc 2] [--config YAML] [--json]

Both sides train the default config's ``pretrain_sasrec`` (the same global batch of 256 prefixes and
learning rate) for ``--epochs`` epochs with ``ur4rec train`` as a user runs it, and use all the
machine's cores: one process with ``os.cpu_count()`` threads, and ``--nproc`` processes with
``cpu_count // nproc`` threads each. The two runs alternate (one process first) and are reported
from their ``history.jsonl``: seconds per epoch (training + validation), the ratio, and each epoch's
validation NDCG@10 (full ranking, known items excluded). The processes draw their own dropout masks,
so the runs agree in distribution, not to the digit (tests/test_distributed.py checks one step with
dropout 0 to 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402


def train(run_dir: Path, epochs: int, nproc: int, threads: int, config: str | None) -> list[dict]:
    """Epoch records of ``ur4rec train`` (pretrain_sasrec, ``epochs`` epochs) on ``nproc`` processes."""
    cmd = [sys.executable, "-m", "ur4rec.cli", "train", "--run-dir", str(run_dir), "--json",
           "--set", "stages=[pretrain_sasrec]", "--set", f"sasrec_epochs={epochs}", "--nproc", str(nproc)]
    if config:
        cmd += ["--config", config]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0",
                        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("epoch", "seconds", "valid_ndcg@10")} for r in map(json.loads, lines)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--config", default=None, help="default: configs/ur4rec_moe_100k.yaml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one = train(Path(tmp) / "one", args.epochs, 1, cores, args.config)
        many = train(Path(tmp) / "many", args.epochs, args.nproc, max(1, cores // args.nproc), args.config)
    s_one = sum(r["seconds"] for r in one) / len(one)
    s_many = sum(r["seconds"] for r in many) / len(many)
    result = {"cores": cores, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "config": args.config or "configs/ur4rec_moe_100k.yaml", "stage": "pretrain_sasrec",
              "epochs": args.epochs, "one_process": {"threads": cores, "epochs": one, "s_per_epoch": s_one},
              "data_parallel": {"processes": args.nproc, "threads_each": max(1, cores // args.nproc),
                                "epochs": many, "s_per_epoch": s_many},
              "speedup": s_one / s_many}
    md = ["# Data-parallel SASRec training (`ur4rec train --nproc`) vs one process",
          "",
          f"pretrain_sasrec of {result['config']}, {args.epochs} epochs each, {cores} cores, torch "
          f"{torch.__version__}; seconds per epoch include validation. `python bench/data_parallel.py`.",
          "",
          "| run | processes x threads | s per epoch | valid NDCG@10 per epoch |",
          "|---|---|---:|---|",
          f"| one process | 1 x {cores} | {s_one:.1f} | "
          + ", ".join(f"{r['valid_ndcg@10']:.4f}" for r in one) + " |",
          f"| `--nproc {args.nproc}` | {args.nproc} x {max(1, cores // args.nproc)} | {s_many:.1f} | "
          + ", ".join(f"{r['valid_ndcg@10']:.4f}" for r in many) + " |",
          "",
          f"Speed-up: **{result['speedup']:.2f}x** per epoch (same global batch and learning rate; the "
          "processes' dropout masks differ from one process's, so validation agrees in distribution only)."]
    publish("data_parallel", result, md, args.json)


if __name__ == "__main__":
    main()
