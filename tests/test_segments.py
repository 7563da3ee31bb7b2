"""Cold-start curve and segments (ur4rec.evaluation.segments) on a small synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import synthetic_ml, write_grouplens
from ur4rec import data as urdata
from ur4rec.data.dataset import PreparedData
from ur4rec.evaluation.protocol import evaluate_full_ranking
from ur4rec.evaluation.segments import (
    history_length_curve,
    rare_target_users,
    segment_summary,
    short_history_users,
    train_item_counts,
)


@pytest.fixture
def prepared(tmp_path, tmp_cfg) -> PreparedData:
    folder = write_grouplens(tmp_path / "gl", synthetic_ml(n_users=40, n_items=30, per_user=9, seed=4))
    return PreparedData.load(urdata.prepare(tmp_cfg(data_path=str(folder))).path)


def test_counts_and_segments_match_a_direct_count(prepared: PreparedData) -> None:
    counts = train_item_counts(prepared)
    train = prepared.train_sequences()
    assert counts[0] == 0 and counts.sum() == sum(len(s) for s in train)
    direct = [sum(int(t) == int(h[0]) for s in train for t in s) <= 3 for h in prepared.held_out("test")]
    assert rare_target_users(prepared, "test", max_count=3).tolist() == direct
    lengths = np.array([len(h) for h in prepared.history("test")])
    short = short_history_users(prepared, "test")
    assert short.any() and lengths[short].max() <= lengths[~short].min()
    s = segment_summary(np.arange(len(short), dtype=float), short)
    assert s["users"] == int(short.sum()) and s["mean"] == pytest.approx(np.flatnonzero(short).mean())
    assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]


def test_curve_cuts_only_the_input_not_the_known_items(prepared: PreparedData) -> None:
    seen_widths = []

    def by_id(users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Ignores the history: ranks items by id, so only the excluded known items move the target."""
        seen_widths.append(seq.shape[1])
        return torch.arange(prepared.num_items + 1, dtype=torch.float32).expand(len(users), -1).clone()

    curve = history_length_curve(by_id, prepared, "test", max_seq_len=8, lengths=(1, 3, None))
    assert list(curve) == ["1", "3", "all"] and seen_widths == [1, 3, 8]
    whole = evaluate_full_ranking(by_id, prepared, "test", 8, ks=[10]).per_user["ndcg@10"]
    for values in curve.values():  # same exclusion of the whole history at every k
        assert np.array_equal(values, whole)

    def last_item(users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Scores the item after the last one shown: depends on what the cut leaves."""
        scores = torch.zeros(len(users), prepared.num_items + 1)
        scores[torch.arange(len(users)), (seq[:, 0] % prepared.num_items) + 1] = 1.0
        return scores

    cut = history_length_curve(last_item, prepared, "test", max_seq_len=8, lengths=(1, None))
    assert not np.array_equal(cut["1"], cut["all"])  # column 0 of a 1-wide input is the last item
    with pytest.raises(ValueError, match="between 1 and max_seq_len"):
        history_length_curve(by_id, prepared, "test", max_seq_len=8, lengths=(9,))
