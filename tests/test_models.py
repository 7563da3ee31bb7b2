"""SASRec, retriever, user memory, fusion and factory: finite in every mode, vectorised == naive,
exact catalogue scores, scale alignment, two-stage re-ranking, state round-trip, gradient flow
(the user memory's own semantics: ``tests/test_memory.py``).

Small dims so the module runs in seconds. Everything is reached through the public package API
(``ur4rec.models``); two-stage ranking goes through ``ur4rec.evaluation.scoring.two_stage_scores``.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ur4rec.data.batching import training_prefixes, training_windows
from ur4rec.errors import UR4RecError
from ur4rec.evaluation.scoring import two_stage_scores
from ur4rec.models import SASRec, TextPreferenceRetrieverMoE, UR4RecV2MoE, build_model
from ur4rec.models.sasrec import attention_mask

U, N, L, TEXT = 20, 40, 10, 24  # users, items, max_seq_len, text dim
FUSIONS = ("weighted", "learned", "adaptive")
CONTEXTS = (torch.enable_grad, torch.no_grad, torch.inference_mode)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**over) -> SimpleNamespace:
    base = dict(max_seq_len=L, sasrec_hidden_dim=16, sasrec_num_blocks=2, sasrec_num_heads=2, sasrec_dropout=0.0,
                sasrec_positions="from_end", sasrec_upper_window=None, text_embedding_dim=TEXT,
                retriever_output_dim=16, moe_num_heads=2,
                moe_dropout=0.0, moe_num_proxies=3, max_memory_size=3, update_trigger="EXPLICIT",
                interaction_threshold=3, drift_threshold=0.3, decay_factor=0.9, fusion_method="weighted",
                sasrec_weight=0.5, retriever_weight=0.5, sasrec_item_text="none", sasrec_text_components=4,
                sasrec_user_text_weight=0.0)
    return SimpleNamespace(**(base | over))


def _embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    user = nn.functional.normalize(torch.randn(U, TEXT, generator=g), dim=-1)
    item = torch.cat([torch.zeros(1, TEXT), nn.functional.normalize(torch.randn(N, TEXT, generator=g), dim=-1)])
    return user, item


def _model(**over) -> UR4RecV2MoE:
    torch.manual_seed(0)
    return build_model(_cfg(**over), U, N, *_embeddings())


def _seq(b: int, width: int = L, g: torch.Generator | None = None, min_len: int = 0) -> torch.Tensor:
    """Left-padded histories [b, width] whose lengths cycle min_len..width (0 = all padding)."""
    g = g or torch.Generator().manual_seed(0)
    seq = torch.zeros(b, width, dtype=torch.long)
    span = width + 1 - min_len
    for i in range(b):
        n = min_len + i % span if b > 1 else width  # a single-row batch gets a full history
        if n:
            seq[i, width - n:] = torch.randint(1, N + 1, (n,), generator=g)
    return seq


def _batch(b: int, width: int = L, c: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Users, left-padded histories (lengths 0..width), candidates."""
    g = torch.Generator().manual_seed(seed)
    seq = _seq(b, width, g)
    return torch.arange(b) % U, seq, torch.randint(1, N + 1, (b, c), generator=g)


def _positions(seq: torch.Tensor) -> torch.Tensor:
    """Target positions of prefix inputs: a target after n items of history is at position n."""
    return (seq != 0).sum(1)


def _check_finite(out: dict) -> None:
    for key in ("scores", "sasrec_scores", "retriever_scores", "routing_weights", "fusion_weights"):
        assert torch.isfinite(out[key]).all(), key


def _trained_scale(model: UR4RecV2MoE) -> UR4RecV2MoE:
    """One training forward so the running score spreads are measured (no longer their initial 1)."""
    model.train()
    users, seq, cands = _batch(16, c=12, seed=5)
    model(users, seq, cands)
    assert not torch.equal(model.scale.spread, torch.ones(2))
    return model.eval()


