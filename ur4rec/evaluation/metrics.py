"""Ranking metrics: the one implementation that training (early stopping) and evaluation share.

Protocol (full ranking): every item of the catalogue is scored for each user; padding (column 0)
and the user's known items are excluded; the held-out item's rank is

    rank = 1 + #{items scoring higher} + #{other items scoring exactly the same}

i.e. **ties count against the target**: a model that gives every item the same score ranks the
target last, not first. Hit@K = [rank <= K]; NDCG@K = 1/log2(rank + 1) if rank <= K (one relevant
item, so the ideal DCG is 1); MRR@K = 1/rank if rank <= K. K larger than the catalogue is allowed
(Hit@K is then 1). A non-finite score among the ranked items is an error naming the users — a
batch is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ur4rec.errors import UR4RecError

#: Every metric a leaderboard reports (per model and split; each with a 95% bootstrap CI).
REPORTED = ["hit@5", "ndcg@5", "hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "mrr", "mean_rank"]
#: The headline subset that summaries show side by side (seed sweeps, report index, peer benches).
HEADLINE = ["hit@10", "ndcg@10", "mrr@10", "ndcg@20"]


class NonFiniteScoresError(UR4RecError):
    """Scores contained NaN/Inf for some users; evaluation refuses to drop them silently."""

    def __init__(self, users: Sequence[int], where: str) -> None:
        self.users = list(users)
        shown = ", ".join(map(str, self.users[:20])) + (" ..." if len(self.users) > 20 else "")
        super().__init__(
            f"Non-finite scores for {len(self.users)} user(s): {shown}.",
            where=where,
            fix="run `ur4rec doctor` on the run to find the module that produced them",
        )


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    user_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """1-based rank of each target among the non-excluded items (ties count against the target).

    scores: [B, N+1] (column 0 = padding, always excluded); targets: [B] item ids in 1..N;
    exclude: optional bool [B, N+1], True = not ranked (known items). The target is never excluded.
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [B, N+1] and targets [B]; got {tuple(scores.shape)}, {tuple(targets.shape)}")
    scores = scores.detach().float()
    mask = torch.zeros_like(scores, dtype=torch.bool) if exclude is None else exclude.clone()
    mask[:, 0] = True
    rows = torch.arange(scores.shape[0])
    mask[rows, targets] = False
    bad = (~torch.isfinite(scores) & ~mask).any(dim=1)
    if bad.any():
        ids = bad.nonzero().flatten().tolist()
        raise NonFiniteScoresError([user_ids[i] for i in ids] if user_ids is not None else ids, "target_ranks")
    target_scores = scores[rows, targets].unsqueeze(1)
    ranked = ~mask
    higher = ((scores > target_scores) & ranked).sum(dim=1)
    ties = ((scores == target_scores) & ranked).sum(dim=1) - 1  # minus the target itself
    return 1 + higher + ties


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, ks: Iterable[int] = (5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user metric values (arrays) from 1-based ranks: hit@k, ndcg@k, mrr@k, mrr, rank."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r <= k
        out[f"hit@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / r, 0.0)
    out["mrr"] = 1.0 / r
    out["rank"] = r
    return out


def summarise(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over users (``rank`` becomes ``mean_rank``)."""
    return {("mean_rank" if k == "rank" else k): float(v.mean()) for k, v in per_user.items()}


def full_ranking_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    ks: Iterable[int] = (5, 10, 20),
) -> dict[str, float]:
    """Mean Hit@K, NDCG@K, MRR@K, MRR and mean rank of one batch of full-catalogue scores."""
    return summarise(metrics_from_ranks(target_ranks(scores, targets, exclude), ks))
