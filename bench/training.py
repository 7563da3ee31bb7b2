"""SASRec training speed: UR4Rec Workbench vs RecBole 1.2.1, same settings, same CPU, one run.

    python bench/training.py [--threads 2 1] [--recbole-epochs 12] [--config YAML] [--json]

Both sides: ML-100K, all interactions, leave-one-out by time, hidden 64, 2 layers, 2 heads,
dropout 0.2, CE loss over the catalogue, Adam(W) 1e-3. Four trainers, each at every ``--threads``
count (1 thread is how parallel seed sweeps run, one per core):

- **workbench default**: the default config's ``pretrain_sasrec``, trained by ``JointTrainer``
  exactly as ``ur4rec train`` trains it (one prefix sample per target, ``sasrec_batch_size`` per
  step, warmup + cosine LR, clipping, early stopping on the workbench's validation), all its epochs;
  its context (``max_seq_len``, ``sasrec_upper_window``) and precision (``sasrec_precision``) are the
  default's, which need not be RecBole's: its time to a validation quality compares like with like,
  its throughput does not;
- **workbench, RecBole's settings** (``max_seq_len`` 50 in every block, fp32, as RecBole runs), one
  epoch: the throughput at the same settings;
- **workbench, grouped prefixes** (``sasrec_prefix_group: 4``, 64 per step, ~256 targets), one
  epoch, for its throughput;
- **RecBole 1.2.1**: its SASRec with its own sampling (256 prefixes per step), in its own
  environment (``.bench-venv``, ``make bench-env``), ``--recbole-epochs`` epochs (constant learning
  rate, so its first k epochs are those of a longer run; 12 epochs take ~16 min on two threads).

Reported: throughput (training targets per second of training) and its ratio to RecBole's; the wall
time (training + validation) to the default's validation quality, for the default and for RecBole,
and their ratio. The quality is the default's best validation NDCG@10 in this run, on RecBole's
protocol: RecBole's validation ranks the user's known items too, so each workbench epoch is also
validated that way (its time is not counted; the workbench's own protocol, known items excluded,
which early stopping uses, is reported beside). RecBole's time is read off its own per-epoch
validation: the first epoch at or above the quality (RecBole runs after the default and stops there),
or "not reached" in ``--recbole-epochs``. Finally
a profile of one default training step: each part timed alone on the step's shapes (attention,
feed-forward, dropout masks, CE, optimizer, data); "other" is the step minus their sum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from ur4rec.config import Config, load_config  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.evaluation.scoring import validation_metric  # noqa: E402
from ur4rec.models.dropout import dropout_mask  # noqa: E402
from ur4rec.training.run import build_workspace  # noqa: E402
from ur4rec.training.seeding import generator, seed_everything  # noqa: E402
from ur4rec.training.trainer import JointTrainer  # noqa: E402

#: One epoch of the grouped-prefix option for its throughput: one pass per 4 consecutive targets of a
#: user, 64 passes (~256 targets) per step; it trains worse (README "SASRec speed").
GROUPED = {"sasrec_sampling": "prefixes", "sasrec_prefix_group": 4, "sasrec_batch_size": 64}
#: RecBole's run (bench/recbole_sasrec.py): the last 50 items in every block, fp32.
RECBOLE_SETTINGS = {"max_seq_len": 50, "sasrec_upper_window": None, "sasrec_precision": "fp32"}


def workbench(cfg: Config, max_epochs: int | None = None) -> dict:
    """pretrain_sasrec alone, as ``ur4rec train`` runs it, with every epoch's validation on both protocols."""
    cfg = cfg.model_copy(update={"stages": ["pretrain_sasrec"]})
    ws = build_workspace(cfg)
    # per epoch: (NDCG@10 with known items ranked, its seconds, seconds of the trainer's own validation)
    validations: list[tuple[float, float, float]] = []

    def evaluate(model, stage: str) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            ndcg = evaluate_full_ranking(lambda u, seq: model.sasrec.full_sort_predict(seq), ws.data, "valid",
                                         cfg.max_seq_len, ks=[10], exclude_known=False).summary["ndcg@10"]
        t1 = time.perf_counter()
        own = validation_metric(model, ws.data, cfg, stage)  # the trainer's own choice, as in `ur4rec train`
        validations.append((ndcg, t1 - t0, time.perf_counter() - t1))
        return own

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = JointTrainer(ws.model, ws.data, cfg, run_dir, evaluate=evaluate, progress=False)
        inputs, targets, _, _ = trainer.samples("pretrain_sasrec")
        result = trainer.fit(max_epochs=max_epochs)
    records, wall = [], 0.0
    for row, (ndcg, extra_s, own_s) in zip(trainer.history, validations):
        wall += row["seconds"] - extra_s  # training + the trainer's own validation
        records.append({"epoch": row["epoch"], "wall_s": round(wall, 2), "valid_ndcg@10": ndcg,
                        "valid_ndcg@10_known_excluded": row["valid_ndcg@10"],
                        "train_s": round(row["seconds"] - extra_s - own_s, 2), "validation_s": round(own_s, 2)})
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    return {"sampling": cfg.sasrec_sampling, "prefix_group": cfg.sasrec_prefix_group,
            "batch_size": trainer.batch_size("pretrain_sasrec"),
            "training_samples": len(inputs), "training_targets": int((targets != 0).sum()),
            # StageResult.seconds less this bench's extra (RecBole-protocol) validation
            "stage_seconds": records[-1]["wall_s"] if result.complete else None, "epochs": records}


