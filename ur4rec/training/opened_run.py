"""Open a finished run: its config, its workspace, its final model and its branches trained alone.

Everything that reads a trained run — ``ur4rec evaluate``, the benches, the notebooks — opens it
here, so every one of them checks the same thing: ``final.pt`` (and ``best-pretrain_retriever.pt``)
must carry the fingerprint of the run's ``config.yaml``, prepared data and texts, or it is refused
with the differing keys listed (``allow_mismatch`` loads it anyway).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ur4rec.config import Config, config_from_dict, read_yaml
from ur4rec.errors import ConfigError
from ur4rec.training.checkpoint import CheckpointError, fingerprint_differences, load_checkpoint, run_fingerprint
from ur4rec.training.run import Workspace, build_workspace

#: The checkpoint holding the model as it stood after pretrain_retriever: SASRec trained alone
#: (pretrain_sasrec, frozen since) and the retriever trained alone on top of it.
ALONE_CHECKPOINT = "best-pretrain_retriever.pt"


@dataclass
class OpenedRun:
    """A trained run, loaded and fingerprint-checked."""

    run_dir: Path
    cfg: Config  # the run's config.yaml
    workspace: Workspace
    model: nn.Module  # the workspace's model with final.pt loaded, in eval mode
    alone: nn.Module | None  # best-pretrain_retriever.pt loaded into a copy (None: the run has none)
    checkpoint: dict[str, Any]  # final.pt's payload
    fingerprint: dict[str, Any]  # what the run's checkpoints must carry (config.yaml, data, texts)
    allow_mismatch: bool = False

    @property
    def result(self) -> dict[str, Any]:
        """What training recorded in final.pt (stages, final_selection, environment); {} if nothing."""
        return self.checkpoint.get("result") or {}

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """The model state of another checkpoint of this run (e.g. ``best-joint_finetune.pt``), checked
        against the same fingerprint."""
        return load_checkpoint(self.run_dir / name, self.fingerprint, allow_mismatch=self.allow_mismatch)["model"]


def read_run_config(run_dir: str | Path) -> Config:
    """The config a run was trained with (its ``config.yaml``)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' is not a run directory: it has no config.yaml.", where=str(run_dir),
                          fix="pass the folder `ur4rec train --run-dir` wrote, or train it first")
    return config_from_dict(read_yaml(path), str(path))


def load_into(model: nn.Module, payload: dict[str, Any], path: Path) -> nn.Module:
    """``model.load_state_dict`` of a checkpoint payload; weights that do not fit the model built from
    the config (another architecture, loaded with ``allow_mismatch``) are a CheckpointError."""
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        # torch's message: a header line, then one line per kind of problem (missing/unexpected keys, shapes)
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
        raise CheckpointError(f"The checkpoint's weights do not fit the model built from the run's config: "
                              f"{detail[:600]}", where=str(path),
                              fix="open it with the config (and code version) it was trained with, or retrain"
                              ) from None
    return model


def load_alone_model(run_dir: str | Path, model: nn.Module, expected: dict[str, Any],
                     allow_mismatch: bool = False) -> nn.Module | None:
    """A copy of ``model`` as it stood after pretrain_retriever (each branch trained alone), if the run
    has that checkpoint; ``model`` itself is not changed."""
    path = Path(run_dir) / ALONE_CHECKPOINT
    if not path.is_file():
        return None
    alone = load_into(copy.deepcopy(model), load_checkpoint(path, expected, allow_mismatch=allow_mismatch), path)
    return alone.eval()


def open_run(run_dir: str | Path, allow_mismatch: bool = False, workspace: Workspace | None = None) -> OpenedRun:
    """Read ``config.yaml``, build the workspace (or reuse ``workspace``, which must be built from the
    same config), load ``final.pt`` into its model and the alone model beside it, all checked against
    the run's fingerprint."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ws = workspace or build_workspace(cfg)
    expected = run_fingerprint(cfg, ws.data.fingerprint, ws.text_fingerprint)
    if workspace is not None:
        built = run_fingerprint(workspace.cfg, ws.data.fingerprint, ws.text_fingerprint)
        if diffs := fingerprint_differences(built, expected):
            listed = "; ".join(f"{k}: workspace={a!r}, run={b!r}" for k, (a, b) in list(diffs.items())[:12])
            raise ConfigError(f"The workspace was built from another config than the run's ({listed}).",
                              where=str(run_dir / "config.yaml"),
                              fix="pass a workspace built from the run's config.yaml, or none (open_run builds it)")
    path = run_dir / "final.pt"
    ck = load_checkpoint(path, expected, allow_mismatch=allow_mismatch)
    model = load_into(ws.model, ck, path).eval()
    alone = load_alone_model(run_dir, model, expected, allow_mismatch)
    return OpenedRun(run_dir, cfg, ws, model, alone, ck, expected, allow_mismatch)
