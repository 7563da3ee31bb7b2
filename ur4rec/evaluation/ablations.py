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

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ur4rec.config import PROJECT_ROOT, Config
from ur4rec.data.dataset import PreparedData
from ur4rec.evaluation.protocol import evaluate_full_ranking
from ur4rec.evaluation.scoring import catalogue_scorer, retriever_weight, set_retriever_weight
from ur4rec.evaluation.statistics import paired_permutation_test

DEFAULT_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@torch.no_grad()
def fusion_weight_sweep(model: torch.nn.Module, data: PreparedData, cfg: Config,
                        weights: Sequence[float] = DEFAULT_WEIGHTS,
                        splits: Sequence[str] = ("valid", "test")) -> pd.DataFrame:
    """NDCG@10 / Hit@10 (full ranking, two-stage) of the fused model for each retriever weight."""
    if model.fusion_method != "weighted":
        raise ValueError("fusion_weight_sweep needs fusion_method: weighted (the other methods learn their weights)")
    model.eval()
    scorer = catalogue_scorer(model, cfg, "fused")
    rows = []
    for w in weights:
        row = {"retriever_weight": w}
        with retriever_weight(model, w):
            for split in splits:
                res = evaluate_full_ranking(scorer, data, split, cfg.max_seq_len, ks=[10])
                row[f"{split} ndcg@10"] = res.summary["ndcg@10"]
                row[f"{split} hit@10"] = res.summary["hit@10"]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("retriever_weight")
    if "valid ndcg@10" in table:
        table["picked on valid"] = table.index == table["valid ndcg@10"].idxmax()
    return table


def _valid_ndcg_per_user(model: torch.nn.Module, data: PreparedData, cfg: Config, weight: float | None):
    """Per-user validation NDCG@10 of the fused model (two-stage), at ``weight`` if given."""
    model.eval()
    with retriever_weight(model, weight), torch.no_grad():
        res = evaluate_full_ranking(catalogue_scorer(model, cfg, "fused"), data, "valid", cfg.max_seq_len, ks=[10])
    return res.per_user["ndcg@10"]


