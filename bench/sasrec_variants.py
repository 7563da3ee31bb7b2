"""SASRec variants against the default config, over seeds, on validation only.

    python bench/sasrec_variants.py [--seeds 3] [--jobs 2] [--variant NAME:KEY=VALUE[,KEY=VALUE...]]... [--json]

Each variant is the default config (configs/ur4rec_moe_100k.yaml) plus ``--set`` overrides, or the
default with one of bench/sasrec_patches.py's code patches (changes that are not config keys). Every
(variant, seed) trains ``pretrain_sasrec`` alone (``ur4rec train --set stages=[pretrain_sasrec]``) in
its own process on one torch thread, so ``--jobs 2`` runs two at once on two cores without
oversubscribing them. The default itself runs in the same invocation, on the same one thread, as the
baseline. Reported: the best validation NDCG@10 (full ranking) and its epoch per seed, mean ±
std over seeds, and the mean per-seed difference from the default. Test numbers are not read: a
default chosen on test would be tuned on test.

Without ``--variant`` the variants are the SASRec choices tried while closing the gap to RecBole's
SASRec (README "Against RecBole"). Most were tried on the previous default, windows sampling, so
they are built on it and compared with it ("baseline" column); the default itself (RecBole's
sampling: prefixes) is in the same table. Runs live in bench/.cache/sasrec_variants/<variant>-<seed>/
and are reused when they finished with the same resolved config (and patch); after a change to the
model or training code, delete that folder.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "sasrec_variants"
METRIC = "valid_ndcg@10"
#: The previous default: 16 windows per step (~650 targets), up to epochs_per_stage (40) epochs.
WINDOWS = {"sasrec_sampling": "windows", "sasrec_batch_size": "16", "sasrec_epochs": "null"}
WINDOWS_NAME = "windows, 16 per step, <= 40 epochs (previous default)"
#: name -> (overrides, baseline name). The default (prefixes: one sample per target, 256 per step,
#: 15 epochs, as RecBole trains) is the baseline of the table; the knobs tried before it are on windows.
DEFAULT_VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    WINDOWS_NAME: (WINDOWS, "default"),
    "lr 2e-3": (WINDOWS | {"sasrec_lr": "0.002"}, WINDOWS_NAME),
    "dropout 0.3": (WINDOWS | {"sasrec_dropout": "0.3"}, WINDOWS_NAME),
    "hidden 128": (WINDOWS | {"sasrec_hidden_dim": "128"}, WINDOWS_NAME),
    "stride 10, 80 windows per step": (WINDOWS | {"train_window_stride": "10", "sasrec_batch_size": "80"},
                                       WINDOWS_NAME),
    "no gradient clipping": (WINDOWS | {"grad_clip": "1000"}, WINDOWS_NAME),
    "batch 8": (WINDOWS | {"sasrec_batch_size": "8"}, WINDOWS_NAME),
}
# variant name -> (bench/sasrec_patches.py patch, its overrides, baseline name)
PATCH_VARIANTS: dict[str, tuple[str, dict[str, str], str]] = {
    "RecBole's architecture (patch)": ("recbole_arch", WINDOWS, WINDOWS_NAME),
    "positions from the first item (patch)": ("positions_from_start", WINDOWS, WINDOWS_NAME),
    "EMA of weights, 0.999 (patch)": ("ema", WINDOWS, WINDOWS_NAME),
}


def resolved_config(overrides: dict[str, str], seed: int) -> dict:
    """The config a (variant, seed) run trains with, as ``ur4rec train --set ...`` resolves it."""
    from ur4rec.config import load_config

    sets = ["stages=[pretrain_sasrec]", f"seed={seed}", *(f"{k}={v}" for k, v in overrides.items())]
    return load_config(None, sets).model_dump(mode="json")


def finished_with(run_dir: Path, overrides: dict[str, str], seed: int, patch: str | None) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly this config and patch (the cache key)."""
    from ur4rec.config import load_config

    done, saved = run_dir / "overrides.json", run_dir / "config.yaml"
    if not (done.is_file() and saved.is_file()):
        return False
    return (json.loads(done.read_text()).get("(patch)") == patch
            and load_config(saved).model_dump(mode="json") == resolved_config(overrides, seed))


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, sep, body = text.partition(":")
    pairs = [p for p in body.split(",") if p]
    if not sep or not name or any("=" not in p for p in pairs):
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...], e.g. 'lr:sasrec_lr=0.002'")
    return name, dict(p.split("=", 1) for p in pairs)


