"""User memory (``ur4rec.models.user_memory``): when it writes, what a read at a target position may
depend on (bitwise leak tests), each trigger, ring replacement, the duplicate-user rule, gradient
flow, checkpoint round-trip, and that memory off (or empty) changes nothing else.

Memory is driven through the public model API (``build_model``, ``UR4RecV2MoE.forward``,
``TextPreferenceRetrieverMoE.user_representation``); slot contents are read from its buffers.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ur4rec.models import UR4RecV2MoE, build_model

U, N, L, TEXT, D = 6, 40, 10, 24, 16  # users, items, max_seq_len, text dim, retriever dim
TRIGGERS = ("INTERACTION_COUNT", "DRIFT_THRESHOLD", "TIME_BASED", "EXPLICIT")
STATE = ("slots", "slot_pos", "step")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**over) -> UR4RecV2MoE:
    cfg = dict(max_seq_len=L, sasrec_hidden_dim=16, sasrec_num_blocks=1, sasrec_num_heads=2, sasrec_dropout=0.1,
               sasrec_positions="from_end", sasrec_upper_window=None, text_embedding_dim=TEXT,
               retriever_output_dim=D, moe_num_heads=2,
               moe_dropout=0.1, moe_num_proxies=2, max_memory_size=3, update_trigger="EXPLICIT",
               interaction_threshold=3, drift_threshold=0.3, decay_factor=0.8, fusion_method="weighted",
               sasrec_weight=0.5, retriever_weight=0.5, sasrec_item_text="none",
               sasrec_text_components=4, sasrec_user_text_weight=0.0)
    g = torch.Generator().manual_seed(0)
    user = nn.functional.normalize(torch.randn(U, TEXT, generator=g), dim=-1)
    item = torch.cat([torch.zeros(1, TEXT), nn.functional.normalize(torch.randn(N, TEXT, generator=g), dim=-1)])
    torch.manual_seed(0)
    return build_model(SimpleNamespace(**(cfg | over)), U, N, user, item)


def _seqs(length: int = 30, seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {u: torch.randint(1, N + 1, (length,), generator=g) for u in range(U)}


def _inputs(seqs: dict[int, torch.Tensor], users: list[int], positions: list[int]) -> torch.Tensor:
    """Left-padded inputs: for a target at position p, the (at most L) items before p."""
    out = torch.zeros(len(users), L, dtype=torch.long)
    for i, (u, p) in enumerate(zip(users, positions)):
        items = seqs[u][max(0, p - L):p]
        if len(items):
            out[i, L - len(items):] = items
    return out


def _write(model: UR4RecV2MoE, seqs: dict[int, torch.Tensor], users: list[int], positions: list[int],
           update: bool = True) -> tuple[torch.Tensor, dict]:
    """One training-style user_representation call: (user vectors, memory stats)."""
    return model.retriever.user_representation(torch.tensor(users), _inputs(seqs, users, positions),
                                               torch.tensor(positions), memory_update=update)


def _read(model: UR4RecV2MoE, users: list[int], positions: list[int] | None) -> torch.Tensor:
    """An eval-mode read (no dropout, no write) at target positions, or held-out (None)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        pos = None if positions is None else torch.tensor(positions)
        out, _ = model.retriever.user_representation(torch.tensor(users), target_positions=pos)
    model.train(was)
    return out


def _pref(model: UR4RecV2MoE, users: list[int]) -> torch.Tensor:
    r = model.retriever
    was = r.training
    r.eval()
    with torch.no_grad():
        out = r.user_proj(r.user_text[torch.tensor(users)])
    r.train(was)
    return out


def _slot_positions(model: UR4RecV2MoE, user: int) -> list[int]:
    return sorted(p for p in model.retriever.memory.slot_pos[user].tolist() if p >= 0)


def _slot_at(model: UR4RecV2MoE, user: int, position: int) -> torch.Tensor:
    mem = model.retriever.memory
    (idx,) = (mem.slot_pos[user] == position).nonzero().flatten().tolist()
    return mem.slots[user, idx].clone()


def _state(model: UR4RecV2MoE) -> dict[str, torch.Tensor]:
    return {k: getattr(model.retriever.memory, k).clone() for k in STATE}