def select_final_model(model: torch.nn.Module, data: PreparedData, cfg: Config,
                       checkpoints: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Load into ``model`` the (stage checkpoint, retriever weight) pair chosen on validation and
    return what was compared and chosen.

    ``checkpoints`` maps stage name -> model state dict, in stage order; pretrain_sasrec's is left
    out when others exist (its retriever is untrained: any "gain" from it is noise). Weighted
    fusion tries every weight of ``cfg.fusion_weight_grid`` and 0; learned/adaptive/feature fusion keep
    their own weights. The best pair on validation NDCG@10 (ties: earlier stage, smaller weight)
    must also beat the *baseline* — the first candidate at weight 0 (feature fusion: the first
    candidate, whose feature projection is still zero), i.e. SASRec alone with the default stages —
    in a paired permutation test over validation users at level
    ``cfg.final_model_alpha``; otherwise the baseline is kept. Picking the maximum of many noisy
    validation scores overstates the winner; this keeps the text branch and the joint stages only
    where validation shows a real gain. Test is never looked at.
    """
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
    # SASRec alone: the first candidate at weight 0 (weighted), or the first candidate itself with
    # feature fusion (its feature projection is zero until end_to_end trains it)
    alone_weight = {"weighted": 0.0, "feature": None}
    has_alone = model.fusion_method in alone_weight
    base_weight = alone_weight.get(model.fusion_method)
    if has_alone and (stage, weight) != (baseline, base_weight):
        model.load_state_dict(candidates[stage])
        chosen = _valid_ndcg_per_user(model, data, cfg, weight)
        model.load_state_dict(candidates[baseline])
        base = _valid_ndcg_per_user(model, data, cfg, base_weight)
        test = paired_permutation_test(chosen, base, seed=cfg.seed)
        record["paired_test_vs_baseline"] = test | {"alpha": cfg.final_model_alpha,
                                                    "baseline": {"stage": baseline, "retriever_weight": base_weight}}
        if not (test["mean_difference"] > 0 and test["p_value"] < cfg.final_model_alpha):
            stage, weight, value = baseline, base_weight, table[baseline][str(base_weight)]
    model.load_state_dict(candidates[stage])
    if weight is not None:
        set_retriever_weight(model, weight)
    return {"stage": stage, "retriever_weight": weight, "valid_ndcg@10": value, **record}


#: Where ``bench/memory_ablation.py`` publishes (committed with the repository, measured by the bench).
MEMORY_ABLATION = PROJECT_ROOT / "bench" / "results" / "memory_ablation.json"
ABLATION_MODELS = {"sasrec": "SASRec alone", "retriever": "retriever alone", "ur4rec": "shipped fused"}


def memory_ablation_table(path: Path = MEMORY_ABLATION) -> pd.DataFrame:
    """The per-user memory on/off rows measured by ``bench/memory_ablation.py`` (test, full ranking):
    mean ± std over seeds of NDCG@10 / Hit@10 / MRR@10 per model, and the paired test on − off.
    A missing results file gives a one-row table saying how to produce it."""
    if not path.is_file():
        return pd.DataFrame({"note": [f"{path.name} not found: run `python bench/memory_ablation.py` "
                                      "(5 seeds, see its docstring for the protocol and cost)"]})
    result = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for name, row in result["rows"].items():
        for model, label in ABLATION_MODELS.items():
            cells = {metric: f"{row[f'{model} {metric}']['mean']:.4f} ± {row[f'{model} {metric}']['std']:.4f}"
                     for metric in ("ndcg@10", "hit@10", "mrr@10")}
            rows.append({"row": name, "model": label, **cells, "seeds": len(row["seeds"])})
    for model, test in result.get("paired_test_on_vs_off", {}).items():
        rows.append({"row": "on − off (paired, per-user mean over seeds)", "model": ABLATION_MODELS[model],
                     "ndcg@10": f"{test['mean_difference']:+.4f} (p = {test['p_value']:.3f})"})
    return pd.DataFrame(rows).set_index(["row", "model"])


#: Where ``bench/text_ablation.py`` publishes.
TEXT_ABLATION = PROJECT_ROOT / "bench" / "results" / "text_ablation.json"


def _missing(path: Path) -> pd.DataFrame:
    return pd.DataFrame({"note": [f"{path.name} not found: run `python bench/text_ablation.py --jobs 2` "
                                  "(rows x seeds; its docstring gives the protocol and cost)"]})


def text_ablation_table(path: Path = TEXT_ABLATION) -> pd.DataFrame:
    """Every way text enters, as measured by ``bench/text_ablation.py``: per row, validation and test
    NDCG@10 / Hit@10 / MRR@10 (mean ± std over seeds), the paired test against ID-only SASRec, and
    whether validation picked it. A missing results file gives a one-row note saying how to make it."""
    if not path.is_file():
        return _missing(path)
    result = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for name in result["row_order"]:
        row = result["rows"][name]
        cells = {f"test {m}": f"{row[f'test {m}']['mean']:.4f} ± {row[f'test {m}']['std']:.4f}"
                 for m in ("ndcg@10", "hit@10", "mrr@10")}
        test = row.get("paired_vs_sasrec")
        vs = f"{test['mean_difference']:+.4f} (p = {test['p_value']:.3f})" if test else ""
        rows.append({"row": name, "seeds": len(row["seeds"]), "valid ndcg@10": f"{row['valid ndcg@10']['mean']:.4f}",
                     **cells, "vs sasrec": vs, "chosen on validation": name == result["winner_on_validation"]})
    return pd.DataFrame(rows).set_index("row")


def text_ablation_curve(path: Path = TEXT_ABLATION) -> pd.DataFrame:
    """The cold-start curve of ``bench/text_ablation.py``: rows x history lengths, mean test NDCG@10
    (empty when there are no results yet)."""
    if not path.is_file():
        return pd.DataFrame()
    result = json.loads(path.read_text(encoding="utf-8"))
    curves = {name: result["rows"][name]["cold_start_curve"] for name in result["row_order"]
              if "cold_start_curve" in result["rows"][name]}
    return pd.DataFrame({name: [c[k]["mean"] for k in result["history_lengths"]] for name, c in curves.items()},
                        index=result["history_lengths"]).T


#: Where ``bench/text_ablation_reasons.py`` publishes.
TEXT_ABLATION_REASONS = PROJECT_ROOT / "bench" / "results" / "text_ablation_reasons.json"
#: Per-seed measures of ``bench/text_ablation_reasons.py`` and how the table names them.
REASON_MEASURES = {
    "valid_ndcg@10": "valid ndcg@10",
    "text_r2": "text R² of item vectors",
    "gender_accuracy": "user vector → gender (accuracy)",
    "gender_majority": "gender majority rate",
    "age_r2": "user vector → age R²",
    "init_cosine": "cosine to the text start",
    "text_share": "text share of item vectors",
    "text_share_rare": "text share, rare items",
    "distill_cosine": "head → own text cosine",
    "distill_cosine_other_user": "head → another user's text cosine",
    "text_cosine_between_users": "two users' texts cosine",
}


def text_ablation_reasons_table(path: Path = TEXT_ABLATION_REASONS) -> pd.DataFrame:
    """What each SASRec-family row of the text ablation did with its text (``bench/
    text_ablation_reasons.py``): per row, the mean over its seeds of each measure it has (blank where a
    measure does not apply). A missing results file gives a one-row note saying how to make it."""
    if not path.is_file():
        return pd.DataFrame({"note": [f"{path.name} not found: run `python bench/text_ablation_reasons.py` "
                                      "after bench/text_ablation.py (it reads the trained runs)"]})
    result = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for name in result["row_order"]:
        per_seed = result["rows"][name]
        if name in ("late-fusion", "feature-fusion"):  # their own measures: the results file's other tables
            continue
        seeds = list(per_seed.values())
        cells = {label: round(sum(s[key] for s in seeds) / len(seeds), 4)
                 for key, label in REASON_MEASURES.items() if key in seeds[0]}
        rows.append({"row": name, "seeds": len(seeds), **cells})
    return pd.DataFrame(rows).set_index("row")
