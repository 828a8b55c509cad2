"""Builders shared by several test modules."""

from pathlib import Path

import torch

from dimat_bench.data import device_datasets
from dimat_bench.matching import batchnorm_layers, reset_batchnorm
from dimat_bench.methods import METHODS, MethodContext, create_method
from dimat_bench.models import create_model
from dimat_bench.network import NO_FAULTS
from dimat_bench.population import OptimizerSpec, Population, derive_seed
from dimat_bench.splits import create_split

ROOT = Path(__file__).resolve().parent.parent  # the repository


def make_population(dataset, n_agents=3, split="iid", seed=0, optimizer=OptimizerSpec(), batch_size=50,
                    train_index=None, augment=True, models=None):
    """A population of ResNet-20s (each from its own seeded init unless `models` is given)."""
    train, test = device_datasets(dataset, "cpu", train_index=train_index, augment=augment)
    labels = dataset.y_train if train_index is None else dataset.y_train[train_index]
    parts = create_split(split, labels, 10, n_agents, seed=seed)
    if models is None:
        models = []
        for i in range(n_agents):
            torch.manual_seed(derive_seed(seed, "init", i))
            models.append(create_model("resnet20", 10))
    return Population(models, parts.shards, train, test, [parts.own_classes(i) for i in range(n_agents)],
                      optimizer, batch_size, seed), parts


def states_equal(a: dict, b: dict, atol: float = 0.0) -> bool:
    return all(torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol) for k in a)


def flat_floats(state: dict) -> torch.Tensor:
    """Every floating-point entry of a state dict, in key order, as one float64 vector."""
    return torch.cat([v.detach().reshape(-1).double() for v in state.values() if v.is_floating_point()])


def assert_states_close(got: dict, expected: dict, tol: float = 1e-5) -> None:
    """Every entry of `got` within `tol` (absolute and relative) of `expected`'s (one comparison of
    the flattened states; on a mismatch, the worst entry is named)."""
    assert got.keys() == expected.keys()
    a = torch.cat([v.reshape(-1).double() for v in got.values()])
    b = torch.cat([v.reshape(-1).double() for v in expected.values()])
    if not torch.allclose(a, b, rtol=tol, atol=tol):
        worst = max(got, key=lambda k: ((got[k].double() - expected[k].double()).abs()
                                        - tol * (1 + expected[k].double().abs())).max().item())
        torch.testing.assert_close(got[worst].double(), expected[worst].double(), rtol=tol, atol=tol,
                                   msg=lambda m: f"{worst}: {m}")


def scramble_batchnorm(model, seed):
    """Give every BatchNorm layer stale statistics: random running mean and variance, 7 batches
    tracked (a reset that forgets to clear them would average them in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in batchnorm_layers(model):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))
            m.num_batches_tracked.fill_(7)
    return model


def real_batches(dataset, count=200, batch=50):
    """Normalised real training images in batches (no augmentation)."""
    train, _ = device_datasets(dataset, "cpu", augment=False)
    return [train.batch(torch.arange(i, i + batch))[0] for i in range(0, count, batch)]


def random_permutations(spec, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(g.size, generator=generator) for g in spec.groups]


def eval_images(dataset, count=64):
    _, test = device_datasets(dataset, "cpu")
    return test.batch(torch.arange(count))[0]


def realistic_model(name, width, batches):
    """A randomly initialised model whose BatchNorm statistics are those of real images."""
    torch.manual_seed(0)
    model = create_model(name, 10, width=width)
    reset_batchnorm(model, batches)
    return model.eval()


def permuted_copies(base, spec, n):
    """n models: `base` with a different random channel permutation each."""
    states = [spec.apply(base.state_dict(), random_permutations(spec, seed=k + 1)) for k in range(n)]
    models = []
    for state in states:
        models.append(create_model("resnet20", 10))
        models[-1].load_state_dict(state)
    return models, states


def method_for(name, population, topology, seed=0, faults=NO_FAULTS, **options):
    """Method `name` on `population`, its options built by field name: its defaults, `options`, and
    100 matching images where it takes them and they are not fixed; `faults` its network's."""
    cls = METHODS.get(name)
    if "match_samples" in cls.settable_keys():
        options = {"match_samples": 100, **options}
    return create_method(name, MethodContext(population, topology, cls.build_options(options), seed=seed,
                                             faults=faults))


__all__ = ["ROOT", "make_population", "states_equal", "assert_states_close", "flat_floats", "scramble_batchnorm",
           "real_batches", "random_permutations", "permuted_copies", "eval_images", "realistic_model", "method_for"]
