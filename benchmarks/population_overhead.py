"""What does the population machinery cost on top of training itself?

Times one local epoch of N agents (ResNet-20, each on a 1/N iid shard) against one plain PyTorch
model trained on the union of the same shards, with the same batch size, the same device-resident
batches and augmentation, and the same optimizer, in one process. Prints the median epoch times over
alternating repeats and their ratio (target on a 2-core CPU: <= 1.15).

    python benchmarks/population_overhead.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dimat_bench.data import balanced_subset, device_datasets, load_dataset
from dimat_bench.models import create_model
from dimat_bench.population import OptimizerSpec, Population, derive_seed
from dimat_bench.splits import create_split


def plain_epoch(model, optimizer, train, index: torch.Tensor, batch_size: int, generator) -> float:
    """The reference: a bare training loop over `index`, in seconds."""
    start = time.perf_counter()
    model.train()
    order = index[torch.randperm(len(index), generator=generator)]
    for lo in range(0, len(order), batch_size):
        images, labels = train.batch(order[lo:lo + batch_size], generator)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    default_dir = "../shared/data" if Path("../shared/data/cifar10.npz").exists() else "resources/data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--images", type=int, default=2500, help="training images in all (default 2500)")
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    dataset = load_dataset("cifar10", args.data_dir)
    subset = balanced_subset(dataset.y_train, args.images, 10, "images")
    train, test = device_datasets(dataset, args.device, subset, np.arange(10))
    split = create_split("iid", dataset.y_train[subset], 10, args.agents, seed=0)
    models = []
    for i in range(args.agents):
        torch.manual_seed(derive_seed(0, "init", i))
        models.append(create_model("resnet20", 10))
    population = Population(models, split.shards, train, test, [np.arange(10)] * args.agents,
                            OptimizerSpec(), args.batch_size, seed=0)

    torch.manual_seed(0)
    plain = create_model("resnet20", 10).to(args.device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3)
    union = torch.as_tensor(np.concatenate(split.shards), device=train.device)
    generator = torch.Generator(train.device).manual_seed(0)
    sync = torch.cuda.synchronize if train.device.type == "cuda" else (lambda: None)

    def time_population() -> float:
        return population.train_epoch()[0]["seconds"]

    def time_plain() -> float:
        seconds = plain_epoch(plain, optimizer, train, union, args.batch_size, generator)
        sync()
        return seconds

    time_plain(), time_population()  # warm-up: allocator, oneDNN/cuDNN kernel choice
    plain_times, population_times = [], []
    for _ in range(args.repeats):
        plain_times.append(time_plain())
        population_times.append(time_population())
    t_plain, t_pop = statistics.median(plain_times), statistics.median(population_times)
    n = len(union)
    print(f"device {train.device}, {torch.get_num_threads()} threads; ResNet-20 w1, CIFAR-10, {n} images, "
          f"batch {args.batch_size}, {args.repeats} timed epochs each (median)")
    print(f"plain model, all {n} images:       {t_plain:7.2f} s/epoch  {n / t_plain:7.1f} img/s")
    print(f"population, {args.agents} agents x {n // args.agents} images: {t_pop:7.2f} s/epoch  {n / t_pop:7.1f} img/s")
    print(f"ratio population / plain: {t_pop / t_plain:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
