"""A training run end to end: workspace → staged training → final-model selection → ``final.pt``.

``train`` builds (or takes) the workspace, runs ``JointTrainer`` with validation NDCG@10 as its
early-stopping metric, then chooses the final model (``final_model_selection: validation``:
``select_final_model`` over the stages' best checkpoints; otherwise the last stage's best) and
writes ``final.pt`` with the ``TrainResult``. ``resume=True`` continues from ``last.pt`` exactly
(see ``ur4rec.training.trainer``), or, when the run already has its ``final.pt``, returns the
saved result without training. ``ensure_trained`` trains a run only if it has no ``final.pt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ur4rec.config import Config
from ur4rec.evaluation.ablations import select_final_model
from ur4rec.evaluation.scoring import validation_metric
from ur4rec.training.checkpoint import kill_point, load_checkpoint, run_fingerprint, save_checkpoint
from ur4rec.training.distributed import DataParallel
from ur4rec.training.run import Workspace, build_workspace, default_run_dir
from ur4rec.training.trainer import JointTrainer, TrainResult


def train(cfg: Config, run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, max_epochs: int | None = None,
          workspace: Workspace | None = None, allow_mismatch: bool = False,
          max_batches: int | None = None, parallel: DataParallel | None = None) -> tuple[TrainResult, Workspace]:
    """Train the run in ``run_dir`` (default ``runs/<profile>-<config hash>``) and write its ``final.pt``.

    ``max_epochs`` / ``max_batches`` stop early (a resumable state, no final model: the result's
    ``complete`` is False). With ``resume`` and a ``final.pt`` made under this config and data, the
    saved result is returned (``already_finished``) and its model loaded into the workspace.
    ``parallel``: one of several data-parallel processes (``ur4rec train --nproc``); every process
    trains, rank 0 alone chooses the final model and writes ``final.pt``.
    """
    parallel = parallel or DataParallel()
    if workspace is None:
        with parallel.main_first():  # rank 0 builds the caches (prepared data, text embeddings)
            workspace = build_workspace(cfg)
    ws = workspace
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    final = run_dir / "final.pt"
    if resume and final.is_file():
        expected = run_fingerprint(cfg, ws.data.fingerprint, ws.text_fingerprint)
        ck = load_checkpoint(final, expected, allow_mismatch=allow_mismatch)
        ws.model.load_state_dict(ck["model"])
        result = TrainResult.from_dict(ck["result"])
        result.run_dir, result.already_finished = str(run_dir), True
        return result, ws
    t0 = time.perf_counter()
    trainer = JointTrainer(ws.model, ws.data, cfg, run_dir, text_fingerprint=ws.text_fingerprint,
                           evaluate=lambda model, stage: validation_metric(model, ws.data, cfg, stage),
                           progress=progress and parallel.is_main, on_epoch=on_epoch, parallel=parallel)
    result = trainer.fit(resume=resume, max_epochs=max_epochs, allow_mismatch=allow_mismatch,
                         max_batches=max_batches)
    if not result.complete or not parallel.is_main:
        return result, ws
    if cfg.final_model_selection == "validation":
        states = {s: load_checkpoint(run_dir / f"best-{s}.pt", trainer.fingerprint, allow_mismatch)["model"]
                  for s in cfg.stages}
        result.final_selection = select_final_model(ws.model, ws.data, cfg, states)
    kill_point("selection")
    result.seconds = trainer.elapsed + time.perf_counter() - t0  # earlier interrupted calls included
    save_checkpoint(final, trainer.checkpoint_payload(stage="final", result=result.to_dict()))
    kill_point("after_final")
    return result, ws


def ensure_trained(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The run's folder, trained first (resuming whatever it has) unless it already has ``final.pt``."""
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    if not (run_dir / "final.pt").is_file():
        train(cfg, run_dir=run_dir, resume=True, progress=progress)
    return run_dir
