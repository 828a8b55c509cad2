import os
from pathlib import Path

import numpy as np
import pytest

from dimat_bench.data import load_dataset

FIXTURES = Path(__file__).parent / "data"

# The tests' exact expectations are fp32 numerics, so `precision: auto` means fp32 on a CPU here (it
# means bf16 on a CPU with native bf16); tests/test_devices.py tests that default with this unset.
os.environ.setdefault("DIMAT_BENCH_CPU_PRECISION", "fp32")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Committed real images: 500/200 CIFAR-10 and 200/100 CIFAR-100 train/test (see make_fixtures.py)."""
    return FIXTURES


@pytest.fixture(scope="session")
def cifar10(data_dir):
    return load_dataset("cifar10", data_dir, download=False)


@pytest.fixture(scope="session")
def cifar100(data_dir):
    return load_dataset("cifar100", data_dir, download=False)


@pytest.fixture(scope="session")
def batches(cifar10):
    """200 normalised real CIFAR-10 training images in batches of 50."""
    from helpers import real_batches

    return real_batches(cifar10, count=200, batch=50)


@pytest.fixture
def cifar10_arrays(cifar10) -> dict[str, np.ndarray]:
    return {"x_train": cifar10.x_train, "y_train": cifar10.y_train, "x_test": cifar10.x_test,
            "y_test": cifar10.y_test, "classes": cifar10.classes}


@pytest.fixture(scope="session")
def pretrained5(tmp_path_factory, data_dir):
    """5 ResNet-20 agents pretrained 1 epoch on the fixture (noniid, 100 images each), 50 test images."""
    return pretrain_fixture(tmp_path_factory, data_dir)


@pytest.fixture(scope="session")
def pretrained5_union(tmp_path_factory, data_dir):
    """pretrained5's union pretraining: one model on every image its 5 agents hold (`centralized`)."""
    return pretrain_fixture(tmp_path_factory, data_dir, "--union")


def pretrain_fixture(tmp_path_factory, data_dir, *extra):
    from dimat_bench.cli import main

    out = tmp_path_factory.mktemp("cells") / "pretrained"
    assert main(["pretrain", "--data-dir", str(data_dir), "--out", str(out), "--quiet", "--agents", "5",
                 "--split", "noniid", "--epochs", "1", "--test-size", "50", *extra]) == 0
    return out
