"""Ablation on trained default runs: each stage checkpoint × fusion weight, valid and test.

    python bench/fusion_sweep.py --seeds-dir runs/seeds-v2 [--json]

For each seed's run (from `ur4rec evaluate --seeds K`) and each stage's best checkpoint from
pretrain_retriever on (pretrain_retriever = both branches trained alone; joint_finetune and
end_to_end = jointly trained), the fused model's full-ranking NDCG@10 (two-stage) on validation and
test for retriever weights 0 … 1 (``ur4rec.evaluation.ablations.fusion_weight_sweep``). Weight 0 on
the pretrain_retriever checkpoint is SASRec alone. The best pair on validation is compared with
SASRec alone on test, beside what ``final_model_selection: validation`` shipped (the best pair only
where a paired test over validation users finds it better than SASRec alone; read from the run's
eval.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.evaluation.ablations import fusion_weight_sweep  # noqa: E402
from ur4rec.training.opened_run import open_run  # noqa: E402

STAGES = ("pretrain_retriever", "joint_finetune", "end_to_end")


def _shipped(p: dict) -> str:
    shipped = p.get("shipped")
    if not shipped:
        return "unknown (no final_selection in eval.json)"
    if (shipped["stage"], shipped["weight"]) == ("pretrain_retriever", 0.0):
        return "SASRec alone"
    return f"{shipped['stage']}, w = {shipped['weight']:g} (test {shipped['test ndcg@10']:.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-dir", required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    per_seed, picked = {}, {}
    for run_dir in sorted(Path(args.seeds_dir).glob("seed-*")):
        run = open_run(run_dir)
        cfg, model = run.cfg, run.model
        rows = []
        for stage in STAGES:
            model.load_state_dict(run.state(f"best-{stage}.pt"))
            table = fusion_weight_sweep(model, run.workspace.data, cfg, weights=cfg.fusion_weight_grid)
            rows += [{"stage": stage, **r} for r in table.drop(columns="picked on valid").reset_index()
                     .to_dict(orient="records")]
        per_seed[cfg.seed] = rows
        best = max(rows, key=lambda r: r["valid ndcg@10"])  # first max: earlier stage, smaller weight
        alone = next(r for r in rows if r["stage"] == "pretrain_retriever" and r["retriever_weight"] == 0.0)
        picked[cfg.seed] = {"stage": best["stage"], "weight": best["retriever_weight"],
                            "valid ndcg@10": best["valid ndcg@10"], "test ndcg@10": best["test ndcg@10"],
                            "test ndcg@10 SASRec alone": alone["test ndcg@10"]}
        shipped = json.loads((run_dir / "eval.json").read_text()).get("final_selection") or {}
        if shipped:
            pair = next(r for r in rows if (r["stage"], r["retriever_weight"]) ==
                        (shipped["stage"], shipped["retriever_weight"]))
            picked[cfg.seed]["shipped"] = {"stage": shipped["stage"], "weight": shipped["retriever_weight"],
                                           "test ndcg@10": pair["test ndcg@10"],
                                           "p_value": shipped.get("paired_test_vs_baseline", {}).get("p_value")}
        print(cfg.seed, picked[cfg.seed], file=sys.stderr, flush=True)
    result = {"seeds_dir": args.seeds_dir, "per_seed": per_seed, "picked_on_valid": picked}
    first = next(iter(per_seed.values()))
    keys = [(r["stage"], r["retriever_weight"]) for r in first]
    weights = sorted({w for _, w in keys})
    md = ["# Stage checkpoint × fusion weight (trained default runs, full ranking, two-stage, NDCG@10)", "",
          "Mean over seeds " + ", ".join(map(str, per_seed)) + " of valid / test NDCG@10. Rows: retriever weight "
          "(0 = SASRec's ranking of that checkpoint; on pretrain_retriever, SASRec alone). Columns: the stage's best "
          "checkpoint (pretrain_retriever = branches trained alone).", "",
          "| retriever weight | " + " | ".join(STAGES) + " |", "|---:|" + "---:|" * len(STAGES)]
    for w in weights:
        cells = []
        for stage in STAGES:
            i = keys.index((stage, w))
            v = sum(rows[i]["valid ndcg@10"] for rows in per_seed.values()) / len(per_seed)
            t = sum(rows[i]["test ndcg@10"] for rows in per_seed.values()) / len(per_seed)
            cells.append(f"{v:.4f} / {t:.4f}")
        md.append(f"| {w:g} | " + " | ".join(cells) + " |")
    md += ["", "Per seed: the best pair on validation, and what `final_model_selection: validation` shipped (the "
           "best pair only if a paired test over validation users finds it better than SASRec alone):", ""]
    md += [f"- seed {s}: best on validation {p['stage']}, w = {p['weight']:g} (test {p['test ndcg@10']:.4f}"
           + (f", paired-test p = {p['shipped']['p_value']:.3f}" if p.get("shipped", {}).get("p_value") is not None
              else "")
           + f"); shipped: {_shipped(p)}; SASRec alone: test {p['test ndcg@10 SASRec alone']:.4f}"
           for s, p in picked.items()]
    md.append("")
    publish("fusion_sweep", result, md, args.json)


if __name__ == "__main__":
    main()
