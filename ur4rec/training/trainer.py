"""``JointTrainer``: staged training of UR4Rec V2 MoE.

Stages (config ``stages``), each with early stopping on validation NDCG@10 (full ranking; the
per-pair models two-stage, as in evaluation) and the best checkpoint reloaded before the next:

- ``pretrain_sasrec``: SASRec alone, next-item loss at every position of every training window.
- ``pretrain_retriever``: the retriever alone, BCE (or InfoNCE) of each training target against
  ``num_negatives`` sampled negatives.
- ``joint_finetune``: both branches, alternating optimizer steps (fixed, or adaptive: switch when
  the branch's loss stops improving by ``adaptive_switch_threshold`` after ``adaptive_min_steps``).
- ``end_to_end``: everything, fused loss + both branch losses (optionally uncertainty-weighted).

``final.pt`` holds the last stage's best checkpoint, or with ``final_model_selection: validation``
the (stage checkpoint, fusion weight) pair with the best validation NDCG@10 of the fused model if it
beats SASRec alone in a paired test over validation users, else SASRec alone
(``ur4rec.evaluation.ablations.select_final_model``): a joint stage or a text branch that does not
help on validation is not shipped.

``pretrain_sasrec`` steps over ``sasrec_batch_size`` samples (default ``batch_size``) — windows,
or with ``sasrec_sampling: prefixes`` one sample per target as RecBole trains; the other stages
over ``batch_size`` windows.

Two AdamW optimizers (``sasrec_lr`` for SASRec; ``retriever_lr`` for the retriever, fusion and
loss weights), linear warmup then cosine decay per stage, gradient clipping. A non-finite loss or
gradient stops training with an error naming stage, epoch, step, the batch's users and the first
module that produced it; ``on_nonfinite: skip`` instead skips the step, counted and reported.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ur4rec.config import Config
from ur4rec.data.batching import training_prefixes, training_windows
from ur4rec.data.dataset import PreparedData
from ur4rec.diagnostics.hooks import find_first_nonfinite
from ur4rec.errors import UR4RecError
from ur4rec.training.checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from ur4rec.training.sampling import known_matrix, sample_negatives, sample_topr_negatives
from ur4rec.training.seeding import generator, seed_everything

VALID_METRIC = "ndcg@10"


class NonFiniteTrainingError(UR4RecError):
    """Training produced NaN/Inf; the message names where and which module."""


@dataclass
class StageResult:
    stage: str
    epochs: int
    best_epoch: int
    best_metric: float
    stopped_early: bool
    seconds: float


@dataclass
class TrainResult:
    run_dir: str
    stages: list[StageResult] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0
    #: ``select_final_model``'s record when final_model_selection is "validation"
    final_selection: dict[str, Any] | None = None
    #: torch's float sums depend on the thread count: same seed, same threads -> same numbers
    environment: dict[str, Any] = field(default_factory=lambda: {"torch": torch.__version__,
                                                                 "torch_threads": torch.get_num_threads()})

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "skipped_steps": self.skipped_steps, "seconds": round(self.seconds, 2),
                "stages": [vars(s) for s in self.stages], "final_selection": self.final_selection,
                "environment": self.environment}


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class JointTrainer:
    """Trains a ``UR4RecV2MoE`` through the configured stages; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        data: PreparedData,
        cfg: Config,
        run_dir: str | Path,
        text_fingerprint: str | None = None,
        evaluate: Callable[[nn.Module, str], float] | None = None,
        progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.run_dir = Path(run_dir)
        self.fingerprint = run_fingerprint(cfg, data.fingerprint, text_fingerprint)
        self.evaluate = evaluate or self._default_evaluate
        self.progress = progress
        self.on_epoch = on_epoch
        train = data.train_sequences()
        self.known = known_matrix(train, data.num_items)
        self.inputs, self.targets, self.window_users = training_windows(train, cfg.max_seq_len,
                                                                        cfg.train_window_stride)
        self.prefixes = (training_prefixes(train, cfg.max_seq_len) if cfg.sasrec_sampling == "prefixes"
                         and "pretrain_sasrec" in cfg.stages else None)
        self.log_vars = nn.Parameter(torch.zeros(3))  # uncertainty weighting (Kendall et al.)
        self.sasrec_opt = torch.optim.AdamW(list(model.sasrec_parameters()), lr=cfg.sasrec_lr,
                                            weight_decay=cfg.weight_decay)
        self.retriever_opt = torch.optim.AdamW(
            [*model.retriever_parameters(), *model.fusion_parameters(), self.log_vars],
            lr=cfg.retriever_lr, weight_decay=cfg.weight_decay)
        self.skipped_steps = 0

    # ------------------------------------------------------------------ losses
    def sasrec_loss(self, seq: torch.Tensor, tgt: torch.Tensor, users: torch.Tensor,
                    g: torch.Generator, last_only: bool = False) -> torch.Tensor:
        """SASRec's next-item loss; ``last_only`` for prefix samples (their one target is last)."""
        neg = None
        if self.cfg.loss_type != "ce":
            neg = sample_negatives(users, tgt.shape[1], self.known, g).view_as(tgt)
        return self.model.sasrec.calculate_loss(seq, tgt, loss_type=self.cfg.loss_type, neg_items=neg,
                                                last_only=last_only)

    def candidates(self, users: torch.Tensor, seq: torch.Tensor, tgt: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """[positive, negatives...] per window for the per-pair losses.

        The positive is the window's latest target (one per window keeps the per-pair cost
        bounded). The input is the window without that target, so SASRec's top-R (for
        ``sasrec_topr`` negatives) is what the re-ranker would see for this prediction.
        """
        pos = tgt[:, -1:]
        parts = [pos]
        kind = self.cfg.retriever_negatives
        if kind in ("uniform", "mixed"):
            parts.append(sample_negatives(users, self.cfg.num_negatives, self.known, g))
        if kind in ("sasrec_topr", "mixed"):
            with torch.no_grad():
                was_training = self.model.sasrec.training
                self.model.sasrec.eval()
                scores = self.model.sasrec.full_sort_predict(seq)
                self.model.sasrec.train(was_training)
            parts.append(sample_topr_negatives(scores, users, pos, self.cfg.num_negatives, self.known,
                                               self.cfg.rerank_top_r, g))
        return torch.cat(parts, dim=1)

    def retriever_loss(self, users: torch.Tensor, seq: torch.Tensor, tgt: torch.Tensor,
                       g: torch.Generator) -> torch.Tensor:
        scores = self.model.retriever(users, self.candidates(users, seq, tgt, g))["scores"]
        return self._candidate_loss(scores)

    def fused_loss(self, users: torch.Tensor, seq: torch.Tensor, tgt: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        scores = self.model(users, seq, self.candidates(users, seq, tgt, g))["scores"]
        return self._candidate_loss(scores)

    def _candidate_loss(self, scores: torch.Tensor) -> torch.Tensor:
        """Column 0 is the positive. BCE with logits, or InfoNCE (softmax over the candidates)."""
        if self.cfg.retriever_loss == "infonce":
            return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long))
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(scores, labels)

    # ------------------------------------------------------------------ stages
    def _set_trainable(self, stage: str) -> None:
        groups = {"sasrec": list(self.model.sasrec_parameters()), "retriever": list(self.model.retriever_parameters()),
                  "fusion": list(self.model.fusion_parameters())}
        on = {"pretrain_sasrec": {"sasrec"}, "pretrain_retriever": {"retriever"},
              "joint_finetune": {"sasrec", "retriever"}, "end_to_end": {"sasrec", "retriever", "fusion"}}[stage]
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in on)
        self.log_vars.requires_grad_(stage == "end_to_end" and self.cfg.use_uncertainty_weighting)

    def _default_evaluate(self, model: nn.Module, stage: str) -> float:
        from ur4rec.evaluation.scoring import validation_metric

        return validation_metric(model, self.data, self.cfg, stage)

    def _step_losses(self, stage: str, step: int, users, seq, tgt, g,
                     alt_state: dict) -> tuple[dict[str, torch.Tensor], list]:
        """The losses of one step and the optimizers they update."""
        if stage == "pretrain_sasrec":
            last_only = self.prefixes is not None  # prefix samples: the target is in the last column only
            return {"sasrec": self.sasrec_loss(seq, tgt, users, g, last_only=last_only)}, [self.sasrec_opt]
        if stage == "pretrain_retriever":
            return {"retriever": self.retriever_loss(users, seq, tgt, g)}, [self.retriever_opt]
        if stage == "joint_finetune":
            branch = alt_state["branch"]
            if branch == "sasrec":
                return {"sasrec": self.sasrec_loss(seq, tgt, users, g)}, [self.sasrec_opt]
            return {"retriever": self.retriever_loss(users, seq, tgt, g)}, [self.retriever_opt]
        losses = {"sasrec": self.sasrec_loss(seq, tgt, users, g), "retriever": self.retriever_loss(users, seq, tgt, g),
                  "fused": self.fused_loss(users, seq, tgt, g)}
        return losses, [self.sasrec_opt, self.retriever_opt]

    def _total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if len(losses) > 1 and self.cfg.use_uncertainty_weighting:
            s = self.log_vars[: len(losses)]
            return sum(torch.exp(-si) * li + si for si, li in zip(s, losses.values()))
        return sum(losses.values())

    def _switch(self, alt_state: dict, loss: float) -> None:
        """Alternate branches in joint_finetune: every step, or adaptively on a loss plateau."""
        if not self.cfg.use_adaptive_alternating:
            alt_state["branch"] = "retriever" if alt_state["branch"] == "sasrec" else "sasrec"
            return
        alt_state["steps"] += 1
        prev = alt_state["best"]
        if prev is None or loss < prev * (1 - self.cfg.adaptive_switch_threshold):
            alt_state["best"], alt_state["stale"] = loss, 0
        else:
            alt_state["stale"] += 1
        if alt_state["steps"] >= self.cfg.adaptive_min_steps and alt_state["stale"] > 0:
            alt_state.update(branch="retriever" if alt_state["branch"] == "sasrec" else "sasrec",
                             steps=0, best=None, stale=0)

    def _nonfinite(self, what: str, stage: str, epoch: int, step: int, users: torch.Tensor, rerun: Callable) -> None:
        report = find_first_nonfinite(self.model, rerun)
        msg = (f"Non-finite {what} in stage {stage}, epoch {epoch}, step {step}; batch users "
               f"{users[:12].tolist()}{' ...' if len(users) > 12 else ''}; {report.describe()}.")
        if self.cfg.on_nonfinite == "skip":
            self.skipped_steps += 1
            tqdm.write(f"SKIPPED (on_nonfinite=skip, {self.skipped_steps} so far): {msg}")
            return
        raise NonFiniteTrainingError(msg, where=str(self.run_dir),
                                     fix="run `ur4rec doctor --run-dir` on this run; lower the learning rate; "
                                         "or set on_nonfinite: skip to skip (counted) such steps")

    def _set_lr(self, step: int, total: int) -> None:
        """Linear warmup then cosine decay, from the stage's step (so a resumed run agrees)."""
        factor = warmup_cosine(total, self.cfg.warmup_ratio)(step)
        for opt, base in ((self.sasrec_opt, self.cfg.sasrec_lr), (self.retriever_opt, self.cfg.retriever_lr)):
            for grp in opt.param_groups:
                grp["lr"] = base * factor

    def batch_size(self, stage: str) -> int:
        """Samples (windows, or prefixes in pretrain_sasrec) per optimizer step in ``stage``."""
        if stage == "pretrain_sasrec" and self.cfg.sasrec_batch_size:
            return self.cfg.sasrec_batch_size
        return self.cfg.batch_size

    def epochs(self, stage: str) -> int:
        """Epochs of ``stage`` at most (early stopping may end it sooner)."""
        if stage == "pretrain_sasrec" and self.cfg.sasrec_epochs:
            return self.cfg.sasrec_epochs
        return self.cfg.epochs_per_stage

    def samples(self, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, sequence index) that ``stage`` steps over: the windows, or in
        ``pretrain_sasrec`` with ``sasrec_sampling: prefixes`` one sample per target."""
        if stage == "pretrain_sasrec" and self.prefixes is not None:
            return self.prefixes
        return self.inputs, self.targets, self.window_users

    def _epoch(self, stage: str, stage_idx: int, epoch: int, total_steps: int, global_step: int,
               max_batches: int | None = None) -> tuple[dict, int]:
        cfg = self.cfg
        batch_size = self.batch_size(stage)
        seed_everything(cfg.seed, "epoch", stage_idx, epoch)
        g = generator(cfg.seed, "sampler", stage_idx, epoch)
        inputs, targets, owners = self.samples(stage)
        order = torch.randperm(len(inputs), generator=g)
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        n_batches = 0
        alt_state = {"branch": "sasrec", "steps": 0, "best": None, "stale": 0}
        bar = tqdm(range(0, len(order), batch_size), desc=f"{stage} e{epoch}", leave=False,
                   disable=not self.progress)
        grad_norms = []
        for start in bar:
            if max_batches is not None and n_batches >= max_batches:
                break  # fit(max_batches=...): a diagnostic's deliberately short run, not a skipped batch
            self._set_lr(global_step, total_steps)
            idx = order[start:start + batch_size]
            seq, tgt, users = inputs[idx], targets[idx], owners[idx]
            losses, opts = self._step_losses(stage, global_step, users, seq, tgt, g, alt_state)
            total = self._total(losses)
            step_ok = True
            if not torch.isfinite(total):
                self._nonfinite("loss", stage, epoch, global_step, users,
                                lambda: self._step_losses(stage, global_step, users, seq, tgt, g, dict(alt_state)))
                step_ok = False
            if step_ok:
                for o in opts:
                    o.zero_grad(set_to_none=True)
                total.backward()
                params = [p for o in opts for grp in o.param_groups for p in grp["params"] if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(norm):
                    bad = next(n for n, p in self.model.named_parameters()
                               if p.grad is not None and not torch.isfinite(p.grad).all())
                    self._nonfinite(f"gradient (first in parameter '{bad}')", stage, epoch, global_step, users,
                                    lambda: self._step_losses(stage, global_step, users, seq, tgt, g, dict(alt_state)))
                    step_ok = False
                else:
                    grad_norms.append(float(norm))
                    for o in opts:
                        o.step()
            global_step += 1
            n_batches += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
                counts[k] = counts.get(k, 0) + 1
            if stage == "joint_finetune":
                self._switch(alt_state, float(total.detach()))
            bar.set_postfix({k: f"{v / counts[k]:.4f}" for k, v in sums.items()}
                            | {"lr_s": f"{self.sasrec_opt.param_groups[0]['lr']:.2e}",
                               "lr_r": f"{self.retriever_opt.param_groups[0]['lr']:.2e}"})
        record = {f"loss_{k}": v / counts[k] for k, v in sums.items()}
        record["grad_norm_mean"] = sum(grad_norms) / len(grad_norms) if grad_norms else None
        return record, global_step

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, **state: Any) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "sasrec_opt": self.sasrec_opt.state_dict(),
                "retriever_opt": self.retriever_opt.state_dict(), "log_vars": self.log_vars.detach().clone(),
                "fingerprint": self.fingerprint, "config": self.cfg.to_dict(), "rng": torch.get_rng_state(),
                **state}

    def _append_history(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool = False, max_epochs: int | None = None, allow_mismatch: bool = False,
            max_batches: int | None = None) -> TrainResult:
        """Run every stage. ``resume`` continues from ``last.pt``. Stopping early (tests, diagnostics):
        ``max_epochs`` after that many epochs in all (a resumable state, as if killed); ``max_batches``
        after that many optimizer steps, inside the first epoch if it has more."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(self.run_dir)
        t0 = time.perf_counter()
        result = TrainResult(str(self.run_dir))
        start_stage, start_epoch, state = 0, 0, {}
        if resume and (self.run_dir / "last.pt").is_file():
            ck = load_checkpoint(self.run_dir / "last.pt", self.fingerprint, allow_mismatch=allow_mismatch)
            self._restore(ck)
            start_stage, start_epoch, state = ck["stage_idx"], ck["epoch"] + 1, ck["stage_state"]
            result.stages = [StageResult(**s) for s in ck["finished"]]
            self.skipped_steps = ck.get("skipped_steps", 0)
            self._truncate_history(ck["history_lines"])
        elif not resume and (self.run_dir / "history.jsonl").exists():
            (self.run_dir / "history.jsonl").unlink()
        epochs_done = batches_done = 0
        for stage_idx in range(start_stage, len(cfg.stages)):
            stage = cfg.stages[stage_idx]
            self._set_trainable(stage)
            n_batches = math.ceil(len(self.samples(stage)[0]) / self.batch_size(stage))
            n_epochs = self.epochs(stage)
            total = n_batches * n_epochs
            if stage_idx == start_stage and state:
                best, best_epoch, bad_epochs, stage_t = state["best"], state["best_epoch"], state["bad"], state["t"]
                epoch0 = start_epoch
            else:
                best, best_epoch, bad_epochs, stage_t, epoch0 = -1.0, -1, 0, 0.0, 0
            step = epoch0 * n_batches
            stopped = False
            for epoch in range(epoch0, n_epochs):
                te = time.perf_counter()
                left = None if max_batches is None else max_batches - batches_done
                step_before = step
                record, step = self._epoch(stage, stage_idx, epoch, total, step, max_batches=left)
                batches_done += step - step_before
                metric = self.evaluate(self.model, stage)
                seconds = time.perf_counter() - te
                stage_t += seconds
                record = {"stage": stage, "epoch": epoch, "step": step, f"valid_{VALID_METRIC}": metric,
                          "lr_sasrec": self.sasrec_opt.param_groups[0]["lr"],
                          "lr_retriever": self.retriever_opt.param_groups[0]["lr"], **record,
                          "skipped_steps": self.skipped_steps, "seconds": round(seconds, 3)}
                self._append_history(record)
                if self.on_epoch:
                    self.on_epoch(record)
                if metric > best:
                    best, best_epoch, bad_epochs = metric, epoch, 0
                    save_checkpoint(self.run_dir / f"best-{stage}.pt", self._payload(stage=stage, epoch=epoch,
                                                                                       metric=metric))
                else:
                    bad_epochs += 1
                stopped = bad_epochs >= cfg.patience
                last_epoch = n_epochs - 1 if stopped else epoch
                stage_state = {"best": best, "best_epoch": best_epoch,
                               "bad": bad_epochs, "t": stage_t}
                save_checkpoint(self.run_dir / "last.pt", self._payload(
                    stage_idx=stage_idx, epoch=last_epoch, stage_state=stage_state,
                    finished=[vars(s) for s in result.stages], skipped_steps=self.skipped_steps,
                    history_lines=self._history_lines()))
                epochs_done += 1
                if stopped:
                    break
                if max_epochs is not None and epochs_done >= max_epochs:
                    return result
                if max_batches is not None and batches_done >= max_batches:
                    return result
            # the best epoch of this stage is what the next stage builds on
            ck = load_checkpoint(self.run_dir / f"best-{stage}.pt", self.fingerprint)
            self.model.load_state_dict(ck["model"])
            result.stages.append(StageResult(stage, epoch + 1, best_epoch, best, stopped, round(stage_t, 2)))
            state = {}
        if cfg.final_model_selection == "validation":
            from ur4rec.evaluation.ablations import select_final_model

            states = {s: load_checkpoint(self.run_dir / f"best-{s}.pt", self.fingerprint)["model"] for s in cfg.stages}
            result.final_selection = select_final_model(self.model, self.data, cfg, states)
        result.skipped_steps = self.skipped_steps
        result.seconds = time.perf_counter() - t0
        save_checkpoint(self.run_dir / "final.pt", self._payload(stage="final", result=result.to_dict()))
        return result

    def _restore(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.sasrec_opt.load_state_dict(ck["sasrec_opt"])
        self.retriever_opt.load_state_dict(ck["retriever_opt"])
        with torch.no_grad():
            self.log_vars.copy_(ck["log_vars"])

    def _history_lines(self) -> int:
        path = self.run_dir / "history.jsonl"
        return sum(1 for _ in open(path, encoding="utf-8")) if path.exists() else 0

    def _truncate_history(self, lines: int) -> None:
        """Drop history lines written after the checkpoint we resume from (an interrupted epoch)."""
        path = self.run_dir / "history.jsonl"
        if path.exists():
            kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            path.write_text("".join(kept), encoding="utf-8")
