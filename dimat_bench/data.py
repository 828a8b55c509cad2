"""Image datasets: one validated `.npz` cache per dataset, the `data` command that fetches and
fingerprints it, recorded subsets (`data_subset`) derived from the official files, class-balanced
subsets, and device-resident batches with batched augmentation.

Cache layout (the same as `shared/data/README.md`): uint8 `x_train`/`x_test` (N, H, W, 3) RGB,
integer `y_train`/`y_test` (N,), and `classes` (C,) names. Extra keys are kept but ignored.
"""

from __future__ import annotations

import hashlib
import os
import pickle
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
from .results import OutputLock, atomic_path, check_output_path, file_sha256, provenance, write_json
from .subsets import FORMAT as SUBSET_FORMAT
from .subsets import subset_problem, subset_record


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
    subset: str | None = None  # the recorded subset (`data_subset`) this cache was chosen as

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


def check_data_subset(dataset: str, subset: str | None, field: str = "data_subset") -> None:
    """ConfigError unless `subset` is None or a recorded subset of `dataset` (dimat_bench/subsets/)."""
    problem = subset_problem(dataset, subset)
    if problem:
        raise ConfigError(field, subset, *problem)


def _array_dataset(info: DatasetInfo, arrays: dict[str, np.ndarray], path: Path,
                   subset: str | None = None) -> ArrayDataset:
    return ArrayDataset(info, arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                        arrays["y_test"].astype(np.int64), arrays["classes"], path, subset)


def load_dataset(name: str, data_dir: str | os.PathLike, download: bool = True,
                 subset: str | None = None) -> ArrayDataset:
    """Load `name` from its cache in `data_dir`; without a cache, download, convert and write it.
    With `subset` (a recorded subset, `dimat_bench.subsets`), the first of `<name>-<subset>.npz`,
    `<name>.npz` and the aliases whose content fingerprint is the recorded one; without one, the
    subset derived from a full official download, written as `<name>-<subset>.npz`."""
    info = DATASETS.get(name)
    if subset is not None:
        return load_subset(info, data_dir, subset, download)
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
    return _array_dataset(info, read_cache(path, info), path)


def load_subset(info: DatasetInfo, data_dir: str | os.PathLike, subset: str, download: bool) -> ArrayDataset:
    """`load_dataset` with a recorded subset: a cache is the subset iff its content fingerprint is
    the recorded one (a file's bytes are not its identity: zip timestamps differ between writes)."""
    check_data_subset(info.name, subset)
    record = subset_record(info.name, subset)
    wanted, data_dir = record["fingerprint"], Path(data_dir)
    target = data_dir / f"{info.name}-{subset}.npz"
    names = list(dict.fromkeys((target.name, f"{info.name}.npz", *info.file_aliases)))
    found = []
    for file_name in names:
        path = data_dir / file_name
        if path.exists():
            dataset = _array_dataset(info, read_cache(path, info), path, subset)
            if dataset.fingerprint == wanted:
                return dataset
            found.append(f"{file_name} has fingerprint {dataset.fingerprint[:19]}…")
    seen = "; ".join(found) if found else f"no cache file: looked for {', '.join(names)}"
    what = f"no cache in {data_dir} holds the {subset} subset of {info.name} ({seen}, recorded {wanted[:19]}…)"
    if not download:
        raise DataError(f"data_dir: {what} and downloading is off")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".download-{info.name}-") as workdir:
            download_official(info.name, Path(workdir))
            write_cache(derive_arrays(record, workdir), target)
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"data_dir: {what} and downloading the official {info.name} failed "
                        f"({type(error).__name__}: {error}). Put {target.name} there or point --data-dir at it"
                        ) from error
    return _array_dataset(info, read_cache(target, info), target, subset)


# --- Recorded subsets (dimat_bench/subsets/): record one from a cache, derive it from the official files.


@dataclass(frozen=True)
class OfficialFormat:
    """The official python version of a CIFAR dataset, the folder torchvision's `CIFAR10(root,
    download=True)` / `CIFAR100(...)` extracts under root: pickled batches of b'data' (N x 3072
    uint8, channel-planar: 1024 R, 1024 G, 1024 B, each row-major 32 x 32), labels and b'filenames'."""

    torchvision_name: str
    folder: str
    batches: tuple[tuple[str, tuple[str, ...]], ...]  # (split, its batch files in order)
    label_key: bytes
    meta_file: str
    meta_key: bytes  # the class names, in label order
    coarse_label_key: bytes | None = None
    coarse_meta_key: bytes | None = None


