"""pretrain_sasrec steps with glibc's default malloc and with ``keep_freed_memory``: time and page faults.

    python bench/allocator.py [--threads 2 1] [--rounds 3] [--steps 60] [--json]

The allocator is a process-wide setting, so each measurement is a child process. A child builds the
default config's SASRec and steps over the default's samples as training does (CE, backward,
clipping, AdamW; ``sasrec_precision`` bf16 autocast): 10 warm-up steps, then ``--steps`` timed ones.
It reports the median ms per step over rounds of 5 steps, minor page faults per step, and its losses.
Children alternate default / kept, ``--rounds`` times each per thread count, one at a time, so a slow
spell of the machine costs both sides. Reported: the medians over the rounds and their ratio, and
whether both sides computed the same losses bit for bit (``keep_freed_memory`` changes where memory
comes from, never a number).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.config import load_config  # noqa: E402
from ur4rec.data import load_prepared  # noqa: E402
from ur4rec.data.batching import training_prefixes  # noqa: E402
from ur4rec.devices import keep_freed_memory  # noqa: E402
from ur4rec.models.sasrec import SASRec  # noqa: E402


def child(mode: str, threads: int, steps: int) -> dict:
    """One side's measurement, in this process: ``mode`` is ``default`` or ``kept``."""
    applied = keep_freed_memory() if mode == "kept" else False
    torch.set_num_threads(threads)
    cfg = load_config()
    data = load_prepared(cfg)
    inputs, targets, _ = training_prefixes(data.train_sequences(), cfg.max_seq_len, 1)
    bs = cfg.sasrec_batch_size or cfg.batch_size
    torch.manual_seed(0)
    model = SASRec(data.num_items, cfg.sasrec_hidden_dim, cfg.sasrec_num_blocks, cfg.sasrec_num_heads,
                   cfg.sasrec_dropout, cfg.max_seq_len, upper_window=cfg.sasrec_upper_window).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sasrec_lr, weight_decay=cfg.weight_decay)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    losses: list[float] = []

    def step(n: int) -> None:
        i = order[n * bs:(n + 1) * bs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.sasrec_precision == "bf16"):
            loss = model.calculate_loss(inputs[i], targets[i], "ce", last_only=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())

    for n in range(10):
        step(n)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds = []
    for r in range(steps // 5):
        t0 = time.perf_counter()
        for n in range(10 + 5 * r, 15 + 5 * r):
            step(n)
        rounds.append((time.perf_counter() - t0) / 5 * 1000)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (5 * len(rounds))
    return {"mode": mode, "applied": applied, "ms_per_step": statistics.median(rounds), "faults_per_step": faults,
            "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--rounds", type=int, default=3, help="children per side and thread count")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per child")
    ap.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads[0], args.steps)))
        return
    result = {"benchmark": "pretrain_sasrec steps: glibc's default malloc vs keep_freed_memory, child processes",
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "steps_per_child": args.steps, "rounds": args.rounds, "by_threads": {}}
    md = ["# pretrain_sasrec steps: glibc's default malloc vs `keep_freed_memory`", "",
          f"The default config's SASRec step (256 prefixes, bf16 autocast, AdamW), {args.steps} timed steps per "
          f"child process after 10 warm-up steps; the two sides alternate, {args.rounds} children each per "
          "thread count, one at a time. ms = median over the children of each child's median per step. "
          "`python bench/allocator.py`.", "",
          "| threads | default malloc ms/step | kept ms/step | speed-up | page faults per step, default → kept "
          "| same losses |", "|---:|---:|---:|---:|---|---|"]
    for threads in args.threads:
        runs: dict[str, list[dict]] = {"default": [], "kept": []}
        for _ in range(args.rounds):
            for mode in runs:
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--threads", str(threads),
                                      "--steps", str(args.steps)], capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not all(r["applied"] for r in runs["kept"]):
            raise SystemExit("keep_freed_memory() did not apply here (not glibc): nothing to compare")
        ms = {m: statistics.median(r["ms_per_step"] for r in rs) for m, rs in runs.items()}
        faults = {m: statistics.median(r["faults_per_step"] for r in rs) for m, rs in runs.items()}
        same = len({tuple(r["losses"]) for rs in runs.values() for r in rs}) == 1
        result["by_threads"][str(threads)] = {
            "ms_per_step": ms, "speedup": ms["default"] / ms["kept"], "faults_per_step": faults,
            "same_losses": same, "children": {m: [r["ms_per_step"] for r in rs] for m, rs in runs.items()}}
        md.append(f"| {threads} | {ms['default']:.1f} | {ms['kept']:.1f} | {ms['default'] / ms['kept']:.2f}x | "
                  f"{faults['default']:.0f} → {faults['kept']:.0f} | {'yes' if same else 'NO'} |")
    publish("allocator", result, md + [""], args.json)


if __name__ == "__main__":
    main()
