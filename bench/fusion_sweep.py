"""Fusion-weight ablation on trained default runs: how much text-branch weight helps or hurts.

    python bench/fusion_sweep.py --seeds-dir runs/seeds-full [--json]

For each seed's run (from `ur4rec evaluate --seeds K`), the fused model's full-ranking NDCG@10
(two-stage) on validation and test for retriever weights 0 … 1 (``ur4rec.evaluation.ablations``);
the weight is picked on validation per seed, and its test NDCG@10 is compared with weight 0
(SASRec's ranking exactly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402

from ur4rec.config import config_from_dict, read_yaml  # noqa: E402
from ur4rec.evaluation.ablations import fusion_weight_sweep  # noqa: E402
from ur4rec.training.checkpoint import load_checkpoint, run_fingerprint  # noqa: E402
from ur4rec.training.run import build_workspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-dir", required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    per_seed, picked = {}, {}
    for run_dir in sorted(Path(args.seeds_dir).glob("seed-*")):
        cfg = config_from_dict(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
        ws = build_workspace(cfg)
        ck = load_checkpoint(run_dir / "final.pt", run_fingerprint(cfg, ws.data.fingerprint, ws.text_fingerprint))
        ws.model.load_state_dict(ck["model"])
        table = fusion_weight_sweep(ws.model, ws.data, cfg)
        per_seed[cfg.seed] = table.reset_index().to_dict(orient="records")
        best = table["valid ndcg@10"].idxmax()
        picked[cfg.seed] = {"weight": float(best), "test ndcg@10": float(table.loc[best, "test ndcg@10"]),
                            "test ndcg@10 at weight 0 (SASRec)": float(table.loc[0.0, "test ndcg@10"])}
        print(cfg.seed, picked[cfg.seed], file=sys.stderr, flush=True)
    result = {"seeds_dir": args.seeds_dir, "per_seed": per_seed, "picked_on_valid": picked}
    weights = [r["retriever_weight"] for r in next(iter(per_seed.values()))]
    md = ["# Fusion-weight ablation (weighted fusion, trained default runs, full ranking, two-stage)", "",
          "Mean over seeds " + ", ".join(map(str, per_seed)) + " of NDCG@10 for each retriever weight "
          "(0 = SASRec's ranking exactly; the models were trained with 0.5).", "",
          "| retriever weight | valid NDCG@10 | test NDCG@10 |", "|---:|---:|---:|"]
    for i, w in enumerate(weights):
        v = sum(rows[i]["valid ndcg@10"] for rows in per_seed.values()) / len(per_seed)
        t = sum(rows[i]["test ndcg@10"] for rows in per_seed.values()) / len(per_seed)
        md.append(f"| {w:g} | {v:.4f} | {t:.4f} |")
    md += ["", "Weight picked on validation, per seed: " + "; ".join(
        f"seed {s}: w = {p['weight']:g}, test {p['test ndcg@10']:.4f} vs SASRec {p['test ndcg@10 at weight 0 (SASRec)']:.4f}"
        for s, p in picked.items()) + ".", ""]
    publish("fusion_sweep", result, md, args.json)


if __name__ == "__main__":
    main()
