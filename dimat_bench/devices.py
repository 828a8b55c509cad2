"""Choosing a device: the `device` config key (`auto`, `cpu`, `cuda`, `cuda:<index>`), the `precision`
key (`auto`, `fp32`, `bf16`), and batch sizes that depend on them.

Parallel jobs on one host (Snakemake starts them without telling them apart) share its GPUs by
slots: each GPU has `DIMAT_BENCH_GPU_SLOTS` of them (default 1, i.e. one job per GPU), and
`device: auto` takes the first free slot, spreading jobs over the GPUs before doubling up, and keeps
its lock until the process exits (docs/engine.md#speed)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

import torch

from .registry import ConfigError

_held: list = []  # open lock files: closing them (at exit) releases the GPUs


def lock_dir() -> Path:
    return Path(os.environ.get("DIMAT_BENCH_LOCK_DIR", tempfile.gettempdir()))


PRECISIONS = ("auto", "fp32", "bf16")


def gpu_slots() -> int:
    """Engine jobs that may share one GPU (`DIMAT_BENCH_GPU_SLOTS`, set by the pipeline's `gpu_slots`)."""
    value = os.environ.get("DIMAT_BENCH_GPU_SLOTS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError("DIMAT_BENCH_GPU_SLOTS", value, "a whole number >= 1 (engine jobs per GPU)")
    return int(value)


def matching_memory(device: torch.device) -> int | None:
    """Bytes of feature maps an activation matching may hold at once (all models' features for one
    batch): `DIMAT_BENCH_MATCH_MEMORY` when set; on a GPU, half its free memory now, shared among
    the `gpu_slots` jobs on it; on a CPU, no cap (its matching batches are 100 images)."""
    value = os.environ.get("DIMAT_BENCH_MATCH_MEMORY")
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError("DIMAT_BENCH_MATCH_MEMORY", value, "a whole number of bytes >= 1")
        return int(value)
    if torch.device(device).type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free // (2 * gpu_slots())


def check_environment(device: torch.device) -> None:
    """Read the engine's environment variables now, so that a bad one stops a job before any compute
    (also where, like `DIMAT_BENCH_GPU_SLOTS` on a CPU, it would not be used)."""
    gpu_slots()
    matching_memory(device)
    cpu_auto_precision()


def acquire_slot(count: int, directory: Path | None = None, slots: int = 1) -> int | None:
    """The GPU (of `count`) of the first of `slots` × `count` slots no other process holds (now held
    by this one), or None. Slot 0 of every GPU comes before slot 1 of any, so jobs spread out."""
    directory = directory or lock_dir()
    for slot in range(slots):
        for index in range(count):
            name = f"dimat-bench-gpu{index}.lock" if slot == 0 else f"dimat-bench-gpu{index}-slot{slot}.lock"
            handle = open(directory / name, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _held.append(handle)
            return index
    return None


def auto_device() -> torch.device:
    """CPU without CUDA; else the GPU of the first free slot (all busy: share cuda:0 rather than fail)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count, slots = torch.cuda.device_count(), gpu_slots()
    if count == 1 and slots == 1:
        return torch.device("cuda:0")
    index = acquire_slot(count, slots=slots)
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as PyTorch's CPU dispatch
    sees it; on a PyTorch without those probes, the kernel's CPU flags."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_auto_precision() -> str:
    """What `precision: auto` means on a CPU: bf16 where the CPU computes it natively
    (`cpu_has_native_bf16`; docs/results.md#bf16-on-a-cpu measured accuracy parity with fp32 and the
    speed-up), else fp32. `DIMAT_BENCH_CPU_PRECISION` (fp32 or bf16) overrides the detection."""
    value = os.environ.get("DIMAT_BENCH_CPU_PRECISION")
    if value is not None:
        if value not in ("fp32", "bf16"):
            raise ConfigError("DIMAT_BENCH_CPU_PRECISION", value, "fp32 or bf16 (what precision auto means on a CPU)")
        return value
    return "bf16" if cpu_has_native_bf16() else "fp32"


def precision_basis(device: torch.device) -> dict:
    """What `precision: auto` decided from on a CPU, for meta.json's `device`: whether it computes
    bf16 natively, and the override when one is set (nothing on a GPU)."""
    if torch.device(device).type == "cuda":
        return {}
    basis = {"native_bf16": cpu_has_native_bf16()}
    if "DIMAT_BENCH_CPU_PRECISION" in os.environ:
        basis["cpu_precision_override"] = os.environ["DIMAT_BENCH_CPU_PRECISION"]
    return basis


def resolve_precision(value: str, device: torch.device) -> str:
    """`auto` is bf16 on a GPU that has it, and `cpu_auto_precision` on a CPU."""
    cuda = torch.device(device).type == "cuda"
    if value == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", value, "fp32 or auto on this GPU (it has no bf16)")
    if value == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return cpu_auto_precision()
    return value


def autocast(device: torch.device, precision: str):
    """The context forwards run in: bf16 autocast (weights, optimizer state, losses, BatchNorm and
    correlation statistics stay fp32), or nothing for fp32. On a GPU, fp32 convolutions and matmuls
    may use TF32 (`allow_tf32`); the correlation statistics turn it off for themselves."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def allow_tf32(device: torch.device) -> None:
    """Let fp32 convolutions and matmuls on a GPU use TF32 tensor cores."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
