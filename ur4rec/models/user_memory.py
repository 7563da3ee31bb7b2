"""Per-user memory: a few GRU-chained summaries of the user's sequence, gated into the static
preference-text vector.

What a slot stores, and why. The retriever's user side is otherwise the user's preference-text
embedding alone: one static vector per user that never sees the interaction sequence, so writing
that vector into memory (as before) carried nothing new. A slot instead holds the state of the
user's *sequence at a training prefix*: the slot written for a training target at absolute position
p (0-based, in the user's training sequence) is ``GRU(x_p, h)``, where ``x_p`` is the mean of the
retriever's own item queries (projected description + item-ID embedding) of the last
``interaction_threshold`` items before p (the caller's ``input_seq``), and ``h`` is the user's most
recent stored slot at a position strictly before p (zeros if none). A slot at p thus depends on
items at positions < p only, and its position is stored with it (``slot_pos``, -1 = empty).

Reading for a target at position t averages the slots at positions ≤ t, newest weight 1 and each
older one ``decay_factor`` times the next (age = rank by position among the readable slots); a
held-out prediction (``positions=None``) reads every stored slot, which is leak-free because slots
are only ever written from training prefixes. The read r enters as ``pref + sigmoid(W [pref; r]) * r``
and contributes exactly nothing when no slot is readable.

Writing happens only in training mode and when asked (``update=True``), vectorised over the batch's
unique users (no per-user Python loop). A user appearing in several rows of one batch writes once,
from the row with the largest target position (ties: the first such row); every row still reads
the memory as it is after this write, restricted to its own target position. Placement: a write at
a position that already has a slot overwrites it (windows repeat every epoch); otherwise it takes an
empty slot; a full ring replaces the slot with the smallest position — unless every stored slot is
newer than p, then the write is dropped (the ring keeps the user's most recent history). The current
forward reads the fresh value with its gradient (the GRU, the gate and the item embeddings learn);
the buffers store it detached.

Triggers (``update_trigger``) are functions of positions, not of step counters over users, because
the training order is shuffled every epoch:

- ``INTERACTION_COUNT``: write at p when p - (position of the latest stored slot before p, or 0)
  ≥ ``interaction_threshold``;
- ``DRIFT_THRESHOLD``: a slot is recorded at every training position, but its state is updated
  (``GRU(x_p, h)``) only when there is no earlier slot or the update moves it by more than
  ``drift_threshold`` (1 - cosine to h); otherwise it carries h unchanged. Recording the position
  either way keeps *which* positions hold slots independent of item contents: if a drift-triggered
  write at a later position could evict an earlier slot, a read at t would depend on items ≥ t;
- ``TIME_BASED``: every ``interaction_threshold``-th training forward with ``update=True`` (the
  ``step`` buffer counts them) writes for every user in the batch;
- ``EXPLICIT``: every training forward with ``update=True`` writes.

A row whose input sequence is all padding has nothing to summarise and never writes. So a read for
target t is a function of the items before t only (plus positions and the training order), never
of the items at positions ≥ t; tests check it bitwise.

State lives in registered buffers (saved in checkpoints, so a resumed run continues exactly):
``slots`` [U, M, d], ``slot_pos`` [U, M] and ``step``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TRIGGERS = ("INTERACTION_COUNT", "DRIFT_THRESHOLD", "TIME_BASED", "EXPLICIT")


class UserMemory(nn.Module):
    def __init__(self, num_users: int, dim: int, max_memory_size: int, update_trigger: str = "INTERACTION_COUNT",
                 interaction_threshold: int = 10, drift_threshold: float = 0.3, decay_factor: float = 0.95) -> None:
        super().__init__()
        if update_trigger not in TRIGGERS:
            raise ValueError(f"update_trigger must be one of {TRIGGERS}, got {update_trigger!r}")
        if max_memory_size < 1 or interaction_threshold < 1:
            raise ValueError(f"UserMemory needs max_memory_size >= 1 and interaction_threshold >= 1, got "
                             f"{max_memory_size} and {interaction_threshold} (max_memory_size 0 = no memory module)")
        self.size, self.trigger = max_memory_size, update_trigger
        self.interaction_threshold, self.drift_threshold = interaction_threshold, drift_threshold
        self.decay = decay_factor
        self.gru = nn.GRUCell(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.register_buffer("slots", torch.zeros(num_users, max_memory_size, dim))
        self.register_buffer("slot_pos", torch.full((num_users, max_memory_size), -1, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def window(self) -> int:
        """How many of the most recent input items a slot summarises."""
        return self.interaction_threshold

    def writes(self, update: bool) -> bool:
        """Whether a forward with this ``update`` flag writes (training mode and asked)."""
        return update and self.training

    def forward(self, users: torch.Tensor, pref: torch.Tensor, positions: torch.Tensor | None = None,
                history: torch.Tensor | None = None, history_mask: torch.Tensor | None = None,
                update: bool = False) -> tuple[torch.Tensor, dict]:
        """Gate memory into ``pref`` [B, d] for ``users`` [B], reading slots at positions ≤ ``positions``
        [B] (None: every slot). When writing, ``history`` [B, k, d] holds the embeddings of the rows'
        last k input items and ``history_mask`` [B, k] which of them are real (not padding)."""
        if positions is not None:
            positions = check_positions(positions, len(users))
        if self.writes(update):
            if positions is None or history is None or history_mask is None:
                raise ValueError("UserMemory writes need the target positions and the input history: pass "
                                 "input_seq and target_positions with user_memory_update=True")
            slots, pos, stats = self._write(users, positions, history, history_mask)
        else:
            slots, pos, stats = self.slots[users], self.slot_pos[users], {"memory_updates": 0}
        read, has = self._readout(slots, pos, positions)
        g = torch.sigmoid(self.gate(torch.cat([pref, read], dim=-1)))
        stats["memory_readable_mean"] = float(((pos >= 0) & _readable(pos, positions)).sum(1).float().mean())
        stats["memory_gate_mean"] = float(g.detach()[has].mean()) if bool(has.any()) else 0.0  # rows with memory
        # where (not a multiplication) so a user with nothing readable gets pref back bit for bit
        return torch.where(has.unsqueeze(1), pref + g * read, pref), stats

    def _readout(self, slots: torch.Tensor, pos: torch.Tensor,
                 positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decay-weighted mean of the readable slots [B, d] (zeros if none) and whether any is [B]."""
        valid = (pos >= 0) & _readable(pos, positions)
        newer = valid.unsqueeze(1) & (pos.unsqueeze(1) > pos.unsqueeze(2))  # [B, i, j]: j readable, newer than i
        age = newer.sum(-1)
        w = torch.where(valid, self.decay ** age.to(slots.dtype), 0.0)
        kept = torch.where(valid.unsqueeze(-1), slots, 0.0)  # unreadable values never enter, not even times 0
        total = w.sum(1, keepdim=True)
        has = valid.any(1)
        read = (w.unsqueeze(-1) * kept).sum(1) / torch.where(has.unsqueeze(1), total, 1.0)
        return read, has

    def _write(self, users: torch.Tensor, positions: torch.Tensor, history: torch.Tensor,
               history_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Write one slot per due user (see the module doc); returns the rows' slots and positions as
        they are after the write, the fresh values with their gradient."""
        self.step += 1
        uniq, inverse, row = writer_rows(users, positions)
        p = positions[row]
        mask = history_mask[row].unsqueeze(-1).to(history.dtype)
        count = mask.sum(1)
        x = (history[row] * mask).sum(1) / count.clamp(min=1)
        stored_slots, stored_pos = self.slots[uniq], self.slot_pos[uniq]  # copies: the in-place write below
        earlier = (stored_pos >= 0) & (stored_pos < p.unsqueeze(1))
        prev_pos, prev_idx = torch.where(earlier, stored_pos, -1).max(dim=1)
        has_prev = prev_pos >= 0
        idx = torch.arange(len(uniq), device=users.device)
        h = torch.where(has_prev.unsqueeze(1), stored_slots[idx, prev_idx], 0.0)
        new = self.gru(x, h)
        stats = {}
        if self.trigger == "INTERACTION_COUNT":
            due = p - prev_pos.clamp(min=0) >= self.interaction_threshold
        elif self.trigger == "DRIFT_THRESHOLD":
            drift = 1 - F.cosine_similarity(new.detach(), h, dim=-1)
            changed = ~has_prev | (drift > self.drift_threshold)
            new = torch.where(changed.unsqueeze(1), new, h)
            due = torch.ones_like(has_prev)
            stats["memory_drift_changes"] = int((changed & (count.squeeze(1) > 0)).sum())
        elif self.trigger == "TIME_BASED":
            due = torch.full_like(has_prev, bool(int(self.step) % self.interaction_threshold == 0))
        else:  # EXPLICIT
            due = torch.ones_like(has_prev)
        due = due & (count.squeeze(1) > 0)  # nothing before p: nothing to summarise
        same = stored_pos == p.unsqueeze(1)
        # the same position if present, else the smallest position (an empty slot, -1, comes first)
        at = torch.where(same.any(1), same.to(torch.uint8).argmax(1), stored_pos.argmin(1))
        store = due & (stored_pos[idx, at] <= p)  # a full ring of newer slots keeps them
        with torch.no_grad():
            self.slots[uniq[store], at[store]] = new[store].detach()
            self.slot_pos[uniq[store], at[store]] = p[store]
        put = (torch.arange(self.size, device=users.device) == at.unsqueeze(1)) & store.unsqueeze(1)  # [Uq, M]
        slots = torch.where(put.unsqueeze(-1), new.unsqueeze(1), stored_slots)
        pos = torch.where(put, p.unsqueeze(1), stored_pos)
        stats["memory_updates"] = int(store.sum())
        return slots[inverse], pos[inverse], stats


def _readable(pos: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if positions is None:
        return torch.ones_like(pos, dtype=torch.bool)
    return pos <= positions.unsqueeze(1)


def check_positions(positions: torch.Tensor, batch: int) -> torch.Tensor:
    """``positions`` as a long tensor, after checking it is [batch] integers >= 0 (else ValueError)."""
    if positions.shape != (batch,) or positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise ValueError(f"target_positions must be an integer tensor of shape [{batch}] (one 0-based position "
                         f"per row), got {positions.dtype} of shape {list(positions.shape)}")
    if (positions < 0).any():
        raise ValueError(f"target_positions must be >= 0 (0-based index in the user's training sequence), got "
                         f"minimum {int(positions.min())}")
    return positions.long()


def writer_rows(users: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique users (sorted), each row's index into them, and for each user the row that writes:
    the largest target position, ties to the first row."""
    uniq, inverse = torch.unique(users, return_inverse=True)
    b = len(users)
    rows = torch.arange(b, device=users.device)
    key = positions * b + (b - 1 - rows)  # larger position first, then the smaller row
    best = torch.full((len(uniq),), -1, dtype=torch.long, device=users.device)
    best.scatter_reduce_(0, inverse, key, reduce="amax")
    return uniq, inverse, b - 1 - best % b