# ---------------------------------------------------------------------------------------- when it writes
def test_writes_only_in_training_mode_when_asked() -> None:
    model = _model()
    seqs, users, positions = _seqs(), [0, 1, 2], [5, 7, 9]
    cands = torch.randint(1, N + 1, (3, 4))
    empty = _state(model)
    seq, pos = _inputs(seqs, users, positions), torch.tensor(positions)
    model.eval()
    model(torch.tensor(users), seq, cands, target_positions=pos, user_memory_update=True)
    assert all(torch.equal(v, empty[k]) for k, v in _state(model).items()), "eval mode must not write"
    model.train()
    model(torch.tensor(users), seq, cands, target_positions=pos, user_memory_update=False)
    model(torch.tensor(users), seq, cands)  # a plain training forward (no positions) reads, never writes
    assert all(torch.equal(v, empty[k]) for k, v in _state(model).items()), "no flag, no write"
    out = model(torch.tensor(users), seq, cands, target_positions=pos, user_memory_update=True)
    assert out["memory"]["memory_updates"] == 3
    assert [_slot_positions(model, u) for u in range(U)] == [[5], [7], [9], [], [], []]
    assert int(model.retriever.memory.step) == 1


def test_a_write_needs_input_and_positions_and_checks_them() -> None:
    model = _model().train()
    users, seq = torch.tensor([0, 1]), _inputs(_seqs(), [0, 1], [4, 6])
    with pytest.raises(ValueError, match="target positions"):
        model.retriever.user_representation(users, seq, None, memory_update=True)
    with pytest.raises(ValueError, match="input_seq"):
        model.retriever.user_representation(users, None, torch.tensor([4, 6]), memory_update=True)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        model.retriever.user_representation(users, seq, torch.tensor([4]), memory_update=True)
    with pytest.raises(ValueError, match="more items than its target position"):  # 4 items, target at 3
        model.retriever.user_representation(users, seq, torch.tensor([3, 6]), memory_update=True)
    with pytest.raises(ValueError, match=">= 0"):
        model.retriever.user_representation(users, seq, torch.tensor([4, -1]), memory_update=True)
    assert all(p == -1 for p in model.retriever.memory.slot_pos.flatten().tolist())


def test_a_user_with_nothing_readable_gets_the_preference_vector_bit_for_bit() -> None:
    model = _model().train()
    seqs = _seqs()
    _write(model, seqs, [0], [8])
    read = _read(model, [0, 0, 1], [7, 8, 29])  # before the slot; at it; another user (no slots)
    pref = _pref(model, [0, 0, 1])
    assert torch.equal(read[0], pref[0]) and torch.equal(read[2], pref[2])
    assert not torch.allclose(read[1], pref[1])
    # a row whose input is all padding has nothing to summarise: it writes nothing
    _, stats = model.retriever.user_representation(torch.tensor([3]), torch.zeros(1, L, dtype=torch.long),
                                                    torch.tensor([4]), memory_update=True)
    assert stats["memory_updates"] == 0 and _slot_positions(model, 3) == []


# ---------------------------------------------------------------------------------------- leak-free reads
def _train_epochs(model: UR4RecV2MoE, seqs: dict[int, torch.Tensor]) -> list[tuple[list[int], list[int],
                                                                                    torch.Tensor, list[int]]]:
    """Every other prefix of every user is a training target (windows with stride 2); three epochs in
    shuffled orders (the same in every run): two with every user once per batch, then one in batches
    of 12 samples, where a user often appears twice. Returns each call's rows, user vectors and how
    many slots from earlier calls each row could read."""
    targets = {u: list(range(1, len(s), 2)) for u, s in seqs.items()}
    batches = []
    for epoch in range(2):
        g = torch.Generator().manual_seed(epoch)
        shuffled = {u: [ps[i] for i in torch.randperm(len(ps), generator=g).tolist()] for u, ps in targets.items()}
        batches += [list(zip(shuffled, k)) for k in zip(*shuffled.values())]
    samples = [(u, p) for u, ps in targets.items() for p in ps]
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(2)).tolist()
    batches += [[samples[i] for i in order[start:start + 12]] for start in range(0, len(order), 12)]
    torch.manual_seed(123)  # dropout masks: the same in every run
    calls = []
    mem = model.retriever.memory
    for batch in batches:
        users, positions = zip(*batch)
        readable = [int(((mem.slot_pos[u] >= 0) & (mem.slot_pos[u] <= p)).sum()) for u, p in zip(users, positions)]
        vec, _ = _write(model, seqs, list(users), list(positions))
        calls.append((list(users), list(positions), vec.detach(), readable))
    return calls


