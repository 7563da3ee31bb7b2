"""``UR4RecV2MoE``: SASRec and the MoE text-preference retriever, fused.

Score scales. SASRec's dot products and the retriever's temperature-scaled cosines live on
different scales (the original's fused scores spanned -125..186, so the larger branch decided
alone). Before mixing, each branch's scores are **divided by that branch's typical within-user
spread**: the standard deviation of a user's candidate scores around the user's mean, averaged
over users, tracked as a running average during training (``ScoreScale``, buffers saved in
checkpoints). Both branches then vary by about 1 within a user, so the fusion weights mean what
they say. A per-user shift would not change any ranking, so none is applied; and because the scale
is a fixed pair of numbers at evaluation, a candidate's fused score does not depend on which other
candidates are scored: ``forward`` on candidates equals the matching columns of
``full_sort_predict``.

Fusion methods (``fusion_method``): ``weighted`` — fixed ``sasrec_weight``/``retriever_weight``;
``learned`` — two learnable logits, softmaxed; ``adaptive`` — per-user weights from an MLP over
both branches' user representations. These mix two *scores*. ``feature`` is the UR4Rec paper's own
integration (Zhang, Zhu, Dou, COLING 2025): the retriever's candidate-conditioned preference vector
z(u, i) enters SASRec's scorer as a feature, score = <h_u + P z(u, i), e_i>, with P learned in
end_to_end together with both branches. P starts at zero, so before end_to_end the model scores
exactly as SASRec alone, and what end_to_end adds is what joint training found. No score scales
are involved (one scorer); like the retriever it is per pair, so it ranks the catalogue two-stage.

A user with no history (an all-padding sequence) has no SASRec signal: their SASRec weight is set
to 0, so the retriever alone scores them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ur4rec.models.moe_retriever import TextPreferenceRetrieverMoE
from ur4rec.models.sasrec import SASRec

FUSION_METHODS = ("weighted", "learned", "adaptive", "feature")


class ScoreScale(nn.Module):
    """Running within-user score spread of each branch (SASRec, retriever); see the module doc."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("spread", torch.ones(2))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        #: data-parallel training sets this to a sum over processes, so that every process observes
        #: the spread of the whole global batch (``ur4rec.training.distributed``); None: one process
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @torch.no_grad()
    def observe(self, sasrec_scores: torch.Tensor, retriever_scores: torch.Tensor) -> None:
        if sasrec_scores.shape[-1] < 2:
            return  # one candidate: no within-user spread to measure
        if self.reduce is None:
            batch = torch.stack([s.std(dim=-1).mean() for s in (sasrec_scores, retriever_scores)])
        else:  # the mean over every process's rows: sums and row counts added over processes (float64)
            stds = [s.double().std(dim=-1) for s in (sasrec_scores, retriever_scores)]
            sums = self.reduce(torch.stack([stds[0].sum(), stds[1].sum(), stds[0].new_tensor(stds[0].numel())]))
            batch = (sums[:2] / sums[2]).to(self.spread.dtype)
        batch = batch.clamp(min=1e-6)
        m = 1.0 if int(self.updates) == 0 else self.momentum
        self.spread.mul_(1 - m).add_(m * batch)
        self.updates += 1

    def forward(self, sasrec_scores: torch.Tensor, retriever_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            self.observe(sasrec_scores.detach(), retriever_scores.detach())
        return sasrec_scores / self.spread[0], retriever_scores / self.spread[1]


class UR4RecV2MoE(nn.Module):
    def __init__(self, sasrec: SASRec, retriever: TextPreferenceRetrieverMoE, fusion_method: str = "weighted",
                 sasrec_weight: float = 0.5, retriever_weight: float = 0.5) -> None:
        super().__init__()
        if fusion_method not in FUSION_METHODS:
            raise ValueError(f"fusion_method must be one of {FUSION_METHODS}, got {fusion_method!r}")
        self.sasrec, self.retriever, self.fusion_method = sasrec, retriever, fusion_method
        self.scale = ScoreScale()
        self.register_buffer("fixed_weights", torch.tensor([sasrec_weight, retriever_weight], dtype=torch.float32))
        self.fusion_logits = nn.Parameter(torch.zeros(2)) if fusion_method == "learned" else None
        self.adaptive = None
        if fusion_method == "adaptive":
            h, d = sasrec.hidden_dim, retriever.dim
            self.adaptive = nn.Sequential(nn.Linear(h + d, d), nn.GELU(), nn.Linear(d, 2))
        self.feature = None
        if fusion_method == "feature":
            self.feature = nn.Linear(retriever.dim, sasrec.hidden_dim, bias=False)
            nn.init.zeros_(self.feature.weight)  # starts as SASRec alone

    # parameter groups for the trainer's two optimizers (together: every parameter exactly once)
    def sasrec_parameters(self) -> Iterator[nn.Parameter]:
        return self.sasrec.parameters()

    def retriever_parameters(self) -> Iterator[nn.Parameter]:
        return self.retriever.parameters()

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        if self.fusion_logits is not None:
            yield self.fusion_logits
        if self.adaptive is not None:
            yield from self.adaptive.parameters()
        if self.feature is not None:
            yield from self.feature.parameters()

    def fusion_weights(self, user_ids: torch.Tensor, input_seq: torch.Tensor, sasrec_user: torch.Tensor,
                       retriever_user: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 2] weights (SASRec, retriever); SASRec's is 0 for users without history. Adaptive
        fusion reads the retriever's user vectors: ``retriever_user`` as the forward computed them
        (memory read at the targets' positions), else a held-out read."""
        b = len(user_ids)
        if self.fusion_method == "feature":  # one scorer: both branches in full, no score mixing
            return torch.ones(b, 2, device=self.fixed_weights.device)
        if self.fusion_method == "weighted":
            w = self.fixed_weights.expand(b, 2)
        elif self.fusion_method == "learned":
            w = torch.softmax(self.fusion_logits, dim=0).expand(b, 2)
        else:
            retr_user = retriever_user
            if retr_user is None:
                retr_user, _ = self.retriever.user_representation(user_ids)
            w = torch.softmax(self.adaptive(torch.cat([sasrec_user, retr_user], dim=-1)), dim=-1)
        no_history = (input_seq != 0).sum(dim=1) == 0
        return torch.where(no_history.unsqueeze(1), torch.tensor([0.0, 1.0], device=w.device), w)

    def forward(self, user_ids: torch.Tensor, input_seq: torch.Tensor, candidate_items: torch.Tensor,
                return_components: bool = True, target_positions: torch.Tensor | None = None,
                user_memory_update: bool = False) -> dict[str, torch.Tensor]:
        """Fused scores of candidates [B, C]. ``target_positions`` [B]: each row's target's 0-based
        position in the user's training sequence (None: a held-out prediction); with
        ``user_memory_update`` a training forward writes the retriever's user memory. Inputs may come
        from the CPU (notebooks, diagnostics): they move to the model's device, the outputs stay there."""
        device = self.fixed_weights.device
        user_ids, input_seq, candidate_items = user_ids.to(device), input_seq.to(device), candidate_items.to(device)
        if target_positions is not None:
            target_positions = target_positions.to(device)
        sasrec_user = self.sasrec.user_representation(input_seq)
        item_vectors = self.sasrec.item_vectors()[candidate_items]
        sasrec_scores = (item_vectors * sasrec_user.unsqueeze(1)).sum(-1)
        retr = self.retriever(user_ids, candidate_items, input_seq=input_seq, target_positions=target_positions,
                              user_memory_update=user_memory_update)
        w = self.fusion_weights(user_ids, input_seq, sasrec_user, retr["user"])
        if self.feature is not None:
            scores = sasrec_scores + (self.feature(retr["pairs"]) * item_vectors).sum(-1)
        else:
            s_sasrec, s_retr = self.scale(sasrec_scores, retr["scores"])
            scores = w[:, :1] * s_sasrec + w[:, 1:] * s_retr
        out = {"scores": scores}
        if return_components:
            out |= {"sasrec_scores": sasrec_scores, "retriever_scores": retr["scores"],
                    "routing_weights": retr["routing_weights"], "fusion_weights": w, "memory": retr["memory"]}
        return out

    @torch.no_grad()
    def full_sort_predict(self, user_ids: torch.Tensor, input_seq: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
        """Exact fused scores of the whole catalogue: [B, N+1] (column 0 = -inf)."""
        user_ids, input_seq = user_ids.to(self.fixed_weights.device), input_seq.to(self.fixed_weights.device)
        if self.feature is not None:  # per pair: the forward over item chunks
            device = user_ids.device
            out = torch.full((len(user_ids), self.retriever.num_items + 1), float("-inf"), device=device)
            for start in range(1, self.retriever.num_items + 1, chunk_size):
                items = torch.arange(start, min(start + chunk_size, self.retriever.num_items + 1), device=device)
                out[:, items] = self.forward(user_ids, input_seq, items.expand(len(user_ids), -1),
                                             return_components=False)["scores"]
            return out
        sasrec = self.sasrec.full_sort_predict(input_seq)[:, 1:]
        retr = self.retriever.full_catalogue_scores(user_ids, chunk_size)[:, 1:]
        w = self.fusion_weights(user_ids, input_seq, self.sasrec.user_representation(input_seq))
        fused = w[:, :1] * sasrec / self.scale.spread[0] + w[:, 1:] * retr / self.scale.spread[1]
        return torch.cat([torch.full((len(user_ids), 1), float("-inf"), device=fused.device), fused], dim=1)
