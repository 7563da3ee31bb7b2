"""Catalogue scores for each model, as the protocol ranks them.

SASRec, MostPop and ItemKNN score the whole catalogue directly (one matmul). The retriever and
the fused model are per-pair networks, so they are ranked **two-stage**: SASRec ranks the whole
catalogue, the per-pair model re-ranks SASRec's top-R (``rerank_top_r``), and every item beyond R
keeps SASRec's order below them. The returned scores encode exactly that order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData

PairScorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (users, seq, cands) -> [B, R]


def two_stage_scores(
    first_stage: torch.Tensor,
    rerank: Callable[[torch.Tensor], torch.Tensor],
    top_r: int,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full-catalogue scores whose order is: re-ranked top-R first, then SASRec's order.

    first_stage: [B, N+1] scores (column 0 = padding); rerank(cands [B, R]) -> [B, R];
    exclude: bool [B, N+1] of items that may not be recommended (padding, known items).
    """
    b, n1 = first_stage.shape
    s = first_stage.detach().float().clone()
    s[:, 0] = float("-inf")
    if exclude is not None:
        s[exclude] = float("-inf")
    r = min(top_r, n1 - 1)
    order = torch.argsort(s, dim=1, descending=True, stable=True)  # SASRec's order of every item
    cands = order[:, :r]
    second = rerank(cands).detach().float()
    if not torch.isfinite(second).all():
        bad = (~torch.isfinite(second)).any(dim=1).nonzero().flatten().tolist()
        from ur4rec.evaluation.metrics import NonFiniteScoresError

        raise NonFiniteScoresError(bad, "two_stage_scores (re-ranking stage)")
    rerank_order = torch.argsort(second, dim=1, descending=True, stable=True)
    # position-based scores: top-R get 2N+1 .. 2N+2-R (by re-rank), the rest N .. (by SASRec)
    out = torch.empty_like(s)
    rows = torch.arange(b).unsqueeze(1)
    out[rows, order] = (n1 - torch.arange(n1, dtype=torch.float32)).expand(b, -1)
    top = cands.gather(1, rerank_order)
    out[rows, top] = (2 * n1 - torch.arange(r, dtype=torch.float32)).expand(b, -1)
    out[torch.isinf(s)] = float("-inf")
    return out


def sasrec_scorer(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda users, seq: model.sasrec.full_sort_predict(seq)


def per_pair_scorer(model: nn.Module, which: str, top_r: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Two-stage scorer for the retriever alone (``which='retriever'``) or the fused model."""

    def score(users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        first = model.sasrec.full_sort_predict(seq)
        exclude = torch.zeros_like(first, dtype=torch.bool)
        exclude.scatter_(1, seq, True)  # the history shown (known items); column 0 = padding
        if which == "retriever":
            fn = lambda c: model.retriever(users, c)["scores"]  # noqa: E731
        else:
            fn = lambda c: model(users, seq, c)["scores"]  # noqa: E731
        return two_stage_scores(first, fn, top_r, exclude)

    return score


def validation_metric(model: nn.Module, data: PreparedData, cfg: Config, stage: str) -> float:
    """Validation NDCG@10 of the branch a stage trains (early stopping)."""
    from ur4rec.evaluation.protocol import evaluate_full_ranking

    model.eval()
    if stage == "pretrain_sasrec":
        scorer = sasrec_scorer(model)
    else:
        scorer = per_pair_scorer(model, "retriever" if stage == "pretrain_retriever" else "fused", cfg.rerank_top_r)
    with torch.no_grad():
        result = evaluate_full_ranking(scorer, data, "valid", cfg.max_seq_len, ks=[10])
    return result.summary["ndcg@10"]
