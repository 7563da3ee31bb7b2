"""Live reproductions of the original system's NaN causes, each beside the workbench's fix.

Each function returns plain numbers so a test can assert that the naive construction fails and
the workbench's does not, and a notebook can plot them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ur4rec.config import Config
from ur4rec.models.sasrec import SASRec
from ur4rec.training.checkpoint import CheckpointError, load_checkpoint, run_fingerprint, save_checkpoint


class NaiveSASRec(nn.Module):
    """The original construction: nn.MultiheadAttention with a causal mask + key_padding_mask."""

    def __init__(self, num_items: int = 50, hidden_dim: int = 32, num_blocks: int = 2, num_heads: int = 2,
                 max_seq_len: int = 10) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_len, hidden_dim)
        self.layers = nn.ModuleList(nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
                                    for _ in range(num_blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_blocks))

    def forward(self, input_seq: torch.Tensor) -> torch.Tensor:
        length = input_seq.shape[1]
        x = self.item_embedding(input_seq) + self.position_embedding(torch.arange(length))
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)  # True = masked
        padding = input_seq == 0
        for attn, norm in zip(self.layers, self.norms):
            out, _ = attn(x, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=False)
            x = norm(x + out)
        return x

    def full_sort_predict(self, input_seq: torch.Tensor) -> torch.Tensor:
        return self.forward(input_seq)[:, -1] @ self.item_embedding.weight.T


def padded_batch(max_seq_len: int = 10, num_items: int = 50) -> torch.Tensor:
    """One user per history length 1..max_seq_len, left-padded (the last one is full-length)."""
    seq = torch.zeros(max_seq_len, max_seq_len, dtype=torch.long)
    for n in range(1, max_seq_len + 1):
        seq[n - 1, max_seq_len - n:] = torch.arange(1, n + 1) % num_items + 1
    return seq


def attention_nan_matrix(model: nn.Module, seq: torch.Tensor) -> dict[str, list[bool]]:
    """Per user (history length 1..L): are the last-position scores NaN, per mode?

    Modes: train+grad, train+no_grad, eval+grad, eval+no_grad, eval+inference_mode.
    """
    out: dict[str, list[bool]] = {}
    for mode, train, ctx in (("train/grad", True, torch.enable_grad), ("train/no_grad", True, torch.no_grad),
                             ("eval/grad", False, torch.enable_grad), ("eval/no_grad", False, torch.no_grad),
                             ("eval/inference_mode", False, torch.inference_mode)):
        model.train(train)
        with ctx():
            scores = model.full_sort_predict(seq)
        out[mode] = torch.isnan(scores).any(dim=1).tolist()
    model.eval()
    return out


def reproduce_masked_attention_nan(max_seq_len: int = 10, seed: int = 0) -> dict[str, dict[str, list[bool]]]:
    """(a) Fully masked attention rows in the eval fast path → NaN at the last position.

    Returns the NaN matrix of the naive construction and of the workbench's SASRec (dropout 0 in
    both, to show dropout has nothing to do with it).
    """
    torch.manual_seed(seed)
    seq = padded_batch(max_seq_len)
    naive = NaiveSASRec(max_seq_len=max_seq_len)
    ours = SASRec(50, 32, 2, 2, 0.0, max_seq_len)
    return {"naive": attention_nan_matrix(naive, seq), "workbench": attention_nan_matrix(ours, seq)}


def reproduce_bpr_overflow(margins: tuple[float, ...] = (-200.0, -100.0, -20.0, 0.0, 20.0)) -> dict[str, list[float]]:
    """(b) BPR as -log(sigmoid(x)) overflows to inf for large negative x; -logsigmoid(x) does not."""
    x = torch.tensor(margins, dtype=torch.float32)
    return {"margin": x.tolist(), "naive": (-torch.log(torch.sigmoid(x))).tolist(),
            "workbench": (-F.logsigmoid(x)).tolist()}


def reproduce_inference_tensor_backward(dim: int = 8) -> dict[str, object]:
    """(c) Tensors made under torch.inference_mode (as sentence-transformers' encode makes them)
    used in a graph that needs gradients: "Inference tensors cannot be saved for backward".

    The fix is not a clone per batch but frozen, precomputed embeddings created outside inference
    mode (``ur4rec.texts`` returns them via numpy), held as buffers.
    """
    layer = nn.Linear(dim, dim)
    with torch.inference_mode():
        naive_emb = torch.randn(4, dim)  # what an encoder returns under inference_mode
    naive_error = None
    try:
        layer(naive_emb).pow(2).sum().backward()
    except RuntimeError as exc:
        naive_error = str(exc).splitlines()[0]
    fixed_emb = torch.from_numpy(naive_emb.numpy().copy())  # made outside inference mode
    layer.zero_grad()
    layer(fixed_emb).pow(2).sum().backward()
    return {"naive_is_inference": naive_emb.is_inference(), "naive_error": naive_error,
            "workbench_is_inference": fixed_emb.is_inference(),
            "workbench_backward_ok": layer.weight.grad is not None and bool(torch.isfinite(layer.weight.grad).all())}


def reproduce_stale_checkpoint(tmp_dir: str) -> dict[str, object]:
    """(e) A checkpoint saved under one config and loaded under another (sasrec_dropout differs).

    Plain ``load_state_dict`` accepts it silently (dropout has no weights), so the original could
    only guess "stale checkpoint"; the workbench's fingerprint names the differing key.
    """
    old, new = Config(sasrec_dropout=0.2), Config(sasrec_dropout=0.0)
    model = SASRec(20, 16, 1, 2, old.sasrec_dropout, 10)
    path = Path(tmp_dir) / "stale.pt"
    save_checkpoint(path, {"model": model.state_dict(), "fingerprint": run_fingerprint(old, "data", "texts")})
    fresh = SASRec(20, 16, 1, 2, new.sasrec_dropout, 10)
    fresh.load_state_dict(torch.load(path, weights_only=False)["model"])  # silently fine
    try:
        load_checkpoint(path, run_fingerprint(new, "data", "texts"))
        return {"naive_loads": True, "workbench_refuses": False, "differences": {}}
    except CheckpointError as err:
        return {"naive_loads": True, "workbench_refuses": True, "differences": err.differences, "message": str(err)}


def skipped_batch_bias(per_user_metric, history_lengths, max_seq_len: int, batch_size: int = 256) -> dict[str, object]:
    """(d) What skipping NaN batches does to a metric.

    With the naive attention every user shorter than ``max_seq_len`` gets NaN at evaluation; the
    original skipped any batch containing a NaN. Returns the mean metric over all users, over the
    users in batches without NaN (what the original reported), and over users without NaN.
    """
    m = np.asarray(per_user_metric, dtype=float)
    nan_user = np.asarray(history_lengths) < max_seq_len
    keep_batch = np.zeros(len(m), dtype=bool)
    for start in range(0, len(m), batch_size):
        if not nan_user[start:start + batch_size].any():
            keep_batch[start:start + batch_size] = True
    keep_user = ~nan_user
    return {
        "all users": {"users": int(len(m)), "mean": float(m.mean())},
        f"NaN batches skipped (batch {batch_size})": {
            "users": int(keep_batch.sum()), "mean": float(m[keep_batch].mean()) if keep_batch.any() else None},
        "NaN users dropped": {
            "users": int(keep_user.sum()), "mean": float(m[keep_user].mean()) if keep_user.any() else None},
    }
