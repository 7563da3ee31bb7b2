"""Non-neural baselines on the same split and the same metric code: MostPop and ItemKNN.

Both are fitted on the interactions a model may see before the evaluated split (training items for
validation; training + validation items for test), so they obey the same no-leakage rule.
"""

from __future__ import annotations

import numpy as np
import torch

from ur4rec.data.dataset import PreparedData, Split


class MostPop:
    """Scores every item by how often it occurs in the users' histories."""

    name = "mostpop"

    def __init__(self, data: PreparedData, split: Split) -> None:
        hist = np.concatenate(data.history(split))
        self.popularity = torch.tensor(np.bincount(hist, minlength=data.num_items + 1), dtype=torch.float32)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.popularity.expand(len(users), -1)


class ItemKNN:
    """Item-item cosine similarity of binary interaction columns; a user scores an item by the
    summed similarity to the items in their history (the target's own column excluded by masking
    known items at ranking time)."""

    name = "itemknn"

    def __init__(self, data: PreparedData, split: Split, shrink: float = 10.0) -> None:
        histories = data.history(split)
        n = data.num_items + 1
        rows = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)])
        cols = np.concatenate(histories)
        r = torch.zeros(len(histories), n)
        r[rows, cols] = 1.0
        self.user_items = r
        co = r.T @ r  # co-occurrence counts [n, n]
        norm = r.sum(0).sqrt()
        sim = co / (norm[:, None] * norm[None, :] + shrink)
        sim.fill_diagonal_(0.0)
        self.similarity = sim

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_items[users] @ self.similarity