def _fused_predict(model: UR4RecV2MoE, users: torch.Tensor, seq: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    return model(users, seq, cands, return_components=False)["scores"]


# ---------------------------------------------------------------------------------------- the NaN it avoids
def naive_mha_sasrec_nan_demo(max_seq_len: int = 8, hidden: int = 16,
                              blocks: int = 2) -> dict[tuple[str, str], list[bool]]:
    """The original's construction: ``nn.MultiheadAttention(batch_first=True)`` blocks with a boolean
    causal ``attn_mask`` plus ``key_padding_mask`` over LEFT-padded sequences (one user per history
    length 1..max_seq_len). Returns, per (mode, grad context), whether each user's last position is NaN.

    In eval mode without grad the fused fast path gives every padded query row a fully masked
    softmax (NaN); the second block spreads it to the last position of every user shorter than
    ``max_seq_len``. Training mode (or eval with grad) takes the slow path and stays finite."""
    torch.manual_seed(0)
    emb, pos = nn.Embedding(N + 1, hidden, padding_idx=0), nn.Embedding(max_seq_len, hidden)
    attn = nn.ModuleList(nn.MultiheadAttention(hidden, 2, batch_first=True) for _ in range(blocks))
    seq = torch.zeros(max_seq_len, max_seq_len, dtype=torch.long)
    for i in range(max_seq_len):
        seq[i, max_seq_len - 1 - i:] = torch.randint(1, N + 1, (i + 1,))
    causal = ~torch.ones(max_seq_len, max_seq_len, dtype=torch.bool).tril()  # True = may NOT attend
    result = {}
    for train, ctx in itertools.product([True, False], CONTEXTS):
        attn.train(train)
        with ctx():
            x = emb(seq) + pos.weight
            for block in attn:
                a, _ = block(x, x, x, attn_mask=causal, key_padding_mask=seq == 0, need_weights=False)
                x = x + a
            result[("train" if train else "eval", ctx.__name__)] = torch.isnan(x[:, -1]).any(-1).tolist()
    return result


def test_naive_mha_construction_gives_nan_so_the_finiteness_tests_mean_something() -> None:
    r = naive_mha_sasrec_nan_demo(max_seq_len=8)
    padded_users_nan = [True] * 7 + [False]  # lengths 1..7 are padded; the full-length user is fine
    assert r[("eval", "no_grad")] == padded_users_nan
    assert r[("eval", "inference_mode")] == padded_users_nan
    assert not any(r[("train", "enable_grad")]) and not any(r[("train", "no_grad")])


# ---------------------------------------------------------------------------------------- SASRec
@pytest.mark.parametrize("batch_size, dropout", list(itertools.product([1, 32, 64, 128], [0.0, 0.25])))
def test_sasrec_finite_for_every_length_mode_and_grad_context(batch_size: int, dropout: float) -> None:
    torch.manual_seed(batch_size)
    model = SASRec(N, 16, 2, 2, dropout, L)
    g = torch.Generator().manual_seed(batch_size)
    for width, train, ctx in itertools.product(range(1, L + 1), [True, False], CONTEXTS):
        seq = _seq(batch_size, width, g)  # lengths 0..width within the batch, left-padded
        model.train(train)
        with ctx():
            hidden = model(seq)
            assert torch.isfinite(hidden).all(), (width, train, ctx.__name__)
            assert (hidden[seq == 0] == 0).all(), "padded positions must be zero"
            assert torch.isfinite(model.full_sort_predict(seq)).all()
            assert torch.isfinite(model(seq, last_only=True)).all()


def test_sasrec_attention_rows_are_never_empty() -> None:
    """The construction itself (not just this torch's kernels) keeps every softmax row non-empty:
    a padded query row attends to itself only; a real item never attends to padding or the future."""
    seq = _seq(32, L)
    mask = attention_mask(seq)  # [B, 1, L, L], True = may attend
    assert mask.any(dim=-1).all()
    pad = seq == 0
    assert not (mask[:, 0] & pad[:, None, :] & ~torch.eye(L, dtype=torch.bool)).any()
    assert not (mask[:, 0] & ~torch.ones(L, L, dtype=torch.bool).tril()).any()


def test_sasrec_user_without_history_is_finite_and_zero() -> None:
    model = SASRec(N, 16, 2, 2, 0.0, L).eval()
    with torch.no_grad():
        rep = model.user_representation(torch.zeros(3, L, dtype=torch.long))
    assert torch.equal(rep, torch.zeros(3, 16))


def test_sasrec_predict_equals_full_sort_columns() -> None:
    torch.manual_seed(0)
    model = SASRec(N, 16, 2, 2, 0.0, L).eval()
    seq, cands = _seq(9, L, min_len=1), torch.randint(1, N + 1, (9, 6))
    full = model.full_sort_predict(seq)
    assert full.shape == (9, N + 1)
    assert torch.allclose(model.predict(seq, cands), full.gather(1, cands), atol=1e-6)


@pytest.mark.parametrize("loss_type", ["ce", "bpr", "bce"])
def test_sasrec_losses_finite_and_backpropagate(loss_type: str) -> None:
    torch.manual_seed(0)
    model = SASRec(N, 16, 2, 2, 0.1, L)
    seq = _seq(16, L)
    tgt = torch.where(seq != 0, torch.randint(1, N + 1, seq.shape), 0)
    loss = model.calculate_loss(seq, tgt, loss_type, torch.randint(1, N + 1, seq.shape))
    loss.backward()
    assert torch.isfinite(loss) and model.item_embedding.weight.grad.abs().sum() > 0
    if loss_type == "bpr":  # a huge negative margin: -log(sigmoid) would be inf, -logsigmoid is not
        with torch.no_grad():
            model.item_embedding.weight.mul_(1e4)
        assert torch.isfinite(model.calculate_loss(seq, tgt, "bpr", torch.randint(1, N + 1, seq.shape)))


@pytest.mark.parametrize("loss_type", ["ce", "bpr", "bce"])
def test_sasrec_last_only_pass_equals_the_full_pass_in_eval_mode(loss_type: str) -> None:
    """Prefix samples (the target in the last column only) train with ``last_only``: the last block
    computes one query row. Without dropout that is the same function: hidden state, loss and every
    parameter's gradient match the full pass, for every history length including none."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    seq = _seq(40, L, g)  # lengths 0..L, left-padded
    tgt = torch.zeros_like(seq)
    tgt[:, -1] = torch.randint(1, N + 1, (40,), generator=g)
    neg = torch.randint(1, N + 1, seq.shape, generator=g)
    grads, losses = [], []
    for last_only in (False, True):
        torch.manual_seed(0)
        model = SASRec(N, 16, 2, 2, 0.3, L).eval()  # same seed, same weights; eval: no dropout
        loss = model.calculate_loss(seq, tgt, loss_type, neg, last_only=last_only)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():
            assert torch.allclose(model(seq, last_only=True), model(seq)[:, -1:], atol=1e-6)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    with pytest.raises(ValueError, match="before its last 1 column"):
        model.calculate_loss(seq, torch.where(seq != 0, 1, 0), loss_type, neg, last_only=True)


# ---------------------------------------------------------------------------------------- fused finiteness
@pytest.mark.parametrize("fusion, dropout", list(itertools.product(FUSIONS, [0.0, 0.25])))
def test_fused_scores_finite_for_every_batch_size_length_mode_and_context(fusion: str, dropout: float) -> None:
    model = _model(fusion_method=fusion, sasrec_dropout=dropout, moe_dropout=dropout)
    for b, train, ctx in itertools.product([1, 32, 64, 128], [True, False], CONTEXTS):
        users, seq, cands = _batch(b, seed=b)
        model.train(train)
        with ctx():
            out = model(users, seq, cands, target_positions=_positions(seq), user_memory_update=train)
        _check_finite(out)
        assert out["scores"].shape == (b, cands.shape[1])
        assert out["routing_weights"].shape == (b, cands.shape[1], 3)
        assert torch.allclose(out["routing_weights"].sum(-1), torch.ones(b, cands.shape[1]), atol=1e-5)
    for width, train, ctx in itertools.product(range(1, L + 1), [True, False], CONTEXTS):
        users, seq, cands = _batch(32, width=width, seed=width)  # every length 0..width in the batch
        model.train(train)
        with ctx():
            _check_finite(model(users, seq, cands))
            if not train and width in (1, L):
                full = model.full_sort_predict(users, seq)
                assert torch.isfinite(full[:, 1:]).all() and torch.isinf(full[:, 0]).all()


# ---------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("image", [False, True])
def test_vectorised_retriever_equals_naive_loop(image: bool) -> None:
    user, item = _embeddings()
    torch.manual_seed(1)
    img = torch.randn(N + 1, 8) if image else None
    r = TextPreferenceRetrieverMoE(user, item, output_dim=16, num_heads=4, num_proxies=5, max_memory_size=2,
                                   update_trigger="EXPLICIT", image_features=img)
    _, seq, cands = _batch(6, c=9)
    users = torch.tensor([0, 3, 3, 7, 19, 0])  # repeated users
    r.train()
    r(users, cands, input_seq=seq, target_positions=_positions(seq), user_memory_update=True)
    assert (r.memory.slot_pos[users] >= 0).any(1).all()  # every user has memory: the gate is compared too
    r.eval()
    with torch.no_grad():
        vec, loop = r.score(users, cands), r.score_loop(users, cands)
        assert torch.allclose(vec, loop, atol=1e-5), (vec - loop).abs().max()
        full = r.full_catalogue_scores(users, chunk_size=7)
    assert torch.allclose(full.gather(1, cands), vec, atol=1e-5)
    assert torch.isinf(full[:, 0]).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fused_forward_equals_full_sort_columns_on_any_subset(fusion: str) -> None:
    model = _trained_scale(_model(fusion_method=fusion))
    users, seq, cands = _batch(11, c=5, seed=2)
    with torch.no_grad():
        full = model.full_sort_predict(users, seq, chunk_size=9)
        assert torch.allclose(_fused_predict(model, users, seq, cands), full.gather(1, cands), atol=1e-5)
        one = _fused_predict(model, users, seq, cands[:, :1])  # a single candidate is not a special case
        assert torch.allclose(one, full.gather(1, cands[:, :1]), atol=1e-5)
    assert torch.isinf(full[:, 0]).all() and torch.isfinite(full[:, 1:]).all()


def test_fused_scores_are_on_an_aligned_scale() -> None:
    model = _trained_scale(_model()).train()
    with torch.no_grad():
        model.sasrec.item_embedding.weight.mul_(100.0)  # SASRec's raw scores x100 ...
    users, seq, cands = _batch(16, c=12, seed=5)
    for _ in range(60):  # the running spread follows (momentum 0.1)
        model(users, seq, cands)
    model.eval()
    with torch.no_grad():
        out = model(users, seq, cands)
    has = (seq != 0).any(1)
    within = out["sasrec_scores"][has].std(1).mean() / model.scale.spread[0]
    assert out["sasrec_scores"].abs().max() > 20  # raw SASRec is large ...
    assert 0.5 < float(within) < 2  # ... but divided by its spread it varies by ~1 within a user
    assert out["scores"].abs().max() < 20


def test_users_without_history_are_scored_by_the_retriever_alone() -> None:
    for fusion in FUSIONS:
        model = _trained_scale(_model(fusion_method=fusion))
        users, seq, cands = _batch(3)  # row 0 has no history
        with torch.no_grad():
            out = model(users, seq, cands)
        assert out["fusion_weights"][0].tolist() == [0.0, 1.0]
        assert torch.allclose(out["scores"][0], out["retriever_scores"][0] / model.scale.spread[1])
        assert out["fusion_weights"][1, 0] > 0


# ---------------------------------------------------------------------------------------- two-stage, padding
def _two_stage(model: UR4RecV2MoE, users: torch.Tensor, seq: torch.Tensor, top_r: int,
               exclude: torch.Tensor | None) -> torch.Tensor:
    first = model.sasrec.full_sort_predict(seq)
    return two_stage_scores(first, lambda c: _fused_predict(model, users, seq, c), top_r, exclude)


def test_rerank_orders_top_r_by_fused_score_and_the_rest_by_sasrec() -> None:
    model = _trained_scale(_model(fusion_method="adaptive"))
    users, seq, _ = _batch(12, seed=4)  # row 0: no history (re-ranked by the retriever alone)
    exclude = torch.zeros(12, N + 1, dtype=torch.bool).scatter_(1, seq, True)  # the history shown
    exclude[:, 0] = True  # padding (always excluded by two_stage_scores as well)
    top_r = 8
    with torch.no_grad():
        out = _two_stage(model, users, seq, top_r, exclude)
        sasrec = model.sasrec.full_sort_predict(seq)
        for b in range(len(users)):
            allowed = (~exclude[b]).nonzero().flatten()
            sas_order = allowed[torch.argsort(sasrec[b, allowed], descending=True, stable=True)]
            top, rest = sas_order[:top_r], sas_order[top_r:]
            fused = _fused_predict(model, users[b:b + 1], seq[b:b + 1], top.unsqueeze(0))[0]
            expected = torch.cat([top[torch.argsort(fused, descending=True, stable=True)], rest])
            got = torch.argsort(out[b], descending=True, stable=True)[: len(allowed)]
            assert torch.equal(got, expected), b
    assert torch.isinf(out[exclude]).all() and torch.isfinite(out[~exclude]).all()
    assert len(torch.unique(out[0][torch.isfinite(out[0])])) == int((~exclude[0]).sum())  # no ties


def test_padding_column_never_wins_even_when_its_embedding_would() -> None:
    model = _trained_scale(_model())
    users, seq, _ = _batch(10, seed=6)
    seq[:, -1] = 1  # everyone has history
    with torch.no_grad():
        user_vec = model.sasrec.user_representation(seq)
        model.sasrec.item_embedding.weight[0] = 1e3 * user_vec.mean(0)  # padding row: a huge SASRec score
        model.retriever.item_id.weight[0] = 1e3
        assert (model.sasrec.full_sort_predict(seq).argmax(1) == 0).any()  # raw SASRec: callers mask column 0
        for scores in (model.full_sort_predict(users, seq), _two_stage(model, users, seq, 5, None)):
            assert torch.isinf(scores[:, 0]).all() and (scores[:, 0] < 0).all()
            assert (scores.argmax(1) != 0).all()
        assert torch.isinf(model.retriever.full_catalogue_scores(users)[:, 0]).all()


# ---------------------------------------------------------------------------------------- state
def test_state_dict_round_trip_keeps_scale_and_memory_but_not_frozen_text() -> None:
    model = _model(max_memory_size=3, update_trigger="EXPLICIT").train()
    users, seq, cands = _batch(8)
    model(users, seq, cands, target_positions=_positions(seq), user_memory_update=True)
    state = model.state_dict()
    assert {"retriever.memory.slots", "retriever.memory.slot_pos", "scale.spread"} <= set(state)
    assert "retriever.user_text" not in state and "retriever.item_text" not in state  # rebuilt, not saved
    fresh = _model(max_memory_size=3, update_trigger="EXPLICIT")
    assert not torch.equal(fresh.retriever.memory.slot_pos, model.retriever.memory.slot_pos)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.scale.spread, model.scale.spread)
    assert torch.equal(fresh.retriever.memory.slots, model.retriever.memory.slots)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(users, seq, cands)["scores"], model(users, seq, cands)["scores"])


# ---------------------------------------------------------------------------------------- training
def test_end_to_end_gradients_reach_every_part_but_frozen_text() -> None:
    model = _model(fusion_method="adaptive", max_memory_size=3, update_trigger="EXPLICIT").train()
    users, seq, cands = _batch(12)  # row 0: no history
    pos = _positions(seq)
    earlier = torch.cat([torch.zeros(len(seq), 1, dtype=torch.long), seq[:, :-1]], dim=1)  # one item fewer
    model(users, earlier, cands, target_positions=(pos - 1).clamp(min=0), user_memory_update=True)  # GRU hidden
    out = model(users, seq, cands, target_positions=pos, user_memory_update=True)
    nn.functional.cross_entropy(out["scores"], torch.zeros(12, dtype=torch.long)).backward()
    r = model.retriever
    parts = {"sasrec item embedding": model.sasrec.item_embedding.weight,
             "sasrec attention": model.sasrec.blocks[0].qkv.weight,
             "user projection": r.user_proj[0].weight, "item projection": r.item_proj[0].weight,
             "item-ID embedding": r.item_id.weight, "temperature": r.log_temperature,
             "proxies": r.proxies, "proxy attention": r.proxy_attn.in_proj_weight, "router": r.router[0].weight,
             "memory gate": r.memory.gate.weight, "memory GRU": r.memory.gru.weight_ih,
             "memory GRU hidden": r.memory.gru.weight_hh,
             "adaptive fusion": model.adaptive[0].weight}
    parts |= {f"expert {k} ffn": ffn[0].weight for k, ffn in enumerate(r.expert_ffn)}
    parts |= {f"expert {k} attention": attn.out_proj.weight for k, attn in enumerate(r.expert_attn)}
    for name, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for buf in (r.user_text, r.item_text):
        assert not buf.requires_grad and buf.grad is None
    assert all(buf is not p for buf in (r.user_text, r.item_text) for p in model.parameters())


def test_parameter_groups_cover_every_trainable_parameter_once() -> None:
    for fusion in FUSIONS:
        model = _model(fusion_method=fusion)
        groups = [list(model.sasrec_parameters()), list(model.retriever_parameters()), list(model.fusion_parameters())]
        grouped = [id(p) for g in groups for p in g]
        assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
        assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
        assert bool(groups[2]) == (fusion != "weighted")


# ---------------------------------------------------------------------------------------- factory
def test_build_model_checks_embedding_shapes() -> None:
    user, item = _embeddings()
    model = build_model(_cfg(), U, N, user, item)
    assert isinstance(model.sasrec, SASRec) and isinstance(model.retriever, TextPreferenceRetrieverMoE)
    with pytest.raises(UR4RecError, match="item text embeddings") as err:
        build_model(_cfg(), U, N + 5, user, item)
    assert err.value.fix and err.value.where
    with pytest.raises(UR4RecError, match="user text embeddings"):
        build_model(_cfg(), U + 1, N, user, item)
    with pytest.raises(UR4RecError, match="text_embedding_dim=32"):
        build_model(_cfg(text_embedding_dim=32), U, N, user, item)


def test_positions_from_start_give_a_window_pass_every_prefix_output() -> None:
    """With ``positions="from_start"`` one causal pass over a history's first window computes, at each
    column, exactly what that target's own prefix sample computes (same items, same position ids):
    hidden states and the mean loss match. With ``from_end`` they differ (ids count from the end)."""
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(1, N + 1, (n,), generator=g).numpy() for n in (2, 5, L + 1)]
    win_in, win_tgt, _ = training_windows(seqs, L)
    pre_in, pre_tgt, _ = training_prefixes(seqs, L)
    for positions, equal in (("from_start", True), ("from_end", False)):
        torch.manual_seed(0)
        model = SASRec(N, 16, 2, 2, 0.3, L, positions=positions).eval()
        with torch.no_grad():
            window_h = model(win_in)[win_tgt != 0]  # row-major: sequence by sequence, target by target
            prefix_h = model(pre_in, last_only=True)[:, -1]
            assert torch.allclose(window_h, prefix_h, atol=1e-5) is equal, positions
            if equal:
                assert torch.allclose(model.calculate_loss(win_in, win_tgt),
                                      model.calculate_loss(pre_in, pre_tgt, last_only=True), atol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        SASRec(N, 16, 2, 2, 0.3, L, positions="middle")


@pytest.mark.parametrize(("k", "blocks", "window"), [(1, 2, None), (3, 2, None), (L, 2, None), (1, 2, 3), (3, 2, 3),
                                                  (1, 3, 3), (2, 3, 4), (1, 2, 1), (L, 3, 3)])
def test_last_k_pass_equals_the_full_pass_in_eval_mode(k: int, blocks: int, window: int | None) -> None:
    """Prefix samples train with ``last_k``: each block computes only the rows the blocks above it
    read (the last block k; with ``upper_window`` w every block below it w - 1 more per block above).
    Without dropout the hidden states, the loss and every gradient match the full pass."""
    g = torch.Generator().manual_seed(5)
    seq = _seq(30, L, g)
    tgt = torch.where(torch.arange(L) >= L - k, torch.randint(1, N + 1, seq.shape, generator=g), 0)
    losses, grads = [], []
    for last_k in (None, k):
        torch.manual_seed(0)
        model = SASRec(N, 16, blocks, 2, 0.3, L, upper_window=window).eval()
        loss = model.calculate_loss(seq, tgt, last_k=last_k)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():
            assert torch.allclose(model(seq, last_k=k), model(seq)[:, -k:], atol=1e-6)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    if k < L:
        with pytest.raises(ValueError, match=f"before its last {k} column"):
            model.calculate_loss(seq, torch.where(seq != 0, 1, 0), last_k=k)


def test_feature_fusion_starts_as_sasrec_alone_and_then_scores_consistently() -> None:
    """fusion_method: feature (the UR4Rec paper's integration): score = <h_u + P z(u, i), e_i>. With P at
    its zero initialisation the fused model ranks exactly as SASRec; once P is trained the candidates'
    scores equal the matching columns of the exact catalogue scores, and the fused loss reaches P,
    the retriever and SASRec."""
    model = _model(fusion_method="feature", max_memory_size=0).eval()
    users, seq = torch.arange(6), _seq(6, min_len=1)
    cands = torch.randint(1, N + 1, (6, 5), generator=torch.Generator().manual_seed(1))
    sasrec = model.sasrec.full_sort_predict(seq)
    # (the zero feature term adds exactly 0; the tolerance is only a product summed vs a matmul)
    assert torch.allclose(model(users, seq, cands)["scores"], sasrec.gather(1, cands), atol=1e-6)
    full = model.full_sort_predict(users, seq)
    assert torch.allclose(full[:, 1:], sasrec[:, 1:], atol=1e-6) and torch.isinf(full[:, 0]).all()
    assert list(model.fusion_parameters()) == [model.feature.weight]
    with torch.no_grad():
        model.feature.weight.normal_(std=0.5)
    scores = model(users, seq, cands)["scores"]
    assert not torch.allclose(scores, sasrec.gather(1, cands))  # the retriever's vectors now count
    assert torch.allclose(scores, model.full_sort_predict(users, seq, chunk_size=7).gather(1, cands), atol=1e-5)
    model.train()
    loss = nn.functional.cross_entropy(model(users, seq, cands)["scores"], torch.zeros(6, dtype=torch.long))
    loss.backward()
    for part in (model.feature.weight, model.retriever.item_id.weight, model.sasrec.item_embedding.weight):
        assert part.grad is not None and part.grad.abs().sum() > 0


def test_upper_window_limits_the_upper_blocks_keys_and_is_the_full_model_when_wide() -> None:
    """``upper_window`` w: above the first block a query attends to its last w positions only (the
    first block keeps the whole causal context); a window as long as the input is the model without one."""
    g = torch.Generator().manual_seed(7)
    seq = _seq(12, L, g)
    torch.manual_seed(0)
    windowed = SASRec(N, 16, 3, 2, 0.3, L, upper_window=3).eval()
    maps = windowed.attention_maps(seq)  # [B, blocks, heads, L, L]
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    outside = (j > i) | (i - j >= 3)
    assert maps[:, 1:, :, outside].abs().max() == 0  # the upper blocks read nothing outside the window
    full_rows = seq[:, 0] != 0  # histories that fill the input: every earlier key is a real item
    assert maps[full_rows][:, 0, :, i - j >= 3].min() > 0  # the first block reads them all
    assert torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-5)  # no empty row
    torch.manual_seed(0)
    wide = SASRec(N, 16, 3, 2, 0.3, L, upper_window=L)
    torch.manual_seed(0)
    plain = SASRec(N, 16, 3, 2, 0.3, L)
    with torch.no_grad():
        assert torch.equal(wide.eval()(seq), plain.eval()(seq))
    with pytest.raises(ValueError, match="upper_window"):
        SASRec(N, 16, 2, 2, 0.3, L, upper_window=0)
