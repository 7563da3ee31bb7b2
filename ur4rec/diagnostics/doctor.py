"""``ur4rec doctor``: load a run or checkpoint, and say plainly whether it is healthy and why not.

Checks, in order: the file loads (exit 2 if missing or truncated; one holding NaN/Inf is refused by
the checkpoint reader, and reported with the tensors named); its fingerprint matches the config
(differing keys listed); its weights are finite, not exploding, without dead embedding
rows (tensors named); a forward sweep on real validation batches in train and eval modes, under
grad / no_grad / inference_mode, gives finite scores for every component (the first module with a
non-finite output named). Exit 0 healthy, 1 problems found, 2 could not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ur4rec.config import Config, config_from_dict, read_yaml
from ur4rec.data.batching import pad_left
from ur4rec.diagnostics.checks import MODES, component_ranges, scan_weights
from ur4rec.errors import UR4RecError
from ur4rec.training.checkpoint import CheckpointError, fingerprint_differences, load_checkpoint, run_fingerprint
from ur4rec.training.nonfinite import find_first_nonfinite
from ur4rec.training.opened_run import load_into, read_run_config
from ur4rec.training.run import Workspace, build_workspace


class DoctorCannotRun(UR4RecError):
    """The doctor could not run at all (missing/truncated file, unreadable config): exit 2."""


@dataclass
class Verdict:
    checks: list[dict[str, Any]] = field(default_factory=list)
    sweep: pd.DataFrame | None = None

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": check, "ok": ok, "detail": detail})

    @property
    def healthy(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.checks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"healthy": self.healthy, "checks": self.checks}
        if self.sweep is not None:
            out["sweep"] = self.sweep.to_dict(orient="records")
        return out


def _checkpoint_path(run_dir: str | None, checkpoint: str | None) -> Path:
    if bool(run_dir) == bool(checkpoint):
        raise DoctorCannotRun("Give exactly one of --run-dir or --checkpoint.", where="ur4rec doctor",
                              fix="ur4rec doctor --run-dir runs/<run> (or --checkpoint file.pt)")
    if checkpoint:
        return Path(checkpoint)
    final = Path(run_dir) / "final.pt"
    return final if final.exists() else Path(run_dir) / "last.pt"  # an unfinished run: its latest state


def _config(run_dir: str | None, config: str | None, payload: dict[str, Any], path: Path) -> Config:
    """The config to check against: --config, else the run's config.yaml, else the checkpoint's own."""
    if not (config or run_dir or "config" in payload):
        raise DoctorCannotRun("The checkpoint embeds no config.", where=str(path),
                              fix="pass the config it was trained with: --config file.yaml")
    try:
        if config:
            return config_from_dict(read_yaml(config), str(config))
        if run_dir:
            return read_run_config(run_dir)
        return config_from_dict(payload["config"], f"{path} (embedded config)")
    except UR4RecError as exc:
        raise DoctorCannotRun(f"Config could not be read: {exc.what}", where=exc.where, fix=exc.fix) from None


def diagnose(run_dir: str | None = None, checkpoint: str | None = None, config: str | None = None,
             batch_size: int = 64, workspace: Workspace | None = None) -> Verdict:
    path = _checkpoint_path(run_dir, checkpoint)
    v = Verdict()
    try:
        # no expected fingerprint: a stale checkpoint is a finding below, not a refusal
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        if not exc.tensors:  # missing, truncated, not a checkpoint
            raise DoctorCannotRun(exc.what, where=exc.where, fix=exc.fix) from None
        # it loads, but holds NaN/Inf: the reader refuses it, so nothing further can be examined
        v.add("checkpoint loads", True, str(path))
        v.add("weights finite and sane", False, "; ".join(f"{t}: non-finite values" for t in exc.tensors))
        return v
    cfg = _config(run_dir, config, payload, path)
    v.add("checkpoint loads", True, str(path))
    ws = workspace or build_workspace(cfg)
    expected = run_fingerprint(cfg, ws.data.fingerprint, ws.text_fingerprint)
    diffs = fingerprint_differences(payload.get("fingerprint", {}), expected)
    v.add("fingerprint matches config and data", not diffs,
          "; ".join(f"{k}: checkpoint={a!r}, config={b!r}" for k, (a, b) in diffs.items()) or "identical")
    scan = scan_weights(payload["model"])
    v.add("weights finite and sane", scan.empty,
          "; ".join(f"{r.tensor}: {r.problem} ({r.detail})" for r in scan.itertuples()) or "no problem found")
    try:
        load_into(ws.model, payload, path)
    except CheckpointError as exc:
        v.add("weights fit the config's model", False, exc.what)
        return v
    if not scan.empty:
        return v  # broken weights: the sweep would only repeat it
    _sweep(v, ws, cfg, batch_size)
    return v


def _sweep(v: Verdict, ws: Workspace, cfg: Config, batch_size: int) -> None:
    """Real validation batches (short and long histories) through the fused model in every mode."""
    model, data = ws.model, ws.data
    hist = data.history("valid")
    order = sorted(range(data.num_users), key=lambda u: len(hist[u]))
    users = torch.tensor(sorted(set(order[:batch_size // 2] + order[-(batch_size // 2):])))
    seq = pad_left([hist[u] for u in users.tolist()], cfg.max_seq_len)
    targets = torch.as_tensor([data.held_out("valid")[u][0] for u in users.tolist()]).unsqueeze(1)
    others = torch.randint(1, data.num_items + 1, (len(users), 20), generator=torch.Generator().manual_seed(0))
    cands = torch.cat([targets, others], 1)
    rows = []
    first_bad = None
    for train in (True, False):
        for mode, ctx in MODES.items():
            model.train(train)
            with ctx():
                out = model(users, seq, cands)
            r = component_ranges(out).assign(train=train, mode=mode)
            rows.append(r)
            if first_bad is None and (r["nan"].sum() + r["inf"].sum()) > 0:
                report = find_first_nonfinite(model, lambda: model(users, seq, cands))
                first_bad = f"{'train' if train else 'eval'}/{mode}: {report.describe()}"
    model.eval()
    v.sweep = pd.concat(rows, ignore_index=True)
    v.add("scores finite in train/eval x grad/no_grad/inference_mode", first_bad is None,
          first_bad or f"{len(users)} validation users (shortest and longest histories), 21 candidates each")
