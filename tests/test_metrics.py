"""Metric functions on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ur4rec.evaluation import NonFiniteScoresError, full_ranking_metrics, metrics_from_ranks, target_ranks


def test_rank_excludes_padding_and_known_items() -> None:
    # items 1..5; column 0 is padding and must never count even with a huge score
    scores = torch.tensor([[99.0, 0.1, 0.9, 0.5, 0.8, 0.2]])
    assert target_ranks(scores, torch.tensor([3])).item() == 3  # 0.9 and 0.8 above 0.5
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    exclude[0, 2] = True  # a known item is not ranked
    assert target_ranks(scores, torch.tensor([3]), exclude).item() == 2


def test_ties_count_against_the_target() -> None:
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, torch.tensor([1])).item() == 4  # constant scores: last, not first
    scores = torch.tensor([[0.0, 2.0, 1.0, 1.0, 0.5]])
    assert target_ranks(scores, torch.tensor([2])).item() == 3  # one higher, one tie


def test_hand_computed_metrics() -> None:
    m = metrics_from_ranks(np.array([1, 3, 11]), ks=[10])
    assert m["hit@10"].tolist() == [1.0, 1.0, 0.0]
    assert m["ndcg@10"].tolist() == pytest.approx([1.0, 1 / math.log2(4), 0.0])
    assert m["mrr@10"].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert m["mrr"].tolist() == pytest.approx([1.0, 1 / 3, 1 / 11])


def test_k_larger_than_catalogue_and_one_user() -> None:
    scores = torch.tensor([[0.0, 0.3, 0.2, 0.1]])
    out = full_ranking_metrics(scores, torch.tensor([3]), ks=[2, 50])
    assert out["hit@2"] == 0.0 and out["hit@50"] == 1.0
    assert out["ndcg@50"] == pytest.approx(1 / math.log2(4)) and out["mean_rank"] == 3.0


def test_non_finite_scores_name_the_users_instead_of_skipping() -> None:
    scores = torch.rand(4, 6)
    scores[2, 4] = float("nan")
    with pytest.raises(NonFiniteScoresError) as err:
        target_ranks(scores, torch.tensor([1, 1, 1, 1]), user_ids=[10, 11, 12, 13])
    assert err.value.users == [12]
    # a NaN in an excluded column (padding or a known item) is not ranked, so not an error
    scores[2, 4] = 0.5
    scores[:, 0] = float("nan")
    assert target_ranks(scores, torch.tensor([1, 1, 1, 1])).shape == (4,)


def test_two_stage_scores_rerank_top_r_and_keep_sasrec_order_below() -> None:
    from ur4rec.evaluation.scoring import two_stage_scores

    first = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]])  # SASRec order: 1, 2, 3, 4, 5
    exclude = torch.zeros_like(first, dtype=torch.bool)
    exclude[0, 2] = True  # item 2 is known: never recommended, not among the candidates
    seen = {}

    def rerank(cands: torch.Tensor) -> torch.Tensor:
        seen["cands"] = cands.tolist()
        return torch.tensor([[0.1, 0.9]])  # reverses the top-2

    out = two_stage_scores(first, rerank, top_r=2, exclude=exclude)
    assert seen["cands"] == [[1, 3]]
    order = torch.argsort(out[0], descending=True).tolist()
    assert order[:4] == [3, 1, 4, 5]  # re-ranked top-2, then SASRec's order
    assert torch.isinf(out[0, 0]) and torch.isinf(out[0, 2])
