"""What of an exchange arrives: lost messages and absent agents (docs/benchmark.md#networks-as-they-are).

`Faults(drop_rate, absent_rate, seed)` draws, for exchange t, which messages are lost (each one
independently, with probability `drop_rate`) and which agents sit the exchange out (each with
probability `absent_rate`: an absent agent neither sends nor receives), from a stream of its own,
("faults", t) of the cell's seed: not the data order's, the augmentation's or the matching's, and
the same for every method of a setting that exchanges at t. `exchange` turns one exchange's mixing
matrix and that draw into an `Exchange`: who sent to whom, what arrived, and the two ways a method
can use what arrived (`received`: row-normalised over it, for merges and consensus steps; `pushed`:
push-sum's column shares, a lost message losing its share).

A message is sent when its sender is present (it cannot know that the receiver is away) and
delivered when, besides, the receiver is present and the message is not lost. With both rates 0
nothing is drawn and the exchange is the graph's, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registry import ConfigError, derive_seed


@dataclass(frozen=True)
class Faults:
    """Each message lost with probability `drop_rate`; each agent absent from an exchange with
    probability `absent_rate`; drawn from the stream ("faults", t) of `seed`."""

    drop_rate: float = 0.0
    absent_rate: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("drop_rate", "absent_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(name, value, "a probability from 0 to 1")

    @property
    def active(self) -> bool:
        return self.drop_rate > 0 or self.absent_rate > 0

    def draw(self, t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(lost, absent) of exchange `t` among `n` agents: lost[i, j] says that j's message to i is
        lost; absent[i] that agent i sits the exchange out. Every draw takes the same numbers from the
        stream whatever the rates, so two cells with the same seed meet the same faults at t."""
        rng = np.random.default_rng(derive_seed(self.seed, "faults", t))
        lost = rng.random((n, n)) < self.drop_rate
        absent = rng.random(n) < self.absent_rate
        return lost, absent


NO_FAULTS = Faults()


def expected_fractions(drop_rate: float, absent_rate: float) -> tuple[float, float]:
    """(sent, delivered): the expected fractions of a perfect network's messages that are sent and that
    arrive under these rates. A message is sent when its sender is present (1 − absent_rate) and
    arrives when, besides, its receiver is present and it is not lost: (1 − absent_rate)² (1 − drop_rate)."""
    present = 1.0 - absent_rate
    return present, present * present * (1.0 - drop_rate)


@dataclass(frozen=True)
class Exchange:
    """One exchange as it happened. `matrix[i, j]` is the share agent i takes of j's model (the graph's
    weights); `sent[i, j]` (off the diagonal) that j sent i its model; `delivered[i, j]` that it arrived;
    `absent[i]` that agent i sat the exchange out."""

    matrix: np.ndarray
    sent: np.ndarray
    delivered: np.ndarray
    absent: np.ndarray

    @property
    def sent_per_agent(self) -> np.ndarray:
        """Messages each agent sent (column sums)."""
        return self.sent.sum(axis=0)

    @property
    def delivered_per_agent(self) -> np.ndarray:
        """Messages of each agent that arrived."""
        return self.delivered.sum(axis=0)

    def received(self) -> np.ndarray:
        """The mixing matrix over what arrived: row i keeps Π_ii and the Π_ij whose message arrived,
        rescaled to sum to 1. A row that lost nothing is the graph's, bit for bit; an agent that
        received nothing (absent, or every message lost) keeps its own model (row e_i)."""
        n = len(self.matrix)
        keep = self.delivered | np.eye(n, dtype=bool)
        touched = ((self.matrix > 0) & ~keep).any(axis=1)
        out = np.array(self.matrix, dtype=np.float64, copy=True)
        rows = np.where(keep[touched], out[touched], 0.0)
        out[touched] = rows / rows.sum(axis=1, keepdims=True)
        return out

    def pushed(self, push: np.ndarray) -> np.ndarray:
        """Push-sum's shares over what arrived (`push` column-stochastic: P_ij the share of j's mass
        that j sends i): a lost message's share is lost with it (column j then sums to less than 1);
        an absent agent sends nothing and keeps its whole mass (column e_j)."""
        n = len(push)
        out = np.where(self.delivered | np.eye(n, dtype=bool), push, 0.0)
        for j in np.flatnonzero(self.absent):
            out[:, j] = 0.0
            out[j, j] = 1.0
        return out


def off_diagonal_support(matrix: np.ndarray) -> np.ndarray:
    support = np.asarray(matrix) > 0
    np.fill_diagonal(support, False)
    return support


def exchange(matrix: np.ndarray, t: int, faults: Faults = NO_FAULTS) -> Exchange:
    """Exchange `t` over the graph whose mixing matrix is `matrix`, under `faults`."""
    n = len(matrix)
    support = off_diagonal_support(matrix)
    if not faults.active:
        return Exchange(matrix, support, support.copy(), np.zeros(n, dtype=bool))
    lost, absent = faults.draw(t, n)
    sent = support & ~absent[None, :]
    delivered = sent & ~lost & ~absent[:, None]
    return Exchange(matrix, sent, delivered, absent)
