"""Where text should matter: short histories and rare items.

ML-100K has no short histories (its shortest training history is 18 items), so they are simulated:
``history_length_curve`` scores every user from only the last ``k`` items of their history, under
the same full-ranking protocol (the user's whole history is still excluded from the ranking, as it is
known). Only the sequence input is cut: a user text, where a model reads one, still summarises the
whole training history, so the curve is fair only to models whose inference reads no user text
(SASRec and its item-text and distillation variants).

Segments of the held-out targets: ``rare_target_users`` (the target has at most ``max_count``
training interactions) and ``short_history_users`` (the user's history is in the shortest quartile).
``segment_summary`` gives a segment's mean and bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ur4rec.data.dataset import PreparedData, Split
from ur4rec.evaluation.protocol import Scorer, evaluate_full_ranking
from ur4rec.evaluation.statistics import bootstrap_ci

#: History lengths of the cold-start curve (None = the whole history, up to max_seq_len).
HISTORY_LENGTHS: tuple[int | None, ...] = (1, 2, 3, 5, 10, None)


def history_length_curve(score: Scorer, data: PreparedData, split: Split, max_seq_len: int,
                         lengths: Sequence[int | None] = HISTORY_LENGTHS, metric: str = "ndcg@10",
                         ) -> dict[str, np.ndarray]:
    """Per-user ``metric`` on ``split`` when each user is scored from their last ``k`` history items,
    for each ``k`` of ``lengths`` (keys "1", "2", ..., "all")."""
    k_metric = int(metric.split("@")[1])
    out = {}
    for k in lengths:
        if k is not None and not 1 <= k <= max_seq_len:
            raise ValueError(f"history length {k} must be between 1 and max_seq_len ({max_seq_len})")
        res = evaluate_full_ranking(score, data, split, max_seq_len if k is None else k, ks=[k_metric])
        out["all" if k is None else str(k)] = res.per_user[metric]
    return out


def train_item_counts(data: PreparedData) -> np.ndarray:
    """Training interactions per item id [N+1] (index 0 = padding = 0)."""
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for seq in data.train_sequences():
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1)
    return counts


def rare_target_users(data: PreparedData, split: Split, max_count: int = 10) -> np.ndarray:
    """Bool per user: the held-out target of ``split`` has at most ``max_count`` training interactions."""
    counts = train_item_counts(data)
    return np.array([counts[int(h[0])] <= max_count for h in data.held_out(split)])


def short_history_users(data: PreparedData, split: Split, quantile: float = 0.25) -> np.ndarray:
    """Bool per user: the history before ``split`` is at most its ``quantile`` over users in length."""
    lengths = np.array([len(h) for h in data.history(split)])
    return lengths <= np.quantile(lengths, quantile)


def segment_summary(per_user: np.ndarray, mask: np.ndarray, seed: int = 0) -> dict[str, float | int | list[float]]:
    """Mean of ``per_user`` over the users in ``mask``, its 95% bootstrap CI and the user count."""
    values = np.asarray(per_user, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    if len(values) == 0:
        return {"users": 0, "mean": float("nan"), "ci95": [float("nan"), float("nan")]}
    return {"users": int(len(values)), "mean": float(values.mean()), "ci95": list(bootstrap_ci(values, seed=seed))}


def curve_table(curves: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Rows = models, columns = history lengths, cells = the mean over users."""
    return pd.DataFrame({name: {k: float(np.mean(v)) for k, v in curve.items()} for name, curve in curves.items()}).T
