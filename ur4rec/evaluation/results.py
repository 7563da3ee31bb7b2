"""An evaluation's results: what ``eval.json`` holds, plus what only a live session needs.

``RunEvaluation`` reads like ``eval.json`` (a read-only mapping of its content: ``ev["full"]``), and
keeps beside it the per-user results of every (split, model) and the model trained alone, which
never go to disk. ``leaderboard``, ``two_stage_vs_exact`` and ``to_markdown`` take either it or a
plain dict read back from ``eval.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ur4rec.data.dataset import PreparedData, Split
from ur4rec.evaluation.metrics import REPORTED, summarise
from ur4rec.evaluation.protocol import EvalResult
from ur4rec.evaluation.statistics import bootstrap_ci
from ur4rec.io import atomic_write_text

#: The leaderboard columns of eval.md (the full list, REPORTED, is in eval.json and the notebooks).
MARKDOWN_COLUMNS = ["hit@10", "ndcg@10", "ndcg@10 ci95", "mrr@10", "hit@20", "ndcg@20", "mean_rank"]


def metric_entry(result: EvalResult, seed: int) -> dict[str, Any]:
    """One model on one split as eval.json stores it: metric means and their 95% bootstrap CIs."""
    summary = summarise(result.per_user)
    ci = {}
    for k, v in result.per_user.items():
        key = "mean_rank" if k == "rank" else k
        ci[key] = bootstrap_ci(v, seed=seed)
    return {"metrics": summary, "ci95": ci}


@dataclass(eq=False)
class RunEvaluation(Mapping[str, Any]):
    """``results`` is eval.json's content; ``per_user`` maps (split, model) to its per-user result;
    ``alone`` is the model whose branches were trained alone (None: the final model's stood in)."""

    results: dict[str, Any]
    per_user: dict[tuple[str, str], EvalResult] = field(default_factory=dict)
    alone: nn.Module | None = None

    def __getitem__(self, key: str) -> Any:
        return self.results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def to_dict(self) -> dict[str, Any]:
        """eval.json's content, as a dict (a deep copy: changing it does not change this evaluation)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """eval.json's text."""
        return json.dumps(self.results, indent=2, sort_keys=True, default=str) + "\n"

    def to_markdown(self) -> str:
        return to_markdown(self.results)

    def write(self, run_dir: str | Path) -> None:
        """``eval.json`` and ``eval.md`` into ``run_dir``, atomically."""
        atomic_write_text(Path(run_dir) / "eval.json", self.to_json())
        atomic_write_text(Path(run_dir) / "eval.md", self.to_markdown())

    def leaderboard(self, protocol: str = "full", split: str = "test") -> pd.DataFrame:
        return leaderboard(self.results, protocol, split)

    def breakdown_table(self, data: PreparedData, split: Split = "test", metric: str = "ndcg@10") -> pd.DataFrame:
        """``breakdowns`` of every evaluated model on ``split``, stacked with a ``model`` column."""
        parts = [breakdowns(res, data, split, metric).assign(model=name)
                 for (s, name), res in self.per_user.items() if s == split]
        if not parts:
            raise ValueError(f"no per-user results for split {split!r}; evaluated: "
                             f"{sorted({s for s, _ in self.per_user})}")
        return pd.concat(parts, ignore_index=True)


def breakdowns(result: EvalResult, data: PreparedData, split: Split, metric: str = "ndcg@10") -> pd.DataFrame:
    """Per-user metric grouped by history length, target popularity and target genre."""
    hist_len = np.array([len(h) for h in data.history(split)])[result.users]
    targets = np.array([data.held_out(split)[u][0] for u in result.users])
    pop = data.item_popularity()[targets]
    genres = data.item_genres()
    rows = []
    len_bins = pd.cut(hist_len, [0, 20, 50, 100, 200, 10_000], right=False)
    pop_bins = pd.qcut(pop, 4, duplicates="drop")
    values = result.per_user[metric]
    for by, bins in (("history length", len_bins), ("target popularity", pop_bins)):
        df = pd.DataFrame({"group": bins.astype(str), "value": values})
        for g, part in df.groupby("group", sort=False):
            rows.append((by, g, len(part), float(part["value"].mean())))
    genre_rows: dict[str, list[float]] = {}
    for v, t in zip(values, targets):
        for g in genres[t] or ["(none)"]:
            genre_rows.setdefault(g, []).append(v)
    for g, vals in sorted(genre_rows.items()):
        rows.append(("target genre", g, len(vals), float(np.mean(vals))))
    return pd.DataFrame(rows, columns=["breakdown", "group", "users", metric])


def leaderboard(results: Mapping[str, Any], protocol: str = "full", split: str = "test") -> pd.DataFrame:
    rows = []
    for name, entry in results[protocol][split].items():
        row = {"model": name}
        for m in REPORTED:
            if m in entry["metrics"]:
                row[m] = entry["metrics"][m]
                lo, hi = entry["ci95"][m]
                row[f"{m} ci95"] = f"[{lo:.4f}, {hi:.4f}]"
        rows.append(row)
    df = pd.DataFrame(rows).set_index("model")
    return df.sort_values("ndcg@10", ascending=False) if "ndcg@10" in df else df


def two_stage_vs_exact(results: Mapping[str, Any]) -> pd.DataFrame:
    """NDCG@10 of the per-pair models under two-stage and exact catalogue ranking, per split."""
    rows = [{"split": split, "model": name, **cmp} for split, models in results.get("two_stage_vs_exact", {}).items()
            for name, cmp in models.items()]
    if not rows:
        return pd.DataFrame({"note": ["exact catalogue ranking was not run (exact_catalogue: never, or too large "
                                      "for this machine under 'auto')"]})
    return pd.DataFrame(rows).set_index(["split", "model"])


def to_markdown(results: Mapping[str, Any]) -> str:
    """eval.md: the leaderboards (full ranking first), two-stage vs exact, the paired tests."""
    lines = ["# Evaluation", "", f"Users evaluated: {results['users_evaluated']} (every user).", ""]
    lines += [f"- `{name}`: {what}" for name, what in results.get("models", {}).items()] + [""]
    if env := results.get("trained_with"):
        where = f" on {env['device']}" + (f" (amp {env['amp']})" if env.get("amp", "off") != "off" else "") \
            if env.get("device") else ""
        procs = env.get("processes", 1)
        threads = f"{env['torch_threads']} threads"
        if procs > 1:
            threads += f" in each of {procs} data-parallel processes"
        lines += [f"Trained with torch {env['torch']}{where}, {threads} (the same seed gives the same numbers on "
                  "the same device, thread count and number of processes).", ""]
    if on := results.get("evaluated_on"):
        lines += [f"Evaluated on {on['device']}.", ""]
    for protocol in ("full", "sampled"):
        label = "Full ranking (primary)" if protocol == "full" else "Sampled (labelled extra, not comparable)"
        for split in results[protocol]:
            lines += [f"## {label} — {split}", "", results["protocol"][protocol], ""]
            df = leaderboard(results, protocol, split)
            cols = [c for c in MARKDOWN_COLUMNS if c in df]
            lines.append("| model | " + " | ".join(cols) + " |")
            lines.append("|---" * (len(cols) + 1) + "|")
            for name, row in df[cols].iterrows():
                cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    for split, models in results.get("two_stage_vs_exact", {}).items():
        lines += [f"## Two-stage vs exact catalogue ranking — {split}", "",
                  "| model | NDCG@10 two-stage | NDCG@10 exact | difference | users with the same target rank |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {c['ndcg@10_two_stage']:.4f} | {c['ndcg@10_exact']:.4f} | {c['difference']:+.4f} | "
                  f"{c['users_with_same_target_rank']:.1%} |" for name, c in models.items()]
        lines.append("")
    for split, tests in results.get("paired_test", {}).items():
        for name, t in tests.items():
            lines.append(f"Paired permutation test ({split}, {name}): mean difference {t['mean_difference']:+.4f}, "
                         f"p = {t['p_value']:.4f} over {t['users']} users.")
    return "\n".join(lines) + "\n"
