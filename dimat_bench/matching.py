"""Model merging: permutations from activations (DIMAT) or from weights (WM), the Π-weighted sum of
aligned models, and recomputing BatchNorm statistics afterwards (docs/benchmark.md#merge-and-train-family)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from .permutation import FeatureExtractor, PermutationSpec
from .registry import Diverged

CORRELATION_EPS = 1e-7


def assignment(score: torch.Tensor) -> torch.Tensor:
    """perm maximising Σ_k score[k, perm[k]] (a linear assignment)."""
    score = score.detach().cpu().double().numpy()
    if not np.isfinite(score).all():
        raise Diverged("matching scores are not finite: a model's activations overflowed")
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


def feature_samples(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B·spatial, C) in float32 (or wider)."""
    samples = features.movedim(1, -1).reshape(-1, features.shape[1])
    return samples if samples.dtype in (torch.float32, torch.float64) else samples.float()


@dataclass
class CentredBatch:
    """One batch of one feature map: its samples centred on their own means, in float32."""

    samples: torch.Tensor  # (m, C), centred
    mean: torch.Tensor  # (C,)
    m2: torch.Tensor  # (C,) float64: Σ (x - mean)²

    @classmethod
    def of(cls, features: torch.Tensor) -> CentredBatch:
        samples = feature_samples(features)
        mean = samples.mean(0)
        samples = samples - mean
        return cls(samples, mean, (samples * samples).sum(0).double())


class ChannelMoments:
    """Running count, per-channel mean and centred sum of squares (float64) of one feature map,
    merged batch by batch with Chan et al.'s pairwise update."""

    def __init__(self, channels: int, device):
        self.n = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)

    def delta(self, batch: CentredBatch) -> torch.Tensor:
        return batch.mean.double() - self.mean

    def add(self, batch: CentredBatch, delta: torch.Tensor) -> None:
        m = len(batch.samples)
        n = self.n + m
        self.m2 += batch.m2 + delta**2 * (self.n * m / n)
        self.mean += delta * (m / n)
        self.n = n


def add_cross(cross: torch.Tensor, a: CentredBatch, b: CentredBatch, delta_a: torch.Tensor,
              delta_b: torch.Tensor, n_before: int) -> None:
    """cross += this batch's Σ (a - mean_a)(b - mean_b)ᵀ, merged into the running sum (Chan)."""
    m = len(a.samples)
    cross += (a.samples.T @ b.samples).double() + torch.outer(delta_a, delta_b) * (n_before * m / (n_before + m))


def pearson(cross: torch.Tensor, a: ChannelMoments, b: ChannelMoments) -> torch.Tensor:
    return cross / torch.outer(a.m2.sqrt(), b.m2.sqrt()).clamp_min(CORRELATION_EPS * a.n)


class EdgeStatistics:
    """Running statistics for the Pearson correlations between the channels of two models' feature
    maps, for every edge (i, j) and every feature point, where every spatial position of every
    image is one sample. Only the i × j blocks are kept.

    Each model's batch is centred on its own means once, for all of its edges, and reduced in
    float32 (fast: the first stage of a CIFAR ResNet has 100k samples per batch), then merged into
    float64 running sums with Chan et al.'s pairwise update, so no large raw sums are ever
    subtracted from each other. Feature points differ in size, so each keeps its own count."""

    def __init__(self, edges: Sequence[tuple[int, int]]):
        self.edges = list(edges)
        self.models = sorted({k for edge in self.edges for k in edge})
        self.moments: dict[int, list[ChannelMoments]] = {}
        self.cross: dict[tuple[int, int], list[torch.Tensor]] = {}

    def update(self, features: Mapping[int, Sequence[torch.Tensor]]) -> None:
        """Add one batch: `features[k]` holds model k's feature maps, (B, C, *spatial) each."""
        if not self.moments:
            first = features[self.models[0]]
            device = first[0].device
            self.moments = {k: [ChannelMoments(f.shape[1], device) for f in first] for k in self.models}
            self.cross = {edge: [torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=device)
                                 for f in first] for edge in self.edges}
        centred = {k: [CentredBatch.of(f) for f in features[k]] for k in self.models}
        deltas = {k: [m.delta(c) for m, c in zip(self.moments[k], centred[k])] for k in self.models}
        for (i, j), crosses in self.cross.items():
            for g, cross in enumerate(crosses):
                add_cross(cross, centred[i][g], centred[j][g], deltas[i][g], deltas[j][g], self.moments[i][g].n)
        for k in self.models:
            for m, c, d in zip(self.moments[k], centred[k], deltas[k]):
                m.add(c, d)

    def correlation(self, edge: tuple[int, int], point: int) -> torch.Tensor:
        i, j = edge
        return pearson(self.cross[edge][point], self.moments[i][point], self.moments[j][point])


