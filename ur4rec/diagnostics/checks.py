"""Weight scans, score ranges per component, and a sweep over modes that returns a tidy table."""

from __future__ import annotations

import copy
import itertools
import tempfile
from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import nn

from ur4rec.data.batching import pad_left
from ur4rec.evaluation.scoring import catalogue_scorer, validation_metric
from ur4rec.training.trainer import JointTrainer

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


def _score_row(check: str, setting: str, scores: torch.Tensor) -> dict:
    scores = scores.detach()
    finite = scores[torch.isfinite(scores)]
    return {"check": check, "setting": setting, "scores": scores.numel(), "nan": int(torch.isnan(scores).sum()),
            "inf": int(torch.isinf(scores).sum()), "min": float(finite.min()) if finite.numel() else None,
            "max": float(finite.max()) if finite.numel() else None}


def original_checks(workspace, batch_sizes: Iterable[int] = (32, 64, 128), train_batches: int = 5,
                    candidates: int = 100, run_dir: str | None = None) -> pd.DataFrame:
    """The original system's three debugging scripts as one parameterised run, on real validation
    batches of the workspace's data; one row per measurement with score range and NaN/Inf counts:

    1. ``sasrec_alone``: SASRec's catalogue scores in eval mode at each batch size;
    2. ``full_model``: the fused forward in train and eval mode, per score component;
    3. ``train_then_eval``: a copy of the model trained for ``train_batches`` real batches (the
       workbench trainer, so its NaN guard is active), then its full-ranking validation scores.
    The workspace's own model is left untouched; the short training run writes into ``run_dir``
    (a scratch folder: a temporary one by default)."""
    ws, cfg = workspace, workspace.cfg
    hist = ws.data.history("valid")
    held = ws.data.held_out("valid")
    rows = []
    model = ws.model
    model.eval()
    for b in batch_sizes:
        users = torch.arange(b) % ws.data.num_users
        seq = pad_left([hist[u] for u in users.tolist()], cfg.max_seq_len)
        with torch.no_grad():
            rows.append(_score_row("sasrec_alone", f"eval, batch {b}", model.sasrec.full_sort_predict(seq)[:, 1:]))
    b = min(max(batch_sizes), ws.data.num_users)
    users = torch.arange(b)
    seq = pad_left([hist[u] for u in users.tolist()], cfg.max_seq_len)
    g = torch.Generator().manual_seed(cfg.seed)
    others = torch.randint(1, ws.data.num_items + 1, (b, candidates - 1), generator=g)
    cands = torch.cat([torch.as_tensor([int(held[u][0]) for u in users.tolist()]).unsqueeze(1), others], dim=1)
    probe = copy.deepcopy(model)  # a train-mode forward updates running score spreads and memory
    for train_mode in (True, False):
        probe.train(train_mode)
        with torch.no_grad():
            out = probe(users, seq, cands)
        for key in ("scores", "sasrec_scores", "retriever_scores"):
            rows.append(_score_row("full_model", f"{'train' if train_mode else 'eval'}, {key}", out[key]))
    trained = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="ur4rec-check-") as tmp:
        trainer = JointTrainer(trained, ws.data, cfg, run_dir or tmp, text_fingerprint=ws.text_fingerprint,
                               evaluate=lambda m, stage: validation_metric(m, ws.data, cfg, stage), progress=False)
        trainer.fit(max_batches=train_batches)
    trained.eval()
    score = catalogue_scorer(trained, cfg, "fused")
    with torch.no_grad():
        all_users = torch.arange(ws.data.num_users)
        fused = score(all_users, pad_left(hist, cfg.max_seq_len))
        sasrec = trained.sasrec.full_sort_predict(pad_left(hist, cfg.max_seq_len))[:, 1:]
    rows.append(_score_row("train_then_eval", f"{train_batches} batches, SASRec catalogue scores", sasrec))
    rows.append(_score_row("train_then_eval", f"{train_batches} batches, fused two-stage scores",
                           fused[:, 1:][torch.isfinite(fused[:, 1:])]))
    return pd.DataFrame(rows)
