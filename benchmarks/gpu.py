"""The CUDA code paths end to end, and what they cost, on a lent GPU (issue 12): one prepared script.

1. A tiny grid through the engine's command line on the device: a pretraining, then DIMAT, SGP and
   local cells of one round, in bf16 (the GPU default) and DIMAT once more in fp32.
2. ResNet-20 ×8 at batch 100 (CIFAR-100 sized): training and evaluation images/s in fp32 and bf16
   (the cost estimate's calibration).
3. One merge round of the authors' protocol (5 agents, ring, DIMAT matching on the whole training
   cache, augmented, then the BatchNorm reset): seconds for matching and for the reset.
4. Peak GPU memory.

    python benchmarks/gpu.py --data-dir ../shared/data             # on the GPU machine
    python benchmarks/gpu.py --device cpu --width 1 --images 500     # the same code paths, CPU-sized
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dimat_bench.data import device_datasets, load_dataset
from dimat_bench.estimate import ModelKey, calibrate
from dimat_bench.matching import reset_batchnorm
from dimat_bench.methods import METHODS, MethodContext, create_method
from dimat_bench.models import create_model
from dimat_bench.population import OptimizerSpec, Population, derive_seed
from dimat_bench.splits import create_split
from dimat_bench.topology import create_topology


def engine(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "dimat_bench", *args, "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[:3])} failed:\n{result.stderr[-2000:]}")
    print("   ", result.stdout.strip().splitlines()[-1])


def tiny_grid(args) -> None:
    with tempfile.TemporaryDirectory() as work:
        pre = str(Path(work) / "pre")
        print("1. tiny grid on", args.device)
        engine("pretrain", "--dataset", "cifar10", "--data-dir", args.data_dir, "--agents", "5", "--epochs", "1",
               "--train-size", "1000", "--test-size", "200", "--device", args.device, "--out", pre)
        for method, precision in (("dimat", "bf16"), ("sgp", "bf16"), ("local", "bf16"), ("dimat", "fp32")):
            engine("run", "--pretrained", pre, "--method", method, "--topology", "ring", "--rounds", "1",
                   "--epochs-per-round", "1", "--device", args.device, "--precision", precision,
                   "--out", str(Path(work) / f"{method}-{precision}"))


def throughput(args, device: torch.device) -> None:
    print(f"2. ResNet-20 x{args.width}, CIFAR-100 sized, batch 100, on {device}")
    for precision in ("fp32", "bf16"):
        seconds = calibrate(ModelKey("resnet20", args.width, "cifar100", 100, precision), {"train", "evaluate"},
                            device)
        print(f"   {precision}: training {1 / seconds['train']:9,.0f} images/s, evaluation "
              f"{1 / seconds['evaluate']:9,.0f} images/s")


def merge_round(args, device: torch.device) -> None:
    dataset = load_dataset("cifar100", args.data_dir)
    index = np.arange(min(args.images, len(dataset.y_train)))
    train, test = device_datasets(dataset, device, index, np.arange(100))
    split = create_split("iid", dataset.y_train[index], 100, 5, seed=0)
    models = []
    for i in range(5):
        torch.manual_seed(derive_seed(0, "init", i))
        models.append(create_model("resnet20", 100, width=args.width))
    population = Population(models, split.shards, train, test, [np.arange(100)] * 5, OptimizerSpec(), 100, seed=0,
                            precision="bf16" if device.type == "cuda" else "fp32")
    options = METHODS.get("dimat").build_options({"preset": "official", "fc_merge_once": False})
    method = create_method("dimat", MethodContext(population, create_topology("ring", 5), options, seed=0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    method.communicate(1)  # warm-up
    sync()
    tick = time.perf_counter()
    method.communicate(2)
    sync()
    total = time.perf_counter() - tick
    tick = time.perf_counter()
    for i, model in enumerate(population.models):
        reset_batchnorm(model, method.matching_batches(i, 2), True, population.autocast)
    sync()
    reset = time.perf_counter() - tick
    print(f"3. one merge round, authors' protocol (5 agents, ring, {len(index):,} augmented matching images, "
          f"{population.precision}): matching {total - reset:.2f} s, BatchNorm reset {reset:.2f} s")


def main() -> None:
    default_dir = "../shared/data" if Path("../shared/data/cifar10.npz").exists() else "resources/data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=50_000, help="matching images (at most the cache's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        torch.cuda.reset_peak_memory_stats(device)
    tiny_grid(args)
    throughput(args, device)
    merge_round(args, device)
    if device.type == "cuda":
        print(f"4. peak GPU memory (this process): {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
