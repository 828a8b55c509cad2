"""Image datasets: one validated `.npz` cache per dataset, the `data` command that fetches and
fingerprints it, class-balanced subsets, and device-resident batches with batched augmentation.

Cache layout (the same as `shared/data/README.md`): uint8 `x_train`/`x_test` (N, H, W, 3) RGB,
integer `y_train`/`y_test` (N,), and `classes` (C,) names. Extra keys are kept but ignored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import config as cfg
from .registry import ConfigError, Registry
from .results import OutputLock, atomic_path, check_output_path, provenance, write_json


class DataError(RuntimeError):
    """A dataset cache is missing, unreadable or not what it claims to be."""


REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


@dataclass(frozen=True)
class DatasetInfo:
    """What the engine needs to know about a dataset. Statistics are per channel, in [0, 1] units."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_padding: int  # random-crop padding for training augmentation; 0 = no crop
    legacy_mean: tuple[float, float, float]
    legacy_std: tuple[float, float, float]
    download: Callable[[Path], dict[str, np.ndarray]]
    train_images: int  # size of the full training set (what a download holds)
    file_aliases: tuple[str, ...] = ()  # other accepted cache file names in the data directory
    test_images: int = 10_000  # size of the full test set (Tiny ImageNet: its validation set)

    def stats(self, legacy: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) used to normalise images scaled to [0, 1]."""
        return (self.legacy_mean, self.legacy_std) if legacy else (self.mean, self.std)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def _download_cifar(torchvision_name: str) -> Callable[[Path], dict[str, np.ndarray]]:
    def download(workdir: Path) -> dict[str, np.ndarray]:
        import torchvision

        cls = getattr(torchvision.datasets, torchvision_name)
        train = cls(root=str(workdir), train=True, download=True)
        test = cls(root=str(workdir), train=False, download=True)
        return {
            "x_train": np.asarray(train.data, dtype=np.uint8),
            "y_train": np.asarray(train.targets, dtype=np.int64),
            "x_test": np.asarray(test.data, dtype=np.uint8),
            "y_test": np.asarray(test.targets, dtype=np.int64),
            "classes": np.asarray(train.classes),
        }

    return download


TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def tinyimagenet_arrays(root: Path) -> dict[str, np.ndarray]:
    """Convert an extracted `tiny-imagenet-200/` folder: train from `train/<wnid>/images/`, test =
    the official `val/` set relabelled with `val/val_annotations.txt`. Classes are the WordNet IDs
    sorted as strings (torchvision ImageFolder order)."""
    from PIL import Image

    root = Path(root)
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    label_of = {wnid: i for i, wnid in enumerate(wnids)}

    def read(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)

    x_train, y_train = [], []
    for wnid in wnids:
        for path in sorted((root / "train" / wnid / "images").iterdir()):
            x_train.append(read(path))
            y_train.append(label_of[wnid])
    x_test, y_test = [], []
    annotations = (root / "val" / "val_annotations.txt").read_text().splitlines()
    for line in sorted(annotations):
        file_name, wnid = line.split("\t")[:2]
        x_test.append(read(root / "val" / "images" / file_name))
        y_test.append(label_of[wnid])
    return {
        "x_train": np.stack(x_train),
        "y_train": np.asarray(y_train, dtype=np.int64),
        "x_test": np.stack(x_test),
        "y_test": np.asarray(y_test, dtype=np.int64),
        "classes": np.asarray(wnids),
    }


def _download_tinyimagenet(workdir: Path) -> dict[str, np.ndarray]:
    archive = workdir / "tiny-imagenet-200.zip"
    urllib.request.urlretrieve(TINY_IMAGENET_URL, archive)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(workdir)
    return tinyimagenet_arrays(workdir / "tiny-imagenet-200")


# Legacy statistics reproduce the authors' code: CIFAR-100 was normalised with CIFAR-10's mean and
# the widespread (wrong) std 0.2023/0.1994/0.2010; Tiny ImageNet with ImageNet's mean/std divided by
# 255 a second time.
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
DATASETS.register("cifar10")(
    DatasetInfo("cifar10", 10, 32, _CIFAR10_MEAN, (0.2470, 0.2435, 0.2616), 4,
                _CIFAR10_MEAN, (0.2470, 0.2435, 0.2616), _download_cifar("CIFAR10"), 50_000)
)
DATASETS.register("cifar100")(
    DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4,
                _CIFAR10_MEAN, (0.2023, 0.1994, 0.2010), _download_cifar("CIFAR100"), 50_000)
)
DATASETS.register("tinyimagenet")(
    DatasetInfo("tinyimagenet", 200, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), 0,
                (0.485 / 255, 0.456 / 255, 0.406 / 255), (0.229 / 255, 0.224 / 255, 0.225 / 255),
                _download_tinyimagenet, 100_000, file_aliases=("tinyimagenet-200-sub.npz",))
)


@dataclass
class ArrayDataset:
    """A dataset held in host memory as uint8 NHWC images and int64 labels."""

    info: DatasetInfo
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    path: Path | None = None

    @property
    def fingerprint(self) -> str:
        """The identity of the images and labels (`fingerprint`), computed once."""
        if "_fingerprint" not in self.__dict__:
            self.__dict__["_fingerprint"] = fingerprint({"x_train": self.x_train, "y_train": self.y_train,
                                                         "x_test": self.x_test, "y_test": self.y_test,
                                                         "classes": self.classes})
        return self.__dict__["_fingerprint"]


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the cache's content (every required array's name, dtype, shape and bytes), not of
    the file: a recompressed or renamed copy of the same images has the same fingerprint, another
    file of the same shape does not. About 0.1 s for CIFAR-10's 50,000 + 10,000 images, against
    seconds to read and decompress them, so every run checks it. Labels are hashed as int64, so the
    label dtype a cache was saved with does not matter."""
    digest = hashlib.sha256()
    for key in REQUIRED_KEYS:
        array = np.ascontiguousarray(arrays[key])
        if key.startswith("y_"):
            array = array.astype(np.int64)
        elif key == "classes":
            array = np.asarray([str(c) for c in array.tolist()]).astype("U")
        digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return "sha256:" + digest.hexdigest()


