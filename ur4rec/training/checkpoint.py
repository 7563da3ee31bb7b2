"""Checkpoints that cannot go stale.

A checkpoint carries the model, optimizer, scheduler and RNG state, the stage/epoch/step, the
resolved config, and a fingerprint of (config, prepared data, texts and embeddings, code version).
Loading compares the fingerprint with the current run: a checkpoint made under another config or
data — the original system's "stale checkpoint" — is refused with the differing keys listed, rather
than guessed at. A checkpoint holding NaN/Inf is refused with the tensor names. Files are written
atomically, so a crash never leaves a half-written checkpoint behind.

Crash tests: with the environment variable ``UR4REC_KILL_AT`` set to a point's name, the process
SIGKILLs itself when it reaches that point (``kill_point``), so tests can kill a real training run
at an exact moment and check that ``--resume`` finishes it as if nothing happened
(tests/test_resume.py). The points, in the order a run reaches them:

- ``before_first_last``: a fresh run, its folder prepared, before the first epoch;
- ``mid_epoch:<stage>:<epoch>:<batch>``: before that batch (0-based) of that epoch (0-based);
- ``epoch_end:<stage>:<epoch>:before_last`` / ``...:after_last``: the epoch's history line and
  best checkpoint written, just before / just after ``last.pt`` is written;
- ``selection``: every stage done and final-model selection computed, before ``final.pt``;
- ``after_final``: just after ``final.pt`` is written.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import zipfile
from pathlib import Path
from typing import Any

import torch

import ur4rec
from ur4rec.config import Config, config_default, diff_configs
from ur4rec.errors import UR4RecError
from ur4rec.io import atomic_write_bytes, sha256_json

#: Keys that say where things are written or how a report is labelled, not what is computed.
#: Keys that change where things live or how a finished model is evaluated, not the weights: a
#: checkpoint stays valid when only these differ.
NON_SEMANTIC_KEYS = {"data_dir", "runs_dir", "reports_dir", "profile", "num_workers", "data_path", "data_source",
                     "allow_download", "epochs_per_stage", "sasrec_epochs", "patience", "eval_ks", "exact_catalogue",
                     "sampled_negatives", "sampled_strategy", "device"}


#: Environment variable naming the point at which the process kills itself (see the module docstring).
KILL_ENV = "UR4REC_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process if ``UR4REC_KILL_AT`` names this point: a crash at an exact moment, for tests.
    Data-parallel: rank 0 only (it writes the files; torchrun then stops the others)."""
    if os.environ.get(KILL_ENV) == name and os.environ.get("RANK", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointError(UR4RecError):
    """A checkpoint is missing, unreadable, stale (fingerprint mismatch) or holds NaN/Inf."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None,
                 differences: dict[str, Any] | None = None, tensors: list[str] | None = None) -> None:
        super().__init__(what, where=where, fix=fix)
        self.differences = differences or {}
        self.tensors = tensors or []


def run_fingerprint(cfg: Config, data_fingerprint: str, text_fingerprint: str | None) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that loads it."""
    semantic = {k: v for k, v in cfg.to_dict().items() if k not in NON_SEMANTIC_KEYS}
    parts = {"config": semantic, "data": data_fingerprint, "texts": text_fingerprint,
             "code_version": getattr(ur4rec, "__version__", "0")}
    return {**parts, "hash": sha256_json(parts)[:16]}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint value, current value)}`` for every config key and input that differs."""
    diffs: dict[str, tuple[Any, Any]] = {}
    # Compare semantic keys only, on both sides: a checkpoint written when a key still counted as
    # semantic (e.g. eval_ks) is not stale because of it.
    semantic = [{k: v for k, v in fp.get("config", {}).items() if k not in NON_SEMANTIC_KEYS}
                for fp in (saved, current)]
    for key, pair in diff_configs(*semantic).items():
        if key not in saved.get("config", {}) and pair[1] == config_default(key):
            continue  # a key added after the checkpoint, at the default that keeps the old behaviour
        diffs[key] = pair
    for part in ("data", "texts", "code_version"):
        if saved.get(part) != current.get(part):
            diffs[f"<{part}>"] = (saved.get(part), current.get(part))
    return diffs


def nonfinite_tensors(state: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of floating tensors in a (nested) state dict that hold NaN or Inf."""
    bad: list[str] = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not torch.isfinite(value).all():
                bad.append(name)
        elif isinstance(value, dict):
            bad.extend(nonfinite_tensors(value, prefix=f"{name}."))
    return bad


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(
    path: str | Path,
    expected_fingerprint: dict[str, Any] | None = None,
    allow_mismatch: bool = False,
) -> dict[str, Any]:
    """Load and verify a checkpoint (see the module docstring for what is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("Checkpoint file does not exist.", where=str(path),
                              fix="check the path, or train first with `ur4rec train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint file is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}).",
            where=f"{path} ({os.path.getsize(path)} bytes)",
            fix="use another checkpoint of the run (best-*.pt / last.pt) or retrain",
        ) from None
    if not isinstance(payload, dict) or "model" not in payload or "fingerprint" not in payload:
        raise CheckpointError("File is not a UR4Rec checkpoint (no model state or fingerprint).", where=str(path),
                              fix="pass a checkpoint written by `ur4rec train`")
    bad = nonfinite_tensors(payload["model"])
    if bad:
        raise CheckpointError(
            f"Checkpoint holds non-finite values in {len(bad)} tensor(s): {', '.join(bad[:10])}.",
            where=str(path), fix="use an earlier checkpoint, or retrain; `ur4rec doctor` shows where it started",
            tensors=bad,
        )
    if expected_fingerprint is not None:
        diffs = fingerprint_differences(payload["fingerprint"], expected_fingerprint)
        if diffs and not allow_mismatch:
            listed = "; ".join(f"{k}: checkpoint={a!r}, now={b!r}" for k, (a, b) in list(diffs.items())[:12])
            raise CheckpointError(
                f"Checkpoint was made under a different config or data ({len(diffs)} difference(s): {listed}).",
                where=str(path),
                fix="load it with the config it was trained with, retrain, or pass --allow-mismatch",
                differences=diffs,
            )
    return payload
