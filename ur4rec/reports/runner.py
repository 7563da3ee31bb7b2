"""Run the notebooks headless with papermill and export self-contained HTML reports.

``run_reports`` executes ``notebooks/NN[x]_*.ipynb`` in name order, each with its parameters from the
profile, into ``<reports_dir>/<profile>/`` (executed notebook + HTML) and writes ``index.html``
listing every notebook with status, duration and the run's metadata. A failing notebook still gets
its HTML (with the traceback), the notebooks that depend on it are skipped, the index marks both,
and the run returns a non-zero status.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from ur4rec.data.dataset import PreparedData
from ur4rec.data.prepare import prepare
from ur4rec.devices import describe_device, resolve_device
from ur4rec.errors import ConfigError, UR4RecError
from ur4rec.evaluation.metrics import HEADLINE
from ur4rec.io import atomic_write_json, atomic_write_text
from ur4rec.profiles import profile_config
from ur4rec.reports.offline_html import export_html
from ur4rec.texts.pipeline import audit_path, make_source, source_folder, texts_root

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "ur4rec"
#: A cell that runs longer than this fails the notebook (a hang becomes an error, not a stuck run).
CELL_TIMEOUT_S = int(os.environ.get("UR4REC_CELL_TIMEOUT", "1800"))

#: Which notebooks each notebook needs to have run first (by name prefix).
DEPENDS: dict[str, list[str]] = {
    "01_data_prep": [],
    "01b_texts": ["01_data_prep"],
    "02_model_walkthrough": ["01b_texts"],
    "03_training": ["01b_texts"],
    "04_nan_diagnosis": ["03_training"],
    "05_evaluation": ["03_training"],
}
PACKAGES = ["torch", "transformers", "sentence-transformers", "papermill", "nbconvert", "plotly", "pandas", "numpy"]


@dataclass
class NotebookResult:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    html: str | None
    notebook: str | None
    error: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def ancestors(name: str) -> set[str]:
    """Every notebook ``name`` depends on, directly or through others (even ones not present)."""
    seen: set[str] = set()
    todo = list(DEPENDS.get(name, []))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(DEPENDS.get(dep, []))
    return seen


def discover_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]*_*.ipynb"))


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def run_metadata(profile: str, parameters: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
    cfg = profile_config(profile, parameters.get("config_path"), parameters.get("overrides"))
    audit_file = None
    try:
        prepared = prepare(cfg)
        dataset_fp = prepared.fingerprint[:12]
    except Exception as exc:  # the data notebook will show the real error
        prepared, dataset_fp = None, f"unavailable ({type(exc).__name__})"
    if prepared is not None:
        try:  # where `ur4rec texts` (and notebook 01b) record the leakage audit of this run's user texts
            folder = source_folder(texts_root(cfg, PreparedData.load(prepared.path)), make_source(cfg))
            audit_file = str(audit_path(folder))
        except (UR4RecError, OSError):  # no texts folder yet: the texts notebook shows the real error
            audit_file = None
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = describe_device(resolve_device(cfg.device))  # where the notebooks' runs train and evaluate
    threads = torch.get_num_threads()  # the kernels start with the same default; float sums depend on it
    return {
        "profile": profile,
        "git": git_state(),
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "dataset_fingerprint": dataset_fp,
        "run_dir": str(run_dir) if run_dir else None,
        "text_source": cfg.text_source,
        "text_audit_file": audit_file,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "torch_threads": threads,
        "versions": versions,
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
    }


def load_custom_parameters(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameters file '{path}' does not exist.", where=str(path), fix="check the path")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError("Parameters file must be a mapping.", where=str(path), fix="write 'name: value' lines")
    return values


def notebook_parameters(name: str, profile: str, run_dir: Path, custom: dict[str, Any]) -> dict[str, Any]:
    """Parameters for one notebook: the profile and shared run directory, then custom values.

    ``custom`` maps parameter -> value for every notebook, or notebook name -> {parameter: value}.
    """
    params: dict[str, Any] = {"profile": profile, "run_dir": str(run_dir)}
    for key, value in custom.items():
        if key in DEPENDS or key[:2].isdigit():
            if key == name:
                params.update(value or {})
        elif key == "overrides":  # config keys for every notebook (each notebook's profile_config applies them)
            params["config_overrides"] = list(value) if isinstance(value, (list, tuple)) else value
        else:
            params[key] = value
    return params


def _run_one(path: Path, out_dir: Path, params: dict[str, Any]) -> NotebookResult:
    import papermill as pm

    name = path.stem
    executed = out_dir / f"{name}.ipynb"
    html_path = out_dir / f"{name}.html"
    t0 = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(
            str(path), str(executed), parameters=params, kernel_name=KERNEL_NAME, cwd=str(REPO_ROOT),
            progress_bar=False, log_output=False, execution_timeout=CELL_TIMEOUT_S,
        )
        status = "ok"
    except Exception as exc:  # papermill saved the notebook with the traceback; report it
        last_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        status, error = "failed", f"{type(exc).__name__}: {last_line}"
    seconds = time.perf_counter() - t0
    html_rel = None
    if executed.is_file():
        export_html(executed, html_path)
        html_rel = html_path.name
    return NotebookResult(name, status, seconds, html_rel, executed.name if executed.is_file() else None,
                          error, params)


def run_reports(
    profile: str = "full",
    only: list[str] | None = None,
    custom_parameters: dict[str, Any] | None = None,
    reports_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> tuple[list[NotebookResult], Path]:
    """Run the notebooks of ``profile``; returns the results and the index path."""
    custom = custom_parameters or {}
    cfg = profile_config(profile, custom.get("config_path"), custom.get("overrides"))
    out_dir = (Path(reports_dir).resolve() if reports_dir else cfg.path("reports_dir")) / profile
    run_dir = (Path(runs_dir).resolve() if runs_dir else cfg.path("runs_dir")) / f"reports-{profile}"
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    notebooks = discover_notebooks(notebook_dir)
    if only:
        unknown = [o for o in only if not any(p.stem == o or p.stem.startswith(o) for p in notebooks)]
        if unknown:
            raise ConfigError(
                f"No notebook named {unknown}.", where="--only",
                fix=f"use one of {[p.stem for p in notebooks]}",
            )
        notebooks = [p for p in notebooks if any(p.stem == o or p.stem.startswith(o) for o in only)]

    os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook")
    os.environ["UR4REC_PROFILE"] = profile
    meta = run_metadata(profile, custom, run_dir)
    cfg.save(out_dir, "config.yaml")
    results: list[NotebookResult] = []
    failed: set[str] = set()
    for path in notebooks:
        blocked = sorted(ancestors(path.stem) & failed)
        if blocked:
            results.append(NotebookResult(path.stem, "skipped", 0.0, None, None, f"depends on failed {blocked}"))
            failed.add(path.stem)
            continue
        params = notebook_parameters(path.stem, profile, run_dir, custom)
        result = _run_one(path, out_dir, params)
        results.append(result)
        if result.status != "ok":
            failed.add(path.stem)
        # Rewrite the index after each notebook so an interrupted run still shows progress.
        write_index(out_dir, results, meta)
    index = write_index(out_dir, results, meta)
    return results, index


_STATUS_COLOUR = {"ok": "#1a7f37", "failed": "#cf222e", "skipped": "#9a6700"}


def write_index(out_dir: Path, results: list[NotebookResult], meta: dict[str, Any]) -> Path:
    rows = []
    for r in results:
        link = f'<a href="{html.escape(r.html)}">{html.escape(r.name)}</a>' if r.html else html.escape(r.name)
        rows.append(
            f"<tr><td>{link}</td><td style='color:{_STATUS_COLOUR.get(r.status, '#000')}'><b>{r.status}</b></td>"
            f"<td>{r.seconds:.1f} s</td><td>{html.escape(r.error or '')}</td></tr>"
        )
    leakage = _text_leakage(meta.get("text_audit_file"))
    leaderboard = _leaderboard_html(Path(meta["run_dir"]) / "eval.json") if meta.get("run_dir") else ""
    git = meta["git"]
    facts = [
        ("profile", meta["profile"]),
        ("date (UTC)", meta["date_utc"]),
        ("git commit", f"{git['commit'] or 'unknown'}{' (dirty)' if git['dirty'] else ''}"),
        ("config hash", meta["config_hash"]),
        ("seed", meta["seed"]),
        ("dataset fingerprint", meta["dataset_fingerprint"]),
        ("run directory", meta["run_dir"]),
        ("text source", meta["text_source"]),
        ("text leakage audit", _leakage_line(leakage)),
        ("python / platform", f"{meta['python']} / {meta['platform']}"),
        ("CPU / device", f"{meta['cpu']} ({meta['cpu_count']} cores, torch {meta.get('torch_threads')} threads) / "
                         f"{meta['device']}"),
        ("packages", ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)),
    ]
    total = sum(r.seconds for r in results)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>UR4Rec Workbench reports ({html.escape(meta['profile'])})</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left;vertical-align:top}}
pre{{background:#f6f8fa;padding:1em;overflow:auto;max-height:30em}}</style></head><body>
<h1>UR4Rec Workbench — {html.escape(meta['profile'])} profile</h1>
{leaderboard}
<h2>Notebooks</h2>
<table><tr><th>notebook</th><th>status</th><th>duration</th><th>error</th></tr>
{''.join(rows)}
</table><p>Total notebook time: {total:.1f} s.</p>
<h2>Run metadata</h2><table>
{''.join(f'<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>' for k, v in facts)}
</table>
<h3>Resolved config</h3><pre>{html.escape(yaml.safe_dump(meta['config'], sort_keys=False))}</pre>
</body></html>
"""
    atomic_write_json(out_dir / "index.json", {"results": [asdict(r) for r in results], "meta": meta,
                                                "text_leakage": leakage})
    return atomic_write_text(out_dir / "index.html", page)


