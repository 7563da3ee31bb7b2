"""pretrain_sasrec of the default config against an earlier commit's default: wall time and non-inferiority.

    python bench/sasrec_speed.py [--seeds 2023 2024 2025] [--threads 2] [--baseline-commit 8d3b46c]
                                 [--baseline-timed-seeds 2023] [--untimed-jobs 2] [--candidate-untimed] [--json]

Both sides train ``pretrain_sasrec`` alone (``ur4rec train --set stages=[pretrain_sasrec]``) per seed
on ``--threads`` torch threads, one run at a time, so the machine should be otherwise idle. The
baseline is the package at ``--baseline-commit``, checked out in a git worktree under bench/.cache
and run from there on the same prepared data (``data_dir``); the candidate is this checkout.
Reported per seed: ``StageResult.seconds`` (training and per-epoch validation) of each and their
ratio, the best validation NDCG@10 (full ranking, known items excluded) and the test NDCG@10 of that
best checkpoint (reported, never used for a choice).

Non-inferiority, on seeds no choice was tuned on: the candidate's mean validation NDCG@10 is at least
the baseline's mean minus ``--margin`` (0.0015), and a paired sign-flip permutation test over users
(each user's validation NDCG@10 difference averaged over the seeds first, because users repeat
across seeds) shows no significant loss (mean difference < 0 with p < 0.05 would be one).

The baseline's 15 epochs take ~14 min per seed on 2 threads. ``--baseline-timed-seeds`` picks the
seeds whose baseline is trained (and timed) with ``--threads`` one run at a time (the timing ratio
comes from those); the baseline of every other seed is trained first, all at once, one thread each
(``--untimed-jobs`` at a time), and only its validation is used: labelled so. The same seed gives the
same numbers on one and two threads for this SASRec (README "Against RecBole"). Finished untimed
baseline runs under bench/.cache/sasrec_speed are reused; timed runs always train afresh.
``--candidate-untimed`` trains the candidate the same untimed way (for the non-inferiority check alone,
on a machine that is not idle: no time or ratio is reported then).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.config import load_config  # noqa: E402
from ur4rec.data import load_prepared  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.evaluation.statistics import paired_permutation_test  # noqa: E402
from ur4rec.io import atomic_write_json  # noqa: E402
from ur4rec.models.sasrec import SASRec  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "sasrec_speed"


def worktree(commit: str) -> Path:
    """A detached git worktree of ``commit`` (created once)."""
    path = ROOT / "bench" / ".cache" / f"baseline-{commit}"
    if not (path / "ur4rec").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def train_command(code: Path, run_dir: Path, seed: int, threads: int) -> tuple[list[str], dict[str, str]]:
    """``ur4rec train`` of pretrain_sasrec alone with the package in ``code``: (argv, environment)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(code),
                        "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ur4rec.cli", "train", "--set", "stages=[pretrain_sasrec]", "--set", f"seed={seed}",
           "--set", f"data_dir={ROOT / 'data'}", "--run-dir", str(run_dir), "--json"]
    return cmd, env


def train(code: Path, run_dir: Path, seed: int, threads: int, reuse: bool = False) -> dict:
    """Train (or, with ``reuse``, take the finished run in ``run_dir``); ``ur4rec train --json``'s result."""
    done = run_dir / "result.json"
    if reuse and done.is_file():
        return json.loads(done.read_text())
    cmd, env = train_command(code, run_dir, seed, threads)
    out = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} (in {code}) failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    atomic_write_json(done, result)
    return result


def baseline_dir(commit: str, seed: int, threads: int) -> Path:
    return CACHE / f"baseline-{commit}-seed{seed}-threads{threads}"


def candidate_dir(seed: int, untimed: bool) -> Path:
    return CACHE / (f"candidate-seed{seed}-untimed" if untimed else f"candidate-seed{seed}")


