"""Communication graphs and their mixing matrices (docs/benchmark.md#topologies-and-mixing-matrices).

A graph is a function `(n_agents, **options) -> adjacency`, a symmetric boolean N×N matrix with
self-loops; a weighting is a function `(adjacency, graph_name) -> mixing matrix`. Both are registries,
so a new graph is one registered function. Every mixing matrix is validated: square, finite,
non-negative, rows summing to 1, support inside the graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .registry import ConfigError, Registry

GraphFn = Callable[..., np.ndarray]
WeightFn = Callable[[np.ndarray, str], np.ndarray]
GRAPHS: Registry[GraphFn] = Registry("topology")
WEIGHTS: Registry[WeightFn] = Registry("mixing")

ROW_SUM_TOL = 1e-9


def neighbours(matrix: np.ndarray, agent: int) -> np.ndarray:
    """Agents other than `agent` whose models `agent` takes a share of under mixing matrix
    `matrix` (Π_ij > 0, j != i), in order."""
    row = np.asarray(matrix)[agent] > 0
    row[agent] = False
    return np.flatnonzero(row)


@dataclass(frozen=True)
class Topology:
    name: str
    mixing: str
    adjacency: np.ndarray  # bool (N, N), True on the diagonal
    mixing_matrix: np.ndarray  # float64 (N, N), row-stochastic

    @property
    def n_agents(self) -> int:
        return len(self.adjacency)

    def neighbours(self, agent: int) -> np.ndarray:
        """Agents other than `agent` whose models `agent` takes a share of (Π_ij > 0, j != i)."""
        return neighbours(self.mixing_matrix, agent)

    @property
    def spectral_gap(self) -> float:
        return spectral_gap(self.mixing_matrix)


def create_topology(name: str, n_agents: int, mixing: str = "official", **options) -> Topology:
    """Build graph `name` on `n_agents` agents with weights `mixing`, validated."""
    if not isinstance(n_agents, (int, np.integer)) or n_agents < 2:
        raise ConfigError("agents", n_agents, "an integer >= 2")
    adjacency = GRAPHS.get(name)(n_agents, **options)
    weights = WEIGHTS.get(mixing)
    matrix = weights(adjacency, name)
    validate_mixing_matrix(matrix, adjacency)
    return Topology(name, mixing, adjacency, matrix)


def validate_mixing_matrix(matrix, adjacency: np.ndarray | None = None, field: str = "mixing_matrix") -> None:
    """Raise ConfigError unless `matrix` is a valid row-stochastic mixing matrix (on `adjacency`)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ConfigError(field, f"array of shape {matrix.shape}", "a square N×N matrix with N >= 2")
    if not np.isfinite(matrix).all():
        raise ConfigError(field, "a matrix with NaN or inf entries", "finite weights")
    if (matrix < 0).any():
        i, j = np.argwhere(matrix < 0)[0]
        raise ConfigError(field, f"entry [{i}, {j}] = {matrix[i, j]:.6g}", "non-negative weights")
    sums = matrix.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOL)
    if len(bad):
        shown = ", ".join(f"row {i} sums to {sums[i]:.6g}" for i in bad[:4])
        raise ConfigError(field, shown, "rows that sum to 1 (row-stochastic)")
    if adjacency is not None:
        outside = (matrix > 0) & ~np.asarray(adjacency, dtype=bool)
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise ConfigError(field, f"entry [{i}, {j}] = {matrix[i, j]:.6g}",
                              f"weight only between neighbours; {j} is not a neighbour of {i}")


def spectral_gap(matrix: np.ndarray) -> float:
    """1 − |λ₂|, λ₂ the second-largest eigenvalue in modulus: 1 for averaging in one step, 0 when the
    graph never mixes (disconnected)."""
    moduli = np.sort(np.abs(np.linalg.eigvals(np.asarray(matrix, dtype=np.float64))))[::-1]
    return float(max(0.0, 1.0 - moduli[1]))


