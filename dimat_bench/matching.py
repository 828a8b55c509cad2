"""Model merging: permutations from activations (DIMAT) or from weights (WM), the Π-weighted sum of
aligned models, and recomputing BatchNorm statistics afterwards (docs/benchmark.md#merge-and-train-family)."""

from __future__ import annotations

from typing import Iterable, Sequence

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


class CorrelationStats:
    """Running statistics for the Pearson correlation between the channels of two feature maps, where
    every spatial position of every image is one sample. Only the anchor × other block is kept.

    Each batch is centred on its own means and reduced in float32 (fast: the first stage of a CIFAR
    ResNet has 100k samples per batch), then merged into float64 running sums with Chan et al.'s
    pairwise update, so no large raw sums are ever subtracted from each other."""

    def __init__(self, channels: int, device):
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.n = 0
        self.mean_a, self.mean_b, self.m2_a, self.m2_b = z(channels), z(channels), z(channels), z(channels)
        self.cross = z(channels, channels)  # Σ (a - mean_a)(b - mean_b)ᵀ

    @staticmethod
    def samples(features: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B·spatial, C) in float32 (or wider)."""
        samples = features.movedim(1, -1).reshape(-1, features.shape[1])
        return samples if samples.dtype in (torch.float32, torch.float64) else samples.float()

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = self.samples(a), self.samples(b)
        m = len(a)
        mean_a, mean_b = a.mean(0), b.mean(0)
        a, b = a - mean_a, b - mean_b
        cross, m2_a, m2_b = (a.T @ b).double(), (a * a).sum(0).double(), (b * b).sum(0).double()
        n = self.n + m
        delta_a, delta_b = mean_a.double() - self.mean_a, mean_b.double() - self.mean_b
        weight = self.n * m / n
        self.cross += cross + torch.outer(delta_a, delta_b) * weight
        self.m2_a += m2_a + delta_a**2 * weight
        self.m2_b += m2_b + delta_b**2 * weight
        self.mean_a += delta_a * (m / n)
        self.mean_b += delta_b * (m / n)
        self.n = n

    def correlation(self) -> torch.Tensor:
        return self.cross / torch.outer(self.m2_a.sqrt(), self.m2_b.sqrt()).clamp_min(CORRELATION_EPS * self.n)


@torch.inference_mode()
def activation_permutations(anchor: FeatureExtractor, others: Sequence[FeatureExtractor],
                            batches: Iterable[torch.Tensor], spec: PermutationSpec) -> list[list[torch.Tensor]]:
    """For each model in `others`, one permutation per group aligning its channels to `anchor`'s:
    the linear assignment maximising the total Pearson correlation of features on `batches`.
    The anchor's features are computed once per batch and shared by all others."""
    stats = None
    for images in batches:
        _, anchor_features = anchor(images)
        if stats is None:
            device = anchor_features[0].device
            stats = [[CorrelationStats(g.size, device) for g in spec.groups] for _ in others]
        for other, other_stats in zip(others, stats):
            _, features = other(images)
            for s, a, b in zip(other_stats, anchor_features, features):
                s.update(a, b)
    if stats is None:
        raise ValueError("activation matching needs at least one batch of data")
    return [[assignment(s.correlation()) for s in other_stats] for other_stats in stats]


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
def reset_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], keep_cumulative: bool = False) -> None:
    """Recompute every BatchNorm's running mean/var as the exact average over `batches` (train-mode
    forward passes, momentum None). With `keep_cumulative` the layers keep momentum None afterwards,
    as the authors' code does; otherwise their momentum is restored."""
    layers = batchnorm_layers(model)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for images in batches:
        model(images)
    model.train(was_training)
    if not keep_cumulative:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
