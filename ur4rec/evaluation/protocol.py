"""The evaluation protocol: every user, the whole catalogue, known items excluded.

A scorer is any callable ``score(users [B], histories [B, L]) -> scores [B, N+1]`` (column 0 is
padding). ``evaluate_full_ranking`` feeds it every user's history before the split (training items
for validation; training + validation items for test), excludes those known items, and ranks the
first held-out item (the only one under leave-one-out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ur4rec.data.batching import pad_left
from ur4rec.data.dataset import PreparedData, Split
from ur4rec.evaluation.metrics import NonFiniteScoresError, metrics_from_ranks, summarise, target_ranks

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    split: str
    users: np.ndarray
    ranks: np.ndarray
    per_user: dict[str, np.ndarray]

    @property
    def summary(self) -> dict[str, float]:
        return summarise(self.per_user)


def known_items_mask(histories: list[np.ndarray], num_items: int) -> torch.Tensor:
    mask = torch.zeros(len(histories), num_items + 1, dtype=torch.bool)
    for i, h in enumerate(histories):
        mask[i, torch.as_tensor(h, dtype=torch.long)] = True
    return mask


@torch.no_grad()
def evaluate_full_ranking(
    score: Scorer,
    data: PreparedData,
    split: Split,
    max_seq_len: int,
    ks: Iterable[int] = (5, 10, 20),
    batch_size: int = 256,
    users: np.ndarray | None = None,
    exclude_known: bool = True,
) -> EvalResult:
    """Full-ranking metrics of ``score`` on ``split`` for every user (or the given users).

    ``exclude_known=False`` ranks the user's known items too (only padding is excluded): RecBole's
    protocol for sequential models, used only to compare with numbers it printed."""
    histories = data.history(split)
    held_out = data.held_out(split)
    users = np.arange(data.num_users) if users is None else np.asarray(users)
    ranks = np.zeros(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        hist = [histories[u] for u in batch]
        seq = pad_left(hist, max_seq_len)
        scores = score(torch.as_tensor(batch), seq)
        targets = torch.as_tensor([held_out[u][0] for u in batch])
        try:
            known = known_items_mask(hist if exclude_known else [np.zeros(0, dtype=np.int64)] * len(hist),
                                     data.num_items)
            r = target_ranks(scores, targets, known, user_ids=batch.tolist())
        except NonFiniteScoresError as err:
            raise NonFiniteScoresError(err.users, f"evaluate_full_ranking(split={split})") from None
        ranks[start:start + len(batch)] = r.numpy()
    return EvalResult(split, users, ranks, metrics_from_ranks(ranks, ks))
