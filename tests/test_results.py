import errno
import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dimat_bench.checkpoint import AgentsCheckpoint, save_agents
from dimat_bench.cli import Terminated
from dimat_bench.registry import ConfigError
from dimat_bench.results import MACHINE_FAULTS, StagedDirectory, cpu_description, write_json


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


@pytest.mark.parametrize("stop", [Terminated("SIGTERM"), KeyboardInterrupt()], ids=["SIGTERM", "SIGINT"])
def test_a_run_stopped_by_a_signal_leaves_nothing(stop, tmp_path):
    """SIGTERM (Terminated) and SIGINT are no Exceptions, so that no `except Exception` records them as
    the cell's failure: the half-written output is removed all the same, never published."""
    with pytest.raises(type(stop)):
        with StagedDirectory(tmp_path / "cell") as work:
            (work / "metrics.csv").write_text("half")
            raise stop
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


# --- a full disk: the error names the file and says ENOSPC, whatever the writer raised -----------------

def test_a_failed_write_that_names_no_file_is_named_by_the_file_being_written(tmp_path, monkeypatch):
    """write() on a full disk raises ENOSPC naming no file: the atomic write names its target (the
    command's one error line says which file), and leaves no temporary file."""
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as caught:
        write_json(tmp_path / "meta.json", {"status": "complete"})
    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == \
        (errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "meta.json"))
    assert list(tmp_path.iterdir()) == []


TORCH_FULL_DISK = ("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: "
                   "file write failed")


@pytest.mark.parametrize("free,expected", [(7_999, errno.ENOSPC), (8_000, errno.EIO)], ids=["ENOSPC", "EIO"])
def test_a_failed_torch_save_is_an_oserror_naming_the_checkpoint(free, expected, tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError: save_agents raises an OSError instead, so that
    the command line takes it for the machine's fault (exit 1, no failure record). ENOSPC when the
    folder has less room than the agents' weights (2 agents of 1000 float32: 8000 bytes), else EIO
    with torch's message; the temporary file is removed."""
    def fails(payload, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise RuntimeError(TORCH_FULL_DISK)

    monkeypatch.setattr(torch, "save", fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=free))
    state = {"weight": torch.zeros(1000)}
    agents = AgentsCheckpoint("resnet20", 10, 1, [state, state], [np.arange(2), np.arange(2, 4)], np.arange(4),
                              np.ones((2, 10), dtype=np.int64), {})
    target = tmp_path / "agents.pt"
    with pytest.raises(OSError) as caught:
        save_agents(target, agents)
    assert (caught.value.errno, caught.value.filename) == (expected, str(target)) and expected in MACHINE_FAULTS
    assert caught.value.strerror == (os.strerror(errno.ENOSPC) if expected == errno.ENOSPC
                                     else f"write failed ({TORCH_FULL_DISK})")
    assert list(tmp_path.iterdir()) == []
