"""Peer comparison: RecBole 1.2.1's SASRec trained on exactly the workbench's split, beside our models.

    python bench/accuracy.py [--json] [--run-dir R | --seeds-dir S] [--recbole-seeds K] [--epochs N]
                             [--stopping-step K] [--reuse]

1. Export the prepared ML-100K split (default config) as RecBole benchmark atomic files: one
   training row per target position (history = the previous ≤ 50 items), the validation row (training
   history → validation item) and the test row (training + validation history → test item).
2. Train RecBole's SASRec on them (``--recbole-seeds K``: seeds 2020 … 2020+K-1, one run each) in its own
   environment (``.bench-venv``; bench/recbole_accuracy.py)
   and dump its catalogue scores for every user's validation and test history.
3. Rank those scores with the workbench's protocol and metric code (known items excluded, ties
   against the target, every user), with the same bootstrap CIs, next to our models' numbers from
   the same code: a run's ``eval.json`` (``--run-dir``) or a seed sweep's ``seeds.json``
   (``--seeds-dir``, mean ± std). RecBole's own printed test numbers (its protocol does not exclude
   history items) are kept, labelled, for reference only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ur4rec.config import load_config  # noqa: E402
from ur4rec.data import load_prepared  # noqa: E402
from ur4rec.data.batching import training_prefixes  # noqa: E402
from ur4rec.data.dataset import PreparedData  # noqa: E402
from ur4rec.evaluation.metrics import HEADLINE  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.evaluation.results import metric_entry  # noqa: E402
from ur4rec.io import atomic_write_json, atomic_write_text  # noqa: E402

DATASET = "ur4rec-ml100k"
MAX_LEN = 50


def export_split(data: PreparedData, folder: Path) -> dict[str, int]:
    """RecBole benchmark files of the workbench split (item ids kept as tokens) + histories as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    counts = {}
    # one row per training target: the samples of ``sasrec_sampling: prefixes``, padding dropped
    inputs, targets, users = training_prefixes(data.train_sequences(), MAX_LEN)
    rows = [f"{u}\t{' '.join(str(i) for i in x if i)}\t{y}\n"
            for u, x, y in zip(users.tolist(), inputs.tolist(), targets[:, -1].tolist())]
    counts["train"] = len(rows)
    (folder / f"{DATASET}.train.inter").write_text(header + "".join(rows))
    for split in ("valid", "test"):
        hist, held = data.history(split), data.held_out(split)
        lines = [f"{u}\t{' '.join(map(str, hist[u][-MAX_LEN:]))}\t{held[u][0]}\n" for u in range(data.num_users)]
        counts[split] = len(lines)
        (folder / f"{DATASET}.{split}.inter").write_text(header + "".join(lines))
        (folder.parent / f"{split}_histories.json").write_text(json.dumps([[int(i) for i in h] for h in hist]))
    return counts


def recbole_scores(export_root: Path, venv: Path, epochs: int, stopping_step: int, seed: int,
                   threads: int = 2) -> tuple[dict, dict]:
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} missing: run `make bench-env` first (RecBole needs its own environment)")
    out = export_root / f"recbole_scores-{seed}.npz"
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONPATH="", UR4REC_BENCH_THREADS=str(threads))
    proc = subprocess.run([str(py), str(ROOT / "bench" / "recbole_accuracy.py"), str(export_root), DATASET, str(out),
                           str(epochs), str(stopping_step), str(seed)], capture_output=True, text=True, env=env,
                          cwd="/tmp", check=False)
    if proc.returncode != 0:
        raise SystemExit(f"RecBole run (seed {seed}) failed:\n{proc.stderr[-3000:]}")
    scores = np.load(out)
    return json.loads(proc.stdout.strip().splitlines()[-1]), {"valid": scores["valid"], "test": scores["test"]}


def recbole_runs(data: PreparedData, export_root: Path, args: argparse.Namespace) -> dict[int, tuple[dict, dict]]:
    """seed -> (RecBole's run info, its catalogue scores), cached per seed in bench/.cache; the runs
    not cached go ``--jobs`` at a time, each with cores/jobs torch threads (more threads than cores
    slows torch down many times over)."""
    runs, todo = {}, []
    # "checkpoints": caches made before each run had its own checkpoint folder are not reused
    keys = {s: {"split": data.fingerprint, "checkpoints": "per-run", "epochs": args.epochs,
                "stopping_step": args.stopping_step, "seed": s}
            for s in range(2020, 2020 + args.recbole_seeds)}
    for seed, key in keys.items():
        cached = export_root / f"result-{seed}.json"
        if args.reuse and cached.is_file() and json.loads(cached.read_text())["key"] == key:
            scores = dict(np.load(export_root / f"recbole_scores-{seed}.npz"))
            runs[seed] = (json.loads(cached.read_text())["info"], scores)
        else:
            todo.append(seed)
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {s: pool.submit(recbole_scores, export_root, Path(args.venv), args.epochs, args.stopping_step, s,
                                  threads) for s in todo}
        for seed, fut in futures.items():
            runs[seed] = fut.result()
            atomic_write_json(export_root / f"result-{seed}.json", {"key": keys[seed], "info": runs[seed][0]})
    by_seed = sorted(runs)
    for a, b in zip(by_seed, by_seed[1:]):  # different seeds never give bit-identical catalogue scores
        if any(np.array_equal(runs[a][1][split], runs[b][1][split]) for split in ("valid", "test")):
            raise SystemExit(f"RecBole seeds {a} and {b} produced identical scores: the runs shared a checkpoint; "
                             f"delete {export_root} and run again")
    for seed in sorted(runs):
        print(f"RecBole seed {seed}: {runs[seed][0]['epochs_trained']} epochs, {runs[seed][0]['train_s']} s",
              file=sys.stderr, flush=True)
    return dict(sorted(runs.items()))


