"""`python -m dimat_bench data`: make sure a dataset's cache is in the data directory (downloading
and converting it when absent), validate it, and write a small JSON manifest saying which file it is.

The pipeline runs this once per dataset before any pretraining, so parallel pretraining jobs never
download the same dataset twice, and a missing or corrupt cache fails in one place, early."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import config as cfg
from .data import DATASETS, load_dataset
from .registry import ConfigError
from .results import provenance, write_json


@dataclass
class DataConfig:
    dataset: str = cfg.option("cifar10", "dataset", choices=DATASETS.names)
    data_dir: str = cfg.option("resources/data", "folder with the <dataset>.npz caches (downloaded when missing)")
    download: bool = cfg.option(True, "download and convert a dataset whose cache is missing")


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def prepare_data(config: DataConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Cache `config.dataset` in `config.data_dir` and write the manifest `out` (a JSON file)."""
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError("out", str(out), "a file that does not exist yet (or pass --force)")
    dataset = load_dataset(config.dataset, config.data_dir, download=config.download)
    manifest = provenance(cfg.to_dict(config), "cpu")
    manifest["cache"] = {"path": str(dataset.path), "bytes": dataset.path.stat().st_size,
                         "sha256": sha256(dataset.path), "train_images": len(dataset.y_train),
                         "test_images": len(dataset.y_test), "classes": len(dataset.classes)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, manifest)
    if progress:
        print(f"{config.dataset}: {dataset.path} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
              f"images) -> {out}")
    return out
