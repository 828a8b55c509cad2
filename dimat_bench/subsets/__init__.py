"""Recorded image subsets: which official images, in which row order, a named cache of a dataset
holds (`<dataset>-<name>.json.gz` in this folder; docs/benchmark.md#data-and-splits).

`shared` is the subset the CPU grids run on: the images of the shared `cifar10.npz` /
`cifar100.npz` caches (10,000 of the 50,000 official training images plus all 10,000 test images).
A record names each image by its official key `<class>/<file name>` (the class of its official
label, and its `filenames` entry in the official python batches), so `dimat_bench.data.derive_subset`
rebuilds the very same arrays from a full official download. Its identity is the content
fingerprint (`dimat_bench.data.fingerprint`) of those arrays, which a derived cache must match.

Standard library only (no numpy, no torch): the torch-free planner reads these records too.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SUFFIX = ".json.gz"
FORMAT = 1  # the record layout written by dimat_bench.data.record_subset


def _scan(folder: Path = FOLDER) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob(f"*-*{SUFFIX}")):
        dataset, _, name = path.name[: -len(SUFFIX)].partition("-")  # dataset names hold no '-'
        found.setdefault(dataset, []).append(name)
    return {dataset: tuple(names) for dataset, names in sorted(found.items())}


# dataset -> the names of its recorded subsets, e.g. {"cifar10": ("shared",), "cifar100": ("shared",)}
SUBSETS: dict[str, tuple[str, ...]] = _scan()


def subset_names(dataset: str | None = None) -> list[str]:
    """The recorded subset names of `dataset` (all datasets' when None), sorted."""
    if dataset is None:
        return sorted({name for names in SUBSETS.values() for name in names})
    return sorted(SUBSETS.get(dataset, ()))


def subset_problem(dataset: str, name: str | None) -> tuple[str, str] | None:
    """None when `name` is None or a recorded subset of `dataset`; else (what is allowed, a hint),
    the parts of the ConfigError that `dimat_bench.data.check_data_subset` raises."""
    if name is None or name in SUBSETS.get(dataset, ()):
        return None
    names = subset_names(dataset)
    if names:
        close = difflib.get_close_matches(str(name), names, n=1)
        return "null (the whole cache) or " + ", ".join(names), f"did you mean {close[0]!r}?" if close else ""
    recorded = "; ".join(f"{d}: {', '.join(n)}" for d, n in SUBSETS.items()) or "none"
    return "null (the whole cache)", f"no subset of {dataset} is recorded (recorded: {recorded})"


class UnknownSubset(LookupError):
    """No such recorded subset (`dimat_bench.data` raises it as a ConfigError of `data_subset`)."""


def subset_path(dataset: str, name: str) -> Path:
    """The record file of a subset (whether or not it exists)."""
    return FOLDER / f"{dataset}-{name}{SUFFIX}"


def read_record(path: str | Path) -> dict:
    """A subset record from its `.json.gz` file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        record = json.load(handle)
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: subset record format {record.get('format')!r}; this dimat-bench reads {FORMAT}")
    return record


def write_record(record: dict, path: str | Path) -> Path:
    """Write a record as gzip'd JSON, byte-for-byte reproducible (no gzip timestamp or file name)."""
    path = Path(path)
    text = json.dumps(record, indent=0, ensure_ascii=False) + "\n"
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return path


@functools.lru_cache(maxsize=None)
def _record(dataset: str, name: str) -> dict:
    return read_record(subset_path(dataset, name))


def subset_record(dataset: str, name: str) -> dict:
    """The record of a subset. Keys: format,
    name, dataset, fingerprint, source (file, sha256, bytes, description), keys (the cache's arrays),
    dtypes, classes (and classes_coarse, coarse_of_fine for CIFAR-100), official (folder and batch
    files of the official python version), images ({split: ordered official keys "<class>/<file>"}).
    The returned dict is shared: do not modify it. UnknownSubset when there is no such record."""
    problem = subset_problem(dataset, name)
    if problem:
        allowed, hint = problem
        raise UnknownSubset(f"data_subset: got {name!r}; allowed: {allowed}" + (f". {hint}" if hint else ""))
    return _record(dataset, name)


def subset_fingerprint(dataset: str, name: str) -> str:
    """The content fingerprint ("sha256:...") of a recorded subset's arrays: its identity."""
    return subset_record(dataset, name)["fingerprint"]