def _symmetric(n: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    adjacency = np.eye(n, dtype=bool)
    for i, j in edges:
        adjacency[i, j] = adjacency[j, i] = True
    return adjacency


def is_connected(adjacency: np.ndarray) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero(adjacency[i]):
            if j not in seen:
                seen.add(int(j))
                frontier.append(int(j))
    return len(seen) == len(adjacency)


# --- graphs -----------------------------------------------------------------------------------

@GRAPHS.register("fc")
def fully_connected(n: int) -> np.ndarray:
    return np.ones((n, n), dtype=bool)


@GRAPHS.register("ring")
def ring(n: int) -> np.ndarray:
    return _symmetric(n, [(i, (i + 1) % n) for i in range(n)])


@GRAPHS.register("bipartite")
def bipartite(n: int) -> np.ndarray:
    """The official "Bipar" graph: the last two agents are hubs joined to every other agent (not to
    each other); the others talk only to the two hubs."""
    if n < 3:
        raise ConfigError("agents", n, "an integer >= 3 for the bipartite (two-hub) topology")
    return _symmetric(n, [(i, hub) for i in range(n - 2) for hub in (n - 2, n - 1)])


@GRAPHS.register("disconnected")
def disconnected(n: int) -> np.ndarray:
    return np.eye(n, dtype=bool)


@GRAPHS.register("torus")
def torus(n: int, rows: int | None = None) -> np.ndarray:
    """A rows×cols grid with wrap-around (4 neighbours); by default the most nearly square factorisation."""
    if rows is None:
        rows = max(r for r in range(1, int(np.sqrt(n)) + 1) if n % r == 0)
    if rows < 2 or n % rows:
        raise ConfigError("agents", n, "a number with a factorisation rows×cols, both >= 2, for a torus "
                          "(a prime N makes a ring: use topology ring)")
    cols = n // rows
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges += [(i, r * cols + (c + 1) % cols), (i, ((r + 1) % rows) * cols + c)]
    return _symmetric(n, edges)


@GRAPHS.register("exponential")
def exponential(n: int) -> np.ndarray:
    """Agent i linked to i ± 2^k (mod N) for every 2^k < N, made undirected."""
    edges, hop = [], 1
    while hop < n:
        edges += [(i, (i + hop) % n) for i in range(n)]
        hop *= 2
    return _symmetric(n, edges)


@GRAPHS.register("erdos_renyi")
def erdos_renyi(n: int, p: float = 0.5, seed: int = 0, max_tries: int = 1000) -> np.ndarray:
    """Each pair linked with probability p; redrawn (same seed stream) until the graph is connected."""
    if not 0 < p <= 1:
        raise ConfigError("edge_probability", p, "a probability in (0, 1]")
    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for _ in range(max_tries):
        keep = rng.random(len(pairs)) < p
        adjacency = _symmetric(n, [pair for pair, k in zip(pairs, keep) if k])
        if is_connected(adjacency):
            return adjacency
    raise ConfigError("edge_probability", p, f"a probability that gives a connected graph on {n} agents "
                      f"within {max_tries} draws")


@GRAPHS.register("edges")
def from_edges(n: int, edges: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """A graph from an undirected edge list [(i, j), ...]; self-loops are implied."""
    for edge in edges:
        if len(edge) != 2 or not all(0 <= int(v) < n for v in edge):
            raise ConfigError("edges", list(edge), f"pairs (i, j) of agent indices in 0..{n - 1}")
    return _symmetric(n, [(int(i), int(j)) for i, j in edges])


# --- weights ----------------------------------------------------------------------------------

@WEIGHTS.register("official")
def official(adjacency: np.ndarray, graph: str) -> np.ndarray:
    """The weights of the authors' code: fc 1/N, ring 1/3, bipartite with a = ⌊100/(N−1)⌋/100,
    disconnected = identity. Only defined for those four graphs."""
    n = len(adjacency)
    if graph == "fc":
        return np.full((n, n), 1.0 / n)
    if graph == "ring":
        if n == 2:
            raise ConfigError("topology", "ring with 2 agents", "ring with N >= 3 under official weights",
                              "With N = 2 the ring's two neighbours are the same agent and the official 1/3 "
                              "weights give rows summing to 2/3; use topology fc (the same graph at N = 2) "
                              "or mixing metropolis")
        return adjacency / 3.0
    if graph == "bipartite":
        a = (100 // (n - 1)) / 100
        matrix = np.zeros((n, n))
        for i in range(n - 2):
            matrix[i, i], matrix[i, n - 2], matrix[i, n - 1] = 1 - 2 * a, a, a
        for hub in (n - 2, n - 1):
            matrix[hub, : n - 2] = a
            matrix[hub, hub] = 1 - (n - 2) * a
        return matrix
    if graph == "disconnected":
        return np.eye(n)
    raise ConfigError("mixing", "official", "metropolis or uniform for topology " + repr(graph),
                      "official weights exist only for fc, ring, bipartite and disconnected")


@WEIGHTS.register("metropolis")
def metropolis(adjacency: np.ndarray, graph: str) -> np.ndarray:
    """Metropolis–Hastings: Π_ij = 1/(1 + max(deg_i, deg_j)) on edges, the diagonal takes the rest.
    Symmetric and doubly stochastic."""
    adjacency = np.asarray(adjacency, dtype=bool)
    degree = adjacency.sum(axis=1) - 1
    matrix = np.where(adjacency, 1.0 / (1 + np.maximum.outer(degree, degree)), 0.0)
    np.fill_diagonal(matrix, 0.0)
    np.fill_diagonal(matrix, 1.0 - matrix.sum(axis=1))
    return matrix


@WEIGHTS.register("uniform")
def uniform(adjacency: np.ndarray, graph: str) -> np.ndarray:
    """Equal weight 1/(deg_i + 1) on every neighbour and self (row-stochastic only)."""
    adjacency = np.asarray(adjacency, dtype=np.float64)
    return adjacency / adjacency.sum(axis=1, keepdims=True)
