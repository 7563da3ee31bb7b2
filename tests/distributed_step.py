"""Run by tests/test_distributed.py, alone or under torchrun: ``max_batches`` optimizer steps of the
config given as ``--set`` overrides, then rank 0 saves the model's state_dict to ``OUT``.

    python tests/distributed_step.py OUT MAX_BATCHES KEY=VALUE ...
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_step.py OUT ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ur4rec.config import CONFIG_DIR, load_config
from ur4rec.pipeline import train
from ur4rec.training.distributed import DataParallel, exit_process
from ur4rec.training.trainer import JointTrainer


def nan_on_first_step(rank: int) -> None:
    """Make process ``rank``'s first SASRec loss NaN (the others stay finite): a process that
    decided alone to skip that step would leave the others waiting in the all-reduce."""
    calls = {"n": 0}
    loss = JointTrainer.sasrec_loss

    def patched(self, *args, **kwargs):
        value = loss(self, *args, **kwargs)
        calls["n"] += 1
        return value * float("nan") if self.parallel.rank == rank and calls["n"] == 1 else value

    JointTrainer.sasrec_loss = patched


def main(out: str, max_batches: int, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    parallel = DataParallel.from_environment(torch.device("cpu"))
    if "STEP_NAN_RANK" in os.environ:
        nan_on_first_step(int(os.environ["STEP_NAN_RANK"]))
    cfg = load_config(CONFIG_DIR / "quick.yaml", overrides)
    result, ws = train(cfg, run_dir=Path(out).with_suffix(""), progress=False, max_batches=max_batches,
                       parallel=parallel)
    state = ws.model.state_dict()
    # every process must end with the same weights and buffers (user memory, score spread)
    differ = [name for name, t in state.items()
              if parallel.enabled and not bool((parallel.gather_rows(t.detach()) == t).all())]
    if parallel.is_main:
        grads = {n: p.grad.clone() for n, p in ws.model.named_parameters() if p.grad is not None}  # the last step's
        torch.save({"model": state, "grads": grads, "processes": parallel.world, "differ": differ,
                    "skipped_steps": result.skipped_steps,
                    "environment": result.environment}, out)
    parallel.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
    exit_process(0)