def cache_path(name: str, data_dir: str | os.PathLike) -> Path:
    """The canonical cache file of a dataset: `<data_dir>/<name>.npz`."""
    return Path(data_dir) / f"{name}.npz"


def find_cache(name: str, data_dir: str | os.PathLike) -> Path | None:
    """The first existing cache file (canonical name, then the dataset's aliases), or None."""
    info = DATASETS.get(name)
    for file_name in (f"{name}.npz", *info.file_aliases):
        path = Path(data_dir) / file_name
        if path.exists():
            return path
    return None


def validate_arrays(arrays: dict[str, np.ndarray], info: DatasetInfo, where: str) -> None:
    """Raise DataError unless `arrays` has the cache layout for `info`."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; a {info.name} cache needs {list(REQUIRED_KEYS)}")
    size = info.image_size
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.uint8:
            raise DataError(f"{where}: x_{part} has dtype {x.dtype}; expected uint8 pixels 0..255")
        if x.ndim != 4 or x.shape[1:] != (size, size, 3):
            raise DataError(f"{where}: x_{part} has shape {x.shape}; expected (N, {size}, {size}, 3) for {info.name}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{part} has dtype {y.dtype}; expected integer class labels")
        if y.shape != (len(x),):
            raise DataError(f"{where}: y_{part} has shape {y.shape}; expected ({len(x)},) to match x_{part}")
        if len(y) == 0:
            raise DataError(f"{where}: the {part} split is empty")
        if y.min() < 0 or y.max() >= info.num_classes:
            raise DataError(
                f"{where}: y_{part} spans {y.min()}..{y.max()}; {info.name} labels must lie in 0..{info.num_classes - 1}"
            )
    if arrays["classes"].shape != (info.num_classes,):
        raise DataError(f"{where}: classes has shape {arrays['classes'].shape}; expected ({info.num_classes},)")


def write_cache(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write a cache file atomically (a reader never sees a half-written file). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file handle stops numpy from appending ".npz"
            np.savez_compressed(handle, **arrays)
    return path


def read_cache(path: str | os.PathLike, info: DatasetInfo) -> dict[str, np.ndarray]:
    """Read and validate a cache file; DataError names the file and what is wrong with it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as error:  # zipfile, zlib, pickle and numpy all raise their own kinds
        raise DataError(
            f"{path}: not a readable .npz cache ({type(error).__name__}: {error}); delete it to re-download"
        ) from error
    validate_arrays(arrays, info, str(path))
    return arrays


