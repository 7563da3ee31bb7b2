"""SASRec training speed: UR4Rec Workbench vs RecBole 1.2.1, same settings, same CPU, one run.

    python bench/training.py [--json] [--epochs N] [--prefix-epochs N] [--recbole-epochs N]

Both sides: ML-100K, all interactions, leave-one-out by time, hidden 64, 2 layers, 2 heads, max
length 50, CE loss, Adam(W) 1e-3, 2 threads, full-ranking validation NDCG@10. A RecBole batch is 256
prefixes with one target each. The workbench runs twice: with the default config's sampling, 256
prefixes per step as RecBole (``sasrec_sampling: prefixes``; its last block computes the last
position only), and with ``--batch-size`` windows of up to 50 targets each (default 8 windows ≈ 320
targets), which share one pass among their targets. RecBole
runs in its own environment (``.bench-venv``, created by ``make bench-env``: it needs numpy<2,
setuptools<81); the workbench package never imports it.

Reported: seconds to pass once over all training targets (one epoch) for each, their ratio, and
the workbench's wall time to reach RecBole's best validation NDCG@10 — RecBole's best over the
epochs it ran here, or, when it ran fewer than 12, the 12-epoch best measured on this machine in
shared/NOTES.md (0.0699, 108 s/epoch), labelled as such. RecBole's validation ranks the user's
known items too, so for this comparison the workbench's validation is computed the same way
(``exclude_known=False``); the workbench's own protocol (known items excluded) is reported beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ur4rec.config import load_config  # noqa: E402
from ur4rec.data import load_prepared  # noqa: E402
from ur4rec.data.batching import training_prefixes, training_windows  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.io import atomic_write_json, atomic_write_text  # noqa: E402
from ur4rec.models.sasrec import SASRec  # noqa: E402
from ur4rec.training.seeding import generator, seed_everything  # noqa: E402

NOTES_RECBOLE = {"best_valid_ndcg@10": 0.0699, "epochs": 12, "s_per_epoch": 108.0,
                 "source": "shared/NOTES.md (RecBole 1.2.1 SASRec, this machine, 12 epochs)"}


def ours(epochs: int, batch_size: int, sampling: str) -> dict:
    """SASRec alone for ``epochs`` epochs of ``sampling`` ("windows" or "prefixes") samples."""
    torch.set_num_threads(2)
    cfg = load_config(overrides={"sasrec_hidden_dim": 64, "sasrec_num_blocks": 2, "sasrec_num_heads": 2,
                                 "max_seq_len": 50, "batch_size": batch_size, "loss_type": "ce",
                                 "sasrec_dropout": 0.2})
    data = load_prepared(cfg)
    seed_everything(cfg.seed, "bench")
    model = SASRec(data.num_items, 64, 2, 2, 0.2, 50)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    prefixes = sampling == "prefixes"
    sample = training_prefixes if prefixes else training_windows
    inputs, targets, _ = sample(data.train_sequences(), 50)
    records, wall = [], 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(inputs), generator=generator(cfg.seed, "bench", epoch))
        for s in range(0, len(order), batch_size):
            i = order[s:s + batch_size]
            loss = model.calculate_loss(inputs[i], targets[i], "ce", last_only=prefixes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        model.eval()
        res = evaluate_full_ranking(lambda u, seq: model.full_sort_predict(seq), data, "valid", 50, ks=[10],
                                    exclude_known=False)  # RecBole's protocol, for the comparison
        wall += time.perf_counter() - t0
        ours_protocol = evaluate_full_ranking(lambda u, seq: model.full_sort_predict(seq), data, "valid", 50, ks=[10])
        records.append({"epoch": epoch, "train_s": round(train_s, 2), "valid_ndcg@10": res.summary["ndcg@10"],
                        "valid_ndcg@10_known_excluded": ours_protocol.summary["ndcg@10"], "wall_s": round(wall, 2)})
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    return {"sampling": sampling, "batch_size": batch_size, "training_samples": len(inputs),
            "training_targets": int((targets != 0).sum()), "epochs": records}


def recbole(epochs: int, venv: Path) -> dict:
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} missing: run `make bench-env` first (RecBole needs its own environment)")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONPATH="")
    out = subprocess.run([str(py), str(ROOT / "bench" / "recbole_sasrec.py"), str(epochs)], capture_output=True,
                         text=True, env=env, cwd="/tmp")
    if out.returncode != 0:
        raise SystemExit(f"RecBole run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_epoch_s(run: dict) -> float:
    return sorted(e["train_s"] for e in run["epochs"])[len(run["epochs"]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--epochs", type=int, default=15, help="epochs of the windows run")
    ap.add_argument("--prefix-epochs", type=int, default=3, help="epochs of the prefixes run (~50 s each)")
    ap.add_argument("--batch-size", type=int, default=8,
                    help="windows per batch (default 8 ≈ 320 targets ≈ RecBole's 256 per step)")
    ap.add_argument("--recbole-epochs", type=int, default=2)
    ap.add_argument("--venv", default=str(ROOT / ".bench-venv"))
    args = ap.parse_args()
    rb = recbole(args.recbole_epochs, Path(args.venv))
    runs = {"prefixes": ours(args.prefix_epochs, 256, "prefixes"),
            "windows": ours(args.epochs, args.batch_size, "windows")}
    rb_epoch = median_epoch_s(rb)
    if len(rb["epochs"]) >= NOTES_RECBOLE["epochs"]:
        target = max(e["valid_ndcg@10"] for e in rb["epochs"])
        rb_best_wall = min(e["wall_s"] for e in rb["epochs"] if e["valid_ndcg@10"] >= target)
        target_source = f"RecBole's best over {len(rb['epochs'])} epochs in this run"
    else:
        target = NOTES_RECBOLE["best_valid_ndcg@10"]
        rb_best_wall = rb_epoch * NOTES_RECBOLE["epochs"]
        target_source = (f"{NOTES_RECBOLE['source']}; RecBole wall time = this run's epoch time x "
                         f"{NOTES_RECBOLE['epochs']} epochs")
    ours_result = {}
    for name, run in runs.items():
        reached = next((e for e in run["epochs"] if e["valid_ndcg@10"] >= target), None)
        ours_result[name] = {
            "batch": f"{run['batch_size']} {name} per step", "training_samples": run["training_samples"],
            "training_targets": run["training_targets"], "s_per_epoch": median_epoch_s(run),
            "epoch_speedup_vs_recbole": round(rb_epoch / median_epoch_s(run), 1),
            "wall_to_target_s": reached["wall_s"] if reached else None,
            "epochs_to_target": reached["epoch"] + 1 if reached else None,
            "time_to_target_ratio": round(rb_best_wall / reached["wall_s"], 1) if reached else None,
            "best_valid_ndcg@10": max(e["valid_ndcg@10"] for e in run["epochs"]),
            "best_valid_ndcg@10_known_excluded": max(e["valid_ndcg@10_known_excluded"] for e in run["epochs"]),
            "epochs": run["epochs"]}
    result = {
        "benchmark": "SASRec stage, ML-100K, CE, hidden 64, 2 layers, 2 heads, len 50, 2 threads",
        "recbole_batch": "256 prefixes (one target each)",
        "validation_protocol": "RecBole's (known items ranked too) on both sides for the time-to-target",
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": 2,
        "recbole_s_per_epoch": rb_epoch, "recbole_training_sequences": rb["training_sequences"],
        "target_valid_ndcg@10": target, "target_source": target_source,
        "recbole_wall_to_best_s": round(rb_best_wall, 1), "recbole_epochs": rb["epochs"], "ours": ours_result,
    }
    out = ROOT / "bench" / "results"
    atomic_write_json(out / "training.json", result)
    md = ["# SASRec training: UR4Rec Workbench vs RecBole 1.2.1 (same settings, same CPU, one run)", "",
          "| | seconds per epoch (all training targets) | RecBole's / ours | wall time to valid NDCG@10 "
          f">= {target:.4f} | RecBole's / ours |", "|---|---:|---:|---:|---:|",
          f"| RecBole 1.2.1, 256 prefixes per step | {rb_epoch:.1f} | — | {rb_best_wall:.0f} s | — |"]
    for name, r in ours_result.items():
        label = "workbench, 256 prefixes per step (the default)" if name == "prefixes" else f"workbench, {r['batch']}"
        wall = f"{r['wall_to_target_s']} s" if r["wall_to_target_s"] else f"not reached in {len(r['epochs'])} epochs"
        md.append(f"| {label} | {r['s_per_epoch']:.1f} | {r['epoch_speedup_vs_recbole']}x | {wall} | "
                  f"{str(r['time_to_target_ratio']) + 'x' if r['time_to_target_ratio'] else '—'} |")
    md += ["", f"Target: {target_source}. Both validations rank known items too (RecBole's protocol). Best "
           "validation NDCG@10 of the workbench runs: " + "; ".join(
               f"{name} {r['best_valid_ndcg@10']:.4f} in {len(r['epochs'])} epochs "
               f"({r['best_valid_ndcg@10_known_excluded']:.4f} with known items excluded, the workbench's protocol)"
               for name, r in ours_result.items()) + ".", ""]
    atomic_write_text(out / "training.md", "\n".join(md))
    print("\n".join(md), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
