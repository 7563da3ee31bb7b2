"""``JointTrainer``: staged training of UR4Rec V2 MoE.

Stages (config ``stages``), each with early stopping on a validation metric (the ``evaluate``
callback: ``ur4rec.pipeline`` passes validation NDCG@10, full ranking, the per-pair models
two-stage as in evaluation) and the best checkpoint reloaded before the next:

- ``pretrain_sasrec``: SASRec alone, next-item loss at every position of every training window.
- ``pretrain_retriever``: the retriever alone, BCE (or InfoNCE) of each training target against
  ``num_negatives`` sampled negatives.
- ``joint_finetune``: both branches, alternating optimizer steps (fixed, or adaptive: switch when
  the branch's loss stops improving by ``adaptive_switch_threshold`` after ``adaptive_min_steps``).
- ``end_to_end``: everything, fused loss + both branch losses (optionally uncertainty-weighted).

The per-pair losses (retriever, fused) pass the window, the position of its positive in the user's
training sequence and ``user_memory_update=True``: the user memory is written in training, only
from training prefixes.

``pretrain_sasrec`` steps over ``sasrec_batch_size`` samples (default ``batch_size``) — windows,
or with ``sasrec_sampling: prefixes`` one sample per target as RecBole trains; the other stages
over ``batch_size`` windows.

Two AdamW optimizers (``sasrec_lr`` for SASRec; ``retriever_lr`` for the retriever, fusion and
loss weights), linear warmup then cosine decay per stage, gradient clipping. A non-finite loss or
gradient stops training with an error naming stage, epoch, step, the batch's users and the first
module that produced it; ``on_nonfinite: skip`` instead skips the step, counted and reported.

Exact resume. Every epoch ends by appending its line to ``history.jsonl`` and then writing
``last.pt``: model, optimizers, RNG and the ``Position`` (stage, next epoch, whether the stage is
done, its early-stopping state, step) with the finished stages' results, the skipped steps and the
history so far. Sampling is seeded per (stage, epoch), so ``fit(resume=True)`` continues from
``last.pt`` exactly as the uninterrupted run would have: a partly run epoch is run again, a
finished stage gets its best checkpoint reloaded, and ``history.jsonl`` is rewritten from
``last.pt`` (a line written after it is dropped). Final-model selection and ``final.pt`` are the
pipeline's (``ur4rec.pipeline.train``).

Data-parallel (``parallel``, ``ur4rec train --nproc N``): every process steps through the same epoch
order, computes its rows of each global batch, weights its loss by its share and sums gradients
with the others before clipping and the optimizer step; decisions read whole-batch numbers and rank
0 alone writes files (``ur4rec.training.distributed`` says what stays exact and what does not).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ur4rec.config import Config
from ur4rec.data.batching import (
    prefix_target_positions,
    training_prefixes,
    training_windows,
    window_target_positions,
)
from ur4rec.data.dataset import PreparedData
from ur4rec.devices import autocast_dtype, describe_device, module_device
from ur4rec.errors import UR4RecError
from ur4rec.io import atomic_write_text
from ur4rec.models.user_memory import writer_rows
from ur4rec.training.checkpoint import (
    CheckpointError,
    kill_point,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from ur4rec.training.distributed import DataParallel
from ur4rec.training.nonfinite import find_first_nonfinite
from ur4rec.training.sampling import known_matrix, sample_negatives, sample_topr_negatives
from ur4rec.training.seeding import generator, seed_everything

VALID_METRIC = "ndcg@10"

#: ``evaluate(model, stage) -> validation metric`` (higher is better), called after every epoch.
Evaluate = Callable[[nn.Module, str], float]


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
    #: every stage ran to its end (False after ``max_epochs`` / ``max_batches``: resumable)
    complete: bool = False
    #: the run had already finished (``final.pt``); this is its saved result, nothing was trained
    already_finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "skipped_steps": self.skipped_steps, "seconds": round(self.seconds, 2),
                "stages": [vars(s) for s in self.stages], "final_selection": self.final_selection,
                "environment": self.environment, "complete": self.complete,
                "already_finished": self.already_finished}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        """The inverse of ``to_dict`` (``final.pt``'s ``result``)."""
        return cls(run_dir=d["run_dir"], stages=[StageResult(**s) for s in d["stages"]],
                   skipped_steps=d["skipped_steps"], seconds=d["seconds"], final_selection=d["final_selection"],
                   environment=d["environment"], complete=d.get("complete", True),
                   already_finished=d.get("already_finished", False))


@dataclass
class Position:
    """Where training stands, saved in ``last.pt``: stage ``stage_idx`` continues at ``next_epoch``,
    or, when ``stage_done``, only its best checkpoint is still to be reloaded."""

    stage_idx: int = 0
    next_epoch: int = 0
    stage_done: bool = False
    stopped_early: bool = False
    best: float = -1.0  # early stopping: best validation metric so far, its epoch, epochs since
    best_epoch: int = -1
    bad_epochs: int = 0
    step: int = 0  # optimizer steps of this stage (the learning-rate schedule's position)
    seconds: float = 0.0  # the stage's epochs so far


@dataclass
class _Budget:
    """``fit``'s deliberate early stop (tests, diagnostics): epochs / optimizer steps in this call."""

    epochs: int | None = None
    batches: int | None = None
    epochs_done: int = 0
    batches_done: int = 0

    def batches_left(self) -> int | None:
        return None if self.batches is None else self.batches - self.batches_done

    def spent(self) -> bool:
        return ((self.epochs is not None and self.epochs_done >= self.epochs)
                or (self.batches is not None and self.batches_done >= self.batches))


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class JointTrainer:
    """Trains a ``UR4RecV2MoE`` through the configured stages; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        data: PreparedData,
        cfg: Config,
        run_dir: str | Path,
        *,
        evaluate: Evaluate,
        text_fingerprint: str | None = None,
        progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        # data-parallel processes (ur4rec.training.distributed): rank 0 writes, all compute
        self.parallel = parallel or DataParallel()
        # the model's device is the run's; batches move there, samplers and bookkeeping stay on the CPU
        self.device = module_device(model)
        self.amp = autocast_dtype(cfg.amp, self.device)
        self.run_dir = Path(run_dir)
        self.fingerprint = run_fingerprint(cfg, data.fingerprint, text_fingerprint)
        self.evaluate = evaluate
        self.progress = progress
        self.on_epoch = on_epoch
        train = data.train_sequences()
        self.known = known_matrix(train, data.num_items)
        self.inputs, self.targets, self.window_users = training_windows(train, cfg.max_seq_len,
                                                                        cfg.train_window_stride)
        self.positions = window_target_positions(train, cfg.max_seq_len, cfg.train_window_stride)
        self.sasrec_samples = None  # pretrain_sasrec's own samples, when they are prefixes
        if cfg.sasrec_sampling == "prefixes" and "pretrain_sasrec" in cfg.stages:
            group = cfg.sasrec_prefix_group
            self.sasrec_samples = (*training_prefixes(train, cfg.max_seq_len, group),
                                   prefix_target_positions(train, group))
        self.log_vars = nn.Parameter(torch.zeros(3, device=self.device))  # uncertainty weighting (Kendall et al.)
        self.sasrec_opt = torch.optim.AdamW(list(model.sasrec_parameters()), lr=cfg.sasrec_lr,
                                            weight_decay=cfg.weight_decay)
        self.retriever_opt = torch.optim.AdamW(
            [*model.retriever_parameters(), *model.fusion_parameters(), self.log_vars],
            lr=cfg.retriever_lr, weight_decay=cfg.weight_decay)
        if self.parallel.enabled:
            for stage in cfg.stages:
                self.parallel.check_batches(len(self.samples(stage)[0]), self.batch_size(stage), stage)
        self.skipped_steps = 0
        self.finished: list[StageResult] = []  # results of the stages done
        self.history: list[dict[str, Any]] = []  # history.jsonl's records
        self.elapsed = 0.0  # training seconds of earlier (interrupted) calls
        self._allow_mismatch = False

    # ------------------------------------------------------------------ losses
    def sasrec_loss(self, seq: torch.Tensor, tgt: torch.Tensor, users: torch.Tensor,
                    g: torch.Generator, last_k: int | None = None) -> torch.Tensor:
        """SASRec's next-item loss; ``last_k`` for prefix samples (their targets are in the last k columns)."""
        neg = None
        if self.cfg.loss_type != "ce":
            neg = sample_negatives(users.cpu(), tgt.shape[1], self.known, g).view_as(tgt).to(self.device)
        # sasrec_precision: bf16 autocasts SASRec alone; otherwise the step's own autocast (amp on a GPU)
        # applies unchanged (a disabled inner autocast would switch it off here)
        bf16 = self.cfg.sasrec_precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return self.model.sasrec.calculate_loss(seq, tgt, loss_type=self.cfg.loss_type, neg_items=neg,
                                                    last_k=last_k, users=users)

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
            parts.append(sample_negatives(users.cpu(), self.cfg.num_negatives, self.known, g).to(self.device))
        if kind in ("sasrec_topr", "mixed"):
            with torch.no_grad():
                was_training = self.model.sasrec.training
                self.model.sasrec.eval()
                scores = self.model.sasrec.full_sort_predict(seq)
                self.model.sasrec.train(was_training)
            parts.append(sample_topr_negatives(scores.float().cpu(), users.cpu(), pos.cpu(), self.cfg.num_negatives,
                                               self.known, self.cfg.rerank_top_r, g).to(self.device))
        return torch.cat(parts, dim=1)

    def retriever_loss(self, users: torch.Tensor, seq: torch.Tensor, tgt: torch.Tensor, pos: torch.Tensor,
                       g: torch.Generator) -> torch.Tensor:
        """``pos``: index of each window's positive in its user's training sequence (memory writes)."""
        cands = self.candidates(users, seq, tgt, g)
        scores = self.model.retriever(users, cands, input_seq=seq, target_positions=pos,
                                      user_memory_update=True)["scores"]
        return self._candidate_loss(scores)

    def fused_loss(self, users: torch.Tensor, seq: torch.Tensor, tgt: torch.Tensor, pos: torch.Tensor,
                   g: torch.Generator) -> torch.Tensor:
        cands = self.candidates(users, seq, tgt, g)
        scores = self.model(users, seq, cands, target_positions=pos, user_memory_update=True)["scores"]
        return self._candidate_loss(scores)

    def _candidate_loss(self, scores: torch.Tensor) -> torch.Tensor:
        """Column 0 is the positive. BCE with logits, or InfoNCE (softmax over the candidates)."""
        if self.cfg.retriever_loss == "infonce":
            return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
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

    def _plan(self, stage: str, alt_state: dict) -> tuple[tuple[str, ...], list]:
        """The losses a step of ``stage`` computes and the optimizers they update."""
        if stage == "pretrain_sasrec":
            return ("sasrec",), [self.sasrec_opt]
        if stage == "pretrain_retriever":
            return ("retriever",), [self.retriever_opt]
        if stage == "joint_finetune":
            branch = alt_state["branch"]
            return (branch,), [self.sasrec_opt if branch == "sasrec" else self.retriever_opt]
        return ("sasrec", "retriever", "fused"), [self.sasrec_opt, self.retriever_opt]

    def _step_losses(self, stage: str, step: int, users, seq, tgt, pos, g,
                     alt_state: dict) -> tuple[dict[str, torch.Tensor], list]:
        """The losses of one step and the optimizers they update."""
        names, opts = self._plan(stage, alt_state)
        # prefix samples (pretrain_sasrec): the targets are in the last sasrec_prefix_group columns only
        prefixes = stage == "pretrain_sasrec" and self.cfg.sasrec_sampling == "prefixes"
        last_k = self.cfg.sasrec_prefix_group if prefixes else None
        compute = {"sasrec": lambda: self.sasrec_loss(seq, tgt, users, g, last_k=last_k),
                   "retriever": lambda: self.retriever_loss(users, seq, tgt, pos, g),
                   "fused": lambda: self.fused_loss(users, seq, tgt, pos, g)}
        return {name: compute[name]() for name in names}, opts

    def _shares(self, losses: dict[str, torch.Tensor], batch_targets: torch.Tensor,
                shard_targets: torch.Tensor) -> dict[str, float] | None:
        """Data-parallel: this process's share of each loss's terms in the global batch (SASRec: its
        targets; the per-pair losses: its rows), the weight of its mean loss; None for one process."""
        if not self.parallel.enabled:
            return None
        return {name: (int((shard_targets != 0).sum()) / int((batch_targets != 0).sum()) if name == "sasrec"
                       else len(shard_targets) / len(batch_targets)) for name in losses}

    def _total(self, losses: dict[str, torch.Tensor], shares: dict[str, float] | None = None) -> torch.Tensor:
        """The step's loss; with ``shares`` (data-parallel) this process's part of it, so that the
        sum over processes is the one-process loss (and its gradient the one-process gradient)."""
        if shares is not None:
            losses = {name: loss * shares[name] for name, loss in losses.items()}
        if len(losses) > 1 and self.cfg.use_uncertainty_weighting:
            s = self.log_vars[: len(losses)]
            return sum(torch.exp(-si) * li + si / self.parallel.world for si, li in zip(s, losses.values()))
        return sum(losses.values())

    def _batch_values(self, total: torch.Tensor, losses: dict[str, torch.Tensor],
                      shares: dict[str, float] | None) -> tuple[float, dict[str, float]]:
        """The step's total and per-loss values over the whole global batch: what is logged and what
        every decision (non-finite, alternation) reads, so that all processes decide alike."""
        parts = [total.detach().float()] + [loss.detach().float() * (shares[name] if shares else 1.0)
                                            for name, loss in losses.items()]
        values = self.parallel.sum(torch.stack(parts)).tolist()
        return values[0], dict(zip(losses, values[1:]))

    def _gradients(self, opts: list) -> list[nn.Parameter]:
        """The parameters of ``opts`` that have a gradient this step; data-parallel: summed over the
        processes (a parameter counts when any process gave it one)."""
        params = [p for o in opts for grp in o.param_groups for p in grp["params"]]
        if not self.parallel.enabled:
            return [p for p in params if p.grad is not None]
        has = self.parallel.sum(torch.tensor([float(p.grad is not None) for p in params]))
        params = [p for p, h in zip(params, has.tolist()) if h > 0]
        self.parallel.all_reduce_gradients(params)
        return params

    def _merge_user_memory(self, users: torch.Tensor, positions: torch.Tensor) -> None:
        """Data-parallel: each user's memory rows after a step are those of the process that held the
        row one process would have written them from (the user's largest target position in the
        global batch ``users`` / ``positions``, ties to the first row)."""
        memory = getattr(getattr(self.model, "retriever", None), "memory", None)
        if memory is None or not self.parallel.enabled:
            return
        uniq, _, row = writer_rows(users, positions)
        owner = self.parallel.owner_of_rows(len(users))[row].to(memory.slots.device)
        uniq, pick = uniq.to(memory.slots.device), torch.arange(len(uniq), device=memory.slots.device)
        with torch.no_grad():
            memory.slots[uniq] = self.parallel.gather_rows(memory.slots[uniq])[owner, pick]
            memory.slot_pos[uniq] = self.parallel.gather_rows(memory.slot_pos[uniq])[owner, pick]

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
        # the rerun that locates the module runs in training mode: keep its memory writes and
        # score-spread updates out of the model
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        report = find_first_nonfinite(self.model, rerun)
        with torch.no_grad():
            for name, b in self.model.named_buffers():
                b.copy_(buffers[name])
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

    def samples(self, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, sequence index, position of the last target in its sequence) that
        ``stage`` steps over: the windows, or in ``pretrain_sasrec`` with ``sasrec_sampling:
        prefixes`` one sample per target."""
        if stage == "pretrain_sasrec" and self.sasrec_samples is not None:
            return self.sasrec_samples
        return self.inputs, self.targets, self.window_users, self.positions

    def _epoch(self, stage: str, stage_idx: int, epoch: int, total_steps: int, global_step: int,
               max_batches: int | None = None) -> tuple[dict, int]:
        cfg = self.cfg
        batch_size = self.batch_size(stage)
        rank = ("rank", self.parallel.rank) if self.parallel.enabled else ()  # dropout per process
        seed_everything(cfg.seed, "epoch", stage_idx, epoch, *rank)
        g = generator(cfg.seed, "sampler", stage_idx, epoch)
        inputs, targets, owners, positions = self.samples(stage)
        order = torch.randperm(len(inputs), generator=g)  # the same on every process
        if rank:  # each process its own negatives
            g = generator(cfg.seed, "sampler", stage_idx, epoch, *rank)
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
            kill_point(f"mid_epoch:{stage}:{epoch}:{n_batches}")
            self._set_lr(global_step, total_steps)
            idx = order[start:start + batch_size]
            rows = self.parallel.shard(idx)  # the global batch, or this process's rows of it
            seq, tgt, users, pos = (t.to(self.device) for t in (inputs[rows], targets[rows], owners[rows],
                                                                 positions[rows]))
            with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
                losses, opts = self._step_losses(stage, global_step, users, seq, tgt, pos, g, alt_state)
            shares = self._shares(losses, targets[idx], targets[rows])
            total = self._total(losses, shares)
            batch_total, batch_losses = self._batch_values(total, losses, shares)
            step_ok = True
            if not math.isfinite(batch_total):
                self._nonfinite("loss", stage, epoch, global_step, users,
                                lambda: self._step_losses(stage, global_step, users, seq, tgt, pos, g,
                                                          dict(alt_state)))
                step_ok = False
            if step_ok:
                for o in opts:
                    o.zero_grad(set_to_none=True)
                total.backward()
                params = self._gradients(opts)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(norm):
                    bad = next(n for n, p in self.model.named_parameters()
                               if p.grad is not None and not torch.isfinite(p.grad).all())
                    self._nonfinite(f"gradient (first in parameter '{bad}')", stage, epoch, global_step, users,
                                    lambda: self._step_losses(stage, global_step, users, seq, tgt, pos, g,
                                                              dict(alt_state)))
                    step_ok = False
                else:
                    grad_norms.append(float(norm))
                    for o in opts:
                        o.step()
            if "retriever" in losses or "fused" in losses:  # the steps that write the user memory
                self._merge_user_memory(owners[idx], positions[idx])
            global_step += 1
            n_batches += 1
            for k, v in batch_losses.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if stage == "joint_finetune":
                self._switch(alt_state, batch_total)
            bar.set_postfix({k: f"{v / counts[k]:.4f}" for k, v in sums.items()}
                            | {"lr_s": f"{self.sasrec_opt.param_groups[0]['lr']:.2e}",
                               "lr_r": f"{self.retriever_opt.param_groups[0]['lr']:.2e}"})
        record = {f"loss_{k}": v / counts[k] for k, v in sums.items()}
        record["grad_norm_mean"] = sum(grad_norms) / len(grad_norms) if grad_norms else None
        return record, global_step

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, **state: Any) -> dict[str, Any]:
        """What every checkpoint holds (model, optimizers, fingerprint, config, RNG) plus ``state``."""
        return {"model": self.model.state_dict(), "sasrec_opt": self.sasrec_opt.state_dict(),
                "retriever_opt": self.retriever_opt.state_dict(), "log_vars": self.log_vars.detach().clone(),
                "fingerprint": self.fingerprint, "config": self.cfg.to_dict(), "rng": rng_state(), **state}

    def _save_last(self, pos: Position, elapsed: float) -> None:
        if not self.parallel.is_main:
            return
        save_checkpoint(self.run_dir / "last.pt", self.checkpoint_payload(
            position=asdict(pos), finished=[asdict(s) for s in self.finished], skipped_steps=self.skipped_steps,
            history=self.history, history_lines=len(self.history), elapsed=elapsed))

    def _append_history(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.parallel.is_main:
            return
        with open(self.run_dir / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()

    def _restore(self, ck: dict[str, Any]) -> Position:
        """Continue from ``last.pt``'s payload: weights, optimizers, RNG, results, history."""
        if "position" not in ck:
            raise CheckpointError("last.pt has no resume position: it was written by an older trainer.",
                                  where=str(self.run_dir / "last.pt"),
                                  fix="train this run afresh (without --resume)")
        self.model.load_state_dict(ck["model"])
        self.sasrec_opt.load_state_dict(ck["sasrec_opt"])
        self.retriever_opt.load_state_dict(ck["retriever_opt"])
        with torch.no_grad():
            self.log_vars.copy_(ck["log_vars"])
        set_rng_state(ck["rng"])
        self.finished = [StageResult(**s) for s in ck["finished"]]
        self.skipped_steps = ck["skipped_steps"]
        self.history = list(ck["history"])
        self.elapsed = ck["elapsed"]
        # history.jsonl is rewritten from the checkpoint: a line appended after it is dropped
        if self.parallel.is_main:
            atomic_write_text(self.run_dir / "history.jsonl",
                              "".join(json.dumps(r, default=float) + "\n" for r in self.history))
        return Position(**ck["position"])

    def _start_fresh(self) -> Position:
        """A new run in this folder: remove what an earlier run left there (it would be taken for
        this run's: a stale best checkpoint, history line or final model)."""
        stale = [self.run_dir / n for n in ("last.pt", "final.pt", "history.jsonl", "eval.json", "eval.md")]
        if self.parallel.is_main:
            for path in [*stale, *self.run_dir.glob("best-*.pt")]:
                path.unlink(missing_ok=True)
        self.parallel.barrier()  # data-parallel: nobody goes on before rank 0 has removed them
        return Position()

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool = False, max_epochs: int | None = None, allow_mismatch: bool = False,
            max_batches: int | None = None) -> TrainResult:
        """Run every stage, each ending with its best checkpoint loaded. ``resume`` continues from
        ``last.pt`` (none: starts afresh). Stopping early (tests, diagnostics): ``max_epochs`` after
        that many epochs in all (a resumable state, as if killed); ``max_batches`` after that many
        optimizer steps, inside the first epoch if it has more. The result's ``complete`` says
        whether every stage finished."""
        t0 = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._allow_mismatch = allow_mismatch
        fresh = not (resume and (self.run_dir / "last.pt").is_file())
        if fresh:
            pos = self._start_fresh()
        else:
            pos = self._restore(load_checkpoint(self.run_dir / "last.pt", self.fingerprint,
                                                allow_mismatch=allow_mismatch))
        if self.parallel.is_main:
            self.cfg.save(self.run_dir)
        if fresh:
            kill_point("before_first_last")
        budget, complete = _Budget(max_epochs, max_batches), True
        with self._score_spread_reduced():
            while pos.stage_idx < len(self.cfg.stages):
                stage_result = self._run_stage(pos, budget, t0)
                if stage_result is None:  # the budget ran out: resumable from last.pt
                    complete = False
                    break
                self.finished.append(stage_result)
                pos = Position(stage_idx=pos.stage_idx + 1)
        result = TrainResult(str(self.run_dir), stages=list(self.finished), skipped_steps=self.skipped_steps,
                             seconds=self.elapsed + time.perf_counter() - t0, complete=complete)
        result.environment |= {"device": describe_device(self.device),
                               "amp": str(self.amp).removeprefix("torch.") if self.amp else "off",
                               "processes": self.parallel.world}
        return result

    @contextlib.contextmanager
    def _score_spread_reduced(self):
        """Data-parallel: the fused score spread is observed over the whole global batch while
        training (its forward sums over processes); afterwards the model is a plain model again."""
        scale = getattr(self.model, "scale", None)
        if not self.parallel.enabled or scale is None:
            yield
            return
        scale.reduce = self.parallel.sum
        try:
            yield
        finally:
            scale.reduce = None

    def _validate(self, stage: str) -> float:
        """The early-stopping metric; data-parallel: rank 0's, so every process stops alike."""
        if not self.parallel.enabled:
            return self.evaluate(self.model, stage)
        return self.parallel.broadcast_float(self.evaluate(self.model, stage) if self.parallel.is_main else None)

    def _run_stage(self, pos: Position, budget: _Budget, t0: float) -> StageResult | None:
        """Run stage ``pos.stage_idx`` from ``pos`` (updated in place) to its end and reload its
        best checkpoint; None if the budget runs out first."""
        cfg = self.cfg
        stage_idx = pos.stage_idx
        stage = cfg.stages[stage_idx]
        self._set_trainable(stage)
        n_batches = math.ceil(len(self.samples(stage)[0]) / self.batch_size(stage))
        n_epochs = self.epochs(stage)
        while not pos.stage_done and pos.next_epoch < n_epochs:
            epoch, te, step_before = pos.next_epoch, time.perf_counter(), pos.step
            record, pos.step = self._epoch(stage, stage_idx, epoch, n_batches * n_epochs, pos.step,
                                           max_batches=budget.batches_left())
            metric = self._validate(stage)
            seconds = time.perf_counter() - te
            improved = metric > pos.best
            if improved:
                pos.best, pos.best_epoch, pos.bad_epochs = metric, epoch, 0
            else:
                pos.bad_epochs += 1
            pos.next_epoch, pos.seconds = epoch + 1, pos.seconds + seconds
            pos.stopped_early = pos.bad_epochs >= cfg.patience
            pos.stage_done = pos.stopped_early or pos.next_epoch >= n_epochs
            record = {"stage": stage, "epoch": epoch, "step": pos.step, f"valid_{VALID_METRIC}": metric,
                      "lr_sasrec": self.sasrec_opt.param_groups[0]["lr"],
                      "lr_retriever": self.retriever_opt.param_groups[0]["lr"], **record,
                      "skipped_steps": self.skipped_steps, "seconds": round(seconds, 3)}
            if improved and self.parallel.is_main:
                save_checkpoint(self.run_dir / f"best-{stage}.pt",
                                self.checkpoint_payload(stage=stage, epoch=epoch, metric=metric))
            self._append_history(record)
            kill_point(f"epoch_end:{stage}:{epoch}:before_last")
            self._save_last(pos, self.elapsed + time.perf_counter() - t0)
            kill_point(f"epoch_end:{stage}:{epoch}:after_last")
            if self.on_epoch and self.parallel.is_main:
                self.on_epoch(record)
            budget.epochs_done += 1
            budget.batches_done += pos.step - step_before
            if budget.spent():
                return None
        # the best epoch of this stage is what the next stage builds on (written by rank 0)
        self.parallel.barrier()
        best = load_checkpoint(self.run_dir / f"best-{stage}.pt", self.fingerprint, self._allow_mismatch)
        self.model.load_state_dict(best["model"])
        return StageResult(stage, pos.next_epoch, pos.best_epoch, pos.best, pos.stopped_early, round(pos.seconds, 2))
