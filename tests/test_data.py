import hashlib
import json

import numpy as np
import pytest
import torch

from dimat_bench.cli import main
from dimat_bench.data import (DATASETS, DataError, DeviceData, balanced_subset, device_datasets, load_dataset,
                              tinyimagenet_arrays, write_cache)
from dimat_bench.registry import ConfigError


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


def test_data_command_without_a_cache_or_download_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cifar100.json"
    assert main(["data", "--dataset", "cifar100", "--data-dir", str(tmp_path / "empty"), "--no-download",
                 "--out", str(out)]) == 2
    assert "data_dir: no cifar100 cache" in capsys.readouterr().err
    assert not out.exists()
