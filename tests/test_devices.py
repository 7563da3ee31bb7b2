"""device: auto | cpu | cuda and amp (ur4rec.devices), and what keys on the model's device."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import ur4rec.devices as devices
from ur4rec.devices import autocast_dtype, configure_determinism, describe_device, module_device, resolve_device
from ur4rec.errors import ConfigError
from ur4rec.evaluation.evaluate import exact_affordable


def test_resolve_device_picks_a_gpu_only_when_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU") as err:
        resolve_device("cuda")  # asked for a GPU: an error, never a silent CPU run
    assert "TORCH_SPEC" in err.value.fix or "CUDA build" in err.value.fix
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")


def test_amp_autocasts_only_on_a_gpu(monkeypatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert all(autocast_dtype(a, cpu) is None for a in ("auto", "off", "bf16"))  # sasrec_precision decides there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert autocast_dtype("auto", gpu) == torch.bfloat16 and autocast_dtype("bf16", gpu) == torch.bfloat16
    assert autocast_dtype("off", gpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert autocast_dtype("auto", gpu) is None and autocast_dtype("bf16", gpu) == torch.bfloat16


def test_cpu_needs_no_determinism_switches_and_modules_report_their_device() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    configure_determinism(torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() == before
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU
    assert describe_device(torch.device("cpu")) == "cpu"


def test_exact_catalogue_auto_keys_on_the_models_device_not_on_the_machine(monkeypatch) -> None:
    """The issue's bug: auto ran the exact per-pair ranking whenever CUDA existed, even with the model
    on the CPU. Now a large catalogue is ranked exactly only when the model itself is on a GPU."""
    cfg = SimpleNamespace(exact_catalogue="auto", retriever_output_dim=64)
    big = SimpleNamespace(num_users=6040, num_items=3706)  # ML-1M: 1.4e9 > the CPU budget
    small = SimpleNamespace(num_users=943, num_items=1682)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu_model = torch.nn.Linear(2, 2)
    assert not exact_affordable(cfg, big, cpu_model)
    assert exact_affordable(cfg, small, cpu_model)
    gpu_model = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda"))]))
    assert exact_affordable(cfg, big, gpu_model)
    never = SimpleNamespace(exact_catalogue="never", retriever_output_dim=64)
    assert exact_affordable(never, small, gpu_model) is False


def test_keep_freed_memory_sets_mallocs_thresholds_and_is_a_no_op_without_glibc(monkeypatch) -> None:
    """glibc's mallopt gets the largest mmap threshold (blocks up to 32 MiB from the heap, reused) and
    a trim threshold (freed heap kept up to it); a C library without mallopt, or macOS, is left alone."""
    calls = []
    monkeypatch.setattr(devices.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=lambda *a: calls.append(a) or 1))
    assert devices.keep_freed_memory(trim_threshold=1 << 28) is True
    assert calls == [(-3, 32 << 20), (-1, 1 << 28)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
    monkeypatch.setattr(devices.ctypes, "CDLL", lambda name: SimpleNamespace())  # musl: no mallopt
    assert devices.keep_freed_memory() is False
    monkeypatch.setattr(devices.sys, "platform", "darwin")
    assert devices.keep_freed_memory() is False
