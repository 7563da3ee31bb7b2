"""Ablations of a trained fused model that need no retraining.

``fusion_weight_sweep``: how much weight the text branch can take before the ranking gets worse.
The fused score is ``(1 - w) * SASRec / spread_s + w * retriever / spread_r`` (weighted fusion, the
running spreads as trained); ``w = 0`` is SASRec's ranking exactly (a built-in check) and ``w = 1``
the retriever's inside SASRec's top-R. A weight must be chosen on validation; the test column is
shown for the weight validation picks, never chosen from. ``select_fusion_weight`` makes that choice
for a run (``fusion_weight_selection: validation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData
from ur4rec.evaluation.protocol import evaluate_full_ranking
from ur4rec.evaluation.scoring import per_pair_scorer

DEFAULT_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@torch.no_grad()
def fusion_weight_sweep(model: torch.nn.Module, data: PreparedData, cfg: Config,
                        weights: Sequence[float] = DEFAULT_WEIGHTS,
                        splits: Sequence[str] = ("valid", "test")) -> pd.DataFrame:
    """NDCG@10 / Hit@10 (full ranking, two-stage) of the fused model for each retriever weight."""
    if model.fusion_method != "weighted":
        raise ValueError("fusion_weight_sweep needs fusion_method: weighted (the other methods learn their weights)")
    model.eval()
    saved = model.fixed_weights.clone()
    rows = []
    try:
        for w in weights:
            model.fixed_weights.copy_(torch.tensor([1.0 - w, w]))
            row = {"retriever_weight": w}
            for split in splits:
                res = evaluate_full_ranking(per_pair_scorer(model, "fused", cfg.rerank_top_r), data, split,
                                            cfg.max_seq_len, ks=[10])
                row[f"{split} ndcg@10"] = res.summary["ndcg@10"]
                row[f"{split} hit@10"] = res.summary["hit@10"]
            rows.append(row)
    finally:
        model.fixed_weights.copy_(saved)
    table = pd.DataFrame(rows).set_index("retriever_weight")
    if "valid ndcg@10" in table:
        table["picked on valid"] = table.index == table["valid ndcg@10"].idxmax()
    return table


def select_fusion_weight(model: torch.nn.Module, data: PreparedData, cfg: Config) -> dict[str, Any]:
    """Choose the retriever weight on validation NDCG@10 from ``cfg.fusion_weight_grid`` and store
    ``(1 - w, w)`` in ``model.fixed_weights``. Ties go to the smaller weight (SASRec's ranking when
    the text branch adds nothing). Test is never looked at. Returns what was chosen and the grid."""
    table = fusion_weight_sweep(model, data, cfg, weights=cfg.fusion_weight_grid, splits=("valid",))
    scores = table["valid ndcg@10"]
    best = float(scores[scores == scores.max()].index.min())
    model.fixed_weights.copy_(torch.tensor([1.0 - best, best]))
    return {"retriever_weight": best, "sasrec_weight": 1.0 - best, "metric": "valid ndcg@10",
            "valid_ndcg@10": {str(w): float(v) for w, v in scores.items()},
            "gain_over_sasrec_ranking": float(scores[best] - scores[0.0]) if 0.0 in scores.index else None}