@contextlib.contextmanager
def exact_statistics(device: torch.device) -> Iterator[None]:
    """Correlation statistics in true fp32: no autocast, and no TF32 for their matmuls on a GPU."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@torch.inference_mode()
def images_within(memory: int, extractor: FeatureExtractor, image: torch.Tensor, models: int,
                  forward_context: Callable[[], ContextManager] = contextlib.nullcontext) -> int:
    """How many images' feature maps `models` models can hold within `memory` bytes (at least 1):
    each map as the forward leaves it plus its centred float32 samples, measured on one image."""
    with forward_context():
        features = extractor(image)[1]
    per_image = sum(f.numel() * (f.element_size() + 4) for f in features) // len(image)
    return max(1, memory // (models * per_image))


@torch.inference_mode()
def edge_permutations(extractors: Sequence[FeatureExtractor], edges: Sequence[tuple[int, int]],
                      batches: Iterable[torch.Tensor], spec: PermutationSpec,
                      forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
                      memory: int | None = None) -> dict[tuple[int, int], list[torch.Tensor]]:
    """For each edge (i, j), one permutation per group aligning model j's channels to model i's: the
    linear assignment maximising the total Pearson correlation of their features on `batches`.
    Every model on an edge runs once per batch and its features serve all of its edges, so a round
    of N agents matching on the same images costs N forward passes, not N·(degree + 1). Forward
    passes run in `forward_context` (e.g. bf16 autocast); the statistics in fp32/fp64. With
    `memory` (bytes), a batch goes through in chunks whose features, for every model at once, fit
    in it (the statistics stream, so the result is the same up to float rounding)."""
    if not edges:
        return {}
    stats = EdgeStatistics(edges)
    chunk = None
    for images in batches:
        if memory is not None and chunk is None:
            chunk = images_within(memory, extractors[stats.models[0]], images[:1], len(stats.models),
                                  forward_context)
        for part in images.split(chunk) if chunk else (images,):
            with forward_context():
                features = {k: extractors[k](part)[1] for k in stats.models}
            with exact_statistics(part.device):
                stats.update(features)
    if not stats.moments:
        raise ValueError("activation matching needs at least one batch of data")
    return {edge: [assignment(stats.correlation(edge, g)) for g in range(len(spec.groups))] for edge in edges}


def activation_permutations(anchor: FeatureExtractor, others: Sequence[FeatureExtractor],
                            batches: Iterable[torch.Tensor], spec: PermutationSpec,
                            forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
                            memory: int | None = None) -> list[list[torch.Tensor]]:
    """For each model in `others`, its permutations aligning it to `anchor` (`edge_permutations` with
    the anchor's features computed once per batch and shared by all others)."""
    perms = edge_permutations([anchor, *others], [(0, k) for k in range(1, len(others) + 1)], batches, spec,
                              forward_context, memory)
    return [perms[(0, k)] for k in range(1, len(others) + 1)]


def weight_permutations(anchor: dict[str, torch.Tensor], other: dict[str, torch.Tensor], spec: PermutationSpec,
                        max_sweeps: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """Weight matching (git re-basin): coordinate descent over groups in random order; for each group
    the assignment maximising Σ ⟨W_anchor, P W_other⟩ over its parameter axes, the other groups'
    current permutations applied. Stops after a sweep that changes nothing, or after `max_sweeps`."""
    table = spec.axis_groups()
    parameter_axes = [[(k, a) for k, a in g.axes if not k.endswith(("running_mean", "running_var"))]
                      for g in spec.groups]
    perms = [torch.arange(g.size) for g in spec.groups]
    rng = np.random.default_rng(seed)
    a_state = {k: v.detach().float().cpu() for k, v in anchor.items()}
    b_state = {k: v.detach().float().cpu() for k, v in other.items()}
    for _ in range(max_sweeps):
        changed = False
        for g in rng.permutation(len(spec.groups)):
            score = torch.zeros(spec.groups[g].size, spec.groups[g].size)
            for key, axis in parameter_axes[g]:
                w_b = b_state[key]
                for other_axis, other_group in table[key].items():
                    if other_axis != axis:
                        w_b = w_b.index_select(other_axis, perms[other_group])
                score += a_state[key].movedim(axis, 0).reshape(spec.groups[g].size, -1) @ \
                    w_b.movedim(axis, 0).reshape(spec.groups[g].size, -1).T
            new = assignment(score)
            old_value = score[torch.arange(len(new)), perms[g]].sum()
            new_value = score[torch.arange(len(new)), new].sum()
            if new_value > old_value + 1e-6 * max(1.0, abs(old_value.item())):  # float32 sums
                perms[g], changed = new, True
        if not changed:
            break
    return perms


def weighted_sum(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ_j w_j state_j for floating-point entries; integer entries (BN batch counters) from states[0]."""
    merged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = torch.zeros_like(first)
            for state, weight in zip(states, weights):
                total.add_(state[key], alpha=float(weight))
            merged[key] = total
        else:
            merged[key] = first.clone()
    return merged


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reset_batchnorm(models: nn.Module | Sequence[nn.Module], batches: Iterable[torch.Tensor],
                    keep_cumulative: bool = False,
                    forward_context: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
    """Recompute every BatchNorm's running mean/var of `models` (one model or several) as the exact
    average over `batches` (train-mode forward passes in `forward_context`, momentum None; the
    statistics are kept in fp32 under bf16 autocast too). Each batch is drawn once and runs through
    every model, so resetting several models costs one pass over the data, not one each. With
    `keep_cumulative` the layers keep momentum None afterwards, as the authors' code does;
    otherwise their momentum is restored."""
    models = [models] if isinstance(models, nn.Module) else [m for m in models if batchnorm_layers(m)]
    layers = [m for model in models for m in batchnorm_layers(model)]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    was_training = [model.training for model in models]
    for model in models:
        model.train()
    for images in batches:
        with forward_context():
            for model in models:
                model(images)
    for model, training in zip(models, was_training):
        model.train(training)
    if not keep_cumulative:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
