"""Per-user memory on/off: its effect on the retriever alone and on the shipped fused model.

    python bench/memory_ablation.py --root runs/memory-ablation [--seeds 2020 2021 ...] [--threads 1] [--json]
    python bench/memory_ablation.py --root runs/memory-ablation --report [--json]   # aggregate only

Protocol. Default config (``configs/ur4rec_moe_100k.yaml``, template texts), seeds 2020–2024. The memory
lives in the retriever, so SASRec is trained once per seed (pretrain_sasrec alone, memory off:
``ROOT/sasrec-<seed>/``) and shared by both rows. Each row then trains pretrain_retriever →
joint_finetune → end_to_end on top of that SASRec (``max_memory_size`` 0, or ``MEMORY_SIZE`` with the default config's
trigger), selects the final model on validation (``final_model_selection``) and is evaluated with
``ur4rec evaluate``'s code: full ranking, known items excluded, the per-pair models two-stage. Test is
reported, never chosen on. Per (row, seed) the run folder keeps ``eval.json`` and the per-user test
NDCG@10 of every model, so an interrupted sweep resumes (the runs themselves resume exactly too).
The paired test between the rows averages each user's difference over the seeds first (users repeat
across seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.config import Config, load_config  # noqa: E402
from ur4rec.evaluation.evaluate import evaluate_run  # noqa: E402
from ur4rec.evaluation.statistics import paired_permutation_test  # noqa: E402
from ur4rec.io import atomic_write_json  # noqa: E402
from ur4rec.pipeline import train  # noqa: E402
from ur4rec.training.checkpoint import load_checkpoint  # noqa: E402
from ur4rec.training.run import build_workspace  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "ur4rec_moe_100k.yaml"
SEEDS = (2020, 2021, 2022, 2023, 2024)
RETRIEVER_STAGES = ["pretrain_retriever", "joint_finetune", "end_to_end"]
MODELS = ("sasrec", "retriever", "ur4rec")
METRICS = ("ndcg@10", "hit@10", "mrr@10")
#: slots per user in the "memory on" row (the default config had 4 until this ablation turned memory off)
MEMORY_SIZE = 4


def rows(default: Config) -> dict[str, dict[str, Any]]:
    """The ablation rows as config overrides: memory off, and on with ``MEMORY_SIZE`` slots and the default
    config's trigger."""
    return {"memory off": {"max_memory_size": 0},
            "memory on": {"max_memory_size": MEMORY_SIZE, "update_trigger": default.update_trigger,
                          "interaction_threshold": default.interaction_threshold}}


def sasrec_run(root: Path, seed: int) -> Path:
    """pretrain_sasrec alone for ``seed`` (trained once, resumed if interrupted)."""
    run_dir = root / f"sasrec-{seed}"
    if not (run_dir / "best-pretrain_sasrec.pt").is_file() or not (run_dir / "final.pt").is_file():
        cfg = load_config(DEFAULT_CONFIG, [f"seed={seed}", "stages=[pretrain_sasrec]", "max_memory_size=0"])
        train(cfg, run_dir, resume=True, progress=False)
    return run_dir


