"""One pretrain_sasrec optimizer step: this checkout's SASRec against an earlier commit's, same process.

    python bench/sasrec_step.py [--baseline-commit 8d3b46c] [--threads 2 1] [--steps 40] [--json]

Both models are built from the default config's dimensions and step over the default's samples
(``sasrec_sampling``, ``sasrec_prefix_group``, ``sasrec_batch_size``): CE loss, backward, gradient
clipping, AdamW. The baseline's ``ur4rec/models/sasrec.py`` is read from ``git show`` of the commit
and imported as a module of its own, so the two differ only in that file (dropout, attention, the
last-k pass). This checkout runs twice: as the default config builds it (``sasrec_upper_window``,
``sasrec_precision``: bf16 autocast as the trainer does) and with the whole context in every block in
fp32, the baseline's model and arithmetic (what the kernels alone gained). Steps alternate between the
three in rounds of 5 after 5 warm-up steps each, so a slow moment of the machine costs each. Reported:
median ms per step over the rounds and the ratios. An epoch = steps per epoch x that time (validation
not included). The process's malloc keeps freed memory for reuse, as training's does
(``ur4rec.devices.keep_freed_memory``), for all three models alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.config import load_config  # noqa: E402
from ur4rec.data import load_prepared  # noqa: E402
from ur4rec.data.batching import training_prefixes, training_windows  # noqa: E402
from ur4rec.devices import keep_freed_memory  # noqa: E402
from ur4rec.models import sasrec as current  # noqa: E402


def module_at(commit: str, folder: Path):
    """``ur4rec/models/sasrec.py`` as it was at ``commit``, imported under another name."""
    source = subprocess.run(["git", "show", f"{commit}:ur4rec/models/sasrec.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = folder / f"sasrec_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"sasrec_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-commit", default="8d3b46c")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per model and thread count")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()  # as build_workspace does for every run
    cfg = load_config()
    data = load_prepared(cfg)
    train = data.train_sequences()
    k = cfg.sasrec_prefix_group if cfg.sasrec_sampling == "prefixes" else None
    if k:
        inputs, targets, _ = training_prefixes(train, cfg.max_seq_len, k)
    else:
        inputs, targets, _ = training_windows(train, cfg.max_seq_len, cfg.train_window_stride)
    if k not in (None, 1):
        raise SystemExit(f"commit {args.baseline_commit}'s SASRec may have no last_k pass: run with group 1")
    bs = cfg.sasrec_batch_size or cfg.batch_size
    steps_per_epoch = -(-len(inputs) // bs)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = module_at(args.baseline_commit, Path(tmp))
    dims = (data.num_items, cfg.sasrec_hidden_dim, cfg.sasrec_num_blocks, cfg.sasrec_num_heads, cfg.sasrec_dropout,
            cfg.max_seq_len)
    result = {"benchmark": "one pretrain_sasrec optimizer step, this checkout vs an earlier commit's SASRec",
              "baseline_commit": args.baseline_commit, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "samples_per_step": bs,
              "steps_per_epoch": steps_per_epoch, "by_threads": {}}
    md = [f"# One pretrain_sasrec step: this checkout's SASRec vs commit {args.baseline_commit}'s", "",
          f"Default config's samples ({cfg.sasrec_sampling}, {bs} per step, {steps_per_epoch} steps per epoch), CE, "
          "backward, clipping, AdamW; the three models alternate in rounds of 5 steps in one process. "
          "`python bench/sasrec_step.py`.", "",
          f"The default: sasrec_upper_window {cfg.sasrec_upper_window}, sasrec_precision {cfg.sasrec_precision}.", "",
          "| threads | baseline ms/step | this checkout, whole context, fp32 | speed-up | the default | speed-up "
          "| epoch (training only), baseline → default |", "|---:|---:|---:|---:|---:|---:|---|"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = {}
        for name in ("baseline", "whole context fp32", "default"):
            torch.manual_seed(0)
            model = (baseline.SASRec(*dims) if name == "baseline" else current.SASRec(
                *dims, upper_window=cfg.sasrec_upper_window if name == "default" else None)).train()
            runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=cfg.sasrec_lr), [])
        bf16 = {"default": cfg.sasrec_precision == "bf16"}
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))

        def step(name: str, n: int) -> None:
            model, opt, _ = runs[name]
            i = order[(n * bs) % len(order):][:bs]
            # windows: every position; one prefix per target: the last-position pass both commits have
            extra = {} if k is None else {"last_only": True} if k == 1 else {"last_k": k}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16.get(name, False)):  # sasrec_precision
                loss = model.calculate_loss(inputs[i], targets[i], "ce", **extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()

        n = 0
        for name in runs:
            for _ in range(5):
                step(name, n)
                n += 1
        for _ in range(args.steps // 5):
            for name in runs:
                t0 = time.perf_counter()
                for _ in range(5):
                    step(name, n)
                    n += 1
                runs[name][2].append((time.perf_counter() - t0) / 5 * 1000)
        ms = {name: statistics.median(r[2]) for name, r in runs.items()}
        ratio, ratio_default = ms["baseline"] / ms["whole context fp32"], ms["baseline"] / ms["default"]
        result["by_threads"][str(threads)] = {"ms_per_step": ms, "speedup_whole_context_fp32": ratio,
                                              "speedup_default": ratio_default,
                                              "epoch_s": {n_: v * steps_per_epoch / 1000 for n_, v in ms.items()}}
        epoch = result["by_threads"][str(threads)]["epoch_s"]
        md.append(f"| {threads} | {ms['baseline']:.1f} | {ms['whole context fp32']:.1f} | {ratio:.2f}x | "
                  f"{ms['default']:.1f} | {ratio_default:.2f}x | {epoch['baseline']:.1f} s → "
                  f"{epoch['default']:.1f} s |")
    publish("sasrec_step", result, md + [""], args.json)


if __name__ == "__main__":
    main()
