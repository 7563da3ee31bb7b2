"""What a training run is built from (``Workspace``: data, texts and embeddings, model) and where it
lives.

A run lives in one directory (default ``runs/<profile>-<config hash>``): ``config.yaml``,
``history.jsonl`` (one JSON line per epoch), ``best-<stage>.pt``, ``last.pt`` (for ``--resume``)
and ``final.pt``. Training a run end to end is ``ur4rec.pipeline.train``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData, load_prepared
from ur4rec.devices import configure_determinism, keep_freed_memory, resolve_device
from ur4rec.errors import UR4RecError
from ur4rec.models.build import build_model
from ur4rec.texts import TextEmbeddings, load_text_embeddings
from ur4rec.training.seeding import seed_everything


@dataclass
class Workspace:
    """Everything a run needs, built once from a config."""

    cfg: Config
    data: PreparedData
    texts: TextEmbeddings | Any  # tests hand in stand-ins with .user / .item / .source
    model: torch.nn.Module
    text_fingerprint: str


def embeddings_fingerprint(user: torch.Tensor, item: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (user, item):
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_workspace(cfg: Config) -> Workspace:
    data = load_prepared(cfg)
    texts = load_text_embeddings(cfg, data)
    device = resolve_device(cfg.device)
    configure_determinism(device)
    keep_freed_memory()  # tensors' freed memory is reused, not faulted in afresh each step (ur4rec.devices)
    seed_everything(cfg.seed, "init")
    # built on the CPU (the same initial weights whatever the device), then moved
    model = build_model(cfg, data.num_users, data.num_items, texts.user, texts.item).to(device)
    return Workspace(cfg, data, texts, model, embeddings_fingerprint(texts.user, texts.item))


def default_run_dir(cfg: Config) -> Path:
    return cfg.path("runs_dir") / f"{cfg.profile}-{cfg.hash()}"


def clean_run(run_dir: str | Path, runs_root: Path) -> list[Path]:
    """Delete a run's checkpoints (``*.pt``), only inside the runs directory."""
    run_dir = Path(run_dir).resolve()
    root = runs_root.resolve()
    if root not in run_dir.parents:
        raise UR4RecError(f"Refusing to clean '{run_dir}': it is not inside the runs directory {root}.",
                          where="--run-dir", fix=f"pass a run folder under {root}")
    if not run_dir.is_dir():
        raise UR4RecError(f"Run directory '{run_dir}' does not exist.", where="--run-dir", fix="check the path")
    removed = sorted(run_dir.glob("*.pt"))
    for p in removed:
        p.unlink()
    return removed