OFFICIAL: dict[str, OfficialFormat] = {
    "cifar10": OfficialFormat("CIFAR10", "cifar-10-batches-py",
                              (("train", tuple(f"data_batch_{i}" for i in range(1, 6))), ("test", ("test_batch",))),
                              b"labels", "batches.meta", b"label_names"),
    "cifar100": OfficialFormat("CIFAR100", "cifar-100-python", (("train", ("train",)), ("test", ("test",))),
                               b"fine_labels", "meta", b"fine_label_names", b"coarse_labels", b"coarse_label_names"),
}

SUBSET_KEY = ("an image's official key is '<class>/<file name>': the class name of its official label and its "
              "b'filenames' entry in the official python batches, unique per split (the file name alone is not: "
              "CIFAR-100's test set holds baby_s_000223.png as a baby and as a girl)")


def download_official(name: str, workdir: Path) -> Path:
    """Download and extract the official python version of `name` into `workdir` (torchvision);
    returns its folder."""
    import torchvision

    fmt = OFFICIAL[name]
    getattr(torchvision.datasets, fmt.torchvision_name)(root=str(workdir), train=True, download=True)
    return Path(workdir) / fmt.folder


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except Exception as error:
        raise DataError(f"{path}: not a readable official batch ({type(error).__name__}: {error})") from error


def read_official(name: str, official_dir: str | os.PathLike) -> dict[str, dict]:
    """The official batches under `official_dir` (the folder holding `cifar-10-batches-py/` or
    `cifar-100-python/`): per split, `data` (N, 3072) uint8, `labels` int64, `filenames` (str),
    `coarse` int64 or None, and `classes` / `classes_coarse` from the meta file (None without one)."""
    fmt = OFFICIAL[name]
    folder = Path(official_dir) / fmt.folder
    if not folder.is_dir():
        raise DataError(f"{official_dir}: no {fmt.folder}/ (the official python version of {name}, as "
                        f"torchvision's {fmt.torchvision_name}(root, download=True) extracts it)")
    meta = _unpickle(folder / fmt.meta_file) if (folder / fmt.meta_file).exists() else {}
    names = lambda key: [n.decode() for n in meta[key]] if key in meta else None  # noqa: E731
    splits = {}
    for part, files in fmt.batches:
        batches = []
        for file_name in files:
            batch = _unpickle(folder / file_name)
            wanted = [b"data", fmt.label_key, b"filenames"] + ([fmt.coarse_label_key] if fmt.coarse_label_key else [])
            if any(key not in batch for key in wanted):
                raise DataError(f"{folder / file_name}: an official batch holds {wanted}; this one {sorted(batch)}")
            batches.append(batch)
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8).reshape(len(b[b"data"]), -1) for b in batches])
        splits[part] = {
            "data": data,
            "labels": np.concatenate([np.asarray(b[fmt.label_key], dtype=np.int64) for b in batches]),
            "filenames": [f.decode() if isinstance(f, bytes) else str(f) for b in batches for f in b[b"filenames"]],
            "coarse": (np.concatenate([np.asarray(b[fmt.coarse_label_key], dtype=np.int64) for b in batches])
                       if fmt.coarse_label_key else None),
        }
    splits["classes"] = names(fmt.meta_key)
    splits["classes_coarse"] = names(fmt.coarse_meta_key) if fmt.coarse_meta_key else None
    return splits


