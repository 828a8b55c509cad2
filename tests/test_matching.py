"""Aligning and merging models: the derived permutation structure, activation and weight matching
(a model merged with a channel-permuted copy of itself computes the same function), streamed
correlations, the BatchNorm reset."""

import itertools

import numpy as np
import pytest
import torch
from helpers import eval_images, random_permutations, realistic_model, states_equal

from dimat_bench.matching import (
    EdgeStatistics,
    activation_permutations,
    assignment,
    batchnorm_layers,
    reset_batchnorm,
    weight_permutations,
    weighted_sum,
)
from dimat_bench.models import create_model
from dimat_bench.permutation import FeatureExtractor, permutation_spec

ARCHITECTURES = [("resnet20", 1), ("resnet20", 2), ("vgg16_bn", 1), ("resnet50", 1), ("timm:resnet10t", 1)]


@pytest.mark.parametrize("matcher", ["activation", "weight"])
@pytest.mark.parametrize("name,width", ARCHITECTURES)
def test_merging_with_a_permuted_copy_returns_the_same_function(name, width, matcher, batches, cifar10):
    model = realistic_model(name, width, batches)
    spec = permutation_spec(model)
    state = model.state_dict()
    permuted_state = spec.apply(state, random_permutations(spec))
    assert not states_equal(state, permuted_state), "the copy must really be permuted"
    copy = create_model(name, 10, width=width).eval()
    copy.load_state_dict(permuted_state)
    if matcher == "activation":
        [perms] = activation_permutations(FeatureExtractor(model, spec), [FeatureExtractor(copy, spec)], batches, spec)
    else:
        perms = weight_permutations(state, permuted_state, spec)
    merged = create_model(name, 10, width=width).eval()
    merged.load_state_dict(weighted_sum([state, spec.apply(permuted_state, perms)], [0.5, 0.5]))
    x = eval_images(cifar10)
    with torch.no_grad():
        expected, got = model(x), merged(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_streamed_correlations_of_every_edge_equal_pearson_on_all_samples_at_once():
    """Three models, three edges, two feature points of different sizes (6 channels at 5×5, 4 at
    2×2: each point keeps its own sample count), batches of unequal size, far-from-zero means, a
    dead channel (correlation 0, not NaN)."""
    g = torch.Generator().manual_seed(0)
    big = [50 + torch.randn(7, 6, 5, 5, generator=g)]
    big.append(torch.cat([big[0][:, :3] * 2 + 0.3 * torch.randn(7, 3, 5, 5, generator=g),
                          torch.randn(7, 2, 5, 5, generator=g), torch.zeros(7, 1, 5, 5)], 1) - 20)
    big.append(big[0].flip(1) + torch.randn(7, 6, 5, 5, generator=g))
    small = [torch.randn(7, 4, 2, 2, generator=g) * (k + 1) + 10 * k for k in range(3)]
    small[2] = small[2] + small[0] * 3
    edges = [(0, 1), (0, 2), (2, 1)]
    stats = EdgeStatistics(edges)
    for lo, hi in [(0, 1), (1, 4), (4, 7)]:
        stats.update({k: [big[k][lo:hi], small[k][lo:hi]] for k in range(3)})
    for point, maps in enumerate([big, small]):
        channels = maps[0].shape[1]
        flat = lambda x: x.movedim(1, -1).reshape(-1, channels).double().numpy()  # noqa: E731
        for i, j in edges:
            with np.errstate(invalid="ignore"):
                expected = np.corrcoef(flat(maps[i]), flat(maps[j]), rowvar=False)[:channels, channels:]
            expected[np.isnan(expected)] = 0.0  # no variance: numpy gives NaN
            np.testing.assert_allclose(stats.correlation((i, j), point).numpy(), expected, rtol=0, atol=1e-5)
        assert stats.moments[0][point].n == 7 * maps[0][0, 0].numel()


def test_assignment_maximises_the_total_score():
    """perm[k] is the channel of the other model matched to channel k: the best of all 6! maps, on
    scores whose greedy row-by-row choice is not the best (row 0's best column is row 1's only good one)."""
    score = torch.rand(6, 6, generator=torch.Generator().manual_seed(3)) * 0.1
    score[0, 2], score[0, 4], score[1, 2] = 0.9, 0.8, 1.0
    best = max(itertools.permutations(range(6)), key=lambda p: sum(score[k, p[k]].item() for k in range(6)))
    perm = assignment(score)
    assert perm.tolist() == list(best) and perm[0] == 4 and perm[1] == 2


def test_permutation_structure_has_the_specified_feature_points():
    counts = {name: len(permutation_spec(create_model(name, 10)).groups) for name in ("resnet20", "vgg16_bn", "resnet50")}
    assert counts == {"resnet20": 12, "vgg16_bn": 13, "resnet50": 37}
    spec = permutation_spec(create_model("resnet20", 10))
    stage1 = next(g for g in spec.groups if ("conv1.weight", 0) in g.axes)
    # The stem, every stage-1 block output and stage 2's first conv and shortcut inputs share one permutation.
    assert {("layer1.0.bn2.weight", 0), ("layer1.2.conv2.weight", 0), ("layer2.0.conv1.weight", 1),
            ("layer2.0.shortcut.0.weight", 1)} <= set(stage1.axes)
    assert not any(key.startswith("linear") and axis == 0 for g in spec.groups for key, axis in g.axes)


def test_batchnorm_reset_is_the_exact_average_over_the_batches(batches):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    reset_batchnorm(model, batches)
    with torch.no_grad():
        first = [model.conv1(x) for x in batches]  # what bn1 normalises
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in first]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in first]).mean(0)
    torch.testing.assert_close(model.bn1.running_mean, means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, variances, rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1 and model.bn1.num_batches_tracked.item() == len(batches)
    reset_batchnorm(model, batches, keep_cumulative=True)
    assert all(m.momentum is None for m in batchnorm_layers(model))


def test_resetting_several_models_draws_the_batches_once_and_equals_resetting_each_alone(batches):
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(create_model("resnet20", 10))
    alone = [create_model("resnet20", 10) for _ in models]
    for model, copy in zip(models, alone):
        copy.load_state_dict(model.state_dict())
        reset_batchnorm(copy, batches)
    drawn = []

    def stream():
        for x in batches:
            drawn.append(x)
            yield x

    reset_batchnorm(models, stream())
    assert len(drawn) == len(batches)  # one pass over the data for both models
    for together, separate in zip(models, alone):
        assert all(torch.equal(a, b) for a, b in zip(together.state_dict().values(), separate.state_dict().values()))
    assert not torch.equal(models[0].bn1.running_mean, models[1].bn1.running_mean)


def test_feature_extractor_follows_the_models_current_weights(cifar10):
    """Extractors are built once per run; they must see every later load_state_dict."""
    model = create_model("resnet20", 10).eval()
    extractor = FeatureExtractor(model, permutation_spec(model))
    torch.manual_seed(5)
    model.load_state_dict(create_model("resnet20", 10).state_dict())
    x = eval_images(cifar10, count=8)
    with torch.no_grad():
        assert torch.equal(extractor(x)[0], model(x))
