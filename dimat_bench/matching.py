"""Model merging: permutations from activations (DIMAT) or from weights (WM), the Π-weighted sum of
aligned models, and recomputing BatchNorm statistics afterwards (SPEC §5)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import linear_sum_assignment

from .permutation import FeatureExtractor, PermutationSpec

CORRELATION_EPS = 1e-7


def assignment(score: torch.Tensor) -> torch.Tensor:
    """perm maximising Σ_k score[k, perm[k]] (a linear assignment)."""
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


class CorrelationStats:
    """Running sums for the Pearson correlation between the channels of two feature maps, where every
    spatial position of every image is one sample. Only the anchor × other block is accumulated."""

    def __init__(self, channels: int, device):
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.n = 0
        self.sum_a, self.sum_b, self.sq_a, self.sq_b = z(channels), z(channels), z(channels), z(channels)
        self.cross = z(channels, channels)

    @staticmethod
    def samples(features: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B·spatial, C) in float64."""
        return features.movedim(1, -1).reshape(-1, features.shape[1]).double()

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = self.samples(a), self.samples(b)
        self.n += len(a)
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.sq_a += (a * a).sum(0)
        self.sq_b += (b * b).sum(0)
        self.cross += a.T @ b

    def correlation(self) -> torch.Tensor:
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        cov = self.cross / self.n - torch.outer(mean_a, mean_b)
        std_a = (self.sq_a / self.n - mean_a**2).clamp_min(0).sqrt()
        std_b = (self.sq_b / self.n - mean_b**2).clamp_min(0).sqrt()
        return cov / torch.outer(std_a, std_b).clamp_min(CORRELATION_EPS)


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
