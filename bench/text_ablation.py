"""One ablation of every way text enters, on one protocol: ML-100K, default config, full ranking.

    python bench/text_ablation.py [--rows ROW ...] [--seeds 2020 ...] [--jobs 2] [--json]
    python bench/text_ablation.py --report [--json]          # aggregate finished runs only

Rows (``ROWS``; config overrides of ``configs/ur4rec_moe_100k.yaml``):

- ``sasrec``: ID-only SASRec trained alone (pretrain_sasrec, the default recipe): the baseline.
- ``item-init`` / ``item-add`` / ``item-alphafuse``: item text inside SASRec (``sasrec_item_text``).
- ``user-distill``: user text as a SASRec training signal (``sasrec_user_text_weight``);
  ``user-distill-demo``: the same with demographics in the template user texts.
- ``late-fusion``: UR4Rec V2 MoE, the reference system: the retriever stages on top of the seed's
  ``sasrec`` run, the final model chosen on validation (``final_model_selection``). Memory on/off of
  this row is ``bench/memory_ablation.py`` (same seeds, same protocol).
- ``feature-fusion``: the UR4Rec paper's own integration (``fusion_method: feature``): the retriever's
  candidate-conditioned preference vector as a feature of SASRec's scorer, learned in end_to_end;
  trained like ``late-fusion`` on top of the seed's ``sasrec`` run.

Every SASRec-family row gets the same recipe and budget as the baseline (15 epochs, its best
validation epoch kept). Per (row, seed) the run folder ``ROOT/<row>-<seed>/`` keeps ``ablation.json``
(validation and test metrics, per-user test metrics, the cold-start curve, the segments), so an
interrupted sweep resumes (the training runs resume exactly too). ``--jobs J`` trains J runs at once as
separate processes, the cores divided between them (``--threads`` each; default: cores // J).

Protocol of the table: test NDCG@10 / Hit@10 / MRR@10, full ranking, known items excluded (late
fusion: two-stage over SASRec's top-R), mean ± std over seeds and per-seed 95% bootstrap CIs; the
paired test against ``sasrec`` averages each user's difference over the seeds first (users repeat
across seeds). The winner is the row with the best mean *validation* NDCG@10; test is reported,
never chosen on. Cold start: every user scored from only the last k history items (k = 1, 2, 3, 5,
10, all; ``ur4rec.evaluation.segments``), for the rows whose inference reads no user text (not
the two fusion rows: their user text summarises the whole history). Segments:
targets with ≤ 10 training interactions, and the shortest-history quartile of users.

Cost: one SASRec training per (SASRec-family row, seed), ~10 min of both cores each (15 epochs at
~45 s on 2 threads; two 1-thread runs in parallel take about as long together), plus ~3 min per
late-fusion or feature-fusion run: 8 rows × 5 seeds is ~6 h on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import RESULTS, publish  # noqa: E402
from ur4rec.config import Config, load_config  # noqa: E402
from ur4rec.evaluation.evaluate import evaluate_run  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.evaluation.scoring import sasrec_scorer  # noqa: E402
from ur4rec.evaluation.segments import (  # noqa: E402
    history_length_curve,
    rare_target_users,
    segment_summary,
    short_history_users,
)
from ur4rec.evaluation.statistics import bootstrap_ci, paired_permutation_test  # noqa: E402
from ur4rec.io import atomic_write_json  # noqa: E402
from ur4rec.pipeline import train  # noqa: E402
from ur4rec.training.checkpoint import load_checkpoint  # noqa: E402
from ur4rec.training.run import build_workspace  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "ur4rec_moe_100k.yaml"
SEEDS = (2020, 2021, 2022, 2023, 2024)
METRICS = ("ndcg@10", "hit@10", "mrr@10")
RETRIEVER_STAGES = ["pretrain_retriever", "joint_finetune", "end_to_end"]
#: weight of the user-text distillation rows (1 - cosine against a next-item CE of ~5.5)
DISTILL_WEIGHT = 0.2
ROWS: dict[str, dict[str, Any]] = {
    "sasrec": {},
    "item-init": {"sasrec_item_text": "init"},
    "item-add": {"sasrec_item_text": "add"},
    "item-alphafuse": {"sasrec_item_text": "alphafuse"},
    "user-distill": {"sasrec_user_text_weight": DISTILL_WEIGHT},
    "user-distill-demo": {"sasrec_user_text_weight": DISTILL_WEIGHT, "template_demographics": True},
    "late-fusion": {},
    "feature-fusion": {"fusion_method": "feature"},
}
LATE_FUSION = {"late-fusion", "feature-fusion"}  # rows trained on top of the seed's sasrec run
RARE_MAX_COUNT = 10


def row_config(row: str, seed: int, config: Path = DEFAULT_CONFIG, extra: list[str] | None = None) -> Config:
    """The row's config: ``config`` with the row's overrides, its stages and ``seed`` (``extra``: more
    overrides for every row, e.g. a data folder)."""
    # SASRec alone: exactly `ur4rec train --set 'stages=[pretrain_sasrec]' --set seed=S` plus the row's
    # keys (its best validation epoch, best-pretrain_sasrec.pt, is the model scored here)
    stages = RETRIEVER_STAGES if row in LATE_FUSION else ["pretrain_sasrec"]
    sets = [f"stages=[{','.join(stages)}]"]
    sets += [f"seed={seed}"] + [f"{k}={v}" for k, v in ROWS[row].items()] + list(extra or [])
    return load_config(config, sets)


def per_user_metrics(res) -> dict[str, list[float]]:
    return {m: res.per_user[m].tolist() for m in METRICS}


def run_row(root: Path, row: str, seed: int, config: Path = DEFAULT_CONFIG, extra: list[str] | None = None) -> Path:
    """Train (resuming) and evaluate one (row, seed); writes ``ablation.json`` into its folder."""
    run_dir = root / f"{row}-{seed}"
    if (run_dir / "ablation.json").is_file():
        return run_dir
    cfg = row_config(row, seed, config, extra)
    ws = build_workspace(cfg)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"row": row, "seed": seed, "overrides": ROWS[row], "threads": torch.get_num_threads(),
                              "torch": torch.__version__}
    if row in LATE_FUSION:
        sasrec_dir = root / f"sasrec-{seed}"
        state = load_checkpoint(sasrec_dir / "best-pretrain_sasrec.pt")["model"]
        ws.model.sasrec.load_state_dict({k.removeprefix("sasrec."): v for k, v in state.items()
                                         if k.startswith("sasrec.")})
        result, _ = train(cfg, run_dir, resume=True, progress=False, workspace=ws)
        evaluation = evaluate_run(run_dir, workspace=ws)
        record["valid"] = {m: evaluation["full"]["valid"]["ur4rec"]["metrics"][m] for m in METRICS}
        record["test_per_user"] = per_user_metrics(evaluation.per_user[("test", "ur4rec")])
        record["shipped"] = evaluation["models"]["ur4rec"]
        record["sasrec_from"] = str(sasrec_dir)
    else:
        result, _ = train(cfg, run_dir, resume=True, progress=False, workspace=ws)
        model = ws.model
        model.load_state_dict(load_checkpoint(run_dir / "best-pretrain_sasrec.pt")["model"])
        model.eval()
        score = sasrec_scorer(model)
        valid = evaluate_full_ranking(score, ws.data, "valid", cfg.max_seq_len, ks=[10])
        test = evaluate_full_ranking(score, ws.data, "test", cfg.max_seq_len, ks=[10])
        record["valid"] = valid.summary
        record["test_per_user"] = per_user_metrics(test)
        curve = history_length_curve(score, ws.data, "test", cfg.max_seq_len)
        record["curve_per_user"] = {k: v.tolist() for k, v in curve.items()}
        record["stage_seconds"] = result.stages[0].seconds if result.stages else None
    data = ws.data
    record["test"] = {m: float(np.mean(v)) for m, v in record["test_per_user"].items()}
    record["segments"] = {"rare_targets": rare_target_users(data, "test", RARE_MAX_COUNT).tolist(),
                          "short_history": short_history_users(data, "test").tolist()}
    record["seconds"] = time.perf_counter() - t0
    atomic_write_json(run_dir / "ablation.json", record)
    return run_dir


def run_all(root: Path, rows: list[str], seeds: list[int], jobs: int, threads: int, config: Path = DEFAULT_CONFIG,
            extra: list[str] | None = None) -> None:
    """Every (row, seed) not yet done, ``jobs`` at a time as separate processes of ``threads`` threads;
    the SASRec-family rows first (late fusion builds on the seed's sasrec run)."""
    first = [(r, s) for s in seeds for r in rows if r not in LATE_FUSION]
    if any(r in LATE_FUSION for r in rows):
        first += [("sasrec", s) for s in seeds if "sasrec" not in rows]
    second = [(r, s) for s in seeds for r in rows if r in LATE_FUSION]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def one(task: tuple[str, int]) -> None:
        row, seed = task
        if (root / f"{row}-{seed}" / "ablation.json").is_file():
            return
        cmd = [sys.executable, __file__, "--root", str(root), "--task", row, str(seed), "--threads", str(threads),
               "--config", str(config), *sum((["--set", s] for s in extra or []), [])]
        print(f"{row}, seed {seed}: training", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env=env)
        print(f"{row}, seed {seed}: done", file=sys.stderr, flush=True)

    for phase in (first, second):
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, phase))


