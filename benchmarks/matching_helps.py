"""Does activation matching help? Two ResNet-20s from different random inits, trained on the same
data, merged at weights (½, ½): plain weight averaging (WA) against DIMAT's activation matching and
weight matching (WM), each followed by the same BatchNorm reset on the training data. Prints test
loss and accuracy of the two parents and of each merge, in one run.

    python benchmarks/matching_helps.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dimat_bench.data import balanced_subset, device_datasets, load_dataset
from dimat_bench.matching import activation_permutations, reset_batchnorm, weight_permutations, weighted_sum
from dimat_bench.models import create_model
from dimat_bench.permutation import FeatureExtractor, permutation_spec
from dimat_bench.population import OptimizerSpec, Population, derive_seed


@torch.no_grad()
def test_metrics(model, test) -> tuple[float, float]:
    model.eval()
    losses, correct = [], []
    for lo in range(0, len(test), 500):
        x, y = test.batch(torch.arange(lo, min(lo + 500, len(test)), device=test.device))
        out = model(x)
        losses.append(F.cross_entropy(out, y, reduction="sum").item())
        correct.append((out.argmax(1) == y).sum().item())
    return sum(losses) / len(test), sum(correct) / len(test)


def main() -> None:
    default_dir = "../shared/data" if Path("../shared/data/cifar10.npz").exists() else "resources/data"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_dir)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--match-images", type=int, default=1000, help="images for matching and BN reset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    start = time.perf_counter()
    dataset = load_dataset("cifar10", args.data_dir)
    train_index = balanced_subset(dataset.y_train, args.train_size, 10, "train_size")
    test_index = balanced_subset(dataset.y_test, args.test_size, 10, "test_size")
    train, test = device_datasets(dataset, args.device, train_index, test_index)
    models = []
    for i in range(2):
        torch.manual_seed(derive_seed(args.seed, "init", i))
        models.append(create_model("resnet20", 10, width=args.width))
    everything = np.arange(len(train))
    population = Population(models, [everything, everything], train, test, [np.arange(10)] * 2, OptimizerSpec(),
                            100, args.seed)
    for epoch in range(args.epochs):
        population.train_epoch()
    print(f"trained two ResNet-20 (width {args.width}) for {args.epochs} epochs on {len(train)} CIFAR-10 images "
          f"({time.perf_counter() - start:.0f} s); test set {len(test)} images")

    generator = torch.Generator(train.device).manual_seed(args.seed)
    match_index = torch.randperm(len(train), generator=generator, device=train.device)[:args.match_images]
    batches = [train.batch(match_index[lo:lo + 100])[0] for lo in range(0, len(match_index), 100)]
    spec = permutation_spec(models[0])
    for m in models:
        m.eval()
    states = population.state_dicts()
    [activation_perms] = activation_permutations(FeatureExtractor(models[0], spec), [FeatureExtractor(models[1], spec)],
                                                 batches, spec)
    weight_perms = weight_permutations(states[0], states[1], spec)
    candidates = {"parent A": states[0], "parent B": states[1],
                  "WA + BN reset": weighted_sum(states, [0.5, 0.5]),
                  "WM + BN reset": weighted_sum([states[0], spec.apply(states[1], weight_perms)], [0.5, 0.5]),
                  "DIMAT (activation matching) + BN reset": weighted_sum(
                      [states[0], spec.apply(states[1], activation_perms)], [0.5, 0.5])}
    print(f"{'model':<42} {'test loss':>9} {'test acc':>9}")
    results = {}
    for name, state in candidates.items():
        model = create_model("resnet20", 10, width=args.width).to(train.device, memory_format=torch.channels_last)
        model.load_state_dict(state)
        if name.endswith("BN reset"):
            reset_batchnorm(model, batches)
        results[name] = test_metrics(model, test)
        print(f"{name:<42} {results[name][0]:>9.4f} {results[name][1]:>9.2%}")
    wa, dimat = results["WA + BN reset"][0], results["DIMAT (activation matching) + BN reset"][0]
    print(f"DIMAT / WA test loss: {dimat / wa:.3f} ({'lower' if dimat < wa else 'NOT lower'}); "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
