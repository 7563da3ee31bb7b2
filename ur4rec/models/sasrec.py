"""SASRec: causal self-attention over a user's item sequence (Kang & McAuley, 2018).

Input is a left-padded LongTensor [B, L] (0 = padding), so every user's most recent item sits at
the last position, where the user representation is read.

NaN-safe by construction. ``nn.MultiheadAttention`` with a causal mask plus a key-padding mask
returns NaN for every *padded query row* in eval mode under no_grad (its fused fast path gives a
fully masked softmax row 0/0), never in train mode; a second layer then spreads it into the last
position, so every user shorter than ``max_seq_len`` gets NaN scores at evaluation only. Here the
attention mask is built so that **no row is ever empty**: a query may attend to non-padded keys
at or before it, *and always to itself*. A padded query therefore attends only to itself (a finite
value nobody reads), and padded positions are zeroed after every block so nothing leaks from them.
No ``nan_to_num``: the NaN cannot arise.

Hyperparameters (config keys): ``sasrec_hidden_dim`` (H), ``sasrec_num_blocks``,
``sasrec_num_heads`` (must divide H), ``sasrec_dropout`` (embedding, attention and FFN dropout,
with ``FastDropout``'s cheaper masks), ``max_seq_len`` (L), ``sasrec_positions`` (position ids
counted from the latest item or, as RecBole, from the first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ur4rec.models.dropout import FastDropout, fast_dropout


class SASRecBlock(nn.Module):
    """Pre-LayerNorm transformer block: masked self-attention, then a GELU feed-forward."""

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.ln_attn = nn.LayerNorm(hidden_dim)
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.out = nn.Linear(hidden_dim, hidden_dim)
        self.ln_ffn = nn.LayerNorm(hidden_dim)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, 4 * hidden_dim), nn.GELU(), FastDropout(dropout),
                                 nn.Linear(4 * hidden_dim, hidden_dim))
        self.drop = FastDropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last_k: int | None = None) -> torch.Tensor:
        """[B, L, H] -> [B, L, H], or [B, k, H] with ``last_k``: only the last k positions' queries,
        residuals and feed-forward (keys and values still cover every position)."""
        b, length, h = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, length, 3, self.num_heads, h // self.num_heads).unbind(2)
        if last_k:
            q, x, attn_mask = q[:, -last_k:], x[:, -last_k:], attn_mask[..., -last_k:, :]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L or 1, d]
        a = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, x.shape[1], h)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor,
           dropout: float) -> torch.Tensor:
    """Scaled dot-product attention [B, heads, Lq, d]; with dropout, on the probabilities with
    ``fast_dropout`` (SDPA's own attention dropout draws one Bernoulli per probability)."""
    if dropout == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    probs = torch.softmax(logits.masked_fill(~attn_mask, float("-inf")), dim=-1)
    return fast_dropout(probs, dropout, True) @ v


def attention_mask(input_seq: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, L, L], True = may attend: causal, non-padded keys, and always the diagonal."""
    length = input_seq.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=input_seq.device).tril()
    keys = (input_seq != 0)[:, None, None, :]  # [B, 1, 1, L]
    eye = torch.eye(length, dtype=torch.bool, device=input_seq.device)
    return (causal & keys) | eye  # every row has at least its diagonal: never fully masked


class SASRec(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int = 64, num_blocks: int = 2, num_heads: int = 2,
                 dropout: float = 0.2, max_seq_len: int = 50, init_std: float = 0.02,
                 positions: str = "from_end") -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        if positions not in ("from_end", "from_start"):
            raise ValueError(f"positions must be 'from_end' or 'from_start', got {positions!r}")
        self.positions = positions
        self.num_items, self.hidden_dim, self.max_seq_len = num_items, hidden_dim, max_seq_len
        self.item_embedding = nn.Embedding(num_items + 1, hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_len, hidden_dim)
        self.emb_dropout = FastDropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(hidden_dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_ln = nn.LayerNorm(hidden_dim)
        self.init_std = init_std
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def position_ids(self, input_seq: torch.Tensor) -> torch.Tensor:
        """Position ids of a [B, L] input. ``from_end``: [L], counting back from the end, so the
        latest item always has the same id. ``from_start`` (RecBole's): [B, L], 0 at each row's first
        real item, so the output at column j of a causal pass is what the prefix ending at j alone
        would give (same items, same ids) for inputs that start within the window."""
        if self.positions == "from_start":
            return ((input_seq != 0).long().cumsum(1) - 1).clamp(min=0)
        length = input_seq.shape[1]
        return torch.arange(self.max_seq_len - length, self.max_seq_len, device=input_seq.device)

    def forward(self, input_seq: torch.Tensor, last_only: bool = False, last_k: int | None = None) -> torch.Tensor:
        """Hidden states for every position: [B, L, H] (padded positions are zero).

        ``last_only``: only the last position's, [B, 1, H]; ``last_k``: the last k positions',
        [B, k, H]. The last block then computes k query rows instead of L (nothing else reads the
        others), about half the work of a 2-block pass for small k; in eval mode the result equals
        ``forward(input_seq)[:, -k:]`` (tests/test_models.py).
        """
        k = 1 if last_only else last_k
        length = input_seq.shape[1]
        if length > self.max_seq_len:
            raise ValueError(f"sequence length {length} > max_seq_len {self.max_seq_len}")
        keep = (input_seq != 0).unsqueeze(-1).to(self.item_embedding.weight.dtype)
        pos = self.position_embedding(self.position_ids(input_seq))
        x = self.item_embedding(input_seq) * self.hidden_dim**0.5 + pos
        x = self.emb_dropout(x) * keep
        mask = attention_mask(input_seq)
        for i, block in enumerate(self.blocks):
            last = k if k and i == len(self.blocks) - 1 else None
            x = block(x, mask, last_k=last) * (keep[:, -last:] if last else keep)
        if k:
            keep = keep[:, -k:]  # x already has k positions after the last block
        return self.final_ln(x) * keep

    @torch.no_grad()
    def attention_maps(self, input_seq: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of every block and head: [B, blocks, heads, L, L] (for plots)."""
        length = input_seq.shape[1]
        keep = (input_seq != 0).unsqueeze(-1).float()
        x = (self.item_embedding(input_seq) * self.hidden_dim**0.5
             + self.position_embedding(self.position_ids(input_seq))) * keep
        mask = attention_mask(input_seq)
        maps = []
        for block in self.blocks:
            b, _, h = x.shape
            q, k, _ = block.qkv(block.ln_attn(x)).view(b, length, 3, block.num_heads, h // block.num_heads).unbind(2)
            logits = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / (h // block.num_heads) ** 0.5
            maps.append(torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1))
            x = block(x, mask) * keep
        return torch.stack(maps, dim=1)

    def user_representation(self, input_seq: torch.Tensor) -> torch.Tensor:
        """The last position's hidden state: [B, H] (zeros for a user with no history)."""
        return self.forward(input_seq, last_only=True)[:, -1]

    def predict(self, input_seq: torch.Tensor, candidate_items: torch.Tensor) -> torch.Tensor:
        """Scores of given candidates: [B, C]."""
        user = self.user_representation(input_seq)
        return (self.item_embedding(candidate_items) * user.unsqueeze(1)).sum(-1)

    def full_sort_predict(self, input_seq: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue with one matmul: [B, num_items + 1] (column 0 = padding)."""
        return self.user_representation(input_seq) @ self.item_embedding.weight.T

    def calculate_loss(self, input_seq: torch.Tensor, target_seq: torch.Tensor, loss_type: str = "ce",
                       neg_items: torch.Tensor | None = None, last_only: bool = False,
                       last_k: int | None = None) -> torch.Tensor:
        """Next-item loss over every non-padded position (target 0 = ignore).

        ``ce``: softmax over the whole catalogue (padding column excluded). ``bpr``:
        -logsigmoid(pos - neg), never -log(sigmoid(.)) which overflows to inf for large negative
        margins. ``bce``: binary cross-entropy with logits on the positive and the negative.
        ``last_only`` / ``last_k``: the targets sit in the last column / last k columns only
        (``training_prefixes`` with group 1 / k), so only those positions are computed.
        """
        k = 1 if last_only else last_k
        if k:
            if target_seq[:, :-k].any():
                raise ValueError(f"last_k={k} but target_seq has targets before its last {k} column(s); "
                                 "use last_k=None for training_windows samples")
            target_seq = target_seq[:, -k:]
            neg_items = None if neg_items is None else neg_items[:, -k:]
        hidden = self.forward(input_seq, last_k=k)
        valid = target_seq != 0
        h = hidden[valid]  # [P, H]
        pos = target_seq[valid]
        if loss_type == "ce":
            logits = h @ self.item_embedding.weight.T
            logits[:, 0] = float("-inf")  # padding is never a target
            return F.cross_entropy(logits, pos)
        if neg_items is None:
            raise ValueError(f"loss_type={loss_type!r} needs neg_items [B, L]")
        neg = neg_items[valid]
        pos_s = (h * self.item_embedding(pos)).sum(-1)
        neg_s = (h * self.item_embedding(neg)).sum(-1)
        if loss_type == "bpr":
            return -F.logsigmoid(pos_s - neg_s).mean()
        if loss_type == "bce":
            return (F.binary_cross_entropy_with_logits(pos_s, torch.ones_like(pos_s))
                    + F.binary_cross_entropy_with_logits(neg_s, torch.zeros_like(neg_s)))
        raise ValueError(f"unknown loss_type {loss_type!r}: use ce, bpr or bce")
