"""Turning variable-length item sequences into left-padded tensors (0 = padding)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_left(seqs: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """The last ``max_len`` items of each sequence, left-padded with 0: LongTensor [B, max_len].

    Left padding keeps every user's most recent item at the last position, where SASRec reads the
    user representation.
    """
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        tail = np.asarray(s[-max_len:], dtype=np.int64)
        if len(tail):
            out[i, max_len - len(tail):] = tail
    return torch.from_numpy(out)


def _window_bounds(length: int, max_len: int, stride: int):
    """(start, end) of each window of a sequence of ``length`` items, from its end backwards: the
    window is s[start:end], its inputs s[start:end-1] and its targets s[start+1:end]."""
    end = length
    while end > 1:
        start = max(0, end - max_len - 1)
        yield start, end
        end = end - stride if start > 0 else 0


def _windows(s: np.ndarray, max_len: int, stride: int):
    """(input, target) windows of one sequence, from its end backwards (see ``training_windows``)."""
    for start, end in _window_bounds(len(s), max_len, stride):
        window = s[start:end]
        target = window[1:].copy()
        if start > 0:  # positions start+1 .. end-1; those before end-stride belong to the next window
            target[: max(0, end - stride - (start + 1))] = 0
        yield window[:-1], target


def training_windows(seqs: Sequence[np.ndarray], max_len: int, stride: int | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-item training pairs from every position of every sequence.

    A sequence s gives inputs s[:-1] and targets s[1:]; one longer than ``max_len`` + 1 is cut into
    windows from its end backwards, moving back ``stride`` items each time (default ``max_len``:
    no overlap). Every target is used exactly once (long histories are not truncated to their last
    ``max_len`` items); with ``stride < max_len`` windows overlap and the overlap is context only
    (target 0), so every target sees at least ``max_len - stride`` earlier items when it has them.
    Returns left-padded (inputs, targets) [W, max_len] (target 0 marks padding or no loss) and the
    index of the sequence each window came from [W].
    """
    stride = _check_stride(stride, max_len)
    inputs, targets, owners = [], [], []
    for owner, s in enumerate(seqs):
        for inp, tgt in _windows(np.asarray(s, dtype=np.int64), max_len, stride):
            inputs.append(inp)
            targets.append(tgt)
            owners.append(owner)
    return pad_left(inputs, max_len), pad_left(targets, max_len), torch.as_tensor(owners, dtype=torch.long)


def _check_stride(stride: int | None, max_len: int) -> int:
    stride = stride or max_len
    if not 0 < stride <= max_len:
        raise ValueError(f"stride must be in 1..max_len ({max_len}), got {stride}")
    return stride


def window_target_positions(seqs: Sequence[np.ndarray], max_len: int, stride: int | None = None) -> torch.Tensor:
    """For each window of ``training_windows`` (same arguments, same order): the 0-based index, in its
    sequence, of the window's last target — the positive of the per-pair losses, and the
    ``target_positions`` the user memory is written under (only from earlier items). LongTensor [W]."""
    stride = _check_stride(stride, max_len)
    return torch.as_tensor([end - 1 for s in seqs for _, end in _window_bounds(len(s), max_len, stride)],
                           dtype=torch.long)


def _prefix_groups(length: int, group: int) -> list[tuple[int, int]]:
    """(first, last) target index of each group of ``group`` consecutive targets of a sequence of
    ``length`` items (targets are indices 1 .. length-1): cut from the end backwards, so only the
    earliest group may be short; listed in time order (group 1: targets 1, 2, ..., as before)."""
    bounds = [(max(1, last - group + 1), last) for last in range(length - 1, 0, -group)]
    return bounds[::-1]


def prefix_target_positions(seqs: Sequence[np.ndarray], group: int = 1) -> torch.Tensor:
    """For each sample of ``training_prefixes`` (same arguments, same order): the 0-based index of its
    (last) target in its sequence. LongTensor [T]."""
    return torch.as_tensor([last for s in seqs for _, last in _prefix_groups(len(s), group)], dtype=torch.long)


def training_prefixes(seqs: Sequence[np.ndarray], max_len: int, group: int = 1,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefix samples, as RecBole and the SASRec paper's code train: a target's ≤ ``max_len``
    predecessors as input, the loss at the last position.

    ``group`` = 1: one sample per target; each target gets its own forward pass (and dropout mask)
    over its own context, read at the position evaluation reads. ``group`` = g > 1: one sample per g
    consecutive targets of a sequence (cut from its end backwards): the input is the last target's
    prefix and the loss covers the last g columns, so the pass's causal outputs serve all g targets
    (``SASRec.calculate_loss(last_k=g)`` computes the last block for those columns only). A target
    then sees its own full prefix when it has ≤ ``max_len`` predecessors, else at least
    ``max_len - g + 1`` of them, at positions 0 .. g-1 from the end; an epoch costs ~1/g of
    ``group`` = 1's passes. Returns left-padded (inputs, targets) [T, max_len] (targets are 0 except
    in the last ``group`` columns) and the sequence index of each sample [T].
    """
    if group < 1 or group > max_len:
        raise ValueError(f"group must be in 1..max_len ({max_len}), got {group}")
    inputs, targets, owners = [], [], []
    for owner, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        for first, last in _prefix_groups(len(s), group):
            inputs.append(s[max(0, last - max_len):last])
            targets.append(s[first:last + 1])
            owners.append(owner)
    return pad_left(inputs, max_len), pad_left(targets, max_len), torch.as_tensor(owners, dtype=torch.long)