def _text_leakage(path: str | None) -> dict[str, Any] | None:
    """Verdict and rates of the user-text leakage audit (ur4rec.texts.leakage), if the texts were built."""
    if not path or not Path(path).is_file():
        return None
    audit = json.loads(Path(path).read_text())
    return {"verdict": audit["verdict"], "action": audit.get("action"), "users": audit["users"],
            "held_out": {k: {"rate": v["held_out"]["rate"], "cross_user": v["cross_user"], "p_value": v["p_value"]}
                         for k, v in sorted(audit["splits"].items(), key=lambda kv: kv[0] != "valid")},
            "random_unseen": audit["random_unseen"]["rate"], "train": audit["train"]["rate"]}


def _leakage_line(leak: dict[str, Any] | None) -> str:
    if leak is None:
        return "not available (texts not built yet)"
    rates = "; ".join(f"{k} {100 * v['rate']:.2f}% vs cross-user {100 * v['cross_user']:.2f}% (p={v['p_value']:.2g})"
                      for k, v in leak["held_out"].items())
    label = "" if leak["verdict"] == "pass" else f" (text_leakage: {leak['action']})"
    return (f"{leak['verdict'].upper()}{label}: held-out titles named {rates}; random unseen "
            f"{100 * leak['random_unseen']:.3f}%, training {100 * leak['train']:.2f}% ({leak['users']} users)")