def row_run(root: Path, name: str, overrides: dict[str, Any], seed: int) -> Path:
    """Train and evaluate one row on one seed on top of that seed's SASRec; cached in its folder."""
    run_dir = root / f"{name.replace(' ', '-')}-{seed}"
    if (run_dir / "per_user_test.json").is_file():
        return run_dir
    sasrec_dir = sasrec_run(root, seed)
    sets = [f"seed={seed}", f"stages=[{','.join(RETRIEVER_STAGES)}]"] + [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(DEFAULT_CONFIG, sets)
    ws = build_workspace(cfg)
    state = load_checkpoint(sasrec_dir / "best-pretrain_sasrec.pt")["model"]
    ws.model.sasrec.load_state_dict({k.removeprefix("sasrec."): v for k, v in state.items() if k.startswith("sasrec.")})
    train(cfg, run_dir, resume=True, progress=False, workspace=ws)
    evaluation = evaluate_run(run_dir, workspace=ws)
    per_user = {m: evaluation.per_user[("test", m)].per_user["ndcg@10"].tolist() for m in MODELS}
    atomic_write_json(run_dir / "per_user_test.json", {"ndcg@10": per_user, "sasrec_from": str(sasrec_dir)})
    return run_dir


def collect(root: Path, names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Means, stds, per-seed values with CIs, and the paired test of the rows (finished runs only)."""
    table: dict[str, Any] = {}
    per_user: dict[str, dict[str, list[np.ndarray]]] = {}
    for name in names:
        runs = [root / f"{name.replace(' ', '-')}-{s}" for s in seeds]
        done = [r for r in runs if (r / "per_user_test.json").is_file()]
        if not done:
            continue
        evals = [json.loads((r / "eval.json").read_text()) for r in done]
        table[name] = {"seeds": [int(r.name.rsplit("-", 1)[1]) for r in done]}
        for m in MODELS:
            for metric in METRICS:
                vals = [e["full"]["test"][m]["metrics"][metric] for e in evals]
                table[name][f"{m} {metric}"] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1))
                                                if len(vals) > 1 else 0.0, "per_seed": vals}
            table[name][f"{m} ndcg@10 ci95"] = [e["full"]["test"][m]["ci95"]["ndcg@10"] for e in evals]
        table[name]["shipped"] = [_shipped(e["final_selection"]) for e in evals]
        per_user[name] = {m: [np.asarray(json.loads((r / "per_user_test.json").read_text())["ndcg@10"][m])
                              for r in done] for m in MODELS}
    tests = {}
    if len(per_user) == 2:
        off, on = (per_user[n] for n in names)
        if len(off["ur4rec"]) == len(on["ur4rec"]):
            for m in ("retriever", "ur4rec"):
                tests[m] = paired_permutation_test(np.mean(on[m], axis=0), np.mean(off[m], axis=0), seed=0)
    return {"rows": table, "paired_test_on_vs_off": tests}


def _shipped(selection: dict[str, Any] | None) -> str:
    if not selection:
        return "last stage"
    if not selection.get("retriever_weight"):
        return "SASRec alone"
    return f"{selection['stage']} w={selection['retriever_weight']:g}"


def markdown(result: dict[str, Any], threads: int) -> list[str]:
    md = ["# Per-user memory on/off (ML-100K, default config, full ranking, test)", "",
          f"Seeds {', '.join(map(str, result['seeds']))}; mean ± std over seeds; torch {torch.__version__}, "
          f"{threads} thread(s) per run. SASRec trained once per seed and shared by both rows; each row trains "
          "the retriever stages on top and ships what validation selects (`final_model_selection`).", "",
          "| row | model | NDCG@10 | Hit@10 | MRR@10 |", "|---|---|---:|---:|---:|"]
    for name, row in result["rows"].items():
        for m, label in (("sasrec", "SASRec alone"), ("retriever", "retriever alone"), ("ur4rec", "shipped fused")):
            cells = [f"{row[f'{m} {k}']['mean']:.4f} ± {row[f'{m} {k}']['std']:.4f}" for k in METRICS]
            md.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    md.append("")
    for name, row in result["rows"].items():
        md.append(f"- {name}: shipped per seed: " + ", ".join(row["shipped"]))
    for m, t in result["paired_test_on_vs_off"].items():
        md.append(f"- paired test on − off ({m}, test NDCG@10, per-user mean over seeds): "
                  f"{t['mean_difference']:+.4f}, p = {t['p_value']:.4f} over {t['users']} users")
    md.append("")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "runs" / "memory-ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="aggregate finished runs only; train nothing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    names = list(rows(load_config(DEFAULT_CONFIG, [])))
    if not args.report:
        default = load_config(DEFAULT_CONFIG, [])
        for seed in args.seeds:
            for name, overrides in rows(default).items():
                print(f"{name}, seed {seed}: {row_run(root, name, overrides, seed)}", file=sys.stderr, flush=True)
    result = {"root": str(root), "seeds": args.seeds, "threads": args.threads, **collect(root, names, args.seeds)}
    publish("memory_ablation", result, markdown(result, args.threads), args.json)


if __name__ == "__main__":
    main()
