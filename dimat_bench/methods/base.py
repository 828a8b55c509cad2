"""The Method interface, its registry, the options every method takes, and named variants.

A method is a class registered by name with `@register("name")`. Its settings are one dataclass,
`Options`, declared next to the code that reads them (a subclass of `MethodOptions`, which holds the
local optimizer every method trains with); the runner builds it by field name from the run config,
validates it strictly and records it resolved. A variant (`variant("wm_reset", "wm",
bn_reset=True)`) is a registered method with some options fixed: a name, not a new class to
write. A method touches agents only through the Population."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np
import torch

from .. import config as cfg
from ..network import NO_FAULTS, Exchange, Faults, off_diagonal_support
from ..network import exchange as network_exchange
from ..population import OPTIMIZERS, OptimizerSpec, Population
from ..registry import ConfigError, Registry
from ..topology import Topology


@dataclass(frozen=True)
class LearningRateOptions:
    """every method: the learning rate and its decay"""

    lr: float = cfg.option(1e-3, "learning rate", min=0.0)
    lr_decay: float = cfg.option(1.0, "learning-rate factor applied after every epoch", min=0.0, max=1.0)

    def optimizer_spec(self) -> OptimizerSpec:
        """What the population trains with. A method that makes its own update (gossip) takes only the
        learning-rate schedule; the population's plain SGD is then never stepped."""
        return OptimizerSpec("sgd", self.lr, 0.0, 0.0, self.lr_decay)


@dataclass(frozen=True)
class MethodOptions(LearningRateOptions):
    """methods that train with a local optimizer (merge methods, local)"""

    optimizer: str = cfg.option("adam", "local optimizer: adam or sgd", choices=lambda: list(OPTIMIZERS))
    momentum: float = cfg.option(0.9, "SGD momentum of the local optimizer (Adam ignores it)", min=0.0, max=1.0)
    weight_decay: float = cfg.option(0.0, "L2 weight decay", min=0.0)
    reset_optimizer: bool = cfg.option(True, "re-create the optimizer at the start of every round")

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, self.lr, self.momentum, self.weight_decay, self.lr_decay)


@dataclass
class MethodContext:
    population: Population
    topology: Topology
    options: MethodOptions
    seed: int
    faults: Faults = NO_FAULTS  # lost messages and absent agents (network.py)


# Where a round schedule puts its communicating rounds (docs/benchmark.md#communication-budgets).
PLACEMENTS = ("every", "early", "uniform", "late")


