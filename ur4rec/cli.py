"""The ``ur4rec`` command line.

Every command takes ``--config`` and ``--set key=value`` overrides, and ``--json``: then its last
stdout line is one JSON object (``{"ok": false, "error": ...}`` on failure). Errors in the user's
input print one clear message, no traceback, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ur4rec.config import load_config
from ur4rec.errors import ConfigError, UR4RecError

#: Modules that add their own subcommands with ``register(subparsers, common)``.
COMMAND_MODULES: list[str] = ["ur4rec.texts.cli"]

Handler = Callable[[argparse.Namespace], tuple[int, dict[str, Any], str]]


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", "-c", default=None, help="YAML config (default: configs/ur4rec_moe_100k.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable), e.g. --set batch_size=128")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def cmd_config_show(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    cfg = load_config(args.config, args.overrides)
    return 0, {"config": cfg.to_dict(), "hash": cfg.hash()}, cfg.to_yaml().rstrip()


def cmd_prepare(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    from ur4rec.data.prepare import prepare

    cfg = load_config(args.config, args.overrides)
    result = prepare(cfg, force=args.force)
    if result.created:
        text = (f"Prepared {cfg.dataset} from {result.source} ({result.source_format} files): {result.users} users, "
                f"{result.items} items, {result.interactions} interactions; held out {result.valid} validation and "
                f"{result.test} test items. Written to {result.path} in {result.seconds:.1f} s.")
    else:
        text = (f"Prepared data is up to date (fingerprint {result.fingerprint[:12]}, same source files and "
                f"parameters): nothing to do. {result.path}")
    return 0, result.to_dict(), text


def cmd_reports(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    from ur4rec.reports.runner import load_custom_parameters, run_reports, summarise

    custom = load_custom_parameters(args.params_file) if args.params_file else {}
    if args.config:
        custom.setdefault("config_path", args.config)
    if args.overrides:  # --set adds to (and wins over) the parameters file's overrides
        from ur4rec.config import parse_overrides

        file_overrides = custom.get("overrides") or {}
        if not isinstance(file_overrides, dict):
            file_overrides = parse_overrides([str(o) for o in file_overrides])
        custom["overrides"] = file_overrides | parse_overrides(args.overrides)
    extra = {"notebook_dir": Path(args.notebook_dir)} if args.notebook_dir else {}
    results, index = run_reports(args.profile, only=args.only, custom_parameters=custom, **extra)
    summary = summarise(results) | {"index": str(index)}
    lines = [f"{r.name:<24} {r.status:<8} {r.seconds:7.1f} s  {r.error or ''}" for r in results]
    lines.append(f"Index: {index}")
    return (0 if summary["ok"] else 1), summary, "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    from ur4rec.pipeline import train
    from ur4rec.training.distributed import DataParallel, launched

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}.", where="ur4rec train --nproc",
                          fix="--nproc 1 (one process, the default) or more")
    cfg = load_config(args.config, args.overrides)  # checked here, before any process starts
    if args.nproc > 1:
        return _train_data_parallel(cfg, args)
    parallel = DataParallel()
    if launched():  # one of the processes _train_data_parallel started
        from ur4rec.devices import resolve_device

        parallel = DataParallel.from_environment(resolve_device(cfg.device))
        args.json = args.json and parallel.is_main  # rank 0 prints the result
    try:
        result, _ = train(cfg, run_dir=args.run_dir, resume=args.resume, progress=not args.json,
                          allow_mismatch=args.allow_mismatch, parallel=parallel)
    except UR4RecError as exc:
        if launched():  # the parent prints the run's one JSON line, with rank 0's error
            from ur4rec.training.distributed import report_error

            report_error(str(exc))
            args.json = False
        raise  # the process exits and torchrun stops the others (a failed one does not wait for them)
    parallel.close()
    if not parallel.is_main:
        return 0, {}, ""
    payload = result.to_dict()
    lines = [f"{s.stage:<20} epochs {s.epochs:>3}  best valid NDCG@10 {s.best_metric:.4f} (epoch {s.best_epoch})"
             f"{'  early-stopped' if s.stopped_early else ''}  {s.seconds:.1f} s" for s in result.stages]
    if result.already_finished:
        lines.append(f"Run {result.run_dir} had already finished (its final.pt matches this config and data): "
                     "nothing to resume, nothing trained.")
    else:
        lines.append(f"Run: {result.run_dir} ({result.seconds:.1f} s)")
    return 0, payload, "\n".join(lines)


def _train_data_parallel(cfg: Any, args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    """``ur4rec train --nproc N``: the caches built here, then N processes under torchrun."""
    import torch

    from ur4rec.data.dataset import load_prepared
    from ur4rec.devices import resolve_device
    from ur4rec.texts.pipeline import load_text_embeddings
    from ur4rec.training.distributed import launch, without_option

    if resolve_device(cfg.device).type == "cuda" and torch.cuda.device_count() < args.nproc:
        raise ConfigError(f"--nproc {args.nproc} on CUDA needs a GPU per process; torch sees "
                          f"{torch.cuda.device_count()}.", where="ur4rec train --nproc",
                          fix=f"--nproc {torch.cuda.device_count()} or fewer, or device: cpu")
    # built once before the processes start (they would wait for rank 0 to build them, and each
    # would load the sentence encoder)
    load_text_embeddings(cfg, load_prepared(cfg))
    code, error = launch(args.nproc, without_option(args.argv, "--nproc"))
    if code:
        raise UR4RecError(error or f"a training process failed (exit {code}); its error is printed above.",
                          where=f"ur4rec train --nproc {args.nproc}",
                          fix="fix the error, then add --resume to continue from the last checkpoint")
    args.json = False  # rank 0 has printed the run's result (and its JSON line)
    return 0, {}, ""


def cmd_evaluate(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    from ur4rec.evaluation.evaluate import evaluate_run

    if args.seeds is not None:
        from ur4rec import seeds

        cfg = load_config(args.config, args.overrides)
        summary = seeds.run_seeds(cfg, args.seeds, args.run_dir, progress=not args.json,
                                  log=lambda m: print(m, file=sys.stderr), jobs=args.jobs)
        return 0, summary, seeds.to_markdown(summary) + f"\nWritten: {Path(args.run_dir) / 'seeds.json'}, seeds.md"
    if args.jobs != 1:
        raise ConfigError(f"--jobs {args.jobs} applies only with --seeds: one run is one process.",
                          where="ur4rec evaluate", fix="drop --jobs, or add --seeds K")
    if args.config or args.overrides:
        raise ConfigError("--config/--set apply only with --seeds: a single run is evaluated with its own config.yaml.",
                          where="ur4rec evaluate", fix="drop --config/--set, or add --seeds K")
    results = evaluate_run(args.run_dir, allow_mismatch=args.allow_mismatch)
    return 0, results.to_dict(), results.to_markdown() + f"\nWritten: {Path(args.run_dir) / 'eval.json'}, eval.md"


def cmd_doctor(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    from ur4rec.diagnostics.doctor import diagnose

    verdict = diagnose(args.run_dir, args.checkpoint, args.config)
    table = verdict.table()
    lines = [f"{'OK ' if r.ok else 'BAD'}  {r.check}: {r.detail}" for r in table.itertuples()]
    lines.append("Verdict: healthy." if verdict.healthy else "Verdict: problems found (see BAD lines).")
    return (0 if verdict.healthy else 1), verdict.to_dict(), "\n".join(lines)


def cmd_clean(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    from ur4rec.training.run import clean_run

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir)
    targets = sorted(run_dir.glob("*.pt")) if run_dir.is_dir() else []
    if not args.yes:
        if not sys.stdin.isatty():
            raise UR4RecError("Refusing to delete checkpoints without confirmation.", where="ur4rec clean",
                              fix="pass --yes")
        answer = input(f"Delete {len(targets)} checkpoint(s) in {run_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1, {"removed": []}, "Nothing deleted."
    removed = clean_run(run_dir, cfg.path("runs_dir"))
    return 0, {"removed": [str(p) for p in removed]}, f"Deleted {len(removed)} checkpoint(s) in {run_dir}."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ur4rec", description="UR4Rec Workbench command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p_config = sub.add_parser("config", help="inspect configs")
    config_sub = p_config.add_subparsers(dest="config_command", required=True)
    p_show = config_sub.add_parser("show", help="print the resolved, validated config")
    _common(p_show)
    p_show.set_defaults(handler=cmd_config_show)

    p_prep = sub.add_parser("prepare", help="prepare MovieLens-100K sequences and splits")
    _common(p_prep)
    p_prep.add_argument("--force", action="store_true", help="rebuild even if an identical output exists")
    p_prep.set_defaults(handler=cmd_prepare)

    p_train = sub.add_parser("train", help="staged joint training (JointTrainer)")
    _common(p_train)
    p_train.add_argument("--run-dir", default=None, help="run folder (default: runs/<profile>-<config hash>)")
    p_train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p_train.add_argument("--allow-mismatch", action="store_true",
                         help="resume from a checkpoint whose fingerprint differs (not recommended)")
    p_train.add_argument("--nproc", type=int, default=1, metavar="N",
                         help="data-parallel training on N processes under torchrun (gloo on the CPU, nccl on "
                              "GPUs); the global batch and learning rate stay the config's")
    p_train.set_defaults(handler=cmd_train)

    p_eval = sub.add_parser("evaluate", help="full-ranking evaluation of a run against the baselines")
    p_eval.add_argument("--run-dir", required=True,
                        help="the run to evaluate; with --seeds, the folder that receives seed-<s>/ runs")
    p_eval.add_argument("--allow-mismatch", action="store_true",
                        help="load a checkpoint despite fingerprint differences")
    p_eval.add_argument("--seeds", type=int, default=None, metavar="K",
                        help="train and evaluate K seeds (config seed, seed+1, ...) and report mean ± std")
    p_eval.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="with --seeds: train J seeds at once as separate processes, the cores divided "
                             "between them (default 1: one after another)")
    _common(p_eval, config=True)
    p_eval.set_defaults(handler=cmd_evaluate)

    p_doc = sub.add_parser("doctor", help="check a run or checkpoint for staleness, bad weights and NaN")
    p_doc.add_argument("--run-dir", default=None)
    p_doc.add_argument("--checkpoint", default=None)
    p_doc.add_argument("--config", "-c", default=None, help="the config to check against (default: the run's)")
    p_doc.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p_doc.set_defaults(handler=cmd_doctor)

    p_clean = sub.add_parser("clean", help="delete a run's checkpoints (only inside the runs directory)")
    _common(p_clean)
    p_clean.add_argument("--run-dir", required=True)
    p_clean.add_argument("--yes", action="store_true", help="do not ask")
    p_clean.set_defaults(handler=cmd_clean)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, _common)

    p_rep = sub.add_parser("reports", help="run the notebooks headless into HTML reports")
    _common(p_rep)
    p_rep.add_argument("--profile", default="full", help="quick | full (default: full)")
    p_rep.add_argument("--only", action="append", default=None, metavar="NAME",
                       help="run only this notebook (repeatable), e.g. --only 01_data_prep")
    p_rep.add_argument("-f", "--params-file", default=None, help="YAML of notebook parameters")
    p_rep.add_argument("--notebook-dir", default=None, help="folder of NN_*.ipynb (default: notebooks/)")
    p_rep.set_defaults(handler=cmd_reports)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # for commands that start themselves again (train --nproc)
    handler: Handler = args.handler
    try:
        code, payload, text = handler(args)
    except UR4RecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    if args.json:
        if text:
            print(text, file=sys.stderr)
        print(json.dumps(payload, default=str))
    elif text:
        print(text)
    return code


if __name__ == "__main__":
    code = main()
    # one of `ur4rec train --nproc`'s processes (distributed.LAUNCHED_ENV; not imported here: it loads torch)
    if "UR4REC_DATA_PARALLEL" in os.environ:
        from ur4rec.training.distributed import exit_process  # why: see there

        exit_process(code)
    sys.exit(code)
