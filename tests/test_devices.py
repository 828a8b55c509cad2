import subprocess
import sys

from dimat_bench import devices


def test_gpu_slots_are_handed_out_once_per_holder(tmp_path):
    held_before = len(devices._held)
    assert [devices.acquire_slot(3, tmp_path) for _ in range(4)] == [0, 1, 2, None]
    # Another process sees every slot taken while this one holds them.
    probe = f"from pathlib import Path; from dimat_bench import devices; print(devices.acquire_slot(3, Path({str(tmp_path)!r})))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "None"
    for handle in devices._held[held_before:]:
        handle.close()
    del devices._held[held_before:]
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "0"


def test_auto_device_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    assert devices.auto_device().type == "cpu"


def test_auto_device_spreads_jobs_over_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("DIMAT_BENCH_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 2)
    held_before = len(devices._held)
    assert [str(devices.auto_device()) for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    for handle in devices._held[held_before:]:
        handle.close()
    del devices._held[held_before:]


def test_native_bf16_follows_pytorchs_cpu_probes(monkeypatch):
    """AVX512-BF16 or AMX tiles, as PyTorch's CPU dispatch reports them (benchmarks/parity.py prints it)."""
    import torch

    from dimat_bench.devices import cpu_has_native_bf16

    for avx, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx: avx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        assert cpu_has_native_bf16() is expected