def ours(run_dir: Path | None, seeds_dir: Path | None) -> tuple[dict, str]:
    """Our models' numbers, split -> model -> metric -> (mean, std or CI)."""
    if seeds_dir:
        s = json.loads((seeds_dir / "seeds.json").read_text())
        table = {split: {m: {k: (v["mean"], v["std"]) for k, v in metrics.items()} for m, metrics in models.items()}
                 for split, models in s["full"].items()}
        return table, f"mean ± std over seeds {s['seeds']} ({seeds_dir})"
    e = json.loads((run_dir / "eval.json").read_text())
    table = {split: {m: {k: (v, tuple(entry["ci95"].get(k, (None, None)))) for k, v in entry["metrics"].items()}
                     for m, entry in models.items()} for split, models in e["full"].items()}
    return table, f"one run, 95% bootstrap CI ({run_dir})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--run-dir", default=None, help="a workbench run evaluated with `ur4rec evaluate`")
    ap.add_argument("--seeds-dir", default=None, help="a sweep from `ur4rec evaluate --seeds K`")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--stopping-step", type=int, default=3)
    ap.add_argument("--recbole-seeds", type=int, default=3, help="RecBole runs: seeds 2020 … 2020+K-1")
    ap.add_argument("--jobs", type=int, default=1, help="RecBole runs at once (threads split between them)")
    ap.add_argument("--venv", default=str(ROOT / ".bench-venv"))
    ap.add_argument("--reuse", action="store_true",
                    help="reuse RecBole's scores from bench/.cache if they were made on the same split and settings")
    args = ap.parse_args()
    cfg = load_config()
    data = load_prepared(cfg)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    export_root = ROOT / "bench" / ".cache" / "recbole_accuracy"
    counts = export_split(data, export_root / DATASET)
    runs = recbole_runs(data, export_root, args)
    per_seed = {}  # seed -> split -> entry (metrics + per-user bootstrap CI)
    for seed, (_, scores) in runs.items():
        per_seed[seed] = {}
        for split in ("valid", "test"):
            matrix = torch.from_numpy(scores[split])
            res = evaluate_full_ranking(lambda users, seq, m=matrix: m[users], data, split, cfg.max_seq_len,
                                        ks=cfg.eval_ks)
            per_seed[seed][split] = metric_entry(res, cfg.seed)
    seeds = sorted(per_seed)
    recbole = {split: {m: {"mean": float(np.mean([per_seed[s][split]["metrics"][m] for s in seeds])),
                           "std": float(np.std([per_seed[s][split]["metrics"][m] for s in seeds], ddof=1))
                           if len(seeds) > 1 else 0.0,
                           "values": [per_seed[s][split]["metrics"][m] for s in seeds],
                           "ci95_per_seed": [per_seed[s][split]["ci95"][m] for s in seeds]}
                       for m in HEADLINE} for split in ("valid", "test")}
    info = {"seeds": seeds, "runs": {s: runs[s][0] for s in seeds}}
    table, ours_source = ours(Path(args.run_dir) if args.run_dir else None,
                              Path(args.seeds_dir) if args.seeds_dir else None)
    result = {"benchmark": "test/valid full ranking on the workbench split, workbench metric code",
              "split_rows": counts, "recbole": info | {"full_ranking": recbole}, "ours_source": ours_source,
              "ours": table, "seconds": round(time.perf_counter() - t0, 1)}
    out = ROOT / "bench" / "results"
    atomic_write_json(out / "accuracy.json", result)
    epochs = ", ".join(str(info["runs"][s]["epochs_trained"]) for s in seeds)
    train_s = sum(info["runs"][s]["train_s"] for s in seeds)
    md = ["# Accuracy: RecBole 1.2.1 SASRec on the workbench split vs the workbench's models", "",
          f"Same split ({counts['train']} training rows, {counts['valid']} validation, {counts['test']} test users), "
          "same protocol and metric code (full ranking, known items excluded, ties against the target). "
          f"RecBole: seeds {seeds}, mean ± std (per-seed 95% bootstrap CIs below), {epochs} epochs "
          f"({train_s:.0f} s of training in all), early stopping on its validation NDCG@10 (stopping_step "
          f"{args.stopping_step}). Ours: {ours_source}.", ""]
    for split in ("test", "valid"):
        md += [f"## {split}", "", "| model | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
        rb = recbole[split]
        cells = " | ".join(f"{rb[m]['mean']:.4f} ± {rb[m]['std']:.4f}" for m in HEADLINE)
        md.append(f"| RecBole SASRec | {cells} |")
        for name, metrics in sorted(table.get(split, {}).items(), key=lambda kv: -kv[1]["ndcg@10"][0]):
            cells = []
            for m in HEADLINE:
                v, spread = metrics[m]
                cells.append(f"{v:.4f} ± {spread:.4f}" if isinstance(spread, float)
                             else f"{v:.4f} [{spread[0]:.4f}, {spread[1]:.4f}]")
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md += ["", "RecBole SASRec per seed, NDCG@10 [95% CI]: " + "; ".join(
            f"{s} {v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" for s, v, ci in
            zip(seeds, rb["ndcg@10"]["values"], rb["ndcg@10"]["ci95_per_seed"])) + ".", ""]
    md.append("RecBole's own protocol (history items not excluded), test NDCG@10 per seed, for reference only: "
              + ", ".join(f"{info['runs'][s]['test_recbole_protocol']['ndcg@10']:.4f}" for s in seeds) + ".")
    atomic_write_text(out / "accuracy.md", "\n".join(md) + "\n")
    print("\n".join(md), file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
