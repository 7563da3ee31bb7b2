"""SASRec: finite in every mode for every padding, and the naive construction shown to fail."""

from __future__ import annotations

import itertools

import pytest
import torch

from ur4rec.diagnostics.reproductions import reproduce_bpr_overflow, reproduce_masked_attention_nan
from ur4rec.models.dropout import fast_dropout
from ur4rec.models.sasrec import SASRec, attention_mask

L = 12


def _batch(batch_size: int) -> torch.Tensor:
    """Left-padded rows cycling through every history length 0..L."""
    seq = torch.zeros(batch_size, L, dtype=torch.long)
    for i in range(batch_size):
        n = i % (L + 1)
        if n:
            seq[i, L - n:] = torch.randint(1, 41, (n,))
    return seq


def test_naive_mha_gives_nan_exactly_where_the_issue_says_and_ours_never() -> None:
    r = reproduce_masked_attention_nan(max_seq_len=10)
    naive, ours = r["naive"], r["workbench"]
    # every padded user (lengths 1..9) is NaN in eval without grad; the full-length user never
    assert naive["eval/no_grad"] == [True] * 9 + [False]
    assert not any(naive["train/grad"]) and not any(naive["train/no_grad"])
    assert not any(v for mode in ours.values() for v in mode)


@pytest.mark.parametrize("batch_size, dropout", list(itertools.product([1, 32, 64, 128], [0.0, 0.25])))
def test_scores_finite_in_every_mode_for_every_length(batch_size: int, dropout: float) -> None:
    torch.manual_seed(batch_size)
    model = SASRec(40, 16, 2, 2, dropout, L)
    seq = _batch(batch_size)
    for train, ctx in itertools.product([True, False], [torch.enable_grad, torch.no_grad, torch.inference_mode]):
        model.train(train)
        with ctx():
            assert torch.isfinite(model.forward(seq)).all()
            assert torch.isfinite(model.full_sort_predict(seq)).all()


def test_no_attention_row_is_ever_empty() -> None:
    mask = attention_mask(_batch(30))
    assert mask.any(dim=-1).all()


def test_predict_equals_full_sort_columns_and_padding_is_ignored() -> None:
    torch.manual_seed(0)
    model = SASRec(40, 16, 2, 2, 0.0, L).eval()
    seq = _batch(8)
    cands = torch.randint(1, 41, (8, 5))
    full = model.full_sort_predict(seq)
    assert torch.allclose(model.predict(seq, cands), full.gather(1, cands), atol=1e-6)
    # more left padding cannot change the user representation (padding is never attended to)
    wide = SASRec(40, 16, 2, 2, 0.0, L + 4).eval()
    wide.load_state_dict({k: (v if k != "position_embedding.weight" else torch.cat([torch.randn(4, 16), v]))
                          for k, v in model.state_dict().items()})
    longer = torch.cat([torch.zeros(8, 4, dtype=torch.long), seq], 1)
    assert torch.allclose(wide.user_representation(longer), model.user_representation(seq), atol=1e-6)


@pytest.mark.parametrize("loss_type", ["ce", "bpr", "bce"])
def test_losses_are_finite_and_backpropagate(loss_type: str) -> None:
    torch.manual_seed(0)
    model = SASRec(40, 16, 2, 2, 0.1, L)
    seq = _batch(16)
    tgt = torch.where(seq != 0, torch.randint(1, 41, seq.shape), 0)
    neg = torch.randint(1, 41, seq.shape)
    loss = model.calculate_loss(seq, tgt, loss_type, neg)
    loss.backward()
    assert torch.isfinite(loss) and model.item_embedding.weight.grad.abs().sum() > 0


def test_bpr_overflow_reproduction() -> None:
    r = reproduce_bpr_overflow()
    assert r["naive"][0] == float("inf")
    assert all(torch.isfinite(torch.tensor(r["workbench"])))


@pytest.mark.parametrize("hidden_dim", [64, 48])  # sqrt(H) a power of two, and not
def test_embed_gives_bit_for_bit_what_scaling_and_masking_the_gather_gives(hidden_dim: int) -> None:
    """``SASRec.embed`` scales the table, not the [B, L, H] gather, and folds the padding mask into the
    embedding dropout mask: the same values and the same random draws as the plain formulation."""
    seq = _batch(64)
    torch.manual_seed(0)
    model = SASRec(40, hidden_dim=hidden_dim, num_heads=2, dropout=0.2, max_seq_len=L)
    vectors = model.item_vectors()
    pos = model.position_embedding(model.position_ids(seq))
    keep = (seq != 0).unsqueeze(-1).float()
    for training in (True, False):
        model.train(training)
        torch.manual_seed(1)
        x, k = model.embed(seq, vectors)
        torch.manual_seed(1)
        plain = fast_dropout(torch.nn.functional.embedding(seq, vectors) * hidden_dim**0.5 + pos, 0.2, training) * keep
        assert torch.equal(x, plain) and torch.equal(k, keep)
