"""MoE retriever, user memory and fusion: finite everywhere, vectorised == naive, gradients flow."""

from __future__ import annotations

import itertools

import pytest
import torch

from ur4rec.config import Config
from ur4rec.errors import UR4RecError
from ur4rec.models import SASRec, TextPreferenceRetrieverMoE, UR4RecV2MoE, build_model

U, N, L = 30, 60, 10


def _embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = torch.nn.functional.normalize(torch.randn(U, 384, generator=g), dim=-1)
    item = torch.cat([torch.zeros(1, 384), torch.nn.functional.normalize(torch.randn(N, 384, generator=g), dim=-1)])
    return user, item


def _model(fusion: str = "weighted", dropout: float = 0.0, memory: int = 3, trigger: str = "EXPLICIT") -> UR4RecV2MoE:
    torch.manual_seed(0)
    cfg = Config(max_seq_len=L, sasrec_hidden_dim=16, sasrec_num_heads=2, sasrec_dropout=dropout,
                 retriever_output_dim=16, moe_num_heads=2, moe_dropout=dropout, moe_num_proxies=3,
                 max_memory_size=memory, update_trigger=trigger, fusion_method=fusion)
    return build_model(cfg, U, N, *_embeddings())


def _batch(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seq = torch.zeros(b, L, dtype=torch.long)
    for i in range(b):
        n = i % (L + 1)  # every history length 0..L, including no history at all
        if n:
            seq[i, L - n:] = torch.randint(1, N + 1, (n,))
    return torch.arange(b) % U, seq, torch.randint(1, N + 1, (b, 7))


@pytest.mark.parametrize("batch_size, dropout, fusion",
                         list(itertools.product([1, 32, 64, 128], [0.0, 0.25], ["weighted", "learned", "adaptive"])))
def test_all_scores_finite_in_every_mode(batch_size: int, dropout: float, fusion: str) -> None:
    model = _model(fusion, dropout)
    users, seq, cands = _batch(batch_size)
    for train, ctx in itertools.product([True, False], [torch.enable_grad, torch.no_grad, torch.inference_mode]):
        model.train(train)
        with ctx():
            out = model(users, seq, cands, user_memory_update=train)
            for key in ("scores", "sasrec_scores", "retriever_scores", "routing_weights", "fusion_weights"):
                assert torch.isfinite(out[key]).all(), (key, train, ctx)
            assert torch.isfinite(model.full_sort_predict(users[:4], seq[:4])[:, 1:]).all()


def test_vectorised_retriever_equals_naive_loop() -> None:
    model = _model().eval()
    users, _, cands = _batch(6)
    vec = model.retriever.score(users, cands)
    loop = model.retriever.score_loop(users, cands)
    assert torch.allclose(vec, loop, atol=1e-5), (vec - loop).abs().max()


@pytest.mark.parametrize("fusion", ["weighted", "learned", "adaptive"])
def test_forward_equals_full_sort_columns(fusion: str) -> None:
    model = _model(fusion)
    model.train()
    users, seq, cands = _batch(16)
    model(users, seq, cands)  # one training forward sets the score scale
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(users, seq, cands)["scores"], model.full_sort_predict(users, seq).gather(1, cands),
                              atol=1e-5)
        assert torch.allclose(model.sasrec.predict(seq, cands), model.sasrec.full_sort_predict(seq).gather(1, cands),
                              atol=1e-5)


def test_users_without_history_are_scored_by_the_retriever_alone() -> None:
    model = _model().eval()
    users, seq, cands = _batch(3)  # row 0 has no history
    out = model(users, seq, cands)
    assert out["fusion_weights"][0].tolist() == [0.0, 1.0]
    scaled = out["retriever_scores"][0] / model.scale.spread[1]
    assert torch.allclose(out["scores"][0], scaled)


def test_memory_round_trips_and_changes_only_when_asked_in_training() -> None:
    model = _model(memory=3, trigger="EXPLICIT")
    users, seq, cands = _batch(8)
    model.eval()
    model(users, seq, cands, user_memory_update=True)
    assert int(model.retriever.memory.filled.sum()) == 0, "eval mode must not write memory"
    model.train()
    model(users, seq, cands, user_memory_update=False)
    assert int(model.retriever.memory.filled.sum()) == 0, "training without update=True must not write"
    model(users, seq, cands, user_memory_update=True)
    assert int(model.retriever.memory.filled.sum()) == len(users.unique())
    state = model.state_dict()
    assert "retriever.memory.slots" in state
    fresh = _model(memory=3, trigger="EXPLICIT")
    fresh.load_state_dict(state)
    for name in ("slots", "filled", "since_update", "step"):
        assert torch.equal(getattr(fresh.retriever.memory, name), getattr(model.retriever.memory, name))


def test_interaction_count_trigger_waits_for_the_threshold() -> None:
    model = _model(memory=2, trigger="INTERACTION_COUNT")
    model.retriever.memory.interaction_threshold = 3
    users = torch.tensor([0, 1])
    seq, cands = _batch(2)[1:]
    model.train()
    for _ in range(2):
        model(users, seq, cands, user_memory_update=True)
    assert int(model.retriever.memory.filled.sum()) == 0
    model(users, seq, cands, user_memory_update=True)
    assert model.retriever.memory.filled.tolist()[:2] == [1, 1]


def test_end_to_end_gradients_reach_every_part_but_frozen_text() -> None:
    model = _model("adaptive", memory=3, trigger="EXPLICIT")
    model.train()
    users, seq, cands = _batch(12)
    model(users, seq, cands, user_memory_update=True)  # fill memory so the gate is used
    out = model(users, seq, cands, user_memory_update=True)
    out["scores"].pow(2).mean().backward()
    r = model.retriever
    parts = {"sasrec": model.sasrec.item_embedding.weight, "user projection": r.user_proj[0].weight,
             "item projection": r.item_proj[0].weight, "user expert": r.expert_ffn[0][0].weight,
             "description expert": r.expert_ffn[1][0].weight, "router": r.router[0].weight,
             "proxies": r.proxies, "memory gate": r.memory.gate.weight, "memory GRU": r.memory.gru.weight_ih,
             "adaptive fusion": model.adaptive[0].weight}
    for name, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not r.user_text.requires_grad and not r.item_text.requires_grad
    assert "retriever.user_text" not in model.state_dict()  # frozen inputs are rebuilt, not checkpointed


def test_parameter_groups_cover_every_parameter_once() -> None:
    for fusion in ("weighted", "learned", "adaptive"):
        model = _model(fusion)
        grouped = [*model.sasrec_parameters(), *model.retriever_parameters(), *model.fusion_parameters()]
        assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_wrong_embedding_shape_is_a_clear_error() -> None:
    user, item = _embeddings()
    with pytest.raises(UR4RecError, match="item text embeddings"):
        build_model(Config(), U, N + 5, user, item)


def test_public_names_of_the_original_system() -> None:
    assert SASRec.__name__ == "SASRec" and TextPreferenceRetrieverMoE and UR4RecV2MoE
