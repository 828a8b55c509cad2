"""Communication graphs and their mixing matrices (docs/benchmark.md#topologies-and-mixing-matrices).

A graph is a function `(n_agents, **options) -> adjacency`, a boolean N×N matrix with self-loops in
which `adjacency[i, j]` says that agent i receives from agent j (symmetric for an undirected graph),
or, for a graph drawn anew at every exchange, a `GraphProcess`; a weighting is a function
`(adjacency, graph_name) -> mixing matrix`. Both are registries, so a new graph is one registered
function. Every mixing matrix is validated: square, finite, non-negative, rows summing to 1, support
inside the graph. A time-varying graph's matrix of exchange t (`Topology.at(t)`) is the weighting
applied to that exchange's graph, drawn from the cell's seed, so every method of a setting meets the
same graphs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .registry import ConfigError, Registry, derive_seed

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
class GraphProcess:
    """A graph drawn anew for every exchange t = 0, 1, ...: `draw(t, seed)` is exchange t's adjacency
    (self-loops included), `union` every edge it can draw, `period` the number of exchanges after which
    it repeats (None: random, never), `pair_probability` (random graphs of one neighbour each) the
    chance that two given agents are joined in an exchange."""

    draw: Callable[[int, int], np.ndarray]
    union: np.ndarray
    period: int | None = None
    pair_probability: float | None = None


@dataclass(frozen=True)
class Topology:
    name: str
    mixing: str
    adjacency: np.ndarray  # bool (N, N), True on the diagonal; a time-varying graph's union
    mixing_matrix: np.ndarray  # float64 (N, N), row-stochastic; a time-varying graph's expected matrix
    process: GraphProcess | None = None  # a time-varying graph
    seed: int = 0  # the draws of a time-varying graph
    _drawn: dict = field(default_factory=dict, compare=False, repr=False)  # exchange t -> its matrix

    @property
    def n_agents(self) -> int:
        return len(self.adjacency)

    @property
    def directed(self) -> bool:
        """Some exchange's graph has an edge one way only (a time-varying graph: a period's exchanges)."""
        if self.process is not None:
            return any(((m > 0) != (m.T > 0)).any() for m in self.period_matrices())
        return bool((self.adjacency != self.adjacency.T).any())

    @property
    def time_varying(self) -> bool:
        return self.process is not None

    def neighbours(self, agent: int) -> np.ndarray:
        """Agents other than `agent` whose models `agent` takes a share of (Π_ij > 0, j != i)."""
        return neighbours(self.mixing_matrix, agent)

    def at(self, t: int) -> np.ndarray:
        """The mixing matrix of exchange `t` (0, 1, ...): the static graph's, or the weighting applied
        to the time-varying graph drawn for exchange t."""
        if self.process is None:
            return self.mixing_matrix
        if t not in self._drawn:
            if len(self._drawn) > 64:  # exchanges run in order: keep the recent ones
                self._drawn.clear()
            adjacency = self.process.draw(t, self.seed)
            matrix = WEIGHTS.get(self.mixing)(adjacency, self.name)
            validate_mixing_matrix(matrix, adjacency)
            self._drawn[t] = matrix
        return self._drawn[t]

    def period_matrices(self) -> list[np.ndarray]:
        """The matrices of one period (a static graph: its one matrix; a random graph: exchange 0's)."""
        if self.process is None:
            return [self.mixing_matrix]
        return [self.at(t) for t in range(self.process.period or 1)]

    @property
    def spectral_gap(self) -> float:
        """1 − |λ₂| of the mixing matrix; of the expected matrix for a time-varying graph."""
        return spectral_gap(self.mixing_matrix)

    @property
    def period_spectral_gap(self) -> float | None:
        """1 − |λ₂| of the product of one period's matrices (periodic graphs), else None."""
        if self.process is None or self.process.period is None:
            return None
        product = np.eye(self.n_agents)
        for matrix in self.period_matrices():
            product = matrix @ product
        return spectral_gap(product)


def create_topology(name: str, n_agents: int, mixing: str = "official", seed: int = 0, **options) -> Topology:
    """Build graph `name` on `n_agents` agents with weights `mixing`, validated (a time-varying graph:
    its exchanges drawn from `seed`, its `mixing_matrix` the expected one)."""
    if not isinstance(n_agents, (int, np.integer)) or n_agents < 2:
        raise ConfigError("agents", n_agents, "an integer >= 2")
    built = GRAPHS.get(name)(n_agents, **options)
    weights = WEIGHTS.get(mixing)
    if isinstance(built, GraphProcess):
        topology = Topology(name, mixing, built.union, np.eye(n_agents), built, seed)
        return dataclasses.replace(topology, mixing_matrix=expected_matrix(topology))
    matrix = weights(built, name)
    validate_mixing_matrix(matrix, built)
    return Topology(name, mixing, built, matrix)


def expected_matrix(topology: Topology) -> np.ndarray:
    """The expected mixing matrix of a time-varying graph: the mean over one period, or, for a random
    graph of one neighbour per exchange, each pair's weight times the chance they are joined (the
    weighting gives every joined pair the same weight, as uniform, metropolis and official do)."""
    process = topology.process
    if process.period is not None:
        return np.mean(topology.period_matrices(), axis=0)
    n, drawn = topology.n_agents, topology.at(0)
    pairs = np.argwhere(np.triu(drawn > 0, 1))
    weight = drawn[pairs[0][0], pairs[0][1]] if len(pairs) else 0.0
    matrix = np.where(topology.adjacency & ~np.eye(n, dtype=bool), weight * process.pair_probability, 0.0)
    np.fill_diagonal(matrix, 1.0 - matrix.sum(axis=1))
    return matrix


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
def from_edges(n: int, edges: Sequence[Sequence[int]] = (), directed: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """A graph from an undirected edge list [(i, j), ...] and a directed one [(i, j): i sends to j];
    self-loops are implied."""
    for edge in [*edges, *directed]:
        if len(edge) != 2 or not all(0 <= int(v) < n for v in edge):
            raise ConfigError("edges", list(edge), f"pairs (i, j) of agent indices in 0..{n - 1}")
    adjacency = _symmetric(n, [(int(i), int(j)) for i, j in edges])
    for i, j in directed:
        adjacency[int(j), int(i)] = True  # j receives from i
    return adjacency


@GRAPHS.register("directed_ring")
def directed_ring(n: int) -> np.ndarray:
    """Agent i sends to i + 1 (mod N) only: it receives from i − 1."""
    adjacency = np.eye(n, dtype=bool)
    for i in range(n):
        adjacency[(i + 1) % n, i] = True
    return adjacency


def one_peer_hops(n: int) -> list[int]:
    """The hops 2^0, 2^1, ... below N of the one-peer exponential graph (its period is their count)."""
    return [2 ** k for k in range((n - 1).bit_length())]


@GRAPHS.register("one_peer_exponential")
def one_peer_exponential(n: int) -> GraphProcess:
    """The SGP paper's time-varying directed exponential graph (Assran et al. 2019): at exchange t
    every agent i sends to one peer, i + 2^k (mod N) with k = t mod P, cycling through the P hops
    2^k < N (P = ⌈log₂ N⌉, the period); the union of a period is the directed exponential graph
    i → i + 2^k for every 2^k < N."""
    hops = one_peer_hops(n)

    def draw(t: int, seed: int) -> np.ndarray:
        adjacency = np.eye(n, dtype=bool)
        for i in range(n):
            adjacency[(i + hops[t % len(hops)]) % n, i] = True
        return adjacency

    union = np.eye(n, dtype=bool)
    for hop in hops:
        for i in range(n):
            union[(i + hop) % n, i] = True
    return GraphProcess(draw, union, period=len(hops))


@GRAPHS.register("random_matching")
def random_matching(n: int) -> GraphProcess:
    """A random perfect matching drawn for every exchange (undirected, one neighbour each; with an
    odd N one agent, drawn too, sits alone): a uniformly random permutation of the agents, paired
    off in order, from the stream ("graph", t) of the cell's seed."""
    def draw(t: int, seed: int) -> np.ndarray:
        order = np.random.default_rng(derive_seed(seed, "graph", t)).permutation(n)
        return _symmetric(n, [(int(order[k]), int(order[k + 1])) for k in range(0, n - 1, 2)])

    return GraphProcess(draw, np.ones((n, n), dtype=bool), period=None,
                        pair_probability=1.0 / (n - 1) if n % 2 == 0 else 1.0 / n)


# --- weights ----------------------------------------------------------------------------------

# Graphs the DIMAT authors never ran, whose own papers give their weights: an equal share to self and
# to each in-neighbour (the SGP paper's one-peer graphs: 1/2 kept, 1/2 received).
EQUAL_SHARES = ("directed_ring", "one_peer_exponential", "random_matching")


@WEIGHTS.register("official")
def official(adjacency: np.ndarray, graph: str) -> np.ndarray:
    """The weights of the authors' code: fc 1/N, ring 1/3, bipartite with a = ⌊100/(N−1)⌋/100,
    disconnected = identity; for the one-peer graphs (EQUAL_SHARES) their own papers' equal shares.
    Only defined for those graphs."""
    n = len(adjacency)
    if graph in EQUAL_SHARES:
        return uniform(adjacency, graph)
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
                      "official weights exist only for fc, ring, bipartite, disconnected and "
                      + ", ".join(EQUAL_SHARES))


@WEIGHTS.register("metropolis")
def metropolis(adjacency: np.ndarray, graph: str) -> np.ndarray:
    """Metropolis–Hastings: Π_ij = 1/(1 + max(deg_i, deg_j)) on edges, the diagonal takes the rest.
    Symmetric and doubly stochastic; for undirected graphs only."""
    adjacency = np.asarray(adjacency, dtype=bool)
    if (adjacency != adjacency.T).any():
        raise ConfigError("mixing", "metropolis", f"uniform or official for the directed graph {graph!r}",
                          "Metropolis weights need every edge both ways")
    degree = adjacency.sum(axis=1) - 1
    matrix = np.where(adjacency, 1.0 / (1 + np.maximum.outer(degree, degree)), 0.0)
    np.fill_diagonal(matrix, 0.0)
    np.fill_diagonal(matrix, 1.0 - matrix.sum(axis=1))
    return matrix


@WEIGHTS.register("uniform")
def uniform(adjacency: np.ndarray, graph: str) -> np.ndarray:
    """Equal weight 1/(deg_i + 1) on every neighbour and self, deg_i counting the agents i receives
    from (row-stochastic only)."""
    adjacency = np.asarray(adjacency, dtype=np.float64)
    return adjacency / adjacency.sum(axis=1, keepdims=True)
