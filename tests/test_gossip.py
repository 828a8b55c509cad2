"""The gossip methods on their own: SGP is push-sum, CDSGD reaches consensus."""

import math

import numpy as np
import pytest
import torch
from helpers import make_population, method_for

from dimat_bench.methods.gossip import SGP, cdsgd_step
from dimat_bench.topology import Topology, create_topology


@pytest.mark.parametrize("topology", ["fc", "ring"])
def test_sgp_on_a_symmetric_doubly_stochastic_matrix_mixes_local_sgd_steps(topology, cifar10):
    population, _ = make_population(cifar10, n_agents=4)
    method = method_for("sgp", population, create_topology(topology, 4, "metropolis"))
    torch.manual_seed(3)
    for model in population.models:
        for p in model.parameters():
            p.grad = torch.randn_like(p)
    params, grads, lr = population.flat_parameters(), population.flat_gradients(), population.lr
    mixing = torch.as_tensor(create_topology(topology, 4, "metropolis").mixing_matrix, dtype=torch.float32)
    method._update(0, [0, 1, 2, 3])
    torch.testing.assert_close(population.flat_parameters(), mixing @ (params - lr * grads), rtol=1e-5, atol=1e-6)
    assert torch.allclose(method.weights, torch.ones_like(method.weights))


def test_sgp_push_sum_on_a_directed_graph_conserves_mass_and_finds_the_average(cifar10):
    # Agent j pushes equal shares to itself and its out-neighbours: column-stochastic, not row-stochastic.
    out_edges = {0: [1], 1: [2, 3], 2: [0], 3: [0, 2]}
    push = np.zeros((4, 4))
    for j, targets in out_edges.items():
        for i in [j, *targets]:
            push[i, j] = 1 / (len(targets) + 1)
    assert np.allclose(push.sum(axis=0), 1) and not np.allclose(push.sum(axis=1), 1)
    population, _ = make_population(cifar10, n_agents=4)
    method = method_for("sgp", population, Topology("directed", "push", push > 0, push))
    assert method.messages_per_exchange(push, method.options).tolist() == [1, 2, 1, 2]  # out-degrees, not in
    x0 = torch.randn(4, 6)
    z = x0.clone()
    for step in range(200):
        z = method.step(z, torch.zeros_like(z), lr=0.1)
        x = method.weights.float() * z
        assert math.isclose(method.weights.sum().item(), 4.0, rel_tol=1e-9)
        torch.testing.assert_close(x.sum(0), x0.sum(0), rtol=1e-5, atol=1e-5)
        if step == 0:
            assert not torch.allclose(method.weights, torch.ones_like(method.weights))
    torch.testing.assert_close(z, x0.mean(0).expand_as(z), rtol=1e-4, atol=1e-4)


def test_cdsgd_on_a_quadratic_reaches_consensus():
    mixing = torch.as_tensor(create_topology("ring", 6).mixing_matrix, dtype=torch.float64)
    targets = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10
    initial = ((x - x.mean(0)) ** 2).sum(1).mean()
    for t in range(3000):
        lr = 0.5 / (1 + t) ** 0.5  # f_i = ½‖x − c_i‖², gradient x − c_i; diminishing step
        x = cdsgd_step(mixing, x, x - targets, lr)
    consensus = ((x - x.mean(0)) ** 2).sum(1).mean()
    assert consensus < 1e-4 * initial
    torch.testing.assert_close(x.mean(0), targets.mean(0), rtol=0, atol=2e-2)


# An irregular graph (degrees 3, 2, 2, 2, 1) under `uniform` weights: row-stochastic, not column-stochastic.
IRREGULAR, DEGREES = [(0, 1), (0, 2), (0, 3), (1, 2), (3, 4)], [3, 2, 2, 2, 1]


def equal_shares():
    """By hand: agent j pushes 1/(1 + out-degree_j) to itself and to each neighbour (column j)."""
    push = np.diag([1 / (1 + d) for d in DEGREES])
    for a, b in IRREGULAR:
        push[a, b], push[b, a] = 1 / (1 + DEGREES[b]), 1 / (1 + DEGREES[a])
    return push


def test_sgp_on_a_row_stochastic_matrix_pushes_equal_shares_and_runs_push_sum(cifar10):
    """P is column-stochastic on the graph's support; two steps from a real population equal
    x ← P (w ⊙ z − η g), w ← P w, z ← x / w by hand in float64 (the weights leave 1)."""
    topology = create_topology("edges", 5, "uniform", edges=IRREGULAR)
    assert not np.allclose(topology.mixing_matrix.sum(axis=0), 1)
    push = equal_shares()
    np.testing.assert_allclose(push.sum(axis=0), 1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(SGP.communication_matrix(topology.mixing_matrix), push, rtol=0, atol=1e-15)
    population, _ = make_population(cifar10, n_agents=5)
    method = method_for("sgp", population, topology)
    z, w = population.flat_parameters(), torch.ones(5, 1, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for lr in (0.0, 0.05):
        grads = torch.randn(z.shape, generator=generator)
        expected = torch.as_tensor(push) @ (w * z.double() - lr * grads.double())
        w = torch.as_tensor(push) @ w
        z = method.step(z, grads, lr)
        torch.testing.assert_close(z.double(), expected / w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(method.weights, w, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(w, torch.ones_like(w))
    assert method.messages_per_exchange(topology.mixing_matrix, method.options).tolist() == DEGREES