def train_untimed(code: Path, commit: str, seeds: list[int], jobs: int, candidate_seeds: list[int] = ()) -> None:
    """The baseline of ``seeds`` (and this checkout's runs of ``candidate_seeds``), ``jobs`` runs at a time,
    one thread each (their times are not used; finished baseline runs are reused: the baseline's code is
    fixed by its commit; candidate runs are trained afresh, the checkout's code may have changed)."""
    tasks = [(code, baseline_dir(commit, s, 1), s, True) for s in seeds]
    tasks += [(ROOT, candidate_dir(s, True), s, False) for s in candidate_seeds]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda t: train(t[0], t[1], t[2], 1, reuse=t[3]), tasks))


def per_user_ndcg(run_dir: Path, data) -> dict[str, np.ndarray]:
    """Validation and test NDCG@10 per user of the run's best pretrain_sasrec checkpoint, each history cut
    to the run's own ``max_seq_len``."""
    payload = torch.load(run_dir / "best-pretrain_sasrec.pt", map_location="cpu", weights_only=False)
    saved = payload["config"]
    model = SASRec(data.num_items, saved["sasrec_hidden_dim"], saved["sasrec_num_blocks"], saved["sasrec_num_heads"],
                   saved["sasrec_dropout"], saved["max_seq_len"], positions=saved.get("sasrec_positions", "from_end"),
                   upper_window=saved.get("sasrec_upper_window"))
    model.load_state_dict({k.removeprefix("sasrec."): v for k, v in payload["model"].items()
                           if k.startswith("sasrec.")})
    model.eval()
    out = {}
    with torch.no_grad():
        for split in ("valid", "test"):
            # each run's own context length: the two defaults need not share it
            res = evaluate_full_ranking(lambda u, seq: model.full_sort_predict(seq), data, split, saved["max_seq_len"],
                                        ks=[10])
            out[split] = res.per_user["ndcg@10"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[2023, 2024, 2025])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-commit", default="8d3b46c")
    ap.add_argument("--baseline-timed-seeds", type=int, nargs="*", default=None,
                    help="seeds whose baseline is trained (and timed) here (default: all of --seeds)")
    ap.add_argument("--untimed-jobs", type=int, default=2, help="untimed baseline runs at once (one thread each)")
    ap.add_argument("--margin", type=float, default=0.0015)
    ap.add_argument("--candidate-untimed", action="store_true",
                    help="train the candidate untimed too (one thread each, --untimed-jobs at once): accuracy only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    timed = args.seeds if args.baseline_timed_seeds is None else args.baseline_timed_seeds
    cfg = load_config()
    data = load_prepared(cfg)
    base_code = worktree(args.baseline_commit)
    train_untimed(base_code, args.baseline_commit, [s for s in args.seeds if s not in timed], args.untimed_jobs,
                  args.seeds if args.candidate_untimed else [])
    rows: dict[int, dict] = {}
    users: dict[str, list[np.ndarray]] = {"baseline": [], "candidate": []}
    for seed in args.seeds:
        row: dict = {}
        for side in ("baseline", "candidate"):
            run_dir = candidate_dir(seed, args.candidate_untimed)
            if side == "baseline" and seed not in timed:
                run_dir = baseline_dir(args.baseline_commit, seed, 1)
                seconds, source = None, "trained here on 1 thread beside another run, not timed"
            elif side == "baseline":  # timed: trained afresh
                run_dir = baseline_dir(args.baseline_commit, seed, args.threads)
                result = train(base_code, run_dir, seed, args.threads)
                seconds, source = result["stages"][0]["seconds"], f"trained here, {args.threads} threads"
            elif args.candidate_untimed:
                seconds, source = None, "trained here on 1 thread beside other runs, not timed"
            else:
                result = train(ROOT, run_dir, seed, args.threads)
                seconds, source = result["stages"][0]["seconds"], f"trained here, {args.threads} threads"
            ndcg = per_user_ndcg(run_dir, data)
            users[side].append(ndcg["valid"])
            row[side] = {"seconds": seconds, "valid_ndcg@10": float(ndcg["valid"].mean()),
                         "test_ndcg@10": float(ndcg["test"].mean()), "source": source}
            print(f"seed {seed} {side}: {row[side]}", file=sys.stderr, flush=True)
        if row["baseline"]["seconds"]:
            row["speedup"] = row["baseline"]["seconds"] / row["candidate"]["seconds"]
        rows[seed] = row
    mean = {side: statistics.mean(rows[s][side]["valid_ndcg@10"] for s in args.seeds) for side in users}
    test = paired_permutation_test(np.mean(users["candidate"], axis=0), np.mean(users["baseline"], axis=0))
    significant_loss = test["mean_difference"] < 0 and test["p_value"] < 0.05
    ok = mean["candidate"] >= mean["baseline"] - args.margin and not significant_loss
    speedups = [r["speedup"] for r in rows.values() if "speedup" in r]
    # the config the candidate runs were trained with (the checkout may have changed since, when untimed)
    cand_cfg = torch.load(candidate_dir(args.seeds[0], args.candidate_untimed) / "best-pretrain_sasrec.pt",
                          map_location="cpu", weights_only=False)["config"]
    cand_s = [r["candidate"]["seconds"] for r in rows.values() if r["candidate"]["seconds"]]
    result = {"benchmark": "pretrain_sasrec alone: default config vs an earlier commit's default",
              "baseline_commit": args.baseline_commit, "threads": args.threads, "seeds": args.seeds,
              "per_seed": rows, "mean_valid_ndcg@10": mean, "margin": args.margin, "paired_test_valid": test,
              "non_inferior": ok, "candidate_seconds_max": max(cand_s) if cand_s else None,
              "speedup_min": min(speedups) if speedups else None}
    md = [f"# pretrain_sasrec: this checkout's default vs commit {args.baseline_commit}'s default", "",
          f"Seeds {', '.join(map(str, args.seeds))} (no choice was tuned on them), "
          + ("one torch thread per run, several at once (untimed). " if args.candidate_untimed else
             f"{args.threads} torch threads, one run at a time. ")
          + f"Candidate runs: max_seq_len {cand_cfg['max_seq_len']}, sasrec_upper_window "
          f"{cand_cfg.get('sasrec_upper_window')}, sasrec_precision {cand_cfg.get('sasrec_precision', 'fp32')}. "
          "Seconds = `StageResult.seconds` (training plus per-epoch validation). "
          "NDCG@10 of the best "
          "validation checkpoint, full ranking, known items excluded; test is reported, not used. "
          "`python bench/sasrec_speed.py`.", "",
          "| seed | baseline s | candidate s | speed-up | baseline valid | candidate valid | baseline test | "
          "candidate test |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for seed, r in rows.items():
        b, c = r["baseline"], r["candidate"]
        bs = f"{b['seconds']:.0f}" if b["seconds"] else "not timed here"
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "—"
        cs = f"{c['seconds']:.0f}" if c["seconds"] else "not timed here"
        md.append(f"| {seed} | {bs} | {cs} | {sp} | {b['valid_ndcg@10']:.4f} "
                  f"| {c['valid_ndcg@10']:.4f} "
                  f"| {b['test_ndcg@10']:.4f} | {c['test_ndcg@10']:.4f} |")
    md += ["", f"Mean validation NDCG@10: baseline {mean['baseline']:.4f}, candidate {mean['candidate']:.4f} "
           f"(non-inferiority needs >= {mean['baseline'] - args.margin:.4f}). Paired test over "
           f"{test['users']} users (per-user difference averaged over seeds): {test['mean_difference']:+.4f}, "
           f"p = {test['p_value']:.3f}. Non-inferior: **{'yes' if ok else 'no'}**.", ""]
    for seed, r in rows.items():
        for side in ("baseline", "candidate"):
            if not r[side]["seconds"]:
                md.append(f"Seed {seed}'s {side}: {r[side]['source']}.")
    publish("sasrec_speed", result, md, args.json)


if __name__ == "__main__":
    main()
