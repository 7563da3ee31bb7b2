"""Where tensors live and in which precision: config keys ``device`` and ``amp``.

``device: auto`` picks a CUDA GPU when torch sees one, else the CPU; ``cuda`` asks for one and is an
error without it (never a silent fall-back). The model, its frozen text buffers and every training
batch live on that device; the evaluation protocol keeps its bookkeeping (known items, ranks) on the
CPU and moves each batch to the model and its scores back (``ur4rec.evaluation.scoring``).

``amp: auto`` autocasts the training forward passes to bf16 on a CUDA GPU that supports it (weights,
optimizer state and evaluation stay fp32) and is off on the CPU, where ``sasrec_precision`` decides
for SASRec alone; ``off`` never autocasts; ``bf16`` always does on a GPU.

Determinism: one seed gives the same numbers on the same device and thread count. On a GPU that
needs cuDNN's deterministic kernels, no autotuning, and cuBLAS's fixed workspace
(``CUBLAS_WORKSPACE_CONFIG``, set before the first cuBLAS call); ``use_deterministic_algorithms``
warns (``warn_only``) where an op has no deterministic kernel, so such a run says so instead of
failing.

On the CPU, glibc's malloc gives the pages of large freed blocks back to the kernel (blocks over its
mmap threshold, and a free heap top over its trim threshold), so the next step's tensors of the same
size come back as fresh pages, each zeroed by a page fault: a SASRec step faulted ~3,500 pages and
its elementwise ops over [256, 50, 64] tensors ran several times slower than on reused memory.
``keep_freed_memory`` (called by ``build_workspace``) makes malloc keep them for reuse; the arithmetic
is unchanged (bench/allocator.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

from ur4rec.errors import ConfigError


def resolve_device(choice: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> the device to use (``cuda`` without a GPU is an error)."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if choice == "cuda":
            raise ConfigError("device: cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False; "
                              f"torch {torch.__version__}).", where="config key device",
                              fix="install a CUDA build of torch (README: running on a GPU) or set device: auto/cpu")
        return torch.device("cpu")
    raise ConfigError(f"Unknown device {choice!r}.", where="config key device", fix="use auto, cpu or cuda")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The dtype the training forward passes autocast to under ``amp`` on ``device`` (None: fp32)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def configure_determinism(device: torch.device) -> None:
    """Deterministic kernels where torch offers them on ``device`` (nothing to do on the CPU)."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc reuse freed tensor memory instead of returning it to the kernel: blocks
    up to 32 MiB come from the heap, and up to ``trim_threshold`` bytes of freed heap stay mapped.
    True if applied; False where the C library is not glibc (nothing changes there). Results are
    identical either way; the process keeps up to ``trim_threshold`` more memory after a peak."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device


def describe_device(device: torch.device) -> str:
    """"cpu" or "cuda:0 (NVIDIA H200)": what runs record."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
