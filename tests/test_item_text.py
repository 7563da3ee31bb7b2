"""Text inside SASRec: item text in the item vectors (init / add / alphafuse) and user-text distillation."""

from __future__ import annotations

import pytest
import torch

from ur4rec.config import ConfigError, config_from_dict
from ur4rec.models.item_text import whitened_components
from ur4rec.models.sasrec import SASRec

pytestmark = pytest.mark.usefixtures("one_thread")

N, H, L, U, TEXT, S = 40, 16, 8, 6, 24, 6


def _texts() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    # item texts with a dominant low-rank structure, as sentence embeddings of similar films have
    base = torch.randn(N, 3, generator=g) @ torch.randn(3, TEXT, generator=g)
    item = torch.cat([torch.zeros(1, TEXT), base + 0.1 * torch.randn(N, TEXT, generator=g)])
    return item, torch.randn(U, TEXT, generator=g)


def _model(mode: str = "none", weight: float = 0.0, dropout: float = 0.0, seed: int = 0) -> SASRec:
    item, user = _texts()
    torch.manual_seed(seed)
    return SASRec(N, H, 2, 2, dropout, L, item_text=mode, item_text_emb=item, text_components=S,
                  user_text_emb=user, user_text_weight=weight)


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N + 1, (10, L), generator=g)
    seq[:3, :4] = 0  # some short, left-padded users
    tgt = torch.zeros_like(seq)
    tgt[:, -1] = torch.randint(1, N + 1, (10,), generator=g)
    return seq, tgt, torch.randint(0, U, (10,), generator=g)


def test_whitened_components_are_centred_unit_variance_and_uncorrelated() -> None:
    item, _ = _texts()
    w = whitened_components(item, 5)
    assert w.shape == (N + 1, 5) and torch.equal(w[0], torch.zeros(5))
    cov = torch.cov(w[1:].T.double())
    assert torch.allclose(w[1:].mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(cov, torch.eye(5, dtype=torch.float64), atol=1e-4)
    # signs are fixed by the loadings, not by the SVD's arbitrary choice: listing the items in another
    # order gives each item the same coordinates
    order = torch.randperm(N, generator=torch.Generator().manual_seed(3)) + 1
    perm = torch.cat([torch.zeros(1, dtype=torch.long), order])
    assert torch.allclose(whitened_components(item[perm], 5), w[perm], atol=1e-4)
    with pytest.raises(ValueError, match="principal components"):
        whitened_components(item, TEXT + 1)


def test_none_is_the_id_only_model_weight_for_weight() -> None:
    torch.manual_seed(0)
    plain = SASRec(N, H, 2, 2, 0.0, L)
    texted = _model("none")
    assert plain.state_dict().keys() == texted.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), texted.state_dict().values()))
    assert texted.item_vectors() is texted.item_embedding.weight


def test_init_starts_from_the_text_components_and_then_trains_as_ids() -> None:
    model = _model("init")
    item, _ = _texts()
    assert torch.allclose(model.item_embedding.weight, whitened_components(item, H) * 0.02)
    assert dict(model.named_parameters()).keys() == dict(_model("none").named_parameters()).keys()
    seq, tgt, users = _batch()
    model.calculate_loss(seq, tgt, last_only=True).backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["add", "alphafuse"])
def test_frozen_text_stays_frozen_while_ids_and_text_weights_learn(mode: str) -> None:
    model = _model(mode)
    vectors = model.item_vectors()
    assert vectors.shape == (N + 1, H) and torch.equal(vectors[0], torch.zeros(H))
    assert "item_text.text" not in dict(model.named_parameters())  # a buffer, not trained
    frozen = model.item_text.text.clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seq, tgt, _ = _batch()
    for _ in range(3):
        opt.zero_grad()
        model.calculate_loss(seq, tgt, last_only=True).backward()
        opt.step()
    assert torch.equal(model.item_text.text, frozen)
    assert model.item_embedding.weight.grad.abs().sum() > 0
    learned = model.item_text.adapter.weight if mode == "add" else model.item_text.text_scale
    assert learned.grad.abs().sum() > 0
    assert torch.equal(model.item_vectors()[0], torch.zeros(H))  # padding stays zero after training


def test_alphafuse_keeps_the_text_in_the_leading_dims_and_ids_in_the_rest() -> None:
    model = _model("alphafuse")
    item, _ = _texts()
    assert model.item_embedding.weight.shape == (N + 1, H - S)
    v = model.item_vectors()
    assert torch.allclose(v[:, :S], model.item_text.text_scale * whitened_components(item, S))
    assert torch.equal(v[:, S:], model.item_embedding.weight)
    with pytest.raises(ConfigError, match="sasrec_text_components"):
        config_from_dict({"sasrec_item_text": "alphafuse", "sasrec_text_components": 64, "sasrec_hidden_dim": 64})


@pytest.mark.parametrize("mode", ["none", "init", "add", "alphafuse"])
def test_input_and_output_embeddings_are_the_same_item_vectors(mode: str) -> None:
    model = _model(mode).eval()
    seq, _, _ = _batch()
    full = model.full_sort_predict(seq)
    cands = torch.randint(1, N + 1, (len(seq), 7))
    assert torch.allclose(model.predict(seq, cands), full.gather(1, cands), atol=1e-6)
    # the input side reads the same rows: changing the vectors' function changes the representation
    with torch.no_grad():
        before = model.user_representation(seq)
        model.item_embedding.weight.mul_(2.0)
    assert not torch.allclose(before, model.user_representation(seq))


def test_item_text_needs_matching_embeddings() -> None:
    item, _ = _texts()
    with pytest.raises(ValueError, match="needs the item text embeddings"):
        SASRec(N, H, 2, 2, 0.0, L, item_text="add")
    with pytest.raises(ValueError, match="rows, expected"):
        SASRec(N + 2, H, 2, 2, 0.0, L, item_text="add", item_text_emb=item)
    with pytest.raises(ValueError, match="sasrec_item_text must be one of"):
        SASRec(N, H, 2, 2, 0.0, L, item_text="concat", item_text_emb=item)


def test_user_text_distillation_adds_its_cosine_loss_and_costs_nothing_at_inference() -> None:
    plain, distilled = _model(weight=0.0), _model(weight=0.5)
    seq, tgt, users = _batch()
    base = plain.calculate_loss(seq, tgt, last_only=True)
    loss = distilled.calculate_loss(seq, tgt, last_only=True, users=users)
    h = distilled.forward(seq, last_only=True)[:, -1]
    _, user_text = _texts()
    cos = torch.nn.functional.cosine_similarity(distilled.user_text.head(h), user_text[users], dim=-1)
    assert torch.allclose(loss, base + 0.5 * (1 - cos).mean(), atol=1e-6)
    loss.backward()
    assert distilled.user_text.head.weight.grad.abs().sum() > 0
    assert distilled.blocks[0].qkv.weight.grad.abs().sum() > 0  # the signal reaches the sequence encoder
    # the head is built after everything else: same seed, same SASRec weights, same inference scores
    assert torch.equal(plain.eval().full_sort_predict(seq), distilled.eval().full_sort_predict(seq))
    assert "user_text.target" not in distilled.state_dict()  # rebuilt from the texts, not checkpointed
    with pytest.raises(ValueError, match="pass users"):
        distilled.calculate_loss(seq, tgt, last_only=True)
