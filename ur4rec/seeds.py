"""``ur4rec evaluate --seeds K``: train and evaluate K seeds, report mean ± std across them.

Seed ``s`` of ``cfg.seed, cfg.seed + 1, …`` trains into ``<root>/seed-<s>/`` and is evaluated there
(``eval.json``), exactly as a single run would be. A seed whose run already finished with the same
config (same hash) and has its ``eval.json`` is reused, so an interrupted sweep continues where it
stopped. The aggregate (``seeds.json``, ``seeds.md`` in ``root``) keeps every per-seed value beside
the mean and the sample standard deviation, and counts the seeds on which fused UR4Rec beat SASRec.

``jobs`` > 1 trains the seeds as separate processes (``ur4rec train`` then ``ur4rec evaluate`` per
seed), ``jobs`` at a time, the cores divided between them (``threads`` each, default cores // jobs).
What the processes share (prepared data, texts, their embeddings) is built here first, so they only
read those caches. A seed's numbers equal a sequential run's on the same thread count (torch's float
sums depend on the thread count, so say which one a number came from).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ur4rec.config import Config, config_from_dict, read_yaml
from ur4rec.data.dataset import load_prepared
from ur4rec.errors import ConfigError, UR4RecError
from ur4rec.evaluation.evaluate import evaluate_run
from ur4rec.evaluation.metrics import HEADLINE
from ur4rec.io import atomic_write_json, atomic_write_text
from ur4rec.pipeline import train
from ur4rec.texts.pipeline import load_text_embeddings


def seed_runs(cfg: Config, k: int) -> list[Config]:
    """The K configs of a sweep: identical but for ``seed``."""
    if k < 1:
        raise ConfigError(f"--seeds must be at least 1, got {k}.", where="--seeds", fix="pass e.g. --seeds 3")
    return [config_from_dict(cfg.to_dict() | {"seed": cfg.seed + i}, f"seed {cfg.seed + i}")
            for i in range(k)]


def _finished(run_dir: Path, cfg: Config) -> bool:
    if not ((run_dir / "eval.json").is_file() and (run_dir / "final.pt").is_file()):
        return False
    saved = config_from_dict(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    return saved.hash() == cfg.hash()


def run_seed_process(c: Config, run_dir: Path, threads: int) -> None:
    """Train (resuming) and evaluate one seed in its own processes with ``threads`` threads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    request = run_dir / "requested-config.yaml"
    request.write_text(c.to_yaml(), encoding="utf-8")
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cli = [sys.executable, "-m", "ur4rec.cli"]
    for cmd in (["train", "--config", str(request), "--run-dir", str(run_dir), "--resume", "--json"],
                ["evaluate", "--run-dir", str(run_dir), "--json"]):
        done = subprocess.run(cli + cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise UR4RecError(f"seed {c.seed}: `ur4rec {cmd[0]}` failed (exit {done.returncode}): "
                              f"{done.stderr.strip()[-1500:]}", where=str(run_dir),
                              fix="run that seed alone to see the whole error; finished seeds are kept")


def run_seeds(cfg: Config, k: int, root: str | Path, progress: bool = False,
              log: Callable[[str], None] = print,
              workspace_factory: Callable[[Config], Any] | None = None, jobs: int = 1,
              threads: int | None = None) -> dict[str, Any]:
    """Train + evaluate every seed (reusing finished ones), aggregate, write seeds.json/md.

    ``workspace_factory(cfg)`` builds the data/texts/model for one seed (default: from the config).
    ``jobs`` > 1: the seeds run as separate processes (see the module doc)."""
    root = Path(root)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}.", where="--jobs", fix="pass e.g. --jobs 2")
    if jobs > 1:
        if workspace_factory is not None:
            raise ValueError("workspace_factory builds workspaces in this process: it cannot serve --jobs > 1")
        todo = [c for c in seed_runs(cfg, k) if not _finished(root / f"seed-{c.seed}", c)]
        load_text_embeddings(cfg, load_prepared(cfg))  # shared caches built once, before the processes
        per_job = threads or max(1, (os.cpu_count() or 1) // jobs)
        log(f"{len(todo)} seed(s) to train, {jobs} at a time, {per_job} thread(s) each")
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda c: run_seed_process(c, root / f"seed-{c.seed}", per_job), todo))
    per_seed: dict[int, dict[str, Any]] = {}
    for c in seed_runs(cfg, k):
        run_dir = root / f"seed-{c.seed}"
        if _finished(run_dir, c):
            log(f"seed {c.seed}: reusing the finished run in {run_dir}")
            per_seed[c.seed] = json.loads((run_dir / "eval.json").read_text())
            continue
        log(f"seed {c.seed}: training into {run_dir}")
        workspace = workspace_factory(c) if workspace_factory else None
        # resume: an interrupted seed continues (a finished one without eval.json is not retrained)
        _, ws = train(c, run_dir=run_dir, resume=True, progress=progress, workspace=workspace)
        per_seed[c.seed] = evaluate_run(run_dir, workspace=ws).to_dict()
    summary = aggregate(per_seed)
    summary["config_hashes"] = {s: c.hash() for s, c in zip(per_seed, seed_runs(cfg, k))}
    atomic_write_json(root / "seeds.json", summary)
    atomic_write_text(root / "seeds.md", to_markdown(summary))
    return summary


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every full-ranking metric, per split and model, and the fused-vs-SASRec
    difference per seed (with each seed's paired-test p-value and 95% CIs kept alongside)."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    out: dict[str, Any] = {"seeds": seeds, "users_evaluated": first["users_evaluated"], "full": {},
                           "protocol": first["protocol"]["full"], "fused_minus_sasrec": {}, "ci95": {}}
    for split, models in first["full"].items():
        out["full"][split], out["ci95"][split] = {}, {}
        for name, entry in models.items():
            out["full"][split][name] = {m: _mean_std([per_seed[s]["full"][split][name]["metrics"][m] for s in seeds])
                                        for m in entry["metrics"]}
            out["ci95"][split][name] = {s: per_seed[s]["full"][split][name]["ci95"].get("ndcg@10") for s in seeds}
        if "ur4rec" in models and "sasrec" in models:
            diffs = [per_seed[s]["full"][split]["ur4rec"]["metrics"]["ndcg@10"]
                     - per_seed[s]["full"][split]["sasrec"]["metrics"]["ndcg@10"] for s in seeds]
            p_values = [per_seed[s].get("paired_test", {}).get(split, {}).get("ur4rec_vs_sasrec_ndcg@10", {})
                        .get("p_value") for s in seeds]
            out["fused_minus_sasrec"][split] = _mean_std(diffs) | {
                "metric": "ndcg@10", "seeds_where_fused_wins": sum(d > 0 for d in diffs), "p_values": p_values}
    out["final_selection"] = {s: {k: v for k, v in (per_seed[s].get("final_selection") or {}).items() if k != "table"}
                              or None for s in seeds}
    return out


