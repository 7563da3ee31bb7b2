"""Item text inside SASRec: how the frozen item-description embeddings enter the item representation.

One item representation [N+1, H] serves as SASRec's input embedding and as its output (scoring)
embedding, so whatever text adds is used on both sides. Modes (config ``sasrec_item_text``):

- ``none``: learned ID embeddings only (SASRec as published).
- ``init``: ID embeddings initialised from the item texts' whitened principal components (scaled to
  the random initialisation's standard deviation), then fine-tuned as usual. Costs nothing after
  the first step; text only decides where training starts.
- ``add``: a learned ID vector plus a frozen whitened text vector through a learned linear adapter
  (no bias, so the padding row stays zero): the dual view of LLM-ESR (NeurIPS 2024), summed.
- ``alphafuse``: AlphaFuse (SIGIR 2025): the first ``s`` dimensions are the texts' top-``s``
  whitened principal coordinates, frozen (one learned scale), and learned ID embeddings fill the
  other H - ``s`` dimensions, the directions the text does not use.

Whitening: centre the item text embeddings over the catalogue (padding row excluded), project onto
the top principal directions, divide each by its standard deviation. Component signs are fixed
(largest-magnitude loading positive) so the same texts give the same vectors on any machine.
"""

from __future__ import annotations

import torch
from torch import nn

ITEM_TEXT_MODES = ("none", "init", "add", "alphafuse")


def whitened_components(text_emb: torch.Tensor, k: int) -> torch.Tensor:
    """[N+1, D] text embeddings (row 0 = padding) -> [N+1, k] whitened principal coordinates, row 0 zero."""
    items = text_emb[1:].double()
    n, d = items.shape
    if not 1 <= k <= min(n - 1, d):
        raise ValueError(f"cannot take {k} principal components of {n} item texts of dimension {d}: "
                         f"use between 1 and {min(n - 1, d)} (sasrec_text_components / sasrec_hidden_dim)")
    centred = items - items.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:k]
    sign = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
    coords = centred @ (basis * sign).T / (s[:k] / (n - 1) ** 0.5).clamp(min=1e-12)
    return torch.cat([coords.new_zeros(1, k), coords]).float()


def id_dimension(hidden_dim: int, mode: str, text_components: int) -> int:
    """Width of the learned ID embedding: H, or H - s for alphafuse (its first s dims are text)."""
    if mode not in ITEM_TEXT_MODES:
        raise ValueError(f"sasrec_item_text must be one of {ITEM_TEXT_MODES}, got {mode!r}")
    if mode == "alphafuse":
        if not 1 <= text_components < hidden_dim:
            raise ValueError(f"alphafuse keeps sasrec_text_components ({text_components}) frozen text dimensions "
                             f"and learns the rest: it must be between 1 and sasrec_hidden_dim - 1 ({hidden_dim - 1})")
        return hidden_dim - text_components
    return hidden_dim


def check_text_rows(text_emb: torch.Tensor | None, num_items: int, mode: str) -> torch.Tensor:
    if text_emb is None:
        raise ValueError(f"sasrec_item_text={mode!r} needs the item text embeddings")
    if text_emb.shape[0] != num_items + 1:
        raise ValueError(f"item text embeddings have {text_emb.shape[0]} rows, expected {num_items + 1} "
                         "(items + padding): rebuild the texts for this prepared dataset (`ur4rec texts`)")
    return text_emb


class ItemTextFusion(nn.Module):
    """``add`` and ``alphafuse``: item vectors [N+1, H] from the learned ID vectors and frozen text."""

    def __init__(self, text_emb: torch.Tensor, hidden_dim: int, mode: str, text_components: int,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if mode not in ("add", "alphafuse"):
            raise ValueError(f"ItemTextFusion is for add or alphafuse, got {mode!r}")
        self.mode = mode
        self.register_buffer("text", whitened_components(text_emb, text_components))
        self.adapter = None
        self.text_scale = None
        if mode == "add":
            self.adapter = nn.Linear(text_components, hidden_dim, bias=False)
            # unit-variance inputs: std init_std / sqrt(k) gives outputs of the ID vectors' scale
            nn.init.normal_(self.adapter.weight, std=init_std / text_components**0.5)
        else:
            self.text_scale = nn.Parameter(torch.tensor(float(init_std)))

    def forward(self, id_vectors: torch.Tensor) -> torch.Tensor:
        """[N+1, H or H - s] ID vectors -> [N+1, H] item vectors (row 0 stays zero)."""
        if self.adapter is not None:
            return id_vectors + self.adapter(self.text)
        return torch.cat([self.text_scale * self.text, id_vectors], dim=1)