def record_subset(npz_path: str | os.PathLike, dataset: str, name: str = "shared", description: str = "") -> dict:
    """The record of the cache `npz_path` as subset `name` of `dataset` (`dimat_bench.subsets`): its
    content fingerprint, and per split the official key of every image in row order, read from the
    cache's `files_<split>` ('<class>/<file name>', the shared caches' naming). Write it with
    `dimat_bench.subsets.write_record`; tools/record-subset records the shared caches."""
    if dataset not in OFFICIAL:
        raise ConfigError("dataset", dataset, ", ".join(OFFICIAL), "a subset is recorded against the official "
                          "python batches, which only CIFAR has")
    info, path, fmt = DATASETS.get(dataset), Path(npz_path), OFFICIAL[dataset]
    arrays = read_cache(path, info)
    coarse = fmt.coarse_label_key is not None and "classes_coarse" in arrays
    known = {*REQUIRED_KEYS, "files_train", "files_test"} | (
        {"y_train_coarse", "y_test_coarse", "classes_coarse"} if coarse else set())
    unknown = [key for key in arrays if key not in known]
    if unknown:
        raise DataError(f"{path}: key(s) {unknown} cannot be derived from the official batches "
                        f"(a recorded {dataset} cache holds {sorted(known)})")
    classes = [str(c) for c in arrays["classes"].tolist()]
    images = {}
    for part in ("train", "test"):
        if f"files_{part}" not in arrays:
            raise DataError(f"{path}: no files_{part}: a record names each image by its source file")
        files = [str(f) for f in arrays[f"files_{part}"].tolist()]
        for file, label in zip(files, arrays[f"y_{part}"].tolist()):
            folder, _, file_name = file.partition("/")
            if folder != classes[label] or not file_name or "/" in file_name:
                raise DataError(f"{path}: files_{part} entry {file!r} is not '<class>/<file name>' of its label "
                                f"{label} ({classes[label]})")
        if len(set(files)) != len(files):
            twice = sorted({f for f in files if files.count(f) > 1})[:3]
            raise DataError(f"{path}: files_{part} names the same official image twice ({', '.join(twice)})")
        images[part] = files
    record = {
        "format": SUBSET_FORMAT, "name": name, "dataset": dataset, "fingerprint": fingerprint(arrays),
        "source": {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
                   "description": description},
        "keys": list(arrays), "dtypes": {key: value.dtype.str for key, value in arrays.items()},
        "counts": {part: len(files) for part, files in images.items()},
        "classes": classes,
    }
    if coarse:
        record["classes_coarse"] = [str(c) for c in arrays["classes_coarse"].tolist()]
        coarse_of_fine = []
        for c in range(len(classes)):
            found = np.unique(np.concatenate([arrays[f"y_{p}_coarse"][arrays[f"y_{p}"] == c] for p in images]))
            if len(found) != 1:
                raise DataError(f"{path}: class {classes[c]} has coarse label(s) {found.tolist()}; expected one")
            coarse_of_fine.append(int(found[0]))
        record["coarse_of_fine"] = coarse_of_fine
    record["official"] = {"folder": fmt.folder, "batches": {part: list(files) for part, files in fmt.batches},
                          "key": SUBSET_KEY}
    record["images"] = images
    return record


def _official_rows(wanted: list[str], classes: list[str], batch: dict, what: str, where: str,
                   official_dir) -> np.ndarray:
    """The row of each recorded key ('<class>/<file name>') in the official `batch`; DataError when
    one is missing or occurs twice."""
    position = {key: i for i, key in enumerate(wanted)}
    rows = np.full(len(wanted), -1, dtype=np.int64)
    twice = []
    for row, (label, file_name) in enumerate(zip(batch["labels"].tolist(), batch["filenames"])):
        i = position.get(f"{classes[label]}/{file_name}") if 0 <= label < len(classes) else None
        if i is not None:
            if rows[i] >= 0:
                twice.append(wanted[i])
            rows[i] = row
    missing = [wanted[i] for i in np.flatnonzero(rows < 0)]
    if missing:
        raise DataError(f"{official_dir}: {len(missing)} of the {len(wanted)} {what}s of {where} are not in the "
                        f"official batches ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); is it a "
                        "complete official download?")
    if twice:
        shown = ", ".join(sorted(set(twice))[:3])
        raise DataError(f"{official_dir}: {len(twice)} {what}(s) of {where} are ambiguous, their '<class>/<file "
                        f"name>' occurring more than once in the official batches ({shown})")
    return rows


