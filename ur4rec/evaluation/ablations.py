"""Ablations of a trained fused model that need no retraining.

``fusion_weight_sweep``: how much weight the text branch can take before the ranking gets worse.
The fused score is ``(1 - w) * SASRec / spread_s + w * retriever / spread_r`` (weighted fusion, the
running spreads as trained); ``w = 0`` is SASRec's ranking exactly (a built-in check) and ``w = 1``
the retriever's inside SASRec's top-R. A weight must be chosen on validation; the test column is
shown for the weight validation picks, never chosen from. ``select_fusion_weight`` makes that choice
for a run, together with the stage checkpoint (``select_final_model``, ``final_model_selection:
validation``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def _valid_ndcg_per_user(model: torch.nn.Module, data: PreparedData, cfg: Config, weight: float | None):
    """Per-user validation NDCG@10 of the fused model (two-stage), at ``weight`` if given."""
    model.eval()
    saved = model.fixed_weights.clone()
    try:
        if weight is not None:
            model.fixed_weights.copy_(torch.tensor([1.0 - weight, weight]))
        with torch.no_grad():
            res = evaluate_full_ranking(per_pair_scorer(model, "fused", cfg.rerank_top_r), data, "valid",
                                        cfg.max_seq_len, ks=[10])
    finally:
        model.fixed_weights.copy_(saved)
    return res.per_user["ndcg@10"]


def select_final_model(model: torch.nn.Module, data: PreparedData, cfg: Config,
                       checkpoints: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Load into ``model`` the (stage checkpoint, retriever weight) pair chosen on validation and
    return what was compared and chosen.

    ``checkpoints`` maps stage name -> model state dict, in stage order; pretrain_sasrec's is left
    out when others exist (its retriever is untrained: any "gain" from it is noise). Weighted
    fusion tries every weight of ``cfg.fusion_weight_grid`` and 0; learned/adaptive fusion keep
    their own weights. The best pair on validation NDCG@10 (ties: earlier stage, smaller weight)
    must also beat the *baseline* — the first candidate at weight 0, i.e. SASRec alone with the
    default stages — in a paired permutation test over validation users at level
    ``cfg.final_model_alpha``; otherwise the baseline is kept. Picking the maximum of many noisy
    validation scores overstates the winner; this keeps the text branch and the joint stages only
    where validation shows a real gain. Test is never looked at.
    """
    from ur4rec.evaluation.statistics import paired_permutation_test

    candidates = {k: v for k, v in checkpoints.items() if k != "pretrain_sasrec"} or dict(checkpoints)
    weighted = model.fusion_method == "weighted"
    weights = sorted(set(cfg.fusion_weight_grid) | {0.0}) if weighted else [None]
    table: dict[str, dict[str, float]] = {}
    best: tuple[float, str, float | None] | None = None
    for stage, state in candidates.items():
        model.load_state_dict(state)
        if weighted:
            scores = fusion_weight_sweep(model, data, cfg, weights=weights, splits=("valid",))
            row = {float(w): float(v) for w, v in scores["valid ndcg@10"].items()}
        else:
            row = {None: float(_valid_ndcg_per_user(model, data, cfg, None).mean())}
        table[stage] = {str(w): v for w, v in row.items()}
        for w, v in row.items():
            if best is None or v > best[0]:
                best = (v, stage, w)
    if best is None:
        raise ValueError("select_final_model needs at least one checkpoint")
    value, stage, weight = best
    best_pair = {"stage": stage, "retriever_weight": weight, "valid_ndcg@10": value}
    record: dict[str, Any] = {"metric": "valid ndcg@10 (fused, two-stage)", "table": table,
                              "best_on_validation": best_pair}
    baseline = next(iter(candidates))
    if weighted and (stage, weight) != (baseline, 0.0):
        model.load_state_dict(candidates[stage])
        chosen = _valid_ndcg_per_user(model, data, cfg, weight)
        model.load_state_dict(candidates[baseline])
        base = _valid_ndcg_per_user(model, data, cfg, 0.0)
        test = paired_permutation_test(chosen, base, seed=cfg.seed)
        record["paired_test_vs_baseline"] = test | {"alpha": cfg.final_model_alpha,
                                                    "baseline": {"stage": baseline, "retriever_weight": 0.0}}
        if not (test["mean_difference"] > 0 and test["p_value"] < cfg.final_model_alpha):
            stage, weight, value = baseline, 0.0, table[baseline]["0.0"]
    model.load_state_dict(candidates[stage])
    if weight is not None:
        model.fixed_weights.copy_(torch.tensor([1.0 - weight, weight]))
    return {"stage": stage, "retriever_weight": weight, "valid_ndcg@10": value, **record}