def _leaderboard_html(eval_json: Path) -> str:
    """The headline table from the run's eval.json: test, full ranking, with 95% CIs."""
    if not eval_json.is_file():
        return ""
    results = json.loads(eval_json.read_text())
    entries = results.get("full", {}).get("test", {})
    metrics = HEADLINE
    rows = []
    for name, e in sorted(entries.items(), key=lambda kv: -kv[1]["metrics"]["ndcg@10"]):
        cells = "".join(f"<td>{e['metrics'][m]:.4f} <small>[{e['ci95'][m][0]:.4f}, {e['ci95'][m][1]:.4f}]</small></td>"
                        for m in metrics)
        rows.append(f"<tr><td><b>{html.escape(name)}</b></td>{cells}</tr>")
    head = "".join(f"<th>{m} [95% CI]</th>" for m in metrics)
    return (f"<h2>Leaderboard — test, full ranking ({results.get('users_evaluated')} users)</h2>"
            f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
            f"<p><small>{html.escape(results.get('protocol', {}).get('full', ''))}</small></p>")


def summarise(results: list[NotebookResult]) -> dict[str, Any]:
    return {
        "notebooks": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 2), "html": r.html,
                       "error": r.error} for r in results],
        "ok": all(r.status == "ok" for r in results),
    }

