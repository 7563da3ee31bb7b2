"""Weight scans, score ranges per component, and a sweep over modes that returns a tidy table."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import nn

MODES = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def scan_weights(state: dict[str, torch.Tensor], max_norm: float = 1e4) -> pd.DataFrame:
    """One row per problem: non-finite values, exploding norms, dead embedding rows."""
    rows = []
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            rows.append({"tensor": name, "problem": "non-finite values", "detail": f"{bad} of {t.numel()}"})
            continue
        norm = float(t.norm())
        if norm > max_norm:
            rows.append({"tensor": name, "problem": "exploding norm", "detail": f"norm {norm:.3g} > {max_norm:g}"})
        if name.endswith("embedding.weight") or name.endswith("item_id.weight"):
            dead = int((t[1:].norm(dim=1) < 1e-8).sum())  # row 0 is padding: zero by design
            if dead:
                rows.append({"tensor": name, "problem": "dead embedding rows", "detail": f"{dead} rows all zero"})
    return pd.DataFrame(rows, columns=["tensor", "problem", "detail"])


def component_ranges(out: dict[str, torch.Tensor]) -> pd.DataFrame:
    """min / max / NaN count of each score component of a fused forward."""
    rows = []
    for key in ("scores", "sasrec_scores", "retriever_scores"):
        if key in out:
            t = out[key].detach()
            finite = t[torch.isfinite(t)]
            rows.append({"component": key, "min": float(finite.min()) if finite.numel() else None,
                         "max": float(finite.max()) if finite.numel() else None,
                         "nan": int(torch.isnan(t).sum()), "inf": int(torch.isinf(t).sum())})
    return pd.DataFrame(rows)


def nan_sweep(
    run: Callable[[dict], torch.Tensor],
    model: nn.Module,
    matrix: dict[str, Iterable],
) -> pd.DataFrame:
    """Call ``run(setting)`` for every combination of ``matrix`` × train/eval × grad modes.

    ``run`` gets a dict of one combination (plus ``train`` and ``mode``) and returns scores; the
    table has one row per combination with the NaN count and the score range.
    """
    keys = list(matrix)
    rows = []
    for values in itertools.product(*(list(matrix[k]) for k in keys)):
        for train, mode in itertools.product([True, False], MODES):
            setting = dict(zip(keys, values), train=train, mode=mode)
            model.train(train)
            with MODES[mode]():
                scores = run(setting).detach()
            finite = scores[torch.isfinite(scores)]
            rows.append({**setting, "nan": int(torch.isnan(scores).sum()), "total": scores.numel(),
                         "min": float(finite.min()) if finite.numel() else None,
                         "max": float(finite.max()) if finite.numel() else None})
    model.eval()
    return pd.DataFrame(rows)
