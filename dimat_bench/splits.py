"""Splitting a training set among N agents (docs/benchmark.md#data-and-splits). Every split is
deterministic given its seed and returns index shards plus the per-agent class-count table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .registry import ConfigError, Registry


@dataclass(frozen=True)
class Split:
    """`shards[i]`: sorted int64 indices into the training set held by agent i.
    `class_counts[i, c]`: how many images of class c agent i holds."""

    name: str
    shards: list[np.ndarray]
    class_counts: np.ndarray

    def own_classes(self, agent: int) -> np.ndarray:
        """The classes agent `agent` holds at least one training image of."""
        return np.flatnonzero(self.class_counts[agent] > 0)


SplitFn = Callable[..., list[np.ndarray]]
SPLITS: Registry[SplitFn] = Registry("split")


def create_split(name: str, labels: np.ndarray, num_classes: int, n_agents: int, seed: int = 0, **options) -> Split:
    """Split the indices of `labels` among `n_agents` with the registered split `name`."""
    if n_agents < 2:
        raise ConfigError("agents", n_agents, "an integer >= 2 (a decentralized run needs neighbours)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    # Shuffle within each class once, so every split draws its members at random given the seed.
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    shards = SPLITS.get(name)(by_class=by_class, n_agents=n_agents, rng=rng, **options)
    shards = [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    counts = np.stack([np.bincount(labels[s], minlength=num_classes) for s in shards])
    return Split(name, shards, counts)


@SPLITS.register("iid")
def iid(by_class, n_agents, rng) -> list[np.ndarray]:
    """Every agent gets an equal 1/N share of every class; leftovers are dropped."""
    shards = [[] for _ in range(n_agents)]
    for members in by_class:
        share = len(members) // n_agents
        for agent in range(n_agents):
            shards[agent].append(members[agent * share:(agent + 1) * share])
    return [np.concatenate(parts) for parts in shards]


@SPLITS.register("noniid")
def noniid(by_class, n_agents, rng) -> list[np.ndarray]:
    """The paper's label split: every class trimmed to the smallest class size, then whole classes
    dealt round-robin (class c -> agent c mod N). With N > C (N a multiple of C), each class is cut
    into N/C contiguous chunks and agent i gets chunk i // C of class i mod C, as the official code."""
    num_classes = len(by_class)
    smallest = min(len(m) for m in by_class)
    trimmed = [m[:smallest] for m in by_class]
    if n_agents <= num_classes:
        shards = [[] for _ in range(n_agents)]
        for c, members in enumerate(trimmed):
            shards[c % n_agents].append(members)
        return [np.concatenate(parts) for parts in shards]
    if n_agents % num_classes:
        multiples = ", ".join(str(num_classes * k) for k in range(2, 5))
        raise ConfigError("agents", n_agents, f"at most {num_classes} or a multiple of {num_classes} "
                          f"({multiples}, ...) for the noniid split of a {num_classes}-class dataset")
    chunk = smallest * num_classes // n_agents
    if chunk == 0:
        raise ConfigError("agents", n_agents, f"at most {smallest * num_classes} for noniid: each class "
                          f"has only {smallest} images to cut into {n_agents // num_classes} chunks")
    return [trimmed[i % num_classes][(i // num_classes) * chunk:(i // num_classes + 1) * chunk]
            for i in range(n_agents)]


@SPLITS.register("dirichlet")
def dirichlet(by_class, n_agents, rng, alpha: float = 0.5, min_shard_size: int = 10,
              max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew: for every class, agent shares drawn from Dirichlet(alpha * 1_N); redrawn until
    every agent holds at least `min_shard_size` images."""
    if not alpha > 0:
        raise ConfigError("dirichlet_alpha", alpha, "a number > 0 (small = more skew)")
    total = sum(len(m) for m in by_class)
    if min_shard_size * n_agents > total:
        raise ConfigError("min_shard_size", min_shard_size, f"at most {total // n_agents} "
                          f"({total} images among {n_agents} agents)")
    for _ in range(max_tries):
        shards = [[] for _ in range(n_agents)]
        for members in by_class:
            shares = rng.dirichlet(np.full(n_agents, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for agent, part in enumerate(np.split(members, cuts)):
                shards[agent].append(part)
        shards = [np.concatenate(parts) for parts in shards]
        if min(len(s) for s in shards) >= min_shard_size:
            return shards
    raise ConfigError("min_shard_size", min_shard_size, f"a size that Dirichlet(alpha={alpha}) shards reach "
                      f"within {max_tries} draws", "Lower min_shard_size or raise dirichlet_alpha")