def collect(root: Path, rows: list[str], seeds: list[int]) -> dict[str, Any]:
    """Means, stds, per-seed CIs, paired tests against sasrec, the cold-start curve and the segments."""
    records = {r: {s: json.loads((root / f"{r}-{s}" / "ablation.json").read_text())
                   for s in seeds if (root / f"{r}-{s}" / "ablation.json").is_file()} for r in rows}
    base = records.get("sasrec", {})
    table: dict[str, Any] = {}
    for row, by_seed in records.items():
        if not by_seed:
            continue
        done = sorted(by_seed)
        entry: dict[str, Any] = {"seeds": done}
        for split in ("valid", "test"):
            for m in METRICS:
                vals = [by_seed[s][split][m] for s in done]
                entry[f"{split} {m}"] = {"mean": float(np.mean(vals)), "per_seed": vals,
                                         "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
        entry["test ndcg@10 ci95"] = [list(bootstrap_ci(np.asarray(by_seed[s]["test_per_user"]["ndcg@10"]), seed=s))
                                      for s in done]
        paired = [s for s in done if s in base]
        if row != "sasrec" and paired:
            mine = np.mean([by_seed[s]["test_per_user"]["ndcg@10"] for s in paired], axis=0)
            theirs = np.mean([base[s]["test_per_user"]["ndcg@10"] for s in paired], axis=0)
            entry["paired_vs_sasrec"] = paired_permutation_test(mine, theirs, seed=0) | {"seeds": paired}
            entry["relative_gain"] = float(mine.mean() / theirs.mean() - 1)
        seg = by_seed[done[0]]["segments"]
        entry["segments"] = {}
        for name, mask in seg.items():
            per_user = np.mean([by_seed[s]["test_per_user"]["ndcg@10"] for s in done], axis=0)
            entry["segments"][name] = segment_summary(per_user, np.asarray(mask))
        if "curve_per_user" in by_seed[done[0]]:
            curve = {}
            lengths = sorted(by_seed[done[0]]["curve_per_user"], key=lambda k: float("inf") if k == "all" else int(k))
            for k in lengths:
                mine = np.mean([by_seed[s]["curve_per_user"][k] for s in done], axis=0)
                point: dict[str, Any] = {"mean": float(mine.mean())}
                if row != "sasrec" and paired:
                    theirs = np.mean([base[s]["curve_per_user"][k] for s in paired], axis=0)
                    point["paired_vs_sasrec"] = paired_permutation_test(
                        np.mean([by_seed[s]["curve_per_user"][k] for s in paired], axis=0), theirs, seed=0)
                curve[k] = point
            entry["cold_start_curve"] = curve
        if "shipped" in by_seed[done[0]]:
            entry["shipped"] = [by_seed[s]["shipped"] for s in done]
        table[row] = entry
    complete = [r for r, e in table.items() if e["seeds"] == sorted(seeds)]
    winner = max(complete, key=lambda r: table[r]["valid ndcg@10"]["mean"]) if complete else None
    threads = sorted({rec["threads"] for by_seed in records.values() for rec in by_seed.values()})
    # the JSON file sorts keys: these lists keep the table's row order and the curve's x order
    lengths = [k for k in ("1", "2", "3", "5", "10", "all") if any(k in e.get("cold_start_curve", {})
                                                                   for e in table.values())]
    return {"rows": table, "row_order": list(table), "history_lengths": lengths,
            "winner_on_validation": winner, "threads": threads,
            "rare_target_max_count": RARE_MAX_COUNT}


def markdown(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    md = ["# Text ablation: every way text enters, one protocol (full ranking, known items excluded)", "",
          f"Recipe `{Path(result['config']).name}`" + (f" with {', '.join(result['overrides'])}" if result["overrides"]
                                                      else "") + "; "
          f"seeds {', '.join(map(str, result['seeds']))}; {'/'.join(map(str, result['threads']))} thread(s) per "
          "run, torch "
          f"{torch.__version__}. Mean ± std over seeds; winner chosen on validation NDCG@10: "
          f"**{result['winner_on_validation']}**. Paired test vs `sasrec` over users, each user's difference "
          "averaged over the seeds first.", "",
          "| row | seeds | valid NDCG@10 | test NDCG@10 | test Hit@10 | test MRR@10 | vs sasrec (test NDCG@10) |",
          "|---|---:|---:|---:|---:|---:|---|"]
    for name, e in rows.items():
        cells = [f"{e[f'test {m}']['mean']:.4f} ± {e[f'test {m}']['std']:.4f}" for m in METRICS]
        vs = ""
        if "paired_vs_sasrec" in e:
            t = e["paired_vs_sasrec"]
            vs = f"{t['mean_difference']:+.4f} ({100 * e['relative_gain']:+.1f}%), p = {t['p_value']:.3f}"
        md.append(f"| {name} | {len(e['seeds'])} | {e['valid ndcg@10']['mean']:.4f} | " + " | ".join(cells)
                  + f" | {vs} |")
    curves = {n: e["cold_start_curve"] for n, e in rows.items() if "cold_start_curve" in e}
    if curves:
        ks = list(next(iter(curves.values())))
        md += ["", "## Cold start: test NDCG@10 from the last k history items", "",
               "| row | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
        for n, c in curves.items():
            md.append(f"| {n} | " + " | ".join(
                f"{c[k]['mean']:.4f}" + (f" (p={c[k]['paired_vs_sasrec']['p_value']:.2f})"
                                         if "paired_vs_sasrec" in c[k] else "") for k in ks) + " |")
    md += ["", "## Segments (test NDCG@10, per-user mean over seeds, 95% bootstrap CI)", "",
           "| row | rare targets | shortest-history quartile |", "|---|---:|---:|"]
    for n, e in rows.items():
        cells = [f"{s['mean']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] ({s['users']} users)"
                 for s in (e["segments"]["rare_targets"], e["segments"]["short_history"])]
        md.append(f"| {n} | " + " | ".join(cells) + " |")
    md.append("")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "runs" / "text-ablation"))
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe every row starts from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="threads per run (default: cores // jobs)")
    ap.add_argument("--report", action="store_true", help="aggregate finished runs only; train nothing")
    ap.add_argument("--task", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(RESULTS), help="where <name>.json/.md go")
    ap.add_argument("--name", default="text_ablation",
                    help="results file name: a sweep over other rows publishes beside the main table")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    root = Path(args.root)
    if args.task:
        torch.set_num_threads(threads)
        row, seed = args.task
        print(run_row(root, row, int(seed), Path(args.config), args.set), file=sys.stderr)
        return
    if not args.report:
        run_all(root, args.rows, args.seeds, args.jobs, threads, Path(args.config), args.set)
    result = {"root": str(root), "config": args.config, "overrides": args.set, "seeds": args.seeds,
              **collect(root, args.rows, args.seeds)}
    publish(args.name, result, markdown(result), args.json, Path(args.results))


if __name__ == "__main__":
    main()