def run_one(name: str, overrides: dict[str, str], seed: int, patch: str | None = None) -> dict:
    """Train pretrain_sasrec for one (variant, seed) on one thread; its best validation epoch."""
    slug = "".join(c for c in name.replace(",", "").replace(" ", "_") if c.isalnum() or c in "._-")
    run_dir = CACHE / f"{slug}-{seed}"
    done = run_dir / "overrides.json"
    spec = overrides if patch is None else {**overrides, "(patch)": patch}
    if not finished_with(run_dir, overrides, seed, patch):
        done.unlink(missing_ok=True)
        sets = ["--set", "stages=[pretrain_sasrec]", "--set", f"seed={seed}"]
        for k, v in overrides.items():
            sets += ["--set", f"{k}={v}"]
        run_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(run_dir.with_suffix(".log"), "w", encoding="utf-8") as log:
            train = ([sys.executable, str(ROOT / "bench" / "sasrec_patches.py"), patch] if patch
                     else [str(Path(sys.executable).with_name("ur4rec")), "train"])
            proc = subprocess.run([*train, *sets, "--run-dir", str(run_dir), "--json"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise SystemExit(f"variant {name!r}, seed {seed}: ur4rec train failed (exit {proc.returncode}); "
                             f"see {run_dir.with_suffix('.log')}")
        done.write_text(json.dumps(spec))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: r[METRIC])  # first max: the earliest best epoch
    return {"best_valid_ndcg@10": best[METRIC], "best_epoch": best["epoch"], "epochs": len(history),
            "seconds": round(sum(r["seconds"] for r in history), 1), "torch_threads": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 2020 … 2020+K-1")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each")
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE[,KEY=VALUE...] (repeatable)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.variant:
        variants = {n: (o, "default") for n, o in map(parse_variant, args.variant)}
        patches: dict[str, str] = {}
    else:
        variants = dict(DEFAULT_VARIANTS) | {n: (o, b) for n, (_, o, b) in PATCH_VARIANTS.items()}
        patches = {n: patch for n, (patch, _, _) in PATCH_VARIANTS.items()}
    variants = {"default": ({}, "default")} | variants
    seeds = list(range(2020, 2020 + args.seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(n, s): pool.submit(run_one, n, o, s, patches.get(n))
                   for n, (o, _) in variants.items() for s in seeds}
        runs = {key: f.result() for key, f in futures.items()}
    summary = {}
    for name, (overrides, base) in variants.items():
        vals = [runs[(name, s)]["best_valid_ndcg@10"] for s in seeds]
        diffs = [v - runs[(base, s)]["best_valid_ndcg@10"] for v, s in zip(vals, seeds)]
        summary[name] = {"overrides": overrides, "patch": patches.get(name), "mean": statistics.mean(vals),
                         "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "baseline": base,
                         "mean_diff_vs_baseline": statistics.mean(diffs),
                         "per_seed": {s: runs[(name, s)] for s in seeds}}
    result = {"benchmark": "pretrain_sasrec only, best validation NDCG@10 (full ranking), one torch thread per run",
              "seeds": seeds, "variants": summary}
    md = ["# SASRec variants against the default (validation NDCG@10, full ranking)", "",
          f"pretrain_sasrec alone per variant and seed (seeds {', '.join(map(str, seeds))}), best epoch on "
          "validation; every baseline ran in the same invocation. Δ is the mean per-seed difference from the "
          "variant's baseline. Test is not looked at. `bench/sasrec_variants.py`.",
          "", "| variant | overrides | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | baseline | Δ |",
          "|---|---|" + "---:|" * (len(seeds) + 1) + "---|---:|"]
    for name, s in summary.items():
        cells = " | ".join(f"{s['per_seed'][x]['best_valid_ndcg@10']:.4f} (e{s['per_seed'][x]['best_epoch']})"
                           for x in seeds)
        # what the variant changes on its baseline (the baseline's own overrides are in its row)
        base_over = summary[s["baseline"]]["overrides"] if name != s["baseline"] else {}
        parts = [f"`{k}={v}`" for k, v in s["overrides"].items() if base_over.get(k) != v]
        parts += [f"`bench/sasrec_patches.py {s['patch']}`"] if s["patch"] else []
        over = ", ".join(parts) or "—"
        delta = "—" if name == s["baseline"] else f"{s['mean_diff_vs_baseline']:+.4f}"
        md.append(f"| {name} | {over} | {cells} | {s['mean']:.4f} ± {s['std']:.4f} | {s['baseline']} | {delta} |")
    secs = sum(r["seconds"] for r in runs.values())
    md += ["", f"(eN) = best epoch. {len(runs)} runs, {secs:.0f} s of training in all (sum of epoch times, one "
           f"thread each; up to two at once, so times are of a shared machine).", ""]
    publish("sasrec_variants", result, md, args.json)


if __name__ == "__main__":
    main()
