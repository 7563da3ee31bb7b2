"""Evaluation speed: all users, all five models, full ranking, on a trained run.

    python bench/evaluation.py --run-dir R [--json]

Times ``evaluate_full_ranking`` on the test split for every user with the workbench's scorers:
SASRec, MostPop, ItemKNN (whole catalogue, one matmul), the retriever and fused UR4Rec (two-stage:
SASRec's top-R re-ranked). The baseline in the same run is the exact catalogue ranking of the two
per-pair models (every user x every item through the network); the ratio says what two-stage
saves. Goal: the five models in <= 30 s on this CPU with the default config.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.evaluation.evaluate import exact_scorers, scorers  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.training.opened_run import open_run  # noqa: E402


def timed(fn, ws, cfg, batch_size: int = 256) -> tuple[float, float]:
    t0 = time.perf_counter()
    res = evaluate_full_ranking(fn, ws.data, "test", cfg.max_seq_len, ks=cfg.eval_ks, batch_size=batch_size)
    return time.perf_counter() - t0, res.summary["ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run_dir = Path(args.run_dir)
    run = open_run(run_dir)
    cfg, ws, alone = run.cfg, run.workspace, run.alone
    rows = {}
    for name, fn in scorers(ws.model, ws.data, "test", cfg, alone).items():
        seconds, ndcg = timed(fn, ws, cfg)
        rows[name] = {"seconds": round(seconds, 2), "ndcg@10": ndcg,
                      "ranking": "two-stage" if name in ("ur4rec", "retriever") else "whole catalogue"}
    exact = {}
    for name, fn in exact_scorers(ws.model, alone).items():
        seconds, ndcg = timed(fn, ws, cfg, batch_size=64)
        exact[name] = {"seconds": round(seconds, 2), "ndcg@10": ndcg}
    total = sum(r["seconds"] for r in rows.values())
    exact_total = exact["ur4rec"]["seconds"] + exact["retriever"]["seconds"]
    two_stage_total = rows["ur4rec"]["seconds"] + rows["retriever"]["seconds"]
    result = {"run_dir": str(run_dir), "users": ws.data.num_users, "items": ws.data.num_items,
              "rerank_top_r": cfg.rerank_top_r, "retriever_output_dim": cfg.retriever_output_dim,
              "torch": torch.__version__, "cpu": platform.machine(), "threads": 2,
              "five_models_s": round(total, 2), "goal_s": 30, "goal_met": total <= 30, "models": rows,
              "exact_per_pair": exact, "per_pair_two_stage_s": round(two_stage_total, 2),
              "per_pair_exact_s": round(exact_total, 2),
              "two_stage_speedup": round(exact_total / two_stage_total, 1)}
    md = [f"# Evaluation speed: {ws.data.num_users} users x {ws.data.num_items} items, test split, full ranking", "",
          f"Run {run_dir} (retriever dim {cfg.retriever_output_dim}, top-R {cfg.rerank_top_r}), torch "
          f"{torch.__version__}, 2 threads.", "",
          "| model | ranking | seconds | NDCG@10 |", "|---|---|---:|---:|"]
    md += [f"| {n} | {r['ranking']} | {r['seconds']:.2f} | {r['ndcg@10']:.4f} |" for n, r in rows.items()]
    md += [f"| **all five** | | **{total:.2f}** (goal <= 30) | |", "",
           "Baseline in the same run: exact catalogue ranking of the per-pair models.", "",
           "| model | exact seconds | exact NDCG@10 |", "|---|---:|---:|"]
    md += [f"| {n} | {r['seconds']:.2f} | {r['ndcg@10']:.4f} |" for n, r in exact.items()]
    md += ["", f"Two-stage is {result['two_stage_speedup']}x faster than exact for the per-pair models "
               f"({two_stage_total:.2f} s vs {exact_total:.2f} s).", ""]
    publish("evaluation", result, md, args.json)


if __name__ == "__main__":
    main()