def recbole(epochs: int, threads: int, venv: Path, stop_at: float | None = None) -> dict:
    """RecBole's run (bench/recbole_sasrec.py) in its venv; with ``stop_at``, it stops after the first
    epoch whose validation NDCG@10 reaches it."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} missing: run `make bench-env` first (RecBole needs its own environment)")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONPATH="", OMP_NUM_THREADS=str(threads))
    out = subprocess.run([str(py), str(ROOT / "bench" / "recbole_sasrec.py"), str(epochs), str(threads),
                          *([] if stop_at is None else [repr(stop_at)])],
                         capture_output=True, text=True, env=env, cwd="/tmp")
    if out.returncode != 0:
        raise SystemExit(f"RecBole run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ms(fn, repeat: int = 10) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000


def step_profile(cfg: Config, steps: int = 30) -> dict:
    """Milliseconds of one default pretrain_sasrec step and of its parts, each timed alone on its shapes."""
    cfg = cfg.model_copy(update={"stages": ["pretrain_sasrec"]})
    ws = build_workspace(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = JointTrainer(ws.model, ws.data, cfg, run_dir, evaluate=lambda m, s: 0.0, progress=False)
    model = ws.model.sasrec.train()
    opt = trainer.sasrec_opt
    inputs, targets, _, _ = trainer.samples("pretrain_sasrec")
    bs = trainer.batch_size("pretrain_sasrec")
    prefixes = cfg.sasrec_sampling == "prefixes"
    last_k = cfg.sasrec_prefix_group if prefixes else None  # windows: every position has a target
    seed_everything(cfg.seed, "bench-profile")
    # the trainer's precision (sasrec_precision: bf16 autocasts SASRec's loss, fp32 weights and optimizer)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.sasrec_precision == "bf16")
    order = torch.randperm(len(inputs), generator=generator(cfg.seed, "bench-profile", 0))
    t_data = t_loss = t_opt = 0.0
    for n in range(steps + 3):
        t0 = time.perf_counter()
        i = order[n * bs:(n + 1) * bs]
        seq, tgt = inputs[i], targets[i]
        t1 = time.perf_counter()
        with autocast:
            loss = model.calculate_loss(seq, tgt, "ce", last_k=last_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        t3 = time.perf_counter()
        if n >= 3:  # warm-up steps are not timed
            t_data, t_loss, t_opt = t_data + t1 - t0, t_loss + t2 - t1, t_opt + t3 - t2
    b, length, h = bs, cfg.max_seq_len, cfg.sasrec_hidden_dim
    heads, p = cfg.sasrec_num_heads, cfg.sasrec_dropout
    x = torch.randn(b, length, h, requires_grad=True)
    # each block's rows (queries, feed-forward) and keys, as the model's own pass computes them
    rows = model.rows_needed(length, last_k)
    keys = [length, *rows[:-1]]
    masks_ = model.block_masks(inputs[order[:bs]])

    def attention(i: int) -> None:  # block i's attention: its rows' queries over its keys, out-projection
        with autocast:
            out = model.blocks[i].attention(x[:, -keys[i]:], masks_[i][..., -keys[i]:, -keys[i]:],
                                            rows[i] if rows[i] < keys[i] else None).float().sum()
        out.backward()

    def ffn(i: int) -> None:
        block = model.blocks[i]
        with autocast:
            out = block.ffn(block.ln_ffn(x[:, -rows[i]:])).float().sum()
        out.backward()

    def masks() -> None:  # every dropout mask of one step: embeddings, then per block 4 (attention probs incl.)
        dropout_mask((b, length, h), p, torch.float32)
        for r, kk in zip(rows, keys):
            dropout_mask((b, heads, r, kk), p, torch.float32)
            dropout_mask((b, r, h), p, torch.float32)
            dropout_mask((b, r, 4 * h), p, torch.float32)
            dropout_mask((b, r, h), p, torch.float32)

    n_targets = int((targets[order[:bs]] != 0).sum())
    hidden = torch.randn(n_targets, h, requires_grad=True)
    labels = torch.randint(1, ws.data.num_items + 1, (n_targets,))

    def cross_entropy() -> None:
        with autocast:
            logits = hidden @ model.item_embedding.weight.T
            loss = F.cross_entropy(logits.masked_fill(torch.arange(logits.shape[1]) == 0, float("-inf")), labels)
        loss.backward()

    blocks = range(len(model.blocks))
    parts = {"attention (fwd+bwd, all blocks)": sum(_ms(lambda i=i: attention(i)) for i in blocks),
             "feed-forward (fwd+bwd, all blocks)": sum(_ms(lambda i=i: ffn(i)) for i in blocks),
             "dropout masks": _ms(masks), "cross-entropy over the catalogue (fwd+bwd)": _ms(cross_entropy),
             "optimizer (clip + AdamW)": t_opt / steps * 1000, "data (batch indexing)": t_data / steps * 1000}
    step_ms = (t_data + t_loss + t_opt) / steps * 1000
    parts["other (embeddings, LayerNorms, residuals, autograd)"] = step_ms - sum(parts.values())
    return {"samples_per_step": bs, "targets_per_step": n_targets, "step_ms": step_ms,
            "parts_ms": {name: round(v, 2) for name, v in parts.items()}}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(cfg: Config, threads_list: list[int], recbole_epochs: int, venv: Path) -> dict:
    """Every trainer at every thread count, and the step profile: the result JSON."""
    result = {"benchmark": "SASRec training, ML-100K, CE, hidden 64, 2 layers, 2 heads",
              "default": {"max_seq_len": cfg.max_seq_len, "sasrec_upper_window": cfg.sasrec_upper_window,
                          "sasrec_precision": cfg.sasrec_precision},
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "target": "the default's best validation NDCG@10 in the same run (per thread count)",
              "validation_protocol": "RecBole's (known items ranked too) on both sides for the time-to-target",
              "threads": threads_list, "by_threads": {}}
    for threads in threads_list:
        torch.set_num_threads(threads)
        runs = {"default": workbench(cfg),
                "RecBole's settings": workbench(cfg.model_copy(update=RECBOLE_SETTINGS), 1),
                "grouped prefixes": workbench(cfg.model_copy(update=GROUPED), 1)}
        target = max(e["valid_ndcg@10"] for e in runs["default"]["epochs"])  # the default's quality
        rb = recbole(recbole_epochs, threads, venv, stop_at=target)
        rb_train = median([e["train_s"] for e in rb["epochs"]])
        rb_tput = rb["training_sequences"] / rb_train
        rb_reached = next((e for e in rb["epochs"] if e["valid_ndcg@10"] >= target), None)
        rb_to_target = rb_reached["wall_s"] if rb_reached else None
        row = {"target_valid_ndcg@10": target,
               "recbole": {"s_per_epoch": rb_train, "targets_per_s": rb_tput, "time_to_target_s": rb_to_target,
                           "epochs_to_target": rb_reached["epoch"] + 1 if rb_reached else None,
                           "best_valid_ndcg@10": max(e["valid_ndcg@10"] for e in rb["epochs"]),
                           "epochs": rb["epochs"]}}
        for name, run in runs.items():
            s_epoch = median([e["train_s"] for e in run["epochs"]])
            tput = run["training_targets"] / s_epoch
            reached = next((e for e in run["epochs"] if e["valid_ndcg@10"] >= target), None)
            to_target = reached["wall_s"] if reached else None
            row[name] = {"s_per_epoch": s_epoch, "targets_per_s": tput, "throughput_vs_recbole": tput / rb_tput,
                         "time_to_target_s": to_target, "epochs_to_target": reached["epoch"] + 1 if reached else None,
                         "time_to_target_vs_recbole": rb_to_target / to_target if to_target and rb_to_target
                         else None,
                         "best_valid_ndcg@10": max(e["valid_ndcg@10"] for e in run["epochs"]),
                         "best_valid_ndcg@10_known_excluded": max(e["valid_ndcg@10_known_excluded"]
                                                                  for e in run["epochs"]), **run}
        row["step_profile"] = step_profile(cfg)
        result["by_threads"][str(threads)] = row
    return result


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def render(result: dict) -> list[str]:
    """The markdown table of a result JSON (``measure``'s)."""
    default, threads_list = result["default"], result["threads"]
    targets = ", ".join(f"{t} thread{'s' if t > 1 else ''} {result['by_threads'][str(t)]['target_valid_ndcg@10']:.4f}"
                        for t in threads_list)
    md = ["# SASRec training: UR4Rec Workbench vs RecBole 1.2.1 (same CPU, one run)", "",
          f"The default trains on the last {default['max_seq_len']} items, its upper blocks over the last "
          f"{default['sasrec_upper_window'] or default['max_seq_len']} positions (`sasrec_upper_window`), in "
          f"{default['sasrec_precision']}; RecBole and the 'RecBole's settings' row on the last 50 in every block "
          "in fp32 (the default's throughput is not at the same settings; its time to a validation quality is).", "",
          "Time to target = wall time (training + validation) to the default's validation quality: its best "
          f"validation NDCG@10 in this run on RecBole's protocol (known items ranked), {targets}; RecBole's time is "
          "read off its own per-epoch validation on that protocol. Throughput = training targets per second of "
          "training. Stage s = the default's `StageResult.seconds` (all its epochs, validation included). Best valid "
          "= the best epoch's validation NDCG@10 on the workbench's protocol (known items excluded) and on RecBole's. "
          "`python bench/training.py`.",
          "", "| threads | trainer | per step | s per epoch | targets/s | vs RecBole | time to target | vs RecBole "
          "| stage s | best valid (ours / RecBole's protocol) |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for threads in threads_list:
        row = result["by_threads"][str(threads)]
        rb = row["recbole"]
        rb_wall = rb["epochs"][-1]["wall_s"]
        rb_to = (f"{rb['time_to_target_s']:.0f} s ({_epochs(rb['epochs_to_target'])})" if rb["time_to_target_s"] else
                 f"not reached in {len(rb['epochs'])} epochs ({rb_wall:.0f} s)")
        md.append(f"| {threads} | RecBole 1.2.1 | 256 prefixes | {rb['s_per_epoch']:.1f} | {rb['targets_per_s']:.0f} "
                  f"| — | {rb_to} | — | — | — / {rb['best_valid_ndcg@10']:.4f} (where it stopped) |")
        for name in ("default", "RecBole's settings", "grouped prefixes"):
            r = row[name]
            per_step = (f"{r['batch_size']} windows" if r["sampling"] == "windows" else
                        f"{r['batch_size']} prefixes" if r["prefix_group"] == 1 else
                        f"{r['batch_size']} groups of {r['prefix_group']} targets")
            complete = r["stage_seconds"] is not None and len(r["epochs"]) > 1
            if r["time_to_target_s"]:
                ratio = (f"{r['time_to_target_vs_recbole']:.1f}x" if r["time_to_target_vs_recbole"] else
                         f"> {rb_wall / r['time_to_target_s']:.1f}x")  # RecBole not there by its last epoch
                to_target = f"{r['time_to_target_s']:.0f} s ({_epochs(r['epochs_to_target'])}) | {ratio} |"
            elif complete:
                to_target = f"not reached in {len(r['epochs'])} epochs | — |"
            else:
                to_target = "one epoch, not run to target | — |"
            stage = f"{r['stage_seconds']:.0f}" if complete else "—"
            best = (f"{r['best_valid_ndcg@10_known_excluded']:.4f} / {r['best_valid_ndcg@10']:.4f}" if complete
                    else "—")
            md.append(f"| {threads} | workbench, {name} | {per_step} | {r['s_per_epoch']:.1f} | "
                      f"{r['targets_per_s']:.0f} | {r['throughput_vs_recbole']:.1f}x | {to_target} {stage} | {best} |")
    md += ["", "s per epoch = training only, on both sides. Step profile of the default (one optimizer step; "
           "each part timed alone on the step's shapes):", "",
           "| part | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} ms" for t in threads_list) + " |",
           "|---|" + "---:|" * len(threads_list)]
    profiles = [result["by_threads"][str(t)]["step_profile"] for t in threads_list]
    for part in profiles[0]["parts_ms"]:
        md.append(f"| {part} | " + " | ".join(f"{p['parts_ms'][part]:.1f} ({p['parts_ms'][part] / p['step_ms']:.0%})"
                                               for p in profiles) + " |")
    md.append("| **step** | " + " | ".join(f"**{p['step_ms']:.1f}**" for p in profiles) + " |")
    md.append(f"\n{profiles[0]['samples_per_step']} samples, {profiles[0]['targets_per_step']} targets in the "
              "profiled step.\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--recbole-epochs", type=int, default=12,
                    help="RecBole's epochs: enough to reach the default's quality for a time to it")
    ap.add_argument("--venv", default=str(ROOT / ".bench-venv"))
    ap.add_argument("--config", default=None, help="the workbench's config (default: the default config)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite training.md from bench/results/training.json (no training)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.render_only:
        result = json.loads((ROOT / "bench" / "results" / "training.json").read_text())
    else:
        result = measure(load_config(args.config), args.threads, args.recbole_epochs, Path(args.venv))
    publish("training", result, render(result), args.json)


if __name__ == "__main__":
    main()
