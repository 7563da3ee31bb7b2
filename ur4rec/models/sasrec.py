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
counted from the latest item or, as RecBole, from the first), ``sasrec_upper_window`` (the blocks
above the first attend over a sliding window of the last w positions), ``sasrec_item_text`` and
``sasrec_text_components`` (item text in the item vectors, ``ur4rec.models.item_text``),
``sasrec_user_text_weight`` (the user-text distillation loss, ``UserTextDistillation``).

Item vectors: ``item_vectors()`` [N+1, H] is both the input and the output embedding; with
``sasrec_item_text: none`` it is ``item_embedding.weight`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ur4rec.models.dropout import FastDropout, dropout_mask, fast_dropout
from ur4rec.models.item_text import ItemTextFusion, check_text_rows, id_dimension, whitened_components


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
        a = self.attention(x, attn_mask, last_k)
        x = (x[:, -last_k:] if last_k else x) + self.drop(a)
        return x + self.drop(self.ffn(self.ln_ffn(x)))

    def attention(self, x: torch.Tensor, attn_mask: torch.Tensor, last_k: int | None = None) -> torch.Tensor:
        """The attention sublayer's output before its residual: [B, L or k, H]."""
        b, length, h = x.shape
        heads, d = self.num_heads, h // self.num_heads
        rows = last_k or length
        y = self.ln_attn(x)
        # queries only for the rows computed; keys and values for every position. Two matmuls on the
        # slices of one qkv weight: no query work for rows nobody reads, and no unbind (its backward
        # stacks the three gradients into a fresh [B, L, 3, H] copy)
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(y[:, -rows:], w[:h], bias[:h]).view(b, rows, heads, d).transpose(1, 2)  # [B, heads, k, d]
        k, v = F.linear(y, w[h:], bias[h:]).view(b, length, 2, heads, d).permute(2, 0, 3, 1, 4)  # [B, heads, L, d]
        a = attend(q, k, v, attn_mask[..., -rows:, :], self.dropout if self.training else 0.0)
        return self.out(a.transpose(1, 2).reshape(b, rows, h))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor,
           dropout: float) -> torch.Tensor:
    """Scaled dot-product attention [B, heads, Lq, d]; with dropout, on the probabilities with
    ``fast_dropout`` (SDPA's own attention dropout draws one Bernoulli per probability)."""
    if dropout == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    probs = torch.softmax(logits.masked_fill(~attn_mask, float("-inf")), dim=-1)
    return fast_dropout(probs, dropout, True) @ v


def attention_mask(input_seq: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Bool [B, 1, L, L], True = may attend: causal, non-padded keys, and always the diagonal; with
    ``window`` w, only the last w positions up to and including the query's own."""
    length = input_seq.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=input_seq.device).tril()
    if window is not None:
        causal = causal.triu(1 - window)  # key j of query i: i - w < j <= i
    keys = (input_seq != 0)[:, None, None, :]  # [B, 1, 1, L]
    eye = torch.eye(length, dtype=torch.bool, device=input_seq.device)
    return (causal & keys) | eye  # every row has at least its diagonal: never fully masked


class UserTextDistillation(nn.Module):
    """User text as a training signal only: a linear head maps SASRec's representation at each
    training target to the user's preference-text embedding; the loss is ``weight`` x (1 - cosine).
    The head is never used at inference, so scoring costs what ID-only SASRec costs. The texts are
    the audited, leak-free ones (built from training interactions only), so nothing held out enters."""

    def __init__(self, user_text_emb: torch.Tensor, hidden_dim: int, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.register_buffer("target", F.normalize(user_text_emb.float(), dim=-1), persistent=False)
        self.head = nn.Linear(hidden_dim, user_text_emb.shape[1])

    def loss(self, h: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``h`` [P, H] representations of ``users`` [P] -> weight x mean(1 - cos(head(h), text))."""
        cos = (F.normalize(self.head(h).float(), dim=-1) * self.target[users]).sum(-1)
        return self.weight * (1.0 - cos).mean()


class SASRec(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int = 64, num_blocks: int = 2, num_heads: int = 2,
                 dropout: float = 0.2, max_seq_len: int = 50, init_std: float = 0.02,
                 positions: str = "from_end", upper_window: int | None = None, item_text: str = "none",
                 item_text_emb: torch.Tensor | None = None,
                 text_components: int = 32, user_text_emb: torch.Tensor | None = None,
                 user_text_weight: float = 0.0) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        if positions not in ("from_end", "from_start"):
            raise ValueError(f"positions must be 'from_end' or 'from_start', got {positions!r}")
        if upper_window is not None and upper_window < 1:
            raise ValueError(f"upper_window must be >= 1 or None, got {upper_window}")
        self.positions, self.upper_window = positions, upper_window
        self.num_items, self.hidden_dim, self.max_seq_len = num_items, hidden_dim, max_seq_len
        self.item_text_mode = item_text
        id_dim = id_dimension(hidden_dim, item_text, text_components)
        self.item_embedding = nn.Embedding(num_items + 1, id_dim, padding_idx=0)  # the learned ID vectors
        self.position_embedding = nn.Embedding(max_seq_len, hidden_dim)
        self.emb_dropout = FastDropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(hidden_dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_ln = nn.LayerNorm(hidden_dim)
        self.init_std = init_std
        self.apply(self._init)
        # text parts are built after the ID-only model's initialisation: with none (and no distillation)
        # the random stream, and so every initial weight, is what it was before they existed
        self.item_text = None
        if item_text != "none":
            text = check_text_rows(item_text_emb, num_items, item_text)
            if item_text == "init":
                with torch.no_grad():
                    self.item_embedding.weight.copy_(whitened_components(text, hidden_dim) * init_std)
            else:
                self.item_text = ItemTextFusion(text, hidden_dim, item_text, text_components, init_std)
        self.user_text = None
        if user_text_weight > 0:
            if user_text_emb is None:
                raise ValueError("sasrec_user_text_weight > 0 needs the user text embeddings")
            self.user_text = UserTextDistillation(user_text_emb, hidden_dim, user_text_weight)

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

    def item_vectors(self) -> torch.Tensor:
        """[N+1, H] item vectors, input and output embedding alike (row 0 = padding = zeros)."""
        ids = self.item_embedding.weight
        return ids if self.item_text is None else self.item_text(ids)

    def forward(self, input_seq: torch.Tensor, last_only: bool = False, last_k: int | None = None,
                item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states for every position: [B, L, H] (padded positions are zero).

        ``last_only``: only the last position's, [B, 1, H]; ``last_k``: the last k positions',
        [B, k, H]. The last block then computes k query rows instead of L (nothing else reads the
        others), about half the work of a 2-block pass for small k; in eval mode the result equals
        ``forward(input_seq)[:, -k:]`` (tests/test_models.py).
        """
        k = 1 if last_only else last_k
        input_seq = input_seq.to(self.position_embedding.weight.device)  # callers may hold CPU batches
        length = input_seq.shape[1]
        if length > self.max_seq_len:
            raise ValueError(f"sequence length {length} > max_seq_len {self.max_seq_len}")
        x, keep = self.embed(input_seq, self.item_vectors() if item_vectors is None else item_vectors)
        masks = self.block_masks(input_seq)
        rows = length  # positions x holds: each block computes the rows the blocks above it read
        for block, mask, out_rows in zip(self.blocks, masks, self.rows_needed(length, k)):
            x = block(x, mask[..., -rows:, -rows:], last_k=out_rows if out_rows < rows else None)
            rows = out_rows
            x = x * keep[:, -rows:]
        return self.final_ln(x) * keep[:, -rows:]

    def embed(self, input_seq: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first block's input [B, L, H] (item vector x sqrt(H) + position, embedding dropout,
        padded positions zero) and the padding multipliers [B, L, 1]. Both scalings act on small
        tensors: sqrt(H) on the [N+1, H] table before the gather, the padding mask inside the dropout
        mask; the values are those of scaling and masking the [B, L, H] gather, in fewer passes over it."""
        valid = (input_seq != 0).unsqueeze(-1)
        keep = valid.to(vectors.dtype)
        pos = self.position_embedding(self.position_ids(input_seq))
        x = F.embedding(input_seq, vectors * self.hidden_dim**0.5) + pos
        p = self.emb_dropout.p
        if self.training and p > 0:
            return x * dropout_mask(x.shape, p, x.dtype, x.device, valid=valid), keep
        return x * keep, keep

    def block_masks(self, input_seq: torch.Tensor) -> list[torch.Tensor]:
        """Each block's attention mask [B, 1, L, L]: the first block's over the whole causal context,
        the others' over the last ``upper_window`` positions when it is set."""
        full = attention_mask(input_seq)
        upper = full if self.upper_window is None else attention_mask(input_seq, self.upper_window)
        return [full] + [upper] * (len(self.blocks) - 1)

    def rows_needed(self, length: int, k: int | None) -> list[int]:
        """How many of the last positions each block must compute so that the last ``k`` are exact
        (all ``length`` with k None). A block above the first reads keys from the last w positions of
        the block below, so block i of n computes k + (n - 1 - i)(w - 1) rows; without a window every
        block but the last computes all of them."""
        n = len(self.blocks)
        if not k:
            return [length] * n
        if self.upper_window is None:
            return [length] * (n - 1) + [min(k, length)]
        return [min(length, k + (n - 1 - i) * (self.upper_window - 1)) for i in range(n)]

    @torch.no_grad()
    def attention_maps(self, input_seq: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of every block and head: [B, blocks, heads, L, L] (for plots)."""
        input_seq = input_seq.to(self.position_embedding.weight.device)
        length = input_seq.shape[1]
        x, keep = self.embed(input_seq, self.item_vectors())
        maps = []
        for block, mask in zip(self.blocks, self.block_masks(input_seq)):
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
        return (F.embedding(candidate_items.to(user.device), self.item_vectors()) * user.unsqueeze(1)).sum(-1)

    def full_sort_predict(self, input_seq: torch.Tensor) -> torch.Tensor:
        """Scores of the whole catalogue with one matmul: [B, num_items + 1] (column 0 = padding)."""
        return self.user_representation(input_seq) @ self.item_vectors().T

    def calculate_loss(self, input_seq: torch.Tensor, target_seq: torch.Tensor, loss_type: str = "ce",
                       neg_items: torch.Tensor | None = None, last_only: bool = False,
                       last_k: int | None = None, users: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item loss over every non-padded position (target 0 = ignore).

        ``ce``: softmax over the whole catalogue (padding column excluded). ``bpr``:
        -logsigmoid(pos - neg), never -log(sigmoid(.)) which overflows to inf for large negative
        margins. ``bce``: binary cross-entropy with logits on the positive and the negative.
        ``last_only`` / ``last_k``: the targets sit in the last column / last k columns only
        (``training_prefixes`` with group 1 / k), so only those positions are computed.
        ``users`` [B]: each row's user, for the user-text distillation term when it is on.
        """
        k = 1 if last_only else last_k
        if k:
            if target_seq[:, :-k].any():
                raise ValueError(f"last_k={k} but target_seq has targets before its last {k} column(s); "
                                 "use last_k=None for training_windows samples")
            target_seq = target_seq[:, -k:]
            neg_items = None if neg_items is None else neg_items[:, -k:]
        vectors = self.item_vectors()
        hidden = self.forward(input_seq, last_k=k, item_vectors=vectors)
        valid = target_seq != 0
        h = hidden[valid]  # [P, H]
        extra = 0.0
        if self.user_text is not None:
            if users is None:
                raise ValueError("user-text distillation is on (sasrec_user_text_weight > 0): pass users [B]")
            extra = self.user_text.loss(h, users[:, None].expand_as(target_seq)[valid])
        return self.next_item_loss(h, target_seq[valid], vectors, loss_type,
                                   None if neg_items is None else neg_items[valid]) + extra

    @staticmethod
    def next_item_loss(h: torch.Tensor, pos: torch.Tensor, vectors: torch.Tensor, loss_type: str,
                       neg: torch.Tensor | None) -> torch.Tensor:
        """The next-item loss of P representations [P, H] against their targets [P]."""
        if loss_type == "ce":
            logits = h @ vectors.T
            logits[:, 0] = float("-inf")  # padding is never a target
            return F.cross_entropy(logits, pos)
        if neg is None:
            raise ValueError(f"loss_type={loss_type!r} needs neg_items [B, L]")
        pos_s = (h * F.embedding(pos, vectors)).sum(-1)
        neg_s = (h * F.embedding(neg, vectors)).sum(-1)
        if loss_type == "bpr":
            return -F.logsigmoid(pos_s - neg_s).mean()
        if loss_type == "bce":
            return (F.binary_cross_entropy_with_logits(pos_s, torch.ones_like(pos_s))
                    + F.binary_cross_entropy_with_logits(neg_s, torch.zeros_like(neg_s)))
        raise ValueError(f"unknown loss_type {loss_type!r}: use ce, bpr or bce")