@dataclass(frozen=True)
class Schedule:
    """When a method's agents exchange models: after every `period`-th minibatch step (`"step"`;
    lockstep steps are counted over the whole run, across epochs and rounds, so a period need not
    divide a round), at the start of a round (`"round"`), or never (`"never"`).

    A round schedule communicates in every round (`placement` every), or in `budget` of the run's R
    rounds placed `early` (rounds 1..M), `uniform` (one in each of M equal slices of the run, at its
    centre: round ⌈(2i − 1)·R / 2M⌉ for i = 1..M, so M = R/K is every K-th round) or `late` (rounds
    R − M + 1..R); a budget of None is every round."""

    unit: str
    period: int = 1
    placement: str = "every"
    budget: int | None = None

    def __post_init__(self):
        if self.unit not in ("step", "round", "never") or self.period < 1 or (self.unit != "step" and self.period != 1):
            raise ValueError(f"Schedule({self.unit!r}, {self.period}): unit step (period >= 1), round or never")
        if self.placement not in PLACEMENTS or (self.placement != "every" and self.unit != "round") or \
                (self.budget is not None and self.budget < 1):
            raise ValueError(f"Schedule placement {self.placement!r}, budget {self.budget}: a placement of "
                             f"{', '.join(PLACEMENTS)} (other than every for a round schedule only), a budget >= 1")

    @property
    def budgeted(self) -> bool:
        return self.unit == "round" and self.placement != "every" and self.budget is not None

    def check(self, rounds: int, method: str) -> None:
        """Raise ConfigError when a run of `rounds` rounds cannot hold this schedule (a placement with
        no budget, or a budget over R)."""
        if self.unit == "round" and self.placement != "every" and (self.budget is None or self.budget > rounds):
            raise ConfigError("merge_budget", self.budget, f"a number of rounds from 1 to rounds ({rounds})",
                              f"{method} merges in merge_budget {self.placement} rounds of the run")

    def rounds(self, rounds: int) -> list[int]:
        """The rounds (1..R) that start with an exchange: all of them for an every-round schedule, the
        budget's placed ones for a budgeted one, none for a step or never schedule."""
        if self.unit != "round":
            return []
        if not self.budgeted:
            return list(range(1, rounds + 1))
        m = self.budget
        if m > rounds:
            raise ValueError(f"a budget of {m} rounds in a run of {rounds}")
        if self.placement == "early":
            return list(range(1, m + 1))
        if self.placement == "late":
            return list(range(rounds - m + 1, rounds + 1))
        return [-(-(2 * i - 1) * rounds // (2 * m)) for i in range(1, m + 1)]

    def exchanges(self, steps_per_epoch: int, epochs_per_round: int, rounds: int) -> int:
        """How many exchanges a run of `rounds` rounds makes."""
        if self.unit == "never":
            return 0
        if self.unit == "round":
            return len(self.rounds(rounds))
        return steps_per_epoch * epochs_per_round * rounds // self.period

    def per_epoch(self, steps_per_epoch: int, epochs_per_round: int, rounds: int | None = None) -> Fraction:
        """Exchanges per epoch (what the communication table and figure show), exact: in the long run,
        or, for a budgeted schedule, averaged over a run of `rounds` rounds (required then)."""
        if self.budgeted:
            if rounds is None:
                raise ValueError("a budgeted schedule's exchanges per epoch depend on the run's rounds")
            return Fraction(self.exchanges(steps_per_epoch, epochs_per_round, rounds), rounds * epochs_per_round)
        return {"never": Fraction(0), "round": Fraction(1, epochs_per_round),
                "step": Fraction(steps_per_epoch, self.period)}[self.unit]


EVERY_STEP, EVERY_ROUND, NEVER = Schedule("step"), Schedule("round"), Schedule("never")


class Method:
    """One decentralized algorithm.

    `family` decides the round (docs/benchmark.md#one-cell): "merge" methods communicate at the start
    of a round in `communicate` (then the runner evaluates and trains E epochs), in every round or in
    the rounds their schedule's budget places (`Schedule.rounds`); "gossip" methods
    communicate inside training; "local" methods never communicate. `schedule(options)` says
    exactly when (by default from the family: every round, every step, never); a method that
    communicates every K steps returns `Schedule("step", K)` and does it in `exchange`, which the
    base `train` calls after every K-th lockstep step of the run.

    Communication is counted in messages: one message is one model sent by one agent to one
    receiver. Subclasses call `sent(messages, elements)` whenever agents send (it keeps
    `messages_sent` and `bytes_sent` per agent) and wrap the work in `with self.communicating():` so
    its wall time lands in `communicate_seconds` (`exchange` is wrapped for them). The class methods
    `schedule`, `messages_per_exchange` and `message_elements` state the same analytically: the
    communication table and figure are drawn from them, and the tests check them against what a run
    counted."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "merge"
    random_communication: ClassVar[bool] = False  # messages_per_exchange is then an upper bound
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    fixed: ClassVar[dict[str, Any]] = {}  # a variant's options, which the run config cannot change
    variant_of: ClassVar[str | None] = None
    # The pretraining a cell of the method starts from: the N agents', or one model on the union of
    # their shards (`union`: the centralized ceiling; the planner gives such cells `union: true`).
    pretraining: ClassVar[str] = "agents"
    # Whether the method reads each exchange's graph (`topology.at(t)`) and what of it arrived
    # (`network_exchange`): without it, a time-varying graph or faults stop the cell before any compute.
    supports_networks: ClassVar[bool] = False

    def __init__(self, context: MethodContext):
        self.population = context.population
        self.topology = context.topology
        self.options = context.options
        self.seed = context.seed
        self.faults = context.faults
        self.messages_sent = np.zeros(self.population.n_agents, dtype=np.int64)
        self.messages_delivered = np.zeros(self.population.n_agents, dtype=np.int64)
        self.bytes_sent = np.zeros(self.population.n_agents, dtype=np.int64)
        self.communicate_seconds = 0.0
        self.steps_done = 0  # lockstep minibatch steps over the whole run
        if not self.perfect_network and not self.supports_networks:
            key, value = (("topology", self.topology.name) if self.topology.time_varying
                          else ("drop_rate", self.faults.drop_rate) if self.faults.drop_rate else
                          ("absent_rate", self.faults.absent_rate))
            raise ConfigError(key, value, f"a static graph without faults for method {self.name or type(self).__name__}",
                              "it does not say what it does on a time-varying graph or with lost messages "
                              "(supports_networks; docs/adding-a-method.md)")

    @classmethod
    def option_keys(cls) -> list[str]:
        """The option keys this method takes (its `Options` fields, in order)."""
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def settable_keys(cls) -> set[str]:
        """The option keys a run config may set: all but those a variant fixes."""
        return set(cls.option_keys()) - set(cls.fixed)

    @classmethod
    def build_options(cls, given: Mapping[str, Any] | None = None) -> MethodOptions:
        """This method's options: its defaults, a variant's fixed values, then `given` (validated by
        field name; a variant's fixed option cannot be changed)."""
        given = dict(given or {})
        for key, value in given.items():
            if key in cls.fixed and value != cls.fixed[key]:
                raise ConfigError(key, value, repr(cls.fixed[key]),
                                  f"{cls.name} is {cls.variant_of} with {key} fixed; use method {cls.variant_of} "
                                  "to change it")
        return cfg.from_dict(cls.Options, {**cls.fixed, **given})

    # --- what subclasses override -------------------------------------------------------------

    def communicate(self, round_index: int) -> None:
        """Merge-family methods: exchange models with neighbours once (round_index starts at 1)."""

    def train(self, epochs: int, after_step: Callable[[int], None] | None = None) -> list[dict]:
        """E local epochs; the optimizer is re-created first when `reset_optimizer` says so. With a
        step schedule, `exchange` runs after every `period`-th step of the run."""
        if getattr(self.options, "reset_optimizer", False):
            self.population.reset_optimizers()
        schedule = self.schedule(self.options)

        def step_done(step: int) -> None:
            self.steps_done += 1
            if schedule.unit == "step" and self.steps_done % schedule.period == 0:
                with self.communicating():
                    self.exchange(self.steps_done)
            if after_step is not None:
                after_step(step)

        return round_train_stats([self.population.train_epoch(after_step=step_done) for _ in range(epochs)])

    def exchange(self, step: int) -> None:
        """Step-scheduled methods: exchange models now (`step` lockstep steps into the run)."""
        raise NotImplementedError(f"{type(self).__name__} has a step schedule but no exchange()")

    # --- the communication schedule, analytically ---------------------------------------------

    @classmethod
    def schedule(cls, options: MethodOptions) -> Schedule:
        """When agents exchange models: by default every round for merge methods, after every
        minibatch step for gossip methods, never for local ones."""
        return {"merge": EVERY_ROUND, "gossip": EVERY_STEP, "local": NEVER}[cls.family]

    @classmethod
    def messages_per_exchange(cls, matrix: np.ndarray, options: MethodOptions) -> np.ndarray:
        """Messages each agent sends in one exchange: one to each out-neighbour of `matrix`. A method
        whose pattern differs (a broadcast, random pairs) overrides this; when the pattern is random
        (`random_communication`), it returns the most an agent can send."""
        return out_degrees(matrix)

    @classmethod
    def round_images(cls, matrix: np.ndarray, options: MethodOptions, train_images: int,
                     shard_images: list[int]) -> dict[str, int]:
        """Images run per round besides local training and evaluation, by phase, for the cost
        estimate (`python -m dimat_bench estimate`): `matching` (forward passes of a model's feature
        extractor), `correlation` (per edge, images whose features enter correlation statistics),
        `bn_reset` (train-mode forward passes). None here; a merge method that aligns or resets
        declares its own."""
        return {}

    @classmethod
    def message_elements(cls, model: torch.nn.Module) -> int:
        """Numbers in one message: parameters and BatchNorm buffers for merge methods (the whole
        model is averaged), parameters only for gossip methods (BatchNorm buffers stay local)."""
        return cls.model_elements(model, buffers=cls.family != "gossip")

    # --- shared helpers -----------------------------------------------------------------------

    def sent(self, messages: np.ndarray | int, elements: int, delivered: np.ndarray | int | None = None) -> None:
        """Record that agent i sent `messages[i]` messages of `elements` float32 numbers each, of which
        `delivered[i]` arrived (all of them unless given)."""
        messages = np.broadcast_to(np.asarray(messages, dtype=np.int64), self.messages_sent.shape)
        self.messages_sent += messages
        self.bytes_sent += messages * elements * 4
        self.messages_delivered += messages if delivered is None else np.asarray(delivered, dtype=np.int64)

    def network_exchange(self, matrix: np.ndarray, t: int) -> Exchange:
        """Exchange `t` over `matrix` under this cell's faults (network.exchange)."""
        return network_exchange(matrix, t, self.faults)

    @property
    def perfect_network(self) -> bool:
        """A static graph and no faults: every exchange is the same and complete (the fast path)."""
        return not self.topology.time_varying and not self.faults.active

    @contextlib.contextmanager
    def communicating(self) -> Iterator[None]:
        """Adds the wall time of the `with` block to `communicate_seconds` (merging, or gossip mixing)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.communicate_seconds += time.perf_counter() - start

    @staticmethod
    def model_elements(model: torch.nn.Module, buffers: bool) -> int:
        """Numbers in one message: parameters, plus floating-point buffers when `buffers`."""
        count = sum(p.numel() for p in model.parameters())
        if buffers:
            count += sum(b.numel() for b in model.buffers() if b.is_floating_point())
        return count


def out_degrees(matrix: np.ndarray) -> np.ndarray:
    """How many other agents each agent sends to under `matrix` (receiver i takes from j: M_ij > 0)."""
    return off_diagonal_support(matrix).sum(axis=0)


def round_train_stats(epochs: list[list[dict]]) -> list[dict]:
    """Per agent, one round's training: the last epoch's train loss/accuracy, and images and seconds
    summed over the round's epochs."""
    last = epochs[-1]
    return [{**last[i], "train_images": sum(e[i]["train_images"] for e in epochs),
             "seconds": sum(e[i]["seconds"] for e in epochs)} for i in range(len(last))]


# --- the registry -------------------------------------------------------------------------------

METHODS: Registry[type[Method]] = Registry("method")


def register(name: str):
    """Class decorator: register a Method subclass under `name`."""

    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


def variant(name: str, of: str, **fixed) -> type[Method]:
    """Register `name`: method `of` with the options `fixed` (checked now, so a bad variant fails on
    import). Tables, figures and the grid treat it as a method of its own."""
    base = METHODS.get(of)
    fixed = {**base.fixed, **fixed}
    cls = type(f"{base.__name__}_{name}", (base,), {
        "fixed": fixed, "variant_of": base.variant_of or of, "__module__": base.__module__,
        "__doc__": f"{of} with " + ", ".join(f"{k}={v!r}" for k, v in fixed.items())})
    register(name)(cls)
    cls.build_options()
    return cls


def create_method(name: str, context: MethodContext) -> Method:
    return METHODS.get(name)(context)
