"""Writing results safely and with provenance: atomic files, staged output directories, tidy CSVs
that carry the run's metadata, and `meta.json` contents (config, code version, libraries, device)."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import glob
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .registry import ConfigError

CSV_META_PREFIX = "# dimat-bench meta: "


# A cell's metrics.csv: one row per agent and evaluation (written by run.py, read by aggregate.py).
CELL_METRIC_COLUMNS = ["round", "agent", "phase", "test_acc", "test_loss", "own_acc", "own_loss", "consensus_distance",
                       "messages_sent", "bytes_sent", "messages_delivered", "train_loss", "train_acc", "lr", "seconds_train",
                       "seconds_communicate", "seconds_evaluate"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` in one step,
    on failure it is removed, so `path` is either absent, the old file, or complete."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # a read-only or full folder: name the file meant, not the temporary one
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:  # name the file a write failed on (a full disk names none)
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


# Faults of the machine, not of a cell: a job that meets one fails (no failure record, which would
# read as the cell's result) and a rerun computes it once the fault is gone.
MACHINE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


REMEDY = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some of your quota",
          errno.EROFS: "make the folder writable", errno.EACCES: "make the folder writable",
          errno.EPERM: "make the folder writable", errno.EIO: "check the disk"}


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM: a scheduler's time limit, scancel, kill). Not an
    Exception, so no `except Exception` records it as the cell's failure."""


def on_sigterm(signum, frame):
    raise Terminated(signal.Signals(signum).name)


@contextlib.contextmanager
def workflow_job(name: str, log: str | os.PathLike) -> Iterator[io.TextIOBase]:
    """The frame of a workflow script (aggregate, claims, communication, figures, estimate,
    preflight). Its stderr goes to `log`. A fault of the machine or of a file (a full disk, a folder
    that turns read-only, a file that cannot be read), an error in its inputs (ConfigError) or
    SIGTERM ends it in one line naming the job, the file and the cause, on the job's stderr (which
    Snakemake shows) and in the log, with exit status 1 (143 for SIGTERM). Snakemake then removes the
    job's outputs, each written atomically, so nothing looks complete, and the same command runs the
    job again. Any other error is a bug and keeps its traceback, in the log. Yields the job's stderr."""
    console = sys.stderr
    try:
        sys.stderr = open(log, "w")
    except OSError as error:
        print(f"error: {name}: {fault(error, log)}", file=console)
        raise SystemExit(1) from None
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield console
        line = None
    except OSError as error:
        line, status = f"error: {name}: {fault(error, log)}", 1
    except ConfigError as error:
        line, status = f"error: {name}: {error}", 1
    except Terminated as stop:
        line, status = f"error: {name}: stopped by {stop} before it finished; the same command runs it again", 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        log_file, sys.stderr = sys.stderr, console
    if line is not None:
        print(line, file=console, flush=True)
        with contextlib.suppress(OSError):  # a full disk may refuse the log its line too
            print(line, file=log_file, flush=True)
    with contextlib.suppress(OSError):
        log_file.close()
    if line is not None:
        raise SystemExit(status)


def fault(error: OSError, default: str | os.PathLike) -> str:
    """`path: cause; remedy`, for an OSError met reading or writing (the file it names, else `default`)."""
    cause = (error.strerror or str(error)).lower()
    remedy = REMEDY.get(error.errno, "fix it")
    return f"{error.filename or default}: {cause}; {remedy} and run the same command again"


def failed_write(path: str | os.PathLike, needed: int, error: Exception) -> OSError:
    """An OSError for a write that a library reported otherwise (torch.save raises RuntimeError when
    the disk fills): ENOSPC when the folder has less than `needed` bytes free, else EIO."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = 0
    if free < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"write failed ({' '.join(str(error).split())[:120]})", str(path))


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_table(path: str | os.PathLike, text: str, meta: Mapping) -> None:
    """Write a table with its provenance on the first line, as a comment of the file's format: CSV
    (`# dimat-bench meta: {json}`; pandas reads it with `comment="#"`), Markdown (an HTML comment)
    or LaTeX (`%`). Atomic: the file is either absent, the old one, or complete."""
    line = json.dumps(meta, sort_keys=False, default=str)
    suffix = Path(path).suffix
    if suffix == ".csv":
        header = CSV_META_PREFIX + line
    elif suffix == ".md":
        header = f"<!-- dimat-bench meta: {line.replace('--', '- -')} -->"
    elif suffix == ".tex":
        header = f"% dimat-bench meta: {line}"
    else:
        raise ValueError(f"{path}: tables are .csv, .md or .tex")
    with atomic_path(path) as tmp:
        tmp.write_text(header + "\n" + text)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], columns: list[str], meta: Mapping) -> None:
    """A tidy CSV of `rows` (floats to 6 significant digits, None as empty) with its provenance."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    write_table(path, buffer.getvalue(), meta)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_csv_meta(path: str | os.PathLike) -> dict | None:
    """The metadata a CSV written by `write_csv` carries on its first line, or None."""
    with open(path) as handle:
        first = handle.readline()
    return json.loads(first[len(CSV_META_PREFIX):]) if first.startswith(CSV_META_PREFIX) else None


