import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_population, scramble_batchnorm, states_equal

from dimat_bench.population import OptimizerSpec, batch_bounds


def test_each_agent_trains_on_exactly_its_own_shard_once_per_epoch_in_lockstep(cifar10):
    population, parts = make_population(cifar10, n_agents=3, split="dirichlet", batch_size=40)
    agent_of = {id(g): i for i, g in enumerate(population.generators)}
    seen, order = [[] for _ in range(3)], []
    original = population.train.batch

    def recording(index, generator=None):
        agent = agent_of[id(generator)]
        seen[agent].append(index.clone())
        order.append(agent)
        return original(index, generator)

    population.train.batch = recording
    steps = []
    stats = population.train_epoch(after_step=steps.append)
    expected_steps = [len(batch_bounds(len(s), 40)) for s in parts.shards]
    assert steps == list(range(max(expected_steps)))
    for i, shard in enumerate(parts.shards):
        got = torch.cat(seen[i]).numpy()
        dropped = len(shard) - len(got)
        assert dropped in (0, 1) and set(got) <= set(shard) and len(set(got)) == len(got)
        assert stats[i]["train_images"] == len(got)
    # Lockstep: the first step visits agents 0, 1, 2 in order before anyone's second step.
    assert order[:3] == [0, 1, 2]


def test_same_seed_same_population_and_different_seed_differs(cifar10):
    a, _ = make_population(cifar10, seed=5)
    b, _ = make_population(cifar10, seed=5)
    c, _ = make_population(cifar10, seed=6)
    for p in (a, b, c):
        p.train_epoch()
    sa, sb, sc = a.state_dicts(), b.state_dicts(), c.state_dicts()
    assert all(states_equal(x, y) for x, y in zip(sa, sb))
    assert not any(states_equal(x, y) for x, y in zip(sa, sc))


def test_agents_can_fit_their_shards(cifar10):
    index = np.concatenate([np.flatnonzero(cifar10.y_train == c)[:8] for c in range(10)])
    population, _ = make_population(cifar10, n_agents=2, split="noniid", train_index=np.sort(index),
                                    batch_size=20, augment=False, optimizer=OptimizerSpec(lr=3e-3))
    first = population.train_epoch()
    for _ in range(14):
        last = population.train_epoch()
    for before, after in zip(first, last):
        assert after["train_loss"] < 0.5 * before["train_loss"]
        assert after["train_acc"] >= 0.9


def test_evaluate_matches_a_hand_computation(cifar10):
    population, parts = make_population(cifar10, n_agents=2, split="noniid")
    population.train_epoch()
    results = population.evaluate(batch_size=64)
    test = population.test
    x, y = test.batch(torch.arange(len(test)))
    for i, model in enumerate(population.models):
        model.eval()
        with torch.no_grad():
            logits = model(x)
        correct = (logits.argmax(1) == y).numpy()
        own = np.isin(y.numpy(), parts.own_classes(i))
        assert results[i]["test_acc"] == pytest.approx(correct.mean())
        assert results[i]["own_acc"] == pytest.approx(correct[own].mean())
        assert results[i]["own_images"] == own.sum() == 100
        assert results[i]["test_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    for a, b in zip(results, population.evaluate(batch_size=200)):  # batch size changes nothing
        assert (a["test_acc"], a["own_acc"]) == (b["test_acc"], b["own_acc"])
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


def test_sgd_learning_rate_decays_per_epoch_and_survives_optimizer_reset(cifar10):
    spec = OptimizerSpec("sgd", lr=0.01, momentum=0.9, lr_decay=0.5)
    population, _ = make_population(cifar10, n_agents=2, optimizer=spec)
    population.train_epoch()
    population.train_epoch()
    assert population.lr == pytest.approx(0.0025)
    population.reset_optimizers()
    for opt in population.optimizers:
        assert isinstance(opt, torch.optim.SGD)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.0025) and opt.param_groups[0]["momentum"] == 0.9
        assert opt.state == {}, "a reset optimizer starts without momentum buffers"


def test_consensus_distance_is_the_mean_squared_distance_of_the_parameters_to_their_mean(cifar10):
    """mean over agents of ‖θ_i − θ̄‖² over trainable parameters, by hand in float64, for 3 distinct
    agents whose BatchNorm buffers differ too (they are not parameters: they must not count)."""
    population, _ = make_population(cifar10, n_agents=3)
    for k, model in enumerate(population.models):
        scramble_batchnorm(model, seed=k)
    params = [{name: p.detach().double() for name, p in m.named_parameters()} for m in population.models]
    buffers = [{name: b.double() for name, b in m.named_buffers()} for m in population.models]

    def spread(agents):
        total = 0.0
        for name in agents[0]:
            mean = (agents[0][name] + agents[1][name] + agents[2][name]) / 3
            total += sum(((a[name] - mean) ** 2).sum().item() for a in agents)
        return total / 3

    expected = spread(params)
    assert population.consensus_distance() == pytest.approx(expected, rel=1e-9)
    assert spread(buffers) > 1e-3 * expected  # buffers counted in would show
    population.load_state_dicts([population.state_dicts()[0]] * 3)
    assert population.consensus_distance() == pytest.approx(0.0, abs=1e-12)


def test_batch_bounds_drop_only_a_single_trailing_image():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 8)]
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)]


def test_running_accuracy_is_nan_before_training(cifar10):
    population, _ = make_population(cifar10, n_agents=2)
    assert all(math.isnan(a) for a in population.running_accuracy())