def load_dataset(name: str, data_dir: str | os.PathLike, download: bool = True) -> ArrayDataset:
    """Load `name` from its cache in `data_dir`; without a cache, download, convert and write it."""
    info = DATASETS.get(name)
    path = find_cache(name, data_dir)
    if path is None:
        target = cache_path(name, data_dir)
        looked = ", ".join(str(Path(data_dir) / f) for f in (target.name, *info.file_aliases))
        if not download:
            raise DataError(f"data_dir: no {name} cache in {data_dir!s} (looked for {looked}) and downloading is off")
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".download-{name}-") as workdir:
                arrays = info.download(Path(workdir))
                validate_arrays(arrays, info, f"downloaded {name}")
                write_cache(arrays, target)
        except DataError:
            raise
        except Exception as error:
            raise DataError(
                f"data_dir: no {name} cache (looked for {looked}) and downloading it failed "
                f"({type(error).__name__}: {error}). Put the .npz file there or point --data-dir at it"
            ) from error
        path = target
    arrays = read_cache(path, info)
    return ArrayDataset(info, arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                        arrays["y_test"].astype(np.int64), arrays["classes"], path)


@dataclass
class DataConfig:
    """the dataset"""

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
    """The `data` command: cache `config.dataset` in `config.data_dir` (downloading and converting it
    when absent), validate it, and write the manifest `out` (JSON: the cache's path, bytes, SHA-256
    and image counts). The pipeline runs it once per dataset before any pretraining, so parallel
    pretraining jobs never download the same dataset twice."""
    out = Path(out)
    check_output_path(out, force, what="manifest file")
    dataset = load_dataset(config.dataset, config.data_dir, download=config.download)
    manifest = provenance(cfg.to_dict(config), "cpu")
    manifest["cache"] = {"path": str(dataset.path), "bytes": dataset.path.stat().st_size,
                         "sha256": sha256(dataset.path), "train_images": len(dataset.y_train),
                         "test_images": len(dataset.y_test), "classes": len(dataset.classes),
                         "fingerprint": dataset.fingerprint}
    with OutputLock(out):
        check_output_path(out, force, what="manifest file")  # again, under the lock
        write_json(out, manifest)
    if progress:
        print(f"{config.dataset}: {dataset.path} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
              f"images) -> {out}")
    return out


def balanced_subset(labels: np.ndarray, size: int, num_classes: int, field: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset: size // C images per class, the first size % C
    classes one more. Depends only on (labels, size, seed), so every run seed sees the same subset."""
    rng = np.random.default_rng(seed)
    per_class = np.full(num_classes, size // num_classes)
    per_class[: size % num_classes] += 1
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class[c]:
            available = min(np.bincount(labels, minlength=num_classes)) * num_classes
            raise ConfigError(field, size, f"at most {available} for a class-balanced subset of this file "
                              f"(class {c} has {len(members)} images, {per_class[c]} needed)")
        chosen.append(rng.choice(members, size=per_class[c], replace=False))
    return np.sort(np.concatenate(chosen))


class DeviceData:
    """One image set resident on `device` as a uint8 NCHW tensor, with labels; batches are gathered
    by index, augmented in one batched op, and normalised on the device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, device: torch.device | str,
                 crop_padding: int = 0, flip: bool = False):
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        # Normalise straight from 0..255: (x - 255 mean) / (255 std).
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255
        self.crop_padding = crop_padding
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images (channels_last) and labels at `index`; augmented iff a generator
        is given."""
        x = self.images[index]
        if generator is not None:
            x = self.augment(x, generator)
        # channels_last: about 1.3x faster convolutions on CPU, and what tensor cores want on GPU
        x = ((x.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return x, self.labels[index]

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding (as torchvision's RandomCrop) and horizontal flip, per image."""
        n, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=self.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=self.device)
            rows = dy + torch.arange(h, device=self.device).view(1, h, 1)
            cols = dx + torch.arange(w, device=self.device).view(1, 1, w)
            batch = torch.arange(n, device=self.device).view(n, 1, 1)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flip = torch.rand(n, generator=generator, device=self.device) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        return x


def device_datasets(dataset: ArrayDataset, device, train_index: np.ndarray | None = None,
                    test_index: np.ndarray | None = None, legacy_normalization: bool = False,
                    augment: bool = True) -> tuple[DeviceData, DeviceData]:
    """(train, test) DeviceData of the chosen subsets; train augmentation (crop + flip for CIFAR, flip
    for Tiny ImageNet, docs/benchmark.md#data-and-splits) unless augment is False."""
    info = dataset.info
    mean, std = info.stats(legacy_normalization)
    tr = slice(None) if train_index is None else train_index
    te = slice(None) if test_index is None else test_index
    train = DeviceData(dataset.x_train[tr], dataset.y_train[tr], mean, std, device,
                       crop_padding=info.crop_padding if augment else 0, flip=augment)
    test = DeviceData(dataset.x_test[te], dataset.y_test[te], mean, std, device)
    return train, test