MARKER = ".dimat-bench"  # written last into every output directory a command completes


def check_output_path(out: Path, force: bool, what: str = "directory", field: str = "out") -> None:
    """Raise ConfigError unless a command may write `out`: its folder can be created and written, and
    `out` is absent, an empty directory, or (with `force`) a previous dimat-bench output. `--force`
    never replaces the working directory or one of its parents, nor anything without the marker a
    completed dimat-bench output carries. Cheap and side-effect free: called before any compute."""
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ConfigError(field, str(out), f"a new {what}, not the working directory or one of its parents")
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(field, str(out), f"a {what} whose folder can be created", f"{ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(field, str(out), f"a {what} in a folder you can write", f"{ancestor} is not writable")
    if not out.exists() and not out.is_symlink():
        return
    if what == "directory" and out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not force:
        raise ConfigError(field, str(out), f"a {what} that does not exist yet or is empty",
                          "Pass --force to replace a previous dimat-bench output")
    if not is_dimat_output(out, what):
        raise ConfigError(field, str(out), f"with --force, a {what} a dimat-bench command wrote",
                          f"it has no {MARKER if what == 'directory' else 'dimat-bench manifest'}; "
                          "move or delete it yourself")


def is_dimat_output(path: Path, what: str = "directory") -> bool:
    """Whether `path` is a complete output of a dimat-bench command (its marker file, written last;
    for a manifest file, its `cache` record), so that `--force` may replace it."""
    if path.is_symlink():
        return False
    if what == "directory":
        return path.is_dir() and (path / MARKER).is_file()
    try:
        return path.is_file() and "cache" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


class OutputLock:
    """An exclusive, non-blocking lock on an output path (`flock` on `.<name>.lock` beside it): a second
    command writing the same output fails at once instead of racing the first. Released (and the
    lock file removed) on exit; a killed process's lock dies with it."""

    def __init__(self, out: Path, field: str = "out"):
        self.out, self.field = out, field
        self.path = out.parent / f".{out.name}.lock"
        self.handle = None

    def __enter__(self) -> OutputLock:
        import fcntl

        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                handle.close()
                raise ConfigError(self.field, str(self.out), "an output no other run is writing",
                                  f"{owner} is writing it now") from None
            try:  # the file may have been removed by its last holder between open and flock
                if os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()
            self.handle = None


class StagedDirectory:
    """An output directory that appears only when complete, written by one command at a time.

    Construct it before any compute: it checks `out` (`check_output_path`) and fails at once. Inside
    `with` it holds the output's lock and `.path` is a staging directory; on success the marker file
    is written last and the staging directory renamed to `out`; on error it is deleted, so a crashed
    run leaves nothing that looks like a result. A process killed outright leaves its staging
    directory (`.partial-<name>-<host>-<pid>`); the next run for the same `out` removes it once that
    process is gone."""

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.out, self.force = Path(out), force
        check_output_path(self.out, force)
        self.prefix = f".partial-{self.out.name}-{socket.gethostname()}-"
        self.path = self.out.parent / f"{self.prefix}{os.getpid()}"
        self.lock = OutputLock(self.out)
        self.marker = {"command": sys.argv}  # what the marker records besides the files' SHA-256

    def __enter__(self) -> Path:
        self.lock.__enter__()
        try:
            check_output_path(self.out, self.force)  # again, under the lock
            for stale in self.out.parent.glob(f"{glob.escape(self.prefix)}*"):
                pid = stale.name[len(self.prefix):]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir()
        except BaseException:
            self.lock.__exit__()
            raise
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                shutil.rmtree(self.path, ignore_errors=True)
                return
            try:
                write_marker(self.path, self.marker)
                if self.out.exists():
                    check_output_path(self.out, self.force)
                    shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
                os.replace(self.path, self.out)
            except BaseException:  # a full disk or a folder turned read-only at the last step
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        finally:
            self.lock.__exit__()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def directory_files(directory: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under `directory` but the marker, by path relative to it (sorted)."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER)
    return {p.relative_to(directory).as_posix(): file_sha256(p) for p in files}


def write_marker(directory: str | os.PathLike, extra: Mapping | None = None) -> None:
    """The marker that says `directory` is complete (written last): the SHA-256 of every file the
    command wrote there, so that a file changed later (a bad copy, half a metrics.csv) is found
    (`damaged_files`), and `extra` (the command; a restored cell's origin)."""
    record = {"complete": True, **(extra or {}), "files": directory_files(directory)}
    with atomic_path(Path(directory) / MARKER) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def read_marker(directory: str | os.PathLike) -> dict | None:
    """A completed output's marker record, or None (absent or unreadable)."""
    try:
        record = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def damaged_files(directory: str | os.PathLike, names: Iterable[str] | None = None) -> str:
    """'' when every file (or each of `names`) the marker records still has its SHA-256, else what
    is wrong, e.g. "metrics.csv changed after the cell completed (sha256 1a2b3c4d…, recorded 5e6f…)"."""
    record = read_marker(directory)
    if record is None:
        return f"no {MARKER} marker (not written by a completed dimat-bench command)"
    recorded = record.get("files")
    if not isinstance(recorded, dict):
        return f"its {MARKER} marker records no file hashes"
    for name in (recorded if names is None else names):
        path = Path(directory) / name
        if name not in recorded:
            return f"{name} is not among the files the marker records"
        if not path.is_file():
            return f"{name} is gone since it was written"
        found = file_sha256(path)
        if found != recorded[name]:
            return f"{name} changed after it was written (sha256 {found[:12]}…, recorded {recorded[name][:12]}…)"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def code_version() -> dict:
    """Package version and, when run from a git checkout, the commit and whether the tree is dirty."""
    from . import __version__

    root = Path(__file__).resolve().parent.parent
    info = {"package": __version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def library_versions(extra: tuple[str, ...] = ()) -> dict:
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "scipy", "timm", "dimat-bench", *extra):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


# The instruction-set extensions float kernels are chosen by (on x86 and ARM), as /proc/cpuinfo names them.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
              "asimd", "sve")


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU's model name, its SIMD extensions (SIMD_FLAGS present) and the kernel level torch
    dispatches to: results are bit-identical only on the same hardware and thread count."""
    import torch

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return {"model": fields.get("model name") or platform.processor() or "unknown",
            "simd": [f for f in SIMD_FLAGS if f in flags], "torch_kernels": torch.backends.cpu.get_cpu_capability()}


def device_description(device) -> dict:
    import torch

    device = torch.device(device)
    info = {"device": str(device), "host": socket.gethostname(), "platform": platform.platform(),
            "cpu": cpu_description(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def provenance(config: Mapping, device=None, libraries: tuple[str, ...] = (), **extra) -> dict:
    """Everything a result file must carry: the resolved config, the code version, the library
    versions (the engine's and `libraries`), the device it ran on (when it ran on one), the command
    and the time, then `extra` (e.g. the cells a table was built from)."""
    meta = {"config": dict(config), "code": code_version(), "versions": library_versions(libraries)}
    if device is not None:
        meta["device"] = device_description(device)
    meta["command"] = sys.argv
    meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {**meta, **extra}


def write_failure(out: str | os.PathLike, error: BaseException, config: Mapping, force: bool = False) -> None:
    """Record a command that failed as its output: a directory holding only `meta.json` with
    `status: failed`, the one-line error and the provenance. The pipeline's jobs do this
    (`--record-failure`), so that the tables list the failed cell instead of never being built."""
    with StagedDirectory(out, force=force) as workdir:
        write_json(workdir / "meta.json", {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                           **provenance(config)})


def read_failure(directory: str | os.PathLike) -> str | None:
    """The error of a recorded failure (`write_failure`) in `directory`, or None."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("error", "unknown error") if isinstance(meta, dict) and meta.get("status") == "failed" else None