def derive_arrays(record: dict, official_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a recorded subset, picked from the official batches under `official_dir` in the
    recorded order: equal (values and dtypes) to the cache it was recorded from. DataError, naming
    the subset, when a recorded image is missing or ambiguous, or the result's fingerprint is not
    the recorded one."""
    dataset, where = record["dataset"], f"the {record['name']} subset of {record['dataset']}"
    info, dtypes, classes = DATASETS.get(dataset), record["dtypes"], record["classes"]
    official = read_official(dataset, official_dir)
    for key in ("classes", "classes_coarse"):
        if official[key] is not None and key in record and official[key] != record[key]:
            raise DataError(f"{official_dir}: the official {key} {official[key][:3]}… are not those of {where} "
                            f"{record[key][:3]}…")
    out: dict[str, np.ndarray] = {}
    for part, wanted in record["images"].items():
        batch = official[part]
        rows = _official_rows(wanted, classes, batch, f"{part} image", where, official_dir)
        size = info.image_size
        x = batch["data"][rows].reshape(len(rows), 3, size, size).transpose(0, 2, 3, 1)
        out[f"x_{part}"] = np.ascontiguousarray(x, dtype=np.dtype(dtypes[f"x_{part}"]))
        out[f"y_{part}"] = batch["labels"][rows].astype(dtypes[f"y_{part}"])
        if f"files_{part}" in dtypes:
            out[f"files_{part}"] = np.asarray(wanted, dtype=dtypes[f"files_{part}"])
        if f"y_{part}_coarse" in dtypes:
            y_coarse = batch["coarse"][rows]
            expected = np.asarray(record["coarse_of_fine"])[out[f"y_{part}"]]
            if not np.array_equal(y_coarse, expected):
                bad = wanted[int(np.flatnonzero(y_coarse != expected)[0])]
                raise DataError(f"{official_dir}: the official coarse labels of {where} are not the recorded "
                                f"ones (first: {bad})")
            out[f"y_{part}_coarse"] = y_coarse.astype(dtypes[f"y_{part}_coarse"])
    for key in ("classes", "classes_coarse"):
        if key in dtypes:
            out[key] = np.asarray(record[key], dtype=dtypes[key])
    arrays = {key: out[key] for key in record["keys"]}  # the recorded cache's key order
    validate_arrays(arrays, info, f"derived {where}")
    got = fingerprint(arrays)
    if got != record["fingerprint"]:
        raise DataError(f"{official_dir}: {where} derived from these official batches has fingerprint {got[:19]}…, "
                        f"recorded {record['fingerprint'][:19]}…")
    return arrays


def derive_subset(dataset: str, name: str, official_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """`derive_arrays` of the recorded subset `name` of `dataset` (dimat_bench/subsets/)."""
    check_data_subset(dataset, name)
    return derive_arrays(subset_record(dataset, name), official_dir)


@dataclass
class DataConfig:
    """the dataset"""

    dataset: str = cfg.option("cifar10", "dataset", choices=DATASETS.names)
    data_dir: str = cfg.option("resources/data", "folder with the <dataset>.npz caches (downloaded when missing)")
    download: bool = cfg.option(True, "download and convert a dataset whose cache is missing")
    data_subset: str | None = cfg.option(
        None, "a recorded subset of the dataset (dimat_bench/subsets/): none = the whole cache or download; shared = "
              "the images the CPU grids run on (the shared cifar10/cifar100 caches), read from the first cache in "
              "data_dir with its content fingerprint, else derived from a full official download")

    def __post_init__(self) -> None:  # the allowed names depend on the dataset; PretrainConfig's check too
        check_data_subset(self.dataset, self.data_subset)


sha256 = file_sha256  # a file's bytes (the data manifest records it; the identity is `fingerprint`)


def prepare_data(config: DataConfig, out: str | Path, force: bool = False, progress: bool = True) -> Path:
    """The `data` command: cache `config.dataset` in `config.data_dir` (downloading and converting it
    when absent; with `data_subset`, the recorded subset, derived from a download when no cache
    holds it), validate it, and write the manifest `out` (JSON: the cache's path, bytes, SHA-256,
    image counts, content fingerprint and subset). The pipeline runs it once per dataset before any
    pretraining, so parallel pretraining jobs never download the same dataset twice."""
    out = Path(out)
    check_output_path(out, force, what="manifest file")
    dataset = load_dataset(config.dataset, config.data_dir, download=config.download, subset=config.data_subset)
    manifest = provenance(cfg.to_dict(config), "cpu")
    manifest["cache"] = {"path": str(dataset.path), "bytes": dataset.path.stat().st_size,
                         "sha256": sha256(dataset.path), "train_images": len(dataset.y_train),
                         "test_images": len(dataset.y_test), "classes": len(dataset.classes),
                         "fingerprint": dataset.fingerprint, "subset": config.data_subset}
    with OutputLock(out):
        check_output_path(out, force, what="manifest file")  # again, under the lock
        write_json(out, manifest)
    if progress:
        subset = f", the {config.data_subset} subset" if config.data_subset else ""
        print(f"{config.dataset}: {dataset.path} ({len(dataset.y_train)} train / {len(dataset.y_test)} test "
              f"images{subset}) -> {out}")
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

