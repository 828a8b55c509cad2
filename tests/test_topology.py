import numpy as np
import pytest

from dimat_bench.registry import ConfigError
from dimat_bench.topology import EQUAL_SHARES, GRAPHS, WEIGHTS, create_topology, spectral_gap, validate_mixing_matrix

GRAPH_OPTIONS = {"erdos_renyi": {"p": 0.4, "seed": 1}, "edges": {"edges": [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]}}
PAPER_GRAPHS = ("fc", "ring", "bipartite", "disconnected")


DIRECTED = {"directed_ring", "one_peer_exponential"}  # metropolis rejects them (tests/test_network.py)


def cases():
    for graph in GRAPHS.names():
        for mixing in WEIGHTS.names():
            if (mixing == "official" and graph not in PAPER_GRAPHS + EQUAL_SHARES) or \
                    (mixing == "metropolis" and graph in DIRECTED):
                continue
            for n in (4, 6, 9):
                yield graph, mixing, n


@pytest.mark.parametrize("graph,mixing,n", list(cases()))
def test_every_mixing_matrix_is_row_stochastic_on_its_graph(graph, mixing, n):
    topo = create_topology(graph, n, mixing, **GRAPH_OPTIONS.get(graph, {}))
    matrix = topo.mixing_matrix
    assert matrix.shape == (n, n)
    assert (matrix >= 0).all()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    assert not ((matrix > 0) & ~topo.adjacency).any()
    assert topo.adjacency.diagonal().all() and (topo.adjacency == topo.adjacency.T).all() != (graph in DIRECTED)
    if mixing == "metropolis":
        np.testing.assert_allclose(matrix, matrix.T)
        np.testing.assert_allclose(matrix.sum(axis=0), 1.0, atol=1e-12)


def test_official_matrices_at_five_agents():
    np.testing.assert_array_equal(create_topology("fc", 5).mixing_matrix, np.full((5, 5), 0.2))
    ring = create_topology("ring", 5).mixing_matrix
    expected = np.zeros((5, 5))
    for i in range(5):
        expected[i, [(i - 1) % 5, i, (i + 1) % 5]] = 1 / 3
    np.testing.assert_array_equal(ring, expected)
    bipartite = create_topology("bipartite", 5).mixing_matrix  # a = floor(100/4)/100 = 0.25
    np.testing.assert_allclose(bipartite, [
        [0.50, 0.00, 0.00, 0.25, 0.25],
        [0.00, 0.50, 0.00, 0.25, 0.25],
        [0.00, 0.00, 0.50, 0.25, 0.25],
        [0.25, 0.25, 0.25, 0.25, 0.00],
        [0.25, 0.25, 0.25, 0.00, 0.25],
    ])
    np.testing.assert_array_equal(create_topology("disconnected", 5).mixing_matrix, np.eye(5))


def test_official_bipartite_rounds_the_hub_weight_down():
    matrix = create_topology("bipartite", 8).mixing_matrix  # a = floor(100/7)/100 = 0.14
    assert matrix[0, 6] == pytest.approx(0.14) and matrix[0, 0] == pytest.approx(0.72)
    assert matrix[6, 6] == pytest.approx(1 - 6 * 0.14)


def test_official_ring_with_two_agents_is_rejected_with_the_reason():
    with pytest.raises(ConfigError, match=r"rows summing to 2/3; use topology fc"):
        create_topology("ring", 2)
    repaired = create_topology("ring", 2, "metropolis").mixing_matrix
    np.testing.assert_allclose(repaired, np.full((2, 2), 0.5))


def test_spectral_gaps():
    assert create_topology("fc", 7).spectral_gap == pytest.approx(1.0)
    assert create_topology("disconnected", 7).spectral_gap == pytest.approx(0.0)
    # Circulant ring, weights 1/3: eigenvalues (1 + 2 cos(2πk/N)) / 3.
    n = 8
    lam2 = max(abs((1 + 2 * np.cos(2 * np.pi * k / n)) / 3) for k in range(1, n))
    assert create_topology("ring", n).spectral_gap == pytest.approx(1 - lam2)
    assert create_topology("ring", 8).spectral_gap < create_topology("exponential", 8, "metropolis").spectral_gap


def test_neighbours_exclude_self():
    topo = create_topology("ring", 5)
    assert list(topo.neighbours(0)) == [1, 4]
    assert list(create_topology("bipartite", 5).neighbours(3)) == [0, 1, 2]


def test_torus_and_exponential_graph_shapes():
    torus = create_topology("torus", 12, "metropolis")  # 3 x 4 grid
    assert (torus.adjacency.sum(axis=1) - 1 == 4).all()
    exponential = create_topology("exponential", 8, "metropolis")  # hops 1, 2, 4 both ways
    assert list(np.flatnonzero(exponential.adjacency[0])) == [0, 1, 2, 4, 6, 7]
    with pytest.raises(ConfigError, match="torus"):
        create_topology("torus", 7, "metropolis")


@pytest.mark.parametrize("matrix,message", [
    (np.full((3, 2), 0.5), "square N×N"),
    (np.array([[0.5, 0.6], [0.5, 0.5]]), "row 0 sums to 1.1"),
    (np.array([[1.5, -0.5], [0.5, 0.5]]), r"entry \[0, 1\] = -0.5'; allowed: non-negative"),
    (np.array([[np.nan, 1.0], [0.5, 0.5]]), "finite"),
])
def test_invalid_mixing_matrices_fail_naming_the_problem(matrix, message):
    with pytest.raises(ConfigError, match=message):
        validate_mixing_matrix(matrix)


def test_weights_outside_the_graph_are_rejected():
    with pytest.raises(ConfigError, match="2 is not a neighbour of 0"):
        validate_mixing_matrix(np.full((4, 4), 0.25), create_topology("ring", 4).adjacency)


def test_unknown_names_and_official_weights_off_the_paper_graphs():
    with pytest.raises(ConfigError, match="topology: got 'rign'.*did you mean 'ring'"):
        create_topology("rign", 5)
    with pytest.raises(ConfigError, match="official weights exist only for fc, ring, bipartite, disconnected and directed_ring"):
        create_topology("torus", 6)
    with pytest.raises(ConfigError, match="agents: got 1"):
        create_topology("fc", 1)


def test_spectral_gap_of_a_plain_matrix():
    assert spectral_gap(np.array([[0.5, 0.5], [0.5, 0.5]])) == pytest.approx(1.0)
