"""Cut the committed test fixtures from the shared data files (run from the repository root):

    python tests/data/make_fixtures.py ../shared/data

cifar10.npz:  the first 50 training and the first 20 test images of every class, in file order
              (the shared files' rows are in a fixed pseudo-random order), 700 images.
cifar100.npz: the first 2 training and the first 1 test image of every class, 300 images.
Every key of the source is kept, including `files_*`, which names each image's source file."""

import sys
from pathlib import Path

import numpy as np

PLAN = {"cifar10": (50, 20), "cifar100": (2, 1)}


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in np.unique(labels)]))


def main(source: Path, target: Path) -> None:
    for name, (k_train, k_test) in PLAN.items():
        with np.load(source / f"{name}.npz", allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        keep = {"train": first_per_class(arrays["y_train"], k_train), "test": first_per_class(arrays["y_test"], k_test)}
        part = {key: next((p for p in keep if f"_{p}" in key), None) for key in arrays}
        cut = {key: value[keep[part[key]]] if part[key] else value for key, value in arrays.items()}
        with open(target / f"{name}.npz", "wb") as handle:
            np.savez_compressed(handle, **cut)
        print(name, {k: v.shape for k, v in cut.items()}, (target / f"{name}.npz").stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
