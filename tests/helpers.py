"""Builders shared by several test modules."""

from pathlib import Path

import torch

from dimat_bench.data import device_datasets
from dimat_bench.matching import reset_batchnorm
from dimat_bench.methods import METHODS, MethodContext, create_method
from dimat_bench.models import create_model
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


def method_for(name, population, topology, seed=0, **options):
    """Method `name` on `population`, its options built by field name: its defaults, `options`, and
    100 matching images where it takes them and they are not fixed."""
    cls = METHODS.get(name)
    if "match_samples" in cls.settable_keys():
        options = {"match_samples": 100, **options}
    return create_method(name, MethodContext(population, topology, cls.build_options(options), seed=seed))


__all__ = ["ROOT", "make_population", "states_equal", "real_batches", "random_permutations", "eval_images",
           "realistic_model", "method_for"]