@pytest.mark.parametrize("trigger, ring", [(t, 16) for t in TRIGGERS] + [(t, 3) for t in TRIGGERS])
def test_a_read_at_t_does_not_depend_on_items_at_or_after_t(trigger: str, ring: int) -> None:
    """Two runs, identical but for user 0's items at positions >= t: every read for a target at a
    position <= t (training reads, with their writes, and eval reads) is bitwise the same. A ring of
    16 keeps every slot, so from the second epoch on reads at t see slots written after t (from later
    windows) and must skip them; a ring of 3 (15 targets per user) evicts throughout."""
    t = 15
    seqs_a = _seqs()
    seqs_b = {u: s.clone() for u, s in seqs_a.items()}
    seqs_b[0][t:] = torch.randint(1, N + 1, (len(seqs_b[0]) - t,), generator=torch.Generator().manual_seed(9))
    model_a = _model(update_trigger=trigger, interaction_threshold=2, drift_threshold=0.05,
                     max_memory_size=ring).train()
    model_b = copy.deepcopy(model_a)
    calls_a, calls_b = _train_epochs(model_a, seqs_a), _train_epochs(model_b, seqs_b)
    compared = with_memory = 0
    for (users, positions, vec_a, readable), (_, _, vec_b, _) in zip(calls_a, calls_b):
        for row, (u, p) in enumerate(zip(users, positions)):
            if u != 0 or p <= t:
                assert torch.equal(vec_a[row], vec_b[row]), (u, p)
                compared += u == 0
                with_memory += u == 0 and readable[row] > 0
    assert compared == 24  # user 0: 8 targets at <= t, 3 epochs
    if ring == 16:  # from the second epoch on they read earlier slots (and skip later ones)
        assert with_memory >= 14
    for p in range(1, t + 1):
        assert torch.equal(_read(model_a, [0], [p]), _read(model_b, [0], [p])), p
    for p in (2, 9, t):  # a last training read (and write) at p agrees too
        vecs = []
        for model, seqs in ((model_a, seqs_a), (model_b, seqs_b)):
            torch.manual_seed(p)
            vecs.append(_write(model, seqs, [0], [p])[0])
        assert torch.equal(*vecs), p
    # the harness does see the later items: the held-out read (every slot) differs between the runs
    assert not torch.equal(_read(model_a, [0], None), _read(model_b, [0], None))


def test_slots_after_t_never_enter_a_read_at_t_but_enter_a_held_out_read() -> None:
    model = _model(max_memory_size=4).train()
    seqs = _seqs()
    for p in (4, 8, 12, 16):
        _write(model, seqs, [0], [p])
    read_at = {p: _read(model, [0], [p]) for p in (3, 4, 8, 10)}
    held_out = _read(model, [0], None)
    with torch.no_grad():  # change everything written after position 10
        later = model.retriever.memory.slot_pos[0] > 10
        model.retriever.memory.slots[0, later] = torch.randn(int(later.sum()), D)
    for p, before in read_at.items():
        assert torch.equal(_read(model, [0], [p]), before), p
    assert not torch.equal(_read(model, [0], None), held_out)
    assert torch.equal(read_at[3], _pref(model, [0]))  # nothing at or before 3


def test_held_out_read_is_the_decay_weighted_mean_of_every_training_slot() -> None:
    model = _model(max_memory_size=3, decay_factor=0.5).train()
    seqs = _seqs()
    for p in (9, 3, 6):  # written out of order: age is by position, not by write order
        _write(model, seqs, [0], [p])
    mem = model.retriever.memory
    slots = torch.stack([_slot_at(model, 0, p) for p in (9, 6, 3)])  # newest first
    read = (slots * torch.tensor([[1.0], [0.5], [0.25]])).sum(0) / 1.75
    pref = _pref(model, [0])[0]
    with torch.no_grad():
        expected = pref + torch.sigmoid(mem.gate(torch.cat([pref, read]))) * read
    assert torch.allclose(_read(model, [0], None)[0], expected, atol=1e-6)
    # an eval forward with the flag, and a training read without it, change nothing
    before = _state(model)
    model.eval()
    _write(model, seqs, [0, 1], [12, 5])
    model.train()
    model.retriever.user_representation(torch.tensor([0, 1]))
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


