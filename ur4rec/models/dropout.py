"""Dropout with a cheaper random mask than torch's on a CPU.

``nn.Dropout`` draws one Bernoulli sample per element (``aten::bernoulli_``), a large part of a
SASRec prefix step; with this mask the whole step is 1.43x faster on two threads
(bench/results/sasrec_step.md, against commit 8d3b46c's SASRec). Here one 64-bit draw
of torch's generator gives four 16-bit uniform numbers, each compared with a threshold: the mask is
the same kind of object (independent keeps with probability 1 - p, survivors scaled by 1 / (1 - p))
from a quarter of the draws and no float conversion. The probability is rounded to a multiple of
1/65536 (0.2 becomes 0.199997); the scale uses the rounded value, so the output's expectation is
exactly the input. Draws come from torch's global generator, so ``seed_everything`` controls them.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16  # values of one 16-bit lane


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype,
                 device: torch.device | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-and-scale multipliers of ``shape``: 0 with probability ~p, else 1 / (1 - p). ``valid``
    (bool, broadcastable to ``shape``) zeroes its False entries too: a padding mask folded into the
    dropout mask, so ``x * mask`` is one multiplication, not two (the draws are the same either way)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    n = 1
    for s in shape:
        n *= s
    dropped = round(p * _LEVELS)
    # randint over the full int64 range: 64 uniform bits (random_() without bounds leaves the sign bit 0)
    bits = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    lanes = bits.view(torch.int16)[:n].view(shape)  # each lane uniform over -32768 .. 32767
    keep = lanes >= dropped - _LEVELS // 2
    if valid is not None:
        keep = keep & valid
    # bool x scale computes in float: the same value as .to(dtype) * scale, rounded to dtype after
    return (keep * (_LEVELS / (_LEVELS - dropped))).to(dtype)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Functional form of ``FastDropout``."""
    if not training or p == 0.0:
        return x
    return x * dropout_mask(x.shape, p, x.dtype, x.device)


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` with the cheaper mask above."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
