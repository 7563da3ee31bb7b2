"""Seeded uniform negative sampling that excludes each user's own items."""

from __future__ import annotations

import numpy as np
import torch


def known_matrix(sequences: list[np.ndarray], num_items: int) -> torch.Tensor:
    """Bool [U, N+1]: True where the user interacted with the item (column 0 = padding, True)."""
    known = torch.zeros(len(sequences), num_items + 1, dtype=torch.bool)
    for u, s in enumerate(sequences):
        known[u, torch.as_tensor(s, dtype=torch.long)] = True
    known[:, 0] = True
    return known


def sample_negatives(
    users: torch.Tensor, n: int, known: torch.Tensor, generator: torch.Generator, max_rounds: int = 100
) -> torch.Tensor:
    """``n`` item ids per user drawn uniformly from 1..N, never one of the user's items: [B, n]."""
    num_items = known.shape[1] - 1
    out = torch.randint(1, num_items + 1, (len(users), n), generator=generator)
    for _ in range(max_rounds):
        clash = known[users.unsqueeze(1), out]
        if not clash.any():
            return out
        out[clash] = torch.randint(1, num_items + 1, (int(clash.sum()),), generator=generator)
    raise RuntimeError("negative sampling did not converge: some user has interacted with almost every item")


@torch.no_grad()
def sample_topr_negatives(
    scores: torch.Tensor, users: torch.Tensor, positives: torch.Tensor, n: int, known: torch.Tensor, top_r: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``n`` negatives per row drawn uniformly from the top-R of ``scores`` [B, N+1] (SASRec's
    catalogue scores), never padding, a known item or the row's positive: [B, n]."""
    s = scores.clone()
    s[known[users]] = float("-inf")
    s.scatter_(1, positives.view(-1, 1), float("-inf"))
    top = torch.topk(s, min(top_r, s.shape[1] - 1), dim=1).indices
    pick = torch.randint(0, top.shape[1], (len(users), n), generator=generator)
    return top.gather(1, pick)
