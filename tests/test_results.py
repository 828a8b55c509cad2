import os
import socket
import subprocess

import pytest

from dimat_bench.registry import ConfigError
from dimat_bench.results import StagedDirectory, cpu_description


def test_a_staged_directory_appears_only_when_complete(tmp_path):
    out = tmp_path / "cell"
    with StagedDirectory(out) as work:
        (work / "metrics.csv").write_text("x\n")
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cell"] and (out / "metrics.csv").read_text() == "x\n"
    with pytest.raises(ConfigError, match="out: got"):
        StagedDirectory(out)


def test_a_failed_run_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StagedDirectory(tmp_path / "cell") as work:
            (work / "metrics.csv").write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_s_staging_directory_is_removed_by_the_next_run(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    prefix = f".partial-cell-{socket.gethostname()}-"
    (tmp_path / f"{prefix}{dead.pid}").mkdir()  # a process that is gone
    (tmp_path / f"{prefix}1").mkdir()  # init: alive, so kept
    (tmp_path / f".partial-other-{socket.gethostname()}-{dead.pid}").mkdir()  # another output's: kept
    with StagedDirectory(tmp_path / "cell") as work:
        assert work.name == f"{prefix}{os.getpid()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{prefix}1", f".partial-other-{socket.gethostname()}-{dead.pid}", "cell"])


def test_the_cpu_is_described_by_its_model_and_the_simd_extensions_kernels_choose_by():
    x86 = ("processor\t: 0\nmodel name\t: Some Xeon(R) CPU\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 "
           "amx_tile amx_bf16 rdrand\n\nprocessor\t: 1\nmodel name\t: Some Xeon(R) CPU\nflags\t\t: fpu\n")
    described = cpu_description(x86)
    assert described["model"] == "Some Xeon(R) CPU"  # the first processor's
    assert described["simd"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert cpu_description("processor\t: 0\nFeatures\t: fp asimd sve\n")["simd"] == ["asimd", "sve"]
