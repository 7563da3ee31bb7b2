"""Data-parallel training over several processes (``ur4rec train --nproc N``, torchrun).

``launch`` re-runs the same ``ur4rec train`` command under PyTorch's own launcher
(``torch.distributed.run --standalone``: N processes on this machine, ``gloo`` on the CPU, ``nccl``
on GPUs, one GPU per process). Inside each process ``DataParallel.from_environment`` joins the
process group that torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ...).

What stays the same whatever N (``JointTrainer`` uses these helpers):

- The global batch and the learning rate are the config's. Every rank draws the same epoch order
  (same sampler seed) and takes its shard of each global batch, rows ``rank, rank + N, ...``.
- The gradient is the one-process gradient: each rank weights its mean loss by its share of the
  batch's loss terms (targets for SASRec, rows for the per-pair losses), counted from the global
  batch that every rank knows, and ``all_reduce_gradients`` sums the ranks' gradients. Clipping and
  the optimizer step then see the same gradient on every rank, so the weights stay identical without
  a broadcast. (Why not ``DistributedDataParallel``: the stages call several entry points of the
  model (``sasrec.calculate_loss``, ``retriever``, the fused forward), and DDP hooks only the
  wrapped module's ``forward``; one explicit all-reduce per step is the same arithmetic.)
- Decisions are taken on global numbers: the logged losses, the adaptive alternation and the
  non-finite check read the all-reduced loss (a rank that skipped alone would hang the others); the
  gradient norm is computed after the all-reduce, so it is the same everywhere; validation runs on
  rank 0 and its metric is broadcast, so early stopping agrees.
- Buffers written in the forward pass are reduced, not broadcast from rank 0: the fused model's
  score-spread statistic averages over the whole global batch inside the forward
  (``ScoreScale.reduce``), and after each step every user's memory slots are taken from the rank
  that held the row the single process would have written them from (its largest target position
  in the batch), so the memory after a step is one process's (tested on a first step). Within a
  step a row reads its own rank's write: with the memory on, a step's loss is not exactly one
  process's when a user's rows fall on several ranks.
- Dropout and negative sampling draw from per-rank streams (seeded by seed and rank), so the ranks
  do not repeat each other's masks; with dropout 0 and CE (no negatives) one step with N processes
  equals one process's (tests/test_distributed.py).
- Only rank 0 writes the run's files (config.yaml, history.jsonl, checkpoints, final.pt) and the
  command's output; data and text caches are built by ``ur4rec train`` before the processes
  start. The other ranks read rank 0's best checkpoint at the end of each stage (after a barrier)
  and ``last.pt`` on ``--resume``, so resume works as with one process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ur4rec.errors import ConfigError
from ur4rec.io import atomic_write_text

#: how long a process waits in a collective for the others (rank 0 validates alone between steps)
COLLECTIVE_TIMEOUT = timedelta(hours=2)
#: set by ``launch`` in the processes it starts: a ``WORLD_SIZE`` without it is somebody else's job
LAUNCHED_ENV = "UR4REC_DATA_PARALLEL"
#: where rank 0 leaves its error message for ``launch`` to report
ERROR_FILE_ENV = "UR4REC_DATA_PARALLEL_ERROR"


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` data-parallel processes (world 1: a plain run)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and prints; the others only compute."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> DataParallel:
        """Join the process group torchrun set up (``WORLD_SIZE`` > 1), or a plain run. ``device`` is
        the run's (``resolve_device``): nccl for a CUDA run, each process on its ``LOCAL_RANK``'s GPU;
        gloo otherwise (also for a CPU run on a machine with GPUs)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" = this rank's GPU
            # rank 0 alone validates each epoch and chooses the final model while the others wait
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size())

    # ------------------------------------------------------------------ batches
    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: ``rows[rank::world]``."""
        return rows[self.rank::self.world] if self.enabled else rows

    def owner_of_rows(self, n: int) -> torch.Tensor:
        """Which rank holds each of a global batch's ``n`` rows (see ``shard``)."""
        return torch.arange(n) % self.world

    def check_batches(self, samples: int, batch_size: int, what: str) -> None:
        """Every rank needs a row in every step: the last step of an epoch has ``samples % batch_size``."""
        last = samples % batch_size
        if self.enabled and (batch_size < self.world or 0 < last < self.world):
            raise ConfigError(
                f"{what}: with --nproc {self.world} every optimizer step needs at least {self.world} samples, "
                f"but {samples} samples in batches of {batch_size} leave a last step of {last or batch_size}.",
                where="ur4rec train --nproc",
                fix=f"set {what}'s batch size (sasrec_batch_size or batch_size) to one that leaves a last step of 0 "
                    f"or >= {self.world} samples, or use fewer processes")

    # ------------------------------------------------------------------ collectives
    def all_reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks (a missing gradient counts as zeros), in one
        flat all-reduce. The ranks' losses are pre-weighted, so the sum is the global gradient."""
        if not self.enabled or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # on the parameters' device, the backend's
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
            offset += g.numel()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``values`` over ranks (a copy; ``values`` itself is not changed)."""
        if not self.enabled:
            return values.detach().clone()
        out = values.detach().to(self._device(), copy=True)  # nccl reduces GPU tensors only
        dist.all_reduce(out)
        return out.to(values.device)

    def broadcast_float(self, value: float | None) -> float:
        """Rank 0's ``value`` on every rank (the others pass anything)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([value if self.is_main else 0.0], dtype=torch.float64, device=self._device())
        dist.broadcast(t, 0)
        return float(t.item())

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """[world, *t.shape]: every rank's ``t`` (same shape on every rank)."""
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous())
        return torch.stack(out)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group together (a plain run: nothing to do): a process that tore its
        connections down while another still used them would abort it."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block, then the others (e.g. rank 0 writes a file the others read)."""
        if self.is_main:
            yield
            self.barrier()
        else:
            self.barrier()
            yield


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` less ``option`` and its value (``--opt V`` or ``--opt=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def exit_process(code: int) -> None:
    """End a launched process without the interpreter's finalisation: gloo's worker threads can
    still hold tensors then, and freeing them at shutdown aborts the process (SIGABRT) now and then
    (seen here about once in eight runs, after ``destroy_process_group``). Output is flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launched() -> bool:
    """Whether this process is one of those ``launch`` started (not merely under some torchrun)."""
    return LAUNCHED_ENV in os.environ


def report_error(message: str) -> None:
    """A process of a launched run: leave ``message`` for ``launch`` to report as the run's error. Every
    rank leaves its own file: the first process to fail makes torchrun stop the others, so rank 0 may
    be stopped before it writes (``launch`` prefers rank 0's message, else the lowest rank's)."""
    if launched() and ERROR_FILE_ENV in os.environ:
        atomic_write_text(Path(f"{os.environ[ERROR_FILE_ENV]}.{os.environ.get('RANK', '0')}"), message)


def launch(nproc: int, argv: Sequence[str]) -> tuple[int, str | None]:
    """Run ``ur4rec <argv>`` as ``nproc`` data-parallel processes under torchrun: the exit code and
    rank 0's error message (None if it left none).

    ``--standalone`` starts a rendezvous on a free local port. Each process gets ``OMP_NUM_THREADS``
    threads if that is set, else the cores divided among the processes. SIGINT and SIGTERM are passed
    on to torchrun, which stops the processes (none keeps writing the run)."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ur4rec.cli", *argv]
    # torchrun leaves a torchelastic_* folder in the temporary directory: give it one removed afterwards
    with tempfile.TemporaryDirectory(prefix="ur4rec-torchrun-") as tmp:
        error = Path(tmp) / "rank0-error.txt"
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TMPDIR": tmp,
                            LAUNCHED_ENV: str(nproc), ERROR_FILE_ENV: str(error)}
        proc = subprocess.Popen(cmd, env=env)
        forwarded = {sig: signal.signal(sig, lambda signum, _: proc.send_signal(signum))
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for sig, handler in forwarded.items():
                signal.signal(sig, handler)
        reports = sorted(Path(tmp).glob(f"{error.name}.*"), key=lambda f: int(f.suffix[1:]))
        return code, (reports[0].read_text(encoding="utf-8") if reports else None)
