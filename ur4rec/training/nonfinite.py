"""Forward hooks that name the first module (by qualified name) whose output is non-finite.

Used by the trainer's NaN guard and by ``ur4rec doctor``: rather than guessing (dropout? a stale
checkpoint?), run the failing forward again with hooks on every module and report the first one,
in execution order, whose output holds NaN/Inf, with statistics of its inputs and output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach()
    if not t.is_floating_point():
        return {"shape": list(t.shape), "dtype": str(t.dtype)}
    finite = torch.isfinite(t)
    vals = t[finite]
    return {
        "shape": list(t.shape),
        "nan": int(torch.isnan(t).sum()),
        "inf": int(torch.isinf(t).sum()),
        "min": float(vals.min()) if vals.numel() else None,
        "max": float(vals.max()) if vals.numel() else None,
        "abs_mean": float(vals.abs().mean()) if vals.numel() else None,
    }


@dataclass
class NonFiniteReport:
    module: str | None  # qualified name of the first module with a non-finite output (None: none)
    module_type: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    output: list[dict[str, Any]] = field(default_factory=list)
    inputs_finite: bool | None = None

    def describe(self) -> str:
        if self.module is None:
            return "no module produced a non-finite output"
        origin = "from finite inputs" if self.inputs_finite else "passing on non-finite inputs"
        return f"first non-finite output in '{self.module}' ({self.module_type}), {origin}"


def find_first_nonfinite(model: nn.Module, run: Callable[[], Any]) -> NonFiniteReport:
    """Run ``run()`` with hooks on every submodule; report the first non-finite output."""
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    found: list[NonFiniteReport] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if found:
            return
        outs = [t for t in _tensors(output) if t.is_floating_point()]
        if any(not torch.isfinite(t).all() for t in outs):
            ins = [t for t in _tensors(args) if t.is_floating_point()]
            found.append(NonFiniteReport(
                module=names[module], module_type=type(module).__name__,
                inputs=[tensor_stats(t) for t in ins], output=[tensor_stats(t) for t in outs],
                inputs_finite=all(torch.isfinite(t).all() for t in ins),
            ))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else NonFiniteReport(module=None)