# ---------------------------------------------------------------------------------------- triggers
def test_interaction_count_writes_every_threshold_positions_since_the_latest_earlier_slot() -> None:
    model = _model(update_trigger="INTERACTION_COUNT", interaction_threshold=3, max_memory_size=4,
                   moe_dropout=0.0).train()
    seqs = _seqs()
    steps = [(2, []), (3, [3]), (5, [3]), (6, [3, 6]), (4, [3, 6]), (10, [3, 6, 10]), (6, [3, 6, 10])]
    for p, expected in steps:  # p - latest slot before p (or 0) >= 3
        _write(model, seqs, [0], [p])
        assert _slot_positions(model, 0) == expected, p
    # the rewrite at 6 above was due (its earlier slot is 3) and recomputed it from the slot at 3,
    # not from its own previous value: the same again, and different once the slot at 3 changes
    old = _slot_at(model, 0, 6)
    _write(model, seqs, [0], [6])
    assert torch.equal(_slot_at(model, 0, 6), old)
    with torch.no_grad():
        model.retriever.memory.slots[0, model.retriever.memory.slot_pos[0] == 3] += 1.0
    _write(model, seqs, [0], [6])
    assert not torch.equal(_slot_at(model, 0, 6), old)


def test_drift_threshold_updates_the_state_only_on_drift_but_records_every_position() -> None:
    seqs = _seqs()
    for threshold, changes in ((2.5, 1), (-1.0, 3)):  # 1 - cos lies in [0, 2]
        model = _model(update_trigger="DRIFT_THRESHOLD", drift_threshold=threshold).train()
        counted = sum(_write(model, seqs, [0], [p])[1]["memory_drift_changes"] for p in (4, 8, 12))
        assert counted == changes, threshold
        assert _slot_positions(model, 0) == [4, 8, 12], threshold
        first, second, third = (_slot_at(model, 0, p) for p in (4, 8, 12))
        if changes == 1:  # no drift: the state is carried unchanged
            assert torch.equal(first, second) and torch.equal(first, third)
        else:
            assert not torch.equal(first, second) and not torch.equal(second, third)


def test_time_based_writes_every_threshold_training_calls_for_the_whole_batch() -> None:
    model = _model(update_trigger="TIME_BASED", interaction_threshold=3, max_memory_size=8).train()
    seqs = _seqs()
    written = []
    for call in range(1, 8):
        _, stats = _write(model, seqs, [0, 1], [call + 1, call + 2])
        written.append(stats["memory_updates"])
    assert written == [0, 0, 2, 0, 0, 2, 0]
    assert _slot_positions(model, 0) == [4, 7] and _slot_positions(model, 1) == [5, 8]
    model.eval()
    _write(model, seqs, [0], [20])  # eval calls are not counted
    assert int(model.retriever.memory.step) == 7


def test_explicit_writes_on_every_training_call() -> None:
    model = _model(update_trigger="EXPLICIT", max_memory_size=8).train()
    seqs = _seqs()
    for p in (1, 2, 3):
        assert _write(model, seqs, [0, 1], [p, p])[1]["memory_updates"] == 2
    assert _slot_positions(model, 0) == [1, 2, 3] == _slot_positions(model, 1)


# ---------------------------------------------------------------------------------------- ring, duplicates
def test_ring_keeps_the_most_recent_positions() -> None:
    model = _model(max_memory_size=2).train()
    seqs = _seqs()
    for p, expected in ((10, [10]), (20, [10, 20]), (30, [20, 30]), (5, [20, 30]), (25, [25, 30])):
        _write(model, seqs, [0], [p])
        assert _slot_positions(model, 0) == expected, p
    _write(model, seqs, [0], [30])  # a rewrite at a stored position overwrites it in place
    assert _slot_positions(model, 0) == [25, 30]


