"""Per-user memory: a few GRU-updated vectors per user, gated into the user representation.

State lives in registered buffers (so it is saved in checkpoints): ``slots`` [U, M, d], ``filled``
[U] (how many slots hold something), ``since_update`` [U] (interactions seen since the last write)
and ``step``. Memory is written only in training mode and only when the caller asks
(``update=True``); every operation is vectorised over the batch's unique users.

Triggers (``update_trigger``): ``INTERACTION_COUNT`` writes when a user has seen
``interaction_threshold`` interactions since the last write; ``DRIFT_THRESHOLD`` when the current
preference vector has drifted from the latest slot by more than ``drift_threshold`` (1 - cosine);
``TIME_BASED`` every ``interaction_threshold`` training steps; ``EXPLICIT`` whenever asked.
Reading weights slots by ``decay_factor ** age`` (newest slot weight 1).
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
        self.size, self.trigger = max_memory_size, update_trigger
        self.interaction_threshold, self.drift_threshold = interaction_threshold, drift_threshold
        self.decay = decay_factor
        self.gru = nn.GRUCell(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.register_buffer("slots", torch.zeros(num_users, max_memory_size, dim))
        self.register_buffer("filled", torch.zeros(num_users, dtype=torch.long))
        self.register_buffer("since_update", torch.zeros(num_users, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _latest(self, users: torch.Tensor) -> torch.Tensor:
        idx = ((self.filled[users] - 1).clamp(min=0) % self.size)
        return self.slots[users, idx]

    def _readout(self, users: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Decay-weighted mean of the filled slots: [B, d] (zeros for a user with none)."""
        filled = self.filled[users]
        newest = (filled - 1).clamp(min=0) % self.size
        pos = torch.arange(self.size, device=users.device)
        age = (newest.unsqueeze(1) - pos) % self.size  # 0 for the newest slot
        valid = pos.unsqueeze(0) < filled.clamp(max=self.size).unsqueeze(1)
        w = torch.where(valid, self.decay ** age.float(), torch.zeros((), device=users.device))
        return (w.unsqueeze(-1) * slots).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-9)

    def forward(self, users: torch.Tensor, pref: torch.Tensor, update: bool = False) -> tuple[torch.Tensor, dict]:
        """Gate memory into ``pref`` [B, d] for ``users`` [B]; optionally write new memory first."""
        slots = self.slots[users]
        stats = {"memory_updates": 0}
        if update and self.training:
            slots, stats = self._write(users, pref, slots)
        read = self._readout(users, slots)
        has = (self.filled[users] > 0).unsqueeze(1).to(pref.dtype)
        g = torch.sigmoid(self.gate(torch.cat([pref, read], dim=-1)))
        stats["memory_filled_mean"] = float(self.filled[users].float().mean())
        stats["memory_gate_mean"] = float((g * has).detach().mean())
        return pref + has * g * read, stats

    def _write(self, users: torch.Tensor, pref: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, dict]:
        uniq, first = _first_occurrence(users)
        self.since_update[uniq] += torch.bincount(users, minlength=len(self.filled))[uniq]
        self.step += 1
        latest = self._latest(uniq)
        if self.trigger == "INTERACTION_COUNT":
            due = self.since_update[uniq] >= self.interaction_threshold
        elif self.trigger == "DRIFT_THRESHOLD":
            drift = 1 - F.cosine_similarity(pref[first].detach(), latest, dim=-1)
            due = (self.filled[uniq] == 0) | (drift > self.drift_threshold)
        elif self.trigger == "TIME_BASED":
            due = torch.full_like(uniq, bool(int(self.step) % self.interaction_threshold == 0), dtype=torch.bool)
        else:  # EXPLICIT
            due = torch.ones_like(uniq, dtype=torch.bool)
        if not due.any():
            return slots, {"memory_updates": 0}
        u, rows = uniq[due], first[due]
        new = self.gru(pref[rows], latest[due])  # in the graph: the GRU learns through this forward
        write_at = self.filled[u] % self.size
        with torch.no_grad():
            self.slots[u, write_at] = new.detach()
            self.filled[u] += 1
            self.since_update[u] = 0
        # this forward reads the freshly written slot with its gradient
        slots = slots.clone()
        batch_rows = (users.unsqueeze(1) == u.unsqueeze(0))  # [B, n_due]
        b_idx, d_idx = batch_rows.nonzero(as_tuple=True)
        slots[b_idx, write_at[d_idx]] = new[d_idx]
        return slots, {"memory_updates": int(due.sum())}


def _first_occurrence(users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique users and, for each, the batch row where it first appears."""
    uniq, inverse = torch.unique(users, return_inverse=True)
    rows = torch.arange(len(users), device=users.device)
    first = torch.full((len(uniq),), len(users), dtype=torch.long, device=users.device)
    first.scatter_reduce_(0, inverse, rows, reduce="amin")
    return uniq, first
