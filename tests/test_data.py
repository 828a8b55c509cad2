import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dimat_bench import config as cfg
from dimat_bench.cli import main
from dimat_bench.data import (DATASETS, OFFICIAL, DataConfig, DataError, DeviceData, balanced_subset, derive_arrays,
                              derive_subset, device_datasets, fingerprint, load_dataset, read_official, record_subset,
                              tinyimagenet_arrays, write_cache)
from dimat_bench.pretrain import PretrainConfig
from dimat_bench.registry import ConfigError
from dimat_bench.subsets import (SUBSETS, UnknownSubset, read_record, subset_fingerprint, subset_path, subset_record,
                                 write_record)

ROOT = Path(__file__).resolve().parent.parent


def test_cache_round_trip(tmp_path, cifar10_arrays):
    write_cache(cifar10_arrays, tmp_path / "cifar10.npz")
    loaded = load_dataset("cifar10", tmp_path, download=False)
    for key, value in cifar10_arrays.items():
        np.testing.assert_array_equal(getattr(loaded, key), value)
    assert loaded.path == tmp_path / "cifar10.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["cifar10.npz"], "no temporary files left behind"


def corrupt(arrays: dict, key: str, value) -> dict:
    return {**arrays, key: value} if value is not None else {k: v for k, v in arrays.items() if k != key}


@pytest.mark.parametrize("key,value,message", [
    ("x_train", None, r"missing key\(s\) \['x_train'\]"),
    ("x_train", "float", "x_train has dtype float32; expected uint8"),
    ("y_test", "shift", "y_test spans 1..10; cifar10 labels must lie in 0..9"),
    ("x_test", "small", r"x_test has shape \(200, 16, 16, 3\); expected \(N, 32, 32, 3\)"),
    ("y_train", "short", r"y_train has shape \(499,\); expected \(500,\)"),
    ("classes", "few", r"classes has shape \(5,\); expected \(10,\)"),
])
def test_wrong_cache_contents_fail_naming_file_and_problem(tmp_path, cifar10_arrays, key, value, message):
    original = cifar10_arrays[key]
    bad = {None: lambda a: None, "float": lambda a: a.astype(np.float32), "shift": lambda a: a + 1,
           "small": lambda a: a[:, ::2, ::2], "short": lambda a: a[:-1], "few": lambda a: a[:5]}[value](original)
    write_cache(corrupt(cifar10_arrays, key, bad), tmp_path / "cifar10.npz")
    with pytest.raises(DataError, match=message) as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(tmp_path / "cifar10.npz") in str(info.value)


def test_truncated_cache_fails_clearly(tmp_path, data_dir):
    raw = (data_dir / "cifar10.npz").read_bytes()
    (tmp_path / "cifar10.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cifar10.npz: not a readable .npz cache .*delete it to re-download"):
        load_dataset("cifar10", tmp_path, download=False)


