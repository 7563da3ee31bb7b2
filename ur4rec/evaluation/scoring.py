"""Catalogue scores for each model, as the protocol ranks them.

SASRec, MostPop and ItemKNN score the whole catalogue directly (one matmul). The retriever and
the fused model are per-pair networks, so they are ranked **two-stage**: SASRec ranks the whole
catalogue, the per-pair model re-ranks SASRec's top-R (``rerank_top_r``), and every item beyond R
keeps SASRec's order below them. The returned scores encode exactly that order.

``catalogue_scorer(model, cfg, branch)`` is the one place a config turns into a scorer (top-R
included). Every scorer runs the model where the model lives (a GPU, ``ur4rec.devices``) and hands
its scores back on the device its inputs came from (the protocol's CPU). ``retriever_weight(model,
w)`` ranks the fused model at another fusion weight for the length of a ``with`` block and puts the
model's own weights back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData
from ur4rec.devices import module_device
from ur4rec.evaluation.metrics import NonFiniteScoresError
from ur4rec.evaluation.protocol import Scorer, evaluate_full_ranking

#: A branch of the fused model, or the fused model itself.
Branch = Literal["sasrec", "retriever", "fused"]
BRANCHES: tuple[Branch, ...] = ("sasrec", "retriever", "fused")
#: The branch each training stage improves (what its early stopping watches).
STAGE_BRANCH: dict[str, Branch] = {"pretrain_sasrec": "sasrec", "pretrain_retriever": "retriever",
                                   "joint_finetune": "fused", "end_to_end": "fused"}


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
        raise NonFiniteScoresError(bad, "two_stage_scores (re-ranking stage)")
    rerank_order = torch.argsort(second, dim=1, descending=True, stable=True)
    # position-based scores: top-R get 2N+1 .. 2N+2-R (by re-rank), the rest N .. (by SASRec)
    out = torch.empty_like(s)
    rows = torch.arange(b, device=s.device).unsqueeze(1)
    out[rows, order] = (n1 - torch.arange(n1, dtype=torch.float32, device=s.device)).expand(b, -1)
    top = cands.gather(1, rerank_order)
    out[rows, top] = (2 * n1 - torch.arange(r, dtype=torch.float32, device=s.device)).expand(b, -1)
    out[torch.isinf(s)] = float("-inf")
    return out


def candidate_scores(model: nn.Module, branch: Branch, users: torch.Tensor, seq: torch.Tensor,
                     cands: torch.Tensor) -> torch.Tensor:
    """Scores [B, C] of the given candidates by one branch (a held-out prediction: no memory write),
    computed on the model's device and returned on ``cands``' device."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    device = module_device(model)
    users, seq, c = users.to(device), seq.to(device), cands.to(device)
    if branch == "retriever":
        out = model.retriever(users, c)["scores"]
    elif branch == "fused":
        out = model(users, seq, c)["scores"]
    else:
        out = model.sasrec.full_sort_predict(seq).gather(1, c)
    return out.to(cands.device)


def sasrec_scorer(model: nn.Module) -> Scorer:
    device = module_device(model)
    return lambda users, seq: model.sasrec.full_sort_predict(seq.to(device)).to(seq.device)


def per_pair_scorer(model: nn.Module, which: Branch, top_r: int) -> Scorer:
    """Two-stage scorer for the retriever alone (``which='retriever'``) or the fused model (``'fused'``)
    with an explicit top-R; ``catalogue_scorer`` takes R from the config."""
    if which not in ("retriever", "fused"):
        raise ValueError(f"per_pair_scorer ranks 'retriever' or 'fused', got {which!r}")

    device = module_device(model)

    def score(users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        home, users, seq = seq.device, users.to(device), seq.to(device)
        first = model.sasrec.full_sort_predict(seq)
        exclude = torch.zeros_like(first, dtype=torch.bool)
        exclude.scatter_(1, seq, True)  # the history shown (known items); column 0 = padding
        scores = two_stage_scores(first, lambda c: candidate_scores(model, which, users, seq, c), top_r, exclude)
        return scores.to(home)

    return score


def catalogue_scorer(model: nn.Module, cfg: Config, branch: Branch) -> Scorer:
    """The protocol's catalogue scorer of one branch: SASRec whole-catalogue, the retriever and the
    fused model two-stage over SASRec's top ``cfg.rerank_top_r``."""
    if branch == "sasrec":
        return sasrec_scorer(model)
    return per_pair_scorer(model, branch, cfg.rerank_top_r)


def set_retriever_weight(model: nn.Module, weight: float) -> None:
    """Fix weighted fusion's weights to (SASRec 1 - w, retriever w)."""
    if getattr(model, "fusion_method", None) != "weighted":
        raise ValueError("a retriever weight applies only to fusion_method: weighted (the other methods learn "
                         f"their weights); this model uses {getattr(model, 'fusion_method', None)!r}")
    model.fixed_weights.copy_(torch.tensor([1.0 - weight, weight]))


@contextmanager
def retriever_weight(model: nn.Module, weight: float | None) -> Iterator[nn.Module]:
    """Rank with retriever weight ``weight`` inside the block (``None``: the model's own weights);
    the model's weights are restored on exit, also after an error."""
    if weight is None:
        yield model
        return
    saved = model.fixed_weights.clone()
    try:
        set_retriever_weight(model, weight)
        yield model
    finally:
        model.fixed_weights.copy_(saved)


def validation_metric(model: nn.Module, data: PreparedData, cfg: Config, stage: str) -> float:
    """Validation NDCG@10 of the branch a stage trains (early stopping)."""
    if stage not in STAGE_BRANCH:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGE_BRANCH)}")
    model.eval()
    with torch.no_grad():
        result = evaluate_full_ranking(catalogue_scorer(model, cfg, STAGE_BRANCH[stage]), data, "valid",
                                       cfg.max_seq_len, ks=[10])
    return result.summary["ndcg@10"]
