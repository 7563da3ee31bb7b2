"""``TextPreferenceRetrieverMoE``: scores (user, candidate item) pairs from frozen text embeddings.

Modalities: the user's preference-text embedding, the item's description embedding (both frozen,
precomputed by the sentence encoder, held as buffers and never re-encoded) and a learned item-ID
embedding. For a pair (u, i) the *target query* is the candidate ``c_i = desc_i + id_i``:

1. three cross-modal experts: the query attends to one modality (multi-head attention), then an
   FFN: ``o_k = c + FFN_k(c + Attn_k(c, m_k))`` with m = user preference / item description / ID;
2. a router over [query, pooled modalities] gives softmax weights w over the experts;
   ``x = sum_k w_k o_k``;
3. ``moe_num_proxies`` learnable proxy tokens refine x by attention: ``z = x + Attn(x, proxies)``;
4. score = cos(z, user vector) / temperature (learnable, initialised at 0.1).

Vectorised, and factorised so each part is computed where it varies:
- Each expert attends to a *single* context token, so its softmax is exactly 1 and
  ``Attn_k(c, m) = W_o W_v m + b``: independent of the query. The user-preference expert's
  attention output is computed once per user, the two item experts' entire outputs once per item.
- The router's first layer is linear over a concatenation, so it splits into a per-item term
  (query, description, ID) plus a per-user term (preference); only the sum is per pair.
- The proxies' keys and values do not depend on the pair: computed once per forward.
Per pair remain: the user expert's FFN, the mixture, the proxy attention and the cosine.

With ``max_memory_size`` > 0 the user vector is the preference vector with a per-user memory of the
user's sequence gated in (``ur4rec.models.user_memory``: what a slot stores and why). Training
forwards pass ``input_seq`` and ``target_positions`` (interface 4) and ``user_memory_update=True``;
every other read (evaluation, ``full_catalogue_scores``) is a held-out read of every stored slot.
The memory's parameters are created last (``attach_memory``), so switching it on or off leaves every
other initial weight unchanged.

``score_loop`` runs the same block naively, one candidate at a time with ``nn.MultiheadAttention``
calls (as the original system did); tests check both give the same scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ur4rec.models.user_memory import UserMemory, check_positions

EXPERTS = ("user_preference", "item_description", "item_id")


def _ffn(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))


class TextPreferenceRetrieverMoE(nn.Module):
    def __init__(self, user_text_emb: torch.Tensor, item_text_emb: torch.Tensor, output_dim: int = 64,
                 num_heads: int = 4, dropout: float = 0.1, num_proxies: int = 4, max_memory_size: int = 0,
                 update_trigger: str = "INTERACTION_COUNT", interaction_threshold: int = 10,
                 drift_threshold: float = 0.3, decay_factor: float = 0.95,
                 image_features: torch.Tensor | None = None) -> None:
        super().__init__()
        num_users, text_dim = user_text_emb.shape
        self.num_items = item_text_emb.shape[0] - 1
        d = output_dim
        self.dim, self.num_heads = d, num_heads
        # frozen inputs: buffers (no gradient, not re-encoded, rebuilt from the text cache)
        self.register_buffer("user_text", user_text_emb.detach().float().clone(), persistent=False)
        self.register_buffer("item_text", item_text_emb.detach().float().clone(), persistent=False)
        self.register_buffer("image", None if image_features is None else image_features.detach().float().clone(),
                             persistent=False)
        self.user_proj = nn.Sequential(nn.Linear(text_dim, d), nn.LayerNorm(d), nn.Dropout(dropout))
        self.item_proj = nn.Sequential(nn.Linear(text_dim, d), nn.LayerNorm(d), nn.Dropout(dropout))
        self.image_proj = None if image_features is None else nn.Linear(image_features.shape[1], d)
        self.item_id = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_id.weight, std=0.02)
        self.expert_attn = nn.ModuleList(nn.MultiheadAttention(d, num_heads, batch_first=True) for _ in EXPERTS)
        self.expert_ffn = nn.ModuleList(_ffn(d, dropout) for _ in EXPERTS)
        self.router = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, len(EXPERTS)))
        self.proxies = nn.Parameter(torch.randn(num_proxies, d) * 0.02)
        self.proxy_attn = nn.MultiheadAttention(d, num_heads, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.log_temperature = nn.Parameter(torch.tensor(0.1).log())
        self.memory: UserMemory | None = None
        if max_memory_size > 0:
            self.attach_memory(max_memory_size, update_trigger, interaction_threshold, drift_threshold, decay_factor)

    def attach_memory(self, max_memory_size: int, update_trigger: str = "INTERACTION_COUNT",
                      interaction_threshold: int = 10, drift_threshold: float = 0.3,
                      decay_factor: float = 0.95) -> None:
        """Create the user memory (its parameters drawn from the global RNG now, after everything else)."""
        if self.memory is not None:
            raise ValueError("this retriever already has a user memory")
        self.memory = UserMemory(len(self.user_text), self.dim, max_memory_size, update_trigger,
                                 interaction_threshold, drift_threshold, decay_factor)

    # ---------------------------------------------------------------- per-user and per-item parts
    def user_representation(self, user_ids: torch.Tensor, input_seq: torch.Tensor | None = None,
                            target_positions: torch.Tensor | None = None,
                            memory_update: bool = False) -> tuple[torch.Tensor, dict]:
        """User vectors [B, d]: the projected preference text, with memory read at ``target_positions``
        (None: a held-out read of every slot) and, in training with ``memory_update``, written from
        the last items of ``input_seq`` [B, L] (left-padded, items before each target only)."""
        pref = self.user_proj(self.user_text[user_ids])
        if self.memory is None:
            return pref, {}
        history = mask = None
        if target_positions is not None:
            target_positions = check_positions(target_positions, len(user_ids))
        if self.memory.writes(memory_update):
            if input_seq is None or input_seq.dim() != 2 or len(input_seq) != len(user_ids):
                got = None if input_seq is None else list(input_seq.shape)
                raise ValueError(f"a memory write needs input_seq [{len(user_ids)}, L] (the items before each "
                                 f"target, left-padded), got {got}: pass input_seq with user_memory_update=True")
            if target_positions is not None and ((input_seq != 0).sum(1) > target_positions).any():
                raise ValueError("input_seq holds more items than its target position allows: row i must hold only "
                                 "items before target_positions[i] (its 0-based index in the user's training "
                                 "sequence, interface 4), so at most target_positions[i] of them")
            tail = input_seq[:, -self.memory.window:]
            history, mask = self.item_query(tail), tail != 0
        return self.memory(user_ids, pref, target_positions, history, mask, update=memory_update)

    def item_query(self, items: torch.Tensor) -> torch.Tensor:
        """The target query of items (any shape): projected description + ID (+ image) embedding."""
        return self._desc_ident(items)[2]

    def _desc_ident(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        desc = self.item_proj(self.item_text[items])
        ident = self.item_id(items)
        if self.image_proj is not None:
            ident = ident + self.image_proj(self.image[items])
        return desc, ident, desc + ident

    def item_parts(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything that depends on the item alone: query, item experts' outputs, router term."""
        desc, ident, c = self._desc_ident(items)
        outs = [c + self.drop(self.expert_ffn[k](c + self._single_token_attention(k, m)))
                for k, m in ((1, desc), (2, ident))]
        w1 = self.router[0].weight  # [d, 4d] over [query, user pref, item desc, item id]
        d = self.dim
        router_item = c @ w1[:, :d].T + desc @ w1[:, 2 * d:3 * d].T + ident @ w1[:, 3 * d:].T + self.router[0].bias
        return {"c": c, "desc_out": outs[0], "id_out": outs[1], "router_item": router_item}

    def _single_token_attention(self, k: int, context: torch.Tensor) -> torch.Tensor:
        """Multi-head attention over one context token = W_o (W_v m + b_v) + b_o (softmax is 1)."""
        attn = self.expert_attn[k]
        d = self.dim
        v = F.linear(context, attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
        return attn.out_proj(v)

    # ---------------------------------------------------------------- pairwise part
    def _pairs(self, user: torch.Tensor, items: dict[str, torch.Tensor], user_attn: torch.Tensor,
               router_user: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores [B, C], routing weights [B, C, 3] and the candidate-conditioned preference vectors z
        [B, C, d] (what ``fusion_method: feature`` feeds to the scorer); user-side tensors [B, 1, d],
        item-side [B, C, d] (broadcast)."""
        c = items["c"]
        user_out = c + self.drop(self.expert_ffn[0](c + user_attn))
        weights = torch.softmax(self.router[2](F.gelu(items["router_item"] + router_user)), dim=-1)
        x = weights[..., 0:1] * user_out + weights[..., 1:2] * items["desc_out"] + weights[..., 2:3] * items["id_out"]
        z = x + self.drop(self._proxy_attention(x))
        score = F.cosine_similarity(z, user.expand_as(z), dim=-1) / self.log_temperature.exp()
        return score, weights, z

    def _proxy_attention(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] attends over the shared proxies (keys/values computed once)."""
        attn, d, h = self.proxy_attn, self.dim, self.num_heads
        q = F.linear(x, attn.in_proj_weight[:d], attn.in_proj_bias[:d])
        kv = F.linear(self.proxies, attn.in_proj_weight[d:], attn.in_proj_bias[d:])
        k, v = kv[:, :d], kv[:, d:]
        shape = x.shape[:-1]
        q = q.reshape(*shape, h, d // h)
        k = k.reshape(-1, h, d // h)
        v = v.reshape(-1, h, d // h)
        a = torch.softmax(torch.einsum("...hd,phd->...hp", q, k) / (d // h) ** 0.5, dim=-1)
        return attn.out_proj(torch.einsum("...hp,phd->...hd", a, v).reshape(*shape, d))

    def forward(self, user_ids: torch.Tensor, candidate_items: torch.Tensor, input_seq: torch.Tensor | None = None,
                target_positions: torch.Tensor | None = None,
                user_memory_update: bool = False) -> dict[str, torch.Tensor | dict]:
        """Scores of candidates [B, C] for users [B], with routing weights [B, C, 3], the user vectors
        [B, d] and memory stats. ``input_seq``, ``target_positions``: see ``user_representation``.
        Inputs move to the model's device (callers may hold CPU batches)."""
        device = self.item_id.weight.device
        user_ids, candidate_items = user_ids.to(device), candidate_items.to(device)
        input_seq = None if input_seq is None else input_seq.to(device)
        target_positions = None if target_positions is None else target_positions.to(device)
        user, mem_stats = self.user_representation(user_ids, input_seq, target_positions, user_memory_update)
        user_attn = self._single_token_attention(0, user).unsqueeze(1)
        router_user = (user @ self.router[0].weight[:, self.dim:2 * self.dim].T).unsqueeze(1)
        # item parts once per distinct item, then gathered for every pair that uses it
        uniq, inverse = torch.unique(candidate_items, return_inverse=True)
        items = {k: v[inverse] for k, v in self.item_parts(uniq).items()}
        scores, weights, pairs = self._pairs(user.unsqueeze(1), items, user_attn, router_user)
        return {"scores": scores, "routing_weights": weights, "user": user, "memory": mem_stats, "pairs": pairs}

    def score(self, user_ids: torch.Tensor, candidate_items: torch.Tensor) -> torch.Tensor:
        return self.forward(user_ids, candidate_items)["scores"]

    @torch.no_grad()
    def full_catalogue_scores(self, user_ids: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
        """Exact scores of every item for each user, in item chunks: [B, N+1] (column 0 = -inf)."""
        user, _ = self.user_representation(user_ids.to(self.item_id.weight.device))
        user_attn = self._single_token_attention(0, user).unsqueeze(1)
        router_user = (user @ self.router[0].weight[:, self.dim:2 * self.dim].T).unsqueeze(1)
        out = torch.full((len(user_ids), self.num_items + 1), float("-inf"), device=user.device)
        for start in range(1, self.num_items + 1, chunk_size):
            items = torch.arange(start, min(start + chunk_size, self.num_items + 1), device=user.device)
            parts = {k: v.unsqueeze(0) for k, v in self.item_parts(items).items()}  # shared by all users
            out[:, items], _, _ = self._pairs(user.unsqueeze(1), parts, user_attn, router_user)
        return out

    # ---------------------------------------------------------------- naive reference
    @torch.no_grad()
    def score_loop(self, user_ids: torch.Tensor, candidate_items: torch.Tensor) -> torch.Tensor:
        """The same block computed naively, one (user, candidate) at a time, with full attention
        calls and the router over the concatenation — the original system's structure. Reference
        for tests and the benchmark only (eval mode)."""
        out = torch.zeros(candidate_items.shape)
        for b, u in enumerate(user_ids.tolist()):
            user, _ = self.user_representation(torch.tensor([u]))
            for j, i in enumerate(candidate_items[b].tolist()):
                item = torch.tensor([i])
                desc, ident = self.item_proj(self.item_text[item]), self.item_id(item)
                if self.image_proj is not None:
                    ident = ident + self.image_proj(self.image[item])
                c = (desc + ident).unsqueeze(1)  # [1, 1, d]
                outs = []
                for k, m in enumerate((user, desc, ident)):
                    a, _ = self.expert_attn[k](c, m.unsqueeze(1), m.unsqueeze(1), need_weights=False)
                    outs.append(c + self.expert_ffn[k](c + a))
                route_in = torch.cat([c.squeeze(1), user, desc, ident], dim=-1)
                w = torch.softmax(self.router(route_in), dim=-1)
                x = sum(w[0, k] * outs[k] for k in range(3))
                p = self.proxies.unsqueeze(0)
                r, _ = self.proxy_attn(x, p, p, need_weights=False)
                z = (x + r).squeeze(1)
                out[b, j] = F.cosine_similarity(z, user, dim=-1) / self.log_temperature.exp()
        return out