def test_missing_cache_without_download(tmp_path):
    with pytest.raises(DataError, match=r"data_dir: no cifar100 cache in .* \(looked for .*cifar100.npz\)"):
        load_dataset("cifar100", tmp_path, download=False)


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10 (this machine cannot download), serving fixture images."""

    arrays: dict = {}
    calls: list = []

    def __init__(self, root, train, download):
        part = "train" if train else "test"
        self.calls.append((root, train, download))
        self.data, self.targets = self.arrays[f"x_{part}"], list(self.arrays[f"y_{part}"])
        self.classes = list(self.arrays["classes"])


def test_missing_cache_is_downloaded_converted_and_written(tmp_path, monkeypatch, cifar10_arrays):
    import torchvision

    FakeCIFAR10.arrays, FakeCIFAR10.calls = cifar10_arrays, []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    loaded = load_dataset("cifar10", tmp_path / "cache")
    assert [c[1:] for c in FakeCIFAR10.calls] == [(True, True), (False, True)]
    np.testing.assert_array_equal(loaded.x_test, cifar10_arrays["x_test"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar10.npz"]
    FakeCIFAR10.calls = []
    load_dataset("cifar10", tmp_path / "cache")
    assert FakeCIFAR10.calls == [], "a present cache is not downloaded again"


def test_failed_download_leaves_nothing_and_says_what_to_do(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="downloading it failed .*network is unreachable.*--data-dir"):
        load_dataset("cifar10", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tinyimagenet_conversion_relabels_val_from_annotations(tmp_path, cifar10):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    images = np.kron(cifar10.x_train[:6], np.ones((1, 2, 2, 1), dtype=np.uint8))  # real images at 64x64
    wnids = ["n02", "n01"]
    for k, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(images[2 * k + j]).save(root / "train" / wnid / "images" / f"{wnid}_{j}.png")
    (root / "val" / "images").mkdir(parents=True)
    for j, wnid in enumerate(["n02", "n01"]):
        Image.fromarray(images[4 + j]).save(root / "val" / "images" / f"val_{j}.png")
    (root / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t63\t63\nval_1.png\tn01\t0\t0\t63\t63\n")
    arrays = tinyimagenet_arrays(root)
    assert list(arrays["classes"]) == ["n01", "n02"]  # sorted like ImageFolder
    assert arrays["y_train"].tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(arrays["x_train"][0], images[2])
    assert arrays["y_test"].tolist() == [1, 0]
    np.testing.assert_array_equal(arrays["x_test"], images[4:6])


def test_shared_tiny_file_name_is_accepted_as_an_alias(tmp_path, cifar10):
    x = np.kron(np.resize(cifar10.x_train, (200, 32, 32, 3)), np.ones((1, 2, 2, 1), dtype=np.uint8))
    arrays = {"x_train": x, "y_train": np.arange(200), "x_test": x[:10], "y_test": np.arange(10),
              "classes": np.array([f"n{i:08d}" for i in range(200)])}
    write_cache(arrays, tmp_path / "tinyimagenet-200-sub.npz")
    loaded = load_dataset("tinyimagenet", tmp_path, download=False)
    assert loaded.path.name == "tinyimagenet-200-sub.npz" and loaded.x_train.shape == (200, 64, 64, 3)


def test_balanced_subset(cifar10):
    index = balanced_subset(cifar10.y_train, 103, 10, "train_size")
    counts = np.bincount(cifar10.y_train[index], minlength=10)
    assert counts.tolist() == [11, 11, 11] + [10] * 7
    np.testing.assert_array_equal(index, balanced_subset(cifar10.y_train, 103, 10, "train_size"))
    with pytest.raises(ConfigError, match="train_size: got 600; allowed: at most 500"):
        balanced_subset(cifar10.y_train, 600, 10, "train_size")


def test_normalisation_uses_each_datasets_own_statistics(cifar10, cifar100):
    train, _ = device_datasets(cifar10, "cpu", augment=False)
    x, y = train.batch(torch.arange(4))
    mean, std = np.array(DATASETS.get("cifar10").mean), np.array(DATASETS.get("cifar10").std)
    expected = (cifar10.x_train[:4] / 255.0 - mean) / std
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert y.tolist() == cifar10.y_train[:4].tolist()
    own, _ = device_datasets(cifar100, "cpu", augment=False)
    legacy, _ = device_datasets(cifar100, "cpu", augment=False, legacy_normalization=True)
    assert own.mean.flatten().tolist() == pytest.approx([255 * m for m in (0.5071, 0.4865, 0.4409)])
    assert legacy.std.flatten().tolist() == pytest.approx([255 * s for s in (0.2023, 0.1994, 0.2010)])


def test_augmentation_is_a_padded_crop_and_flip_of_each_image_and_is_seeded(cifar10):
    data = DeviceData(cifar10.x_train[:24], cifar10.y_train[:24], (0, 0, 0), (1, 1, 1), "cpu",
                      crop_padding=4, flip=True)
    original = data.images
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    out = data.augment(original, torch.Generator().manual_seed(0))
    flips, shifts = 0, set()
    for i in range(24):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {i} is not a crop/flip of its source"
        flips += matches[0][2]
        shifts.add(matches[0][:2])
    assert 0 < flips < 24 and len(shifts) > 5
    assert torch.equal(out, data.augment(original, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, data.augment(original, torch.Generator().manual_seed(1)))


def test_data_command_writes_a_manifest_of_the_validated_cache(data_dir, tmp_path):
    out = tmp_path / "manifests" / "cifar10.json"
    assert main(["data", "--dataset", "cifar10", "--data-dir", str(data_dir), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads(out.read_text())
    cache = data_dir / "cifar10.npz"
    assert manifest["cache"]["path"] == str(cache) and manifest["cache"]["bytes"] == cache.stat().st_size
    assert manifest["cache"]["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    with np.load(cache) as arrays:
        assert manifest["cache"]["train_images"] == len(arrays["y_train"])
        assert manifest["cache"]["test_images"] == len(arrays["y_test"])
    assert manifest["config"]["dataset"] == "cifar10" and manifest["versions"]["torch"]
    assert manifest["cache"]["subset"] is None and manifest["config"]["data_subset"] is None


def test_data_command_without_a_cache_or_download_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cifar100.json"
    assert main(["data", "--dataset", "cifar100", "--data-dir", str(tmp_path / "empty"), "--no-download",
                 "--out", str(out)]) == 2
    assert "data_dir: no cifar100 cache" in capsys.readouterr().err
    assert not out.exists()


# --- Recorded subsets (dimat_bench/subsets/): the shared CPU caches, derived from official batches.

SHARED_FOLDERS = ((Path(os.environ["DATA"]),) if os.environ.get("DATA") else ()) + (
    ROOT.parent / "shared" / "data", ROOT / "shared" / "data")  # as tools/find-data looks: $DATA first


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    """The shared CPU caches the `shared` subsets were recorded from (skips where they are absent,
    as on a user's machine)."""
    for folder in SHARED_FOLDERS:
        if (folder / "cifar10.npz").is_file() and (folder / "cifar100.npz").is_file():
            return folder
    pytest.skip("no shared CPU caches ($DATA, ../shared/data: cifar10.npz and cifar100.npz) on this machine")


def npz_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def write_official(root: Path, dataset: str, arrays: dict, seed: int = 0, extra: int = 0, relabelled: int = 0,
                   drop: tuple[str, ...] = (), again: tuple[str, ...] = ()) -> Path:
    """The official python batches (as torchvision extracts them under `root`) holding every image
    of the cache `arrays` (named by its files_*) in another, shuffled order across the batch files,
    plus per split `extra` made-up images with other file names and `relabelled` made-up images that
    reuse a recorded file name under another class; less the images named in `drop`, and those in
    `again` twice (the second time with other pixels). Returns root."""
    fmt, rng = OFFICIAL[dataset], np.random.default_rng(seed)
    classes = [str(c) for c in arrays["classes"]]
    coarse_of_fine = None
    if fmt.coarse_label_key:
        coarse_of_fine = np.zeros(len(classes), dtype=np.int64)
        coarse_of_fine[arrays["y_train"]] = arrays["y_train_coarse"]
    folder = root / fmt.folder
    folder.mkdir(parents=True)
    for part, files in fmt.batches:
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"].astype(np.int64)
        keys = [str(f) for f in arrays[f"files_{part}"]]
        names = [k.split("/", 1)[1] for k in keys]
        twice = [keys.index(k) for k in again if k in keys]
        keep = [i for i, k in enumerate(keys) if k not in drop] + twice
        x, y, names = x[keep], y[keep], [names[i] for i in keep]
        x[len(keep) - len(twice):] ^= 1  # the second copies' pixels differ
        made_up = extra + relabelled
        x = np.concatenate([x, rng.integers(0, 256, (made_up, *x.shape[1:]), dtype=np.uint8)])
        y = np.concatenate([y, rng.integers(0, len(classes), extra), (y[:relabelled] + 1) % len(classes)])
        names += [f"made_up_s_{i:06d}.png" for i in range(extra)] + names[:relabelled]
        order = rng.permutation(len(y))
        data = x[order].transpose(0, 3, 1, 2).reshape(len(y), -1)  # channel-planar rows
        y, names = y[order], [names[i] for i in order]
        for file_name, rows in zip(files, np.array_split(np.arange(len(y)), len(files))):
            batch = {b"batch_label": file_name.encode(), b"data": data[rows], fmt.label_key: y[rows].tolist(),
                     b"filenames": [names[r].encode() for r in rows]}
            if coarse_of_fine is not None:
                batch[fmt.coarse_label_key] = coarse_of_fine[y[rows]].tolist()
            with open(folder / file_name, "wb") as handle:
                pickle.dump(batch, handle)
    meta = {fmt.meta_key: [c.encode() for c in classes]}
    if fmt.coarse_meta_key:
        meta[fmt.coarse_meta_key] = [str(c).encode() for c in arrays["classes_coarse"]]
    with open(folder / fmt.meta_file, "wb") as handle:
        pickle.dump(meta, handle)
    return root


@pytest.fixture(scope="module")
def official_cifar10(tmp_path_factory, shared_dir) -> Path:
    """Official CIFAR-10 batches holding all 20,000 shared images, shuffled, plus 300 made-up images
    and 50 that reuse a recorded file name under another class, per split."""
    arrays = npz_arrays(shared_dir / "cifar10.npz")
    return write_official(tmp_path_factory.mktemp("official"), "cifar10", arrays, extra=300, relabelled=50)


def fixture_record(data_dir, dataset: str, name: str = "fixture") -> dict:
    """A record of the committed fixture cache (a 700 / 300 image cut of the shared ones)."""
    return record_subset(data_dir / f"{dataset}.npz", dataset, name, "the committed test fixture")


def test_the_shared_caches_are_recorded_as_small_files():
    assert "shared" in SUBSETS["cifar10"] and "shared" in SUBSETS["cifar100"] and "tinyimagenet" not in SUBSETS
    for dataset, classes in (("cifar10", 10), ("cifar100", 100)):
        path = subset_path(dataset, "shared")
        assert path.stat().st_size < 300_000
        record = subset_record(dataset, "shared")
        assert (record["name"], record["dataset"]) == ("shared", dataset)
        assert record["counts"] == {"train": 10_000, "test": 10_000}
        assert record["fingerprint"] == subset_fingerprint(dataset, "shared") and len(record["fingerprint"]) == 71
        assert record["source"]["file"] == f"{dataset}.npz" and "default_rng(0)" in record["source"]["description"]
        assert len(record["classes"]) == classes
        for part in ("train", "test"):
            images = record["images"][part]
            assert len(images) == len(set(images)) == 10_000
            assert all(image.split("/")[0] in record["classes"] for image in images)
    # the file name alone is not a key: CIFAR-100's test set holds one name under two classes
    test = subset_record("cifar100", "shared")["images"]["test"]
    assert {"baby/baby_s_000223.png", "girl/baby_s_000223.png"} <= set(test)
    assert subset_record("cifar10", "shared")["source"]["sha256"] == (
        "5fc77d62b47b7fe116c0b0b54666f8f5fa04a998ad316b55d3f21a50540d5cf3")  # shared/data/README.md


def test_subsets_module_imports_neither_numpy_nor_torch():
    code = ("import sys, dimat_bench.subsets as s; s.subset_fingerprint('cifar10', 'shared'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_the_fixture_record_is_what_the_committed_fixture_gives(data_dir):
    committed = subset_record("cifar10", "fixture")
    description = committed["source"]["description"]
    assert record_subset(data_dir / "cifar10.npz", "cifar10", "fixture", description) == committed
    loaded = load_dataset("cifar10", data_dir, download=False, subset="fixture")
    assert loaded.path == data_dir / "cifar10.npz" and loaded.fingerprint == committed["fingerprint"]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_records_are_what_the_shared_caches_give(shared_dir, dataset):
    committed = subset_record(dataset, "shared")
    record = record_subset(shared_dir / f"{dataset}.npz", dataset, "shared", committed["source"]["description"])
    assert record == committed
    assert record["fingerprint"] == load_dataset(dataset, shared_dir, download=False).fingerprint


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_shared_subset_is_derived_exactly_from_shuffled_official_batches(tmp_path, shared_dir, official_cifar10,
                                                                        dataset):
    shared = npz_arrays(shared_dir / f"{dataset}.npz")
    official = (official_cifar10 if dataset == "cifar10"
                else write_official(tmp_path, dataset, shared, seed=1, extra=300, relabelled=50))
    batches = read_official(dataset, official)
    for part in ("train", "test"):  # the batches hold more images, in another order; the key is unique
        keys = [f"{batches['classes'][y]}/{f}" for y, f in zip(batches[part]["labels"], batches[part]["filenames"])]
        recorded = set(subset_record(dataset, "shared")["images"][part])
        assert len(keys) == len(shared[f"y_{part}"]) + 350 and sum(k in recorded for k in keys) == len(recorded)
        assert len({k for k in keys if k in recorded}) == len(recorded), "(class, file name) is unique"
        assert len(set(batches[part]["filenames"])) < len(keys), "the file name alone is not"
        assert not np.array_equal(batches[part]["labels"][:100], shared[f"y_{part}"][:100])
    derived = derive_subset(dataset, "shared", official)
    assert list(derived) == list(shared)
    for key, value in shared.items():
        assert derived[key].dtype == value.dtype and np.array_equal(derived[key], value), key
    assert fingerprint(derived) == fingerprint(shared) == subset_fingerprint(dataset, "shared")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_fixture_subset_is_derived_with_every_key(tmp_path, data_dir, dataset):
    record = fixture_record(data_dir, dataset)
    cache = npz_arrays(data_dir / f"{dataset}.npz")
    derived = derive_arrays(record, write_official(tmp_path, dataset, cache, extra=40, relabelled=20))
    assert list(derived) == list(cache)
    for key, value in cache.items():
        assert derived[key].dtype == value.dtype and np.array_equal(derived[key], value), key


def test_a_recorded_image_missing_from_the_batches_fails_naming_it(tmp_path, data_dir):
    record = fixture_record(data_dir, "cifar10")
    gone = record["images"]["test"][7]
    official = write_official(tmp_path, "cifar10", npz_arrays(data_dir / "cifar10.npz"), extra=40, drop=(gone,))
    with pytest.raises(DataError) as info:
        derive_arrays(record, official)
    assert str(info.value) == (f"{official}: 1 of the 200 test images of the fixture subset of cifar10 are not in the "
                               f"official batches ({gone}); is it a complete official download?")


def test_a_recorded_image_twice_in_the_batches_fails_naming_it(tmp_path, data_dir):
    record = fixture_record(data_dir, "cifar100")
    twice = record["images"]["train"][3]
    official = write_official(tmp_path, "cifar100", npz_arrays(data_dir / "cifar100.npz"), again=(twice,))
    with pytest.raises(DataError, match=rf"1 train image\(s\) of the fixture subset of cifar100 are ambiguous, their "
                                        rf"'<class>/<file name>' occurring more than once in the official batches "
                                        rf"\({twice}\)$"):
        derive_arrays(record, official)


def test_derived_arrays_of_another_fingerprint_fail_naming_the_subset(tmp_path, data_dir):
    record = {**fixture_record(data_dir, "cifar10"), "fingerprint": "sha256:" + "0" * 64}
    official = write_official(tmp_path, "cifar10", npz_arrays(data_dir / "cifar10.npz"))
    with pytest.raises(DataError, match=r": the fixture subset of cifar10 derived from these official batches has "
                                        r"fingerprint sha256:\w{12}…, recorded sha256:000000000000…$"):
        derive_arrays(record, official)


def test_subset_with_no_cache_holding_it_and_download_off_fails_in_one_line(tmp_path, data_dir):
    shutil.copy(data_dir / "cifar10.npz", tmp_path / "cifar10.npz")
    other = load_dataset("cifar10", tmp_path, download=False).fingerprint
    recorded = subset_fingerprint("cifar10", "shared")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path, download=False, subset="shared")
    assert str(info.value) == (f"data_dir: no cache in {tmp_path} holds the shared subset of cifar10 (cifar10.npz has "
                               f"fingerprint {other[:19]}…, recorded {recorded[:19]}…) and downloading is off")
    with pytest.raises(DataError, match=r"^data_dir: no cache in .* holds the shared subset of cifar100 \(no cache "
                                        r"file: looked for cifar100-shared.npz, cifar100.npz, recorded "
                                        r"sha256:\w{12}…\) and downloading is off$"):
        load_dataset("cifar100", tmp_path, download=False, subset="shared")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_the_shared_folder_holds_the_shared_subset(shared_dir, dataset):
    loaded = load_dataset(dataset, shared_dir, download=False, subset="shared")
    shared = npz_arrays(shared_dir / f"{dataset}.npz")
    assert loaded.path == shared_dir / f"{dataset}.npz" and loaded.subset == "shared"
    for key in ("x_train", "y_train", "x_test", "y_test", "classes"):
        assert np.array_equal(getattr(loaded, key), shared[key]), key


def test_a_derived_subset_cache_is_used_first_and_a_stale_one_skipped(tmp_path, shared_dir, data_dir):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "cifar10-shared.npz").symlink_to(shared_dir / "cifar10.npz")
    shutil.copy(data_dir / "cifar10.npz", first / "cifar10.npz")
    assert load_dataset("cifar10", first, download=False, subset="shared").path == first / "cifar10-shared.npz"
    assert load_dataset("cifar10", first, download=False).path == first / "cifar10.npz", "without a subset: as before"
    shutil.copy(data_dir / "cifar10.npz", second / "cifar10-shared.npz")  # other images under the subset's name
    (second / "cifar10.npz").symlink_to(shared_dir / "cifar10.npz")
    loaded = load_dataset("cifar10", second, download=False, subset="shared")
    assert loaded.path == second / "cifar10.npz" and loaded.fingerprint == subset_fingerprint("cifar10", "shared")


class OfficialCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10(root, download=True): extracts the prepared
    official batches under root."""

    source: Path | None = None
    calls: list = []

    def __init__(self, root, train, download):
        self.calls.append((train, download))
        shutil.copytree(self.source / "cifar-10-batches-py", Path(root) / "cifar-10-batches-py")


def test_a_missing_subset_is_derived_from_the_official_download(tmp_path, monkeypatch, shared_dir, official_cifar10):
    import torchvision

    OfficialCIFAR10.source, OfficialCIFAR10.calls = official_cifar10, []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfficialCIFAR10)
    shutil.copy(ROOT / "tests" / "data" / "cifar10.npz", tmp_path / "cifar10.npz")  # another cache: not the subset
    loaded = load_dataset("cifar10", tmp_path, subset="shared")
    assert OfficialCIFAR10.calls == [(True, True)]
    assert loaded.path == tmp_path / "cifar10-shared.npz"
    assert loaded.fingerprint == subset_fingerprint("cifar10", "shared")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10-shared.npz", "cifar10.npz"], "no download left"
    written, shared = npz_arrays(tmp_path / "cifar10-shared.npz"), npz_arrays(shared_dir / "cifar10.npz")
    assert list(written) == list(shared)
    for key, value in shared.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
    load_dataset("cifar10", tmp_path, subset="shared")
    assert OfficialCIFAR10.calls == [(True, True)], "a cache holding the subset is not downloaded again"


def test_a_subset_a_dataset_has_not_recorded_is_a_config_error(tmp_path):
    recorded = "; ".join(f"{dataset}: {', '.join(names)}" for dataset, names in SUBSETS.items())
    assert "cifar10: " in recorded and "cifar100: " in recorded
    with pytest.raises(ConfigError) as info:
        load_dataset("tinyimagenet", tmp_path, subset="shared")
    assert str(info.value) == ("data_subset: got 'shared'; allowed: null (the whole cache). no subset of tinyimagenet "
                               f"is recorded (recorded: {recorded})")
    with pytest.raises(ConfigError, match=r"^data_subset: got 'sharde'; allowed: null \(the whole cache\) or "
                                          r"(\w+, )*shared(, \w+)*\. did you mean 'shared'\?$"):
        cfg.from_dict(DataConfig, {"dataset": "cifar10", "data_subset": "sharde"})
    with pytest.raises(ConfigError, match="^data_subset: got 'shared'; allowed: null"):
        cfg.from_dict(PretrainConfig, {"dataset": "tinyimagenet", "data_subset": "shared"})
    assert cfg.from_dict(PretrainConfig, {"dataset": "cifar100", "data_subset": "shared"}).data_subset == "shared"
    with pytest.raises(ConfigError, match="^data_subset: got 'shared'; allowed: null"):
        derive_subset("tinyimagenet", "shared", tmp_path)
    with pytest.raises(UnknownSubset, match="^data_subset: got 'nope'; allowed: null .*shared"):
        subset_record("cifar10", "nope")  # the torch-free reader: a LookupError of its own


def test_data_command_records_the_subset_in_its_manifest(shared_dir, tmp_path):
    out = tmp_path / "cifar100.json"
    assert main(["data", "--dataset", "cifar100", "--data-dir", str(shared_dir), "--data-subset", "shared",
                 "--no-download", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads(out.read_text())
    assert manifest["cache"]["subset"] == manifest["config"]["data_subset"] == "shared"
    assert manifest["cache"]["fingerprint"] == subset_fingerprint("cifar100", "shared")
    assert manifest["cache"]["path"] == str(shared_dir / "cifar100.npz")


def test_a_record_round_trips_through_its_file_byte_for_byte(tmp_path, data_dir):
    record = fixture_record(data_dir, "cifar100")
    write_record(record, tmp_path / "a.json.gz")
    write_record(read_record(tmp_path / "a.json.gz"), tmp_path / "b.json.gz")
    assert read_record(tmp_path / "a.json.gz") == record
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()