def test_a_user_twice_in_a_batch_writes_once_from_its_latest_target() -> None:
    seqs = _seqs()
    other = dict(seqs)
    other[0] = seqs[0].flip(0)
    model = _model(max_memory_size=4, moe_dropout=0.0).train()
    reference = copy.deepcopy(model)
    users = torch.tensor([0, 0, 0, 1])
    seq = torch.cat([_inputs(seqs, [0, 0], [8, 12]), _inputs(other, [0], [12]), _inputs(seqs, [1], [3])])
    vec, stats = model.retriever.user_representation(users, seq, torch.tensor([8, 12, 12, 3]), memory_update=True)
    assert stats["memory_updates"] == 2 and _slot_positions(model, 0) == [12]
    # the writer is the first row at the largest position: the slot that row alone writes (the other
    # row at 12 has different items, so it would write something else)
    _write(reference, seqs, [0], [12])
    assert torch.allclose(_slot_at(model, 0, 12), _slot_at(reference, 0, 12), atol=1e-6)
    _write(reference, other, [0], [12])
    assert not torch.allclose(_slot_at(model, 0, 12), _slot_at(reference, 0, 12), atol=1e-3)
    # the row at 8 reads nothing (its user's only slot is at 12); both rows at 12 read the fresh slot
    assert torch.allclose(vec[0].detach(), _pref(model, [0])[0], atol=1e-6)
    read_12 = _read(model, [0], [12])[0]
    assert torch.allclose(vec[1].detach(), read_12, atol=1e-6) and torch.allclose(vec[2].detach(), read_12, atol=1e-6)


# ---------------------------------------------------------------------------------------- learning, state
def test_gradient_reaches_the_gru_gate_and_item_embeddings_through_the_fresh_slot() -> None:
    model = _model(max_memory_size=3).train()
    seqs = _seqs()
    _write(model, seqs, [0, 1], [4, 4])  # earlier slots: the GRU's hidden state
    vec, _ = _write(model, seqs, [0, 1, 2], [9, 9, 9])
    vec.pow(2).sum().backward()
    r = model.retriever
    for name, p in {"GRU input": r.memory.gru.weight_ih, "GRU hidden": r.memory.gru.weight_hh,
                    "gate": r.memory.gate.weight, "item projection": r.item_proj[0].weight,
                    "item-ID embedding": r.item_id.weight}.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert r.item_id.weight.grad[0].abs().sum() == 0  # padding never summarised
    for k in STATE:
        assert not getattr(r.memory, k).requires_grad


def test_state_dict_round_trip_restores_memory_and_continues_identically() -> None:
    seqs = _seqs()
    model = _model(update_trigger="TIME_BASED", interaction_threshold=3).train()
    for p in range(3, 10):  # 7 calls: the next write is on the 9th
        _write(model, seqs, [0, 1, 2], [p, p + 1, p + 2])
    state = model.state_dict()
    assert all(f"retriever.memory.{k}" in state for k in STATE)
    fresh = _model(update_trigger="TIME_BASED", interaction_threshold=3).train()
    assert not torch.equal(fresh.retriever.memory.slot_pos, model.retriever.memory.slot_pos)
    fresh.load_state_dict(state)
    for k, v in _state(model).items():
        assert torch.equal(getattr(fresh.retriever.memory, k), v), k
    assert torch.equal(_read(fresh, [0, 1, 2], None), _read(model, [0, 1, 2], None))
    for m in (model, fresh):  # resumed: the next writes (step parity included) are the same
        torch.manual_seed(5)
        assert [_write(m, seqs, [0, 1], [p, p])[1]["memory_updates"] for p in (10, 11)] == [0, 2]
    for k, v in _state(model).items():
        assert torch.equal(getattr(fresh.retriever.memory, k), v), k


# ---------------------------------------------------------------------------------------- memory off
@pytest.mark.parametrize("fusion", ["weighted", "adaptive"])
def test_memory_off_or_empty_changes_nothing_else(fusion: str) -> None:
    off, on = _model(max_memory_size=0, fusion_method=fusion), _model(max_memory_size=3, fusion_method=fusion)
    assert off.retriever.memory is None
    state_on = on.state_dict()
    state_off = off.state_dict()
    assert set(state_on) - set(state_off) == {k for k in state_on if k.startswith("retriever.memory.")}
    for k, v in state_off.items():  # memory is created last: every other initial weight is the same
        assert torch.equal(v, state_on[k]), k
    g = torch.Generator().manual_seed(3)
    users, seq = torch.arange(U), torch.randint(0, N + 1, (U, L), generator=g)
    cands = torch.randint(1, N + 1, (U, 5), generator=g)
    on.eval(), off.eval()
    with torch.no_grad():  # an empty memory adds exactly nothing
        assert torch.equal(on(users, seq, cands)["scores"], off(users, seq, cands)["scores"])
        assert torch.equal(on.full_sort_predict(users, seq), off.full_sort_predict(users, seq))
    off.train()
    out = off(users, seq, cands, target_positions=torch.full((U,), 10), user_memory_update=True)
    assert out["memory"] == {}