def _selection_sentence(summary: dict[str, Any]) -> list[str]:
    chosen = summary.get("final_selection") or {}
    if not any(chosen.values()):
        return []
    parts = []
    for s, c in chosen.items():
        if not c:
            parts.append(f"seed {s}: last stage")
            continue
        text = f"seed {s}: {c['stage']} checkpoint, retriever weight {c['retriever_weight']}"
        best, test = c.get("best_on_validation"), c.get("paired_test_vs_baseline")
        if best and test and (best["stage"], best["retriever_weight"]) != (c["stage"], c["retriever_weight"]):
            text += (f" (best pair on validation: {best['stage']}, weight {best['retriever_weight']}, "
                     f"{test['mean_difference']:+.4f} over SASRec alone, paired-test p = {test['p_value']:.3f}: "
                     "not significant, not kept)")
        parts.append(text)
    lines = ["Final model per seed (stage checkpoint × retriever weight, chosen on validation): "
             + "; ".join(parts) + "."]
    if all(c and c.get("retriever_weight") == 0.0 and c.get("stage") == "pretrain_retriever" for c in chosen.values()):
        lines.append("On every seed validation gave the text branch weight 0: the fused model is SASRec alone.")
    return lines + [""]


def to_markdown(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    lines = [f"# Evaluation over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             f"{summary['users_evaluated']} users per seed; {summary['protocol']}.",
             "Mean ± sample std over seeds; per-seed values in seeds.json.", ""]
    lines += _selection_sentence(summary)
    for split, models in summary["full"].items():
        lines += [f"## {split}", "", "| model | " + " | ".join(HEADLINE) + " |",
                  "|---" * (len(HEADLINE) + 1) + "|"]
        order = sorted(models, key=lambda n: -models[n]["ndcg@10"]["mean"])
        for name in order:
            cells = [f"{models[name][m]['mean']:.4f} ± {models[name][m]['std']:.4f}" for m in HEADLINE
                     if m in models[name]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        cis = summary["ci95"].get(split, {})
        if cis:
            lines += ["", "95% bootstrap CI of NDCG@10 over users, per seed: " + "; ".join(
                f"{name} " + ", ".join(f"[{ci[0]:.4f}, {ci[1]:.4f}]" for ci in by_seed.values() if ci)
                for name, by_seed in cis.items() if name in ("ur4rec", "sasrec")) + "."]
        d = summary["fused_minus_sasrec"].get(split)
        if d:
            verdict = "helps" if d["mean"] > 0 and d["seeds_where_fused_wins"] == len(seeds) else "does not help"
            sentence = (f"Fused UR4Rec − SASRec alone, NDCG@10: {d['mean']:+.4f} ± {d['std']:.4f} "
                        f"(fused ahead on {d['seeds_where_fused_wins']} of {len(seeds)} seeds; per-seed paired-test "
                        f"p = {', '.join(f'{p:.3f}' for p in d['p_values'] if p is not None)}): "
                        f"the text branch {verdict} on {split}.")
            lines += ["", sentence]
        lines.append("")
    return "\n".join(lines)
