"""Choosing a device: the `device` config key (`auto`, `cpu`, `cuda`, `cuda:<index>`), and batch sizes
that depend on it.

Parallel jobs on one multi-GPU host (Snakemake starts them without telling
them apart) must not share a GPU: `device: auto` takes the first GPU whose lock file no other
process holds, and keeps the lock until the process exits."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import torch

from .registry import ConfigError

_held: list = []  # open lock files: closing them (at exit) releases the GPUs


def lock_dir() -> Path:
    return Path(os.environ.get("DIMAT_BENCH_LOCK_DIR", tempfile.gettempdir()))


def acquire_slot(count: int, directory: Path | None = None) -> int | None:
    """Index of the first of `count` slots no other process holds (now held by this one), or None."""
    directory = directory or lock_dir()
    for index in range(count):
        handle = open(directory / f"dimat-bench-gpu{index}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held.append(handle)
        return index
    return None


def auto_device() -> torch.device:
    """CPU without CUDA; the only GPU; or, with several, the first GPU no other dimat-bench process
    on this host holds (all busy: share cuda:0 rather than fail)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda:0")
    index = acquire_slot(count)
    return torch.device(f"cuda:{index if index is not None else 0}")


def check_device(value: str) -> None:
    """Raise ConfigError unless `value` names a device this machine has."""
    if value in ("auto", "cpu"):
        return
    try:
        device = torch.device(value)
    except RuntimeError as error:
        raise ConfigError("device", value, "auto, cpu, cuda or cuda:<index>") from error
    if device.type != "cuda":
        raise ConfigError("device", value, "auto, cpu, cuda or cuda:<index>")
    if not torch.cuda.is_available():
        raise ConfigError("device", value, "auto or cpu on this machine (CUDA is not available)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("device", value, f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def resolve_device(value: str) -> torch.device:
    """The torch device a checked `device` value stands for (`auto`: see `auto_device`)."""
    if value == "auto":
        return auto_device()
    return torch.device(value)


def inference_batch_size(device: torch.device) -> int:
    """Images per forward pass when nothing is trained (evaluation, matching, BatchNorm resets): small
    batches keep a CPU's caches warm; a GPU wants large ones."""
    return 1000 if torch.device(device).type == "cuda" else 100
