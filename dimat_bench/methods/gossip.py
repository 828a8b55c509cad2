"""Gossip methods (communication after every minibatch step, fused with it): SGP, CDSGD, CDMSGD.

Every agent computes its gradient at its current model; then, in one synchronous step, all agents
update and mix. Only trainable parameters are mixed; BatchNorm buffers stay local. Step s of the run
is exchange t = s − 1 of the graph (a time-varying graph drawn for it); under faults the consensus
methods mix over what arrived, row-normalised (`Exchange.received`), and SGP loses a lost message's
share of both parameters and weight (`Exchange.pushed`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import config as cfg
from ..network import Exchange
from ..registry import ConfigError
from .base import LearningRateOptions, Method, out_degrees, register, round_train_stats


@dataclass(frozen=True)
class GossipOptions(LearningRateOptions):
    """gossip methods: the authors' lr 0.01 decayed ×0.981 per epoch (the step is the method's own
    update rule, so no optimizer, momentum, weight decay or optimizer reset)"""

    lr: float = cfg.redefault(LearningRateOptions, "lr", 0.01)
    lr_decay: float = cfg.redefault(LearningRateOptions, "lr_decay", 0.981)


@dataclass(frozen=True)
class MomentumGossipOptions(GossipOptions):
    """cdmsgd: the consensus step's momentum"""

    gossip_momentum: float = cfg.option(0.9, "Nesterov momentum μ of the consensus step", min=0.0, max=1.0)


class GossipMethod(Method):
    family = "gossip"
    Options = GossipOptions
    supports_networks = True
    extra_elements = 0  # numbers sent besides the parameters (SGP's push-sum weight)
    # The consensus step x_i ← Σ_j Π_ij x_j keeps the agents' average only when Π's columns sum to 1 too.
    needs_doubly_stochastic = False

    def __init__(self, context):
        super().__init__(context)
        population = self.population
        self.check_graph()
        self.matrix = self.communication_matrix(self.topology.mixing_matrix)
        self.use_matrix(self.matrix)
        self.elements = self.message_elements(population.models[0])
        self.messages_per_step = self.messages_per_exchange(self.topology.mixing_matrix, self.options)
        self.exchanges_done = 0

    def check_graph(self) -> None:
        """A method that needs doubly stochastic mixing rejects a directed graph whose matrices are not
        (the equal shares of a graph whose in- and out-degrees differ), naming the method and graph."""
        if not (self.needs_doubly_stochastic and self.topology.directed):
            return
        for matrix in self.topology.period_matrices():
            sums = matrix.sum(axis=0)
            bad = np.flatnonzero(np.abs(sums - 1) > 1e-9)
            if len(bad):
                raise ConfigError("topology", self.topology.name,
                                  f"a graph whose mixing matrix is doubly stochastic for method {self.name}",
                                  f"{self.name} mixes x_i ← Σ_j Π_ij x_j, which keeps the agents' average only when "
                                  f"every column of Π sums to 1; on this directed graph column {bad[0]} sums to "
                                  f"{sums[bad[0]]:.4g}: run sgp (push-sum), which needs no such matrix")

    def use_matrix(self, matrix: np.ndarray) -> None:
        """The matrix the next step mixes with."""
        self.mixing = torch.as_tensor(matrix, dtype=torch.float32, device=self.population.device)

    def step_matrix(self, happened: Exchange) -> np.ndarray:
        """The matrix of a step over what arrived: the consensus weights renormalised over it."""
        return happened.received()

    @classmethod
    def communication_matrix(cls, mixing_matrix: np.ndarray) -> np.ndarray:
        """The matrix the gossip step mixes with (the topology's mixing matrix unless overridden)."""
        return mixing_matrix

    @classmethod
    def messages_per_exchange(cls, matrix, options):
        return out_degrees(cls.communication_matrix(matrix))

    @classmethod
    def message_elements(cls, model):
        return cls.model_elements(model, buffers=False) + cls.extra_elements

    def train(self, epochs, after_step=None):
        stats = [self.population.train_epoch(after_step=after_step, update=self._update) for _ in range(epochs)]
        return round_train_stats(stats)

    def _update(self, step: int, active: list[int]) -> None:
        with self.communicating():
            population, t = self.population, self.exchanges_done
            self.exchanges_done += 1
            sent = delivered = self.messages_per_step
            if not self.perfect_network:  # this exchange's graph and what of it arrived
                happened = self.network_exchange(self.communication_matrix(self.topology.at(t)), t)
                self.use_matrix(self.step_matrix(happened))
                sent, delivered = happened.sent_per_agent, happened.delivered_per_agent
            params, grads = population.flat_parameters(), population.flat_gradients()
            population.load_flat_parameters(self.step(params, grads, population.lr))
            self.sent(sent, self.elements, delivered)

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float) -> torch.Tensor:
        """New (N, P) parameters from the current ones and the gradients at them."""
        raise NotImplementedError


def cdsgd_step(mixing: torch.Tensor, params: torch.Tensor, grads: torch.Tensor, lr: float) -> torch.Tensor:
    """x_i ← Σ_j Π_ij x_j − η g_i for every row i."""
    return (mixing @ params).add_(grads, alpha=-lr)  # add_ with alpha rounds exactly as torch's SGD step


@register("cdsgd")
class CDSGD(GossipMethod):
    """Consensus-based distributed SGD (Jiang et al. 2017): x_i ← Σ_j Π_ij x_j − η g_i."""

    needs_doubly_stochastic = True

    def step(self, params, grads, lr):
        return cdsgd_step(self.mixing, params, grads, lr)


@register("cdmsgd")
class CDMSGD(GossipMethod):
    """CDSGD with Nesterov momentum μ: m ← μ m + g; x_i ← Σ_j Π_ij x_j − η (g + μ m)."""

    Options = MomentumGossipOptions
    needs_doubly_stochastic = True

    def __init__(self, context):
        super().__init__(context)
        self.momentum_buffer = None

    def step(self, params, grads, lr):
        mu = self.options.gossip_momentum
        if self.momentum_buffer is None:
            self.momentum_buffer = torch.zeros_like(grads)
        self.momentum_buffer.mul_(mu).add_(grads)
        return cdsgd_step(self.mixing, params, grads.add(self.momentum_buffer, alpha=mu), lr)


class PushSum:
    """Push-sum's state for N agents: the weights w and, with `resend`, each link's undelivered mass.

    One step takes the models z, their gradients and `push`, the exchange's column-stochastic shares
    over what arrived (`Exchange.pushed`), pushes y_j = x_j − η g(z_j) (x_j = w_j z_j) and returns
    z = x / w; `happened` (the exchange) says which links lost their share. Lost shares are either gone
    (`resend=False`, Assran et al.: x and w lose them alike, so w shrinks and the step η/w grows) or
    carried by the link (`resend=True`, running sums, Hadjicostis, Domínguez-García and Vaidya 2016:
    a link j → i accumulates what j pushed it since its last delivery, and the next message that
    arrives delivers all of it), which keeps Σ x + Σ undelivered = Σ y, so the de-biased models
    reach the average even when messages are lost (tests/test_network.py)."""

    def __init__(self, n_agents: int, device, resend: bool = False):
        self.weights = torch.ones(n_agents, 1, dtype=torch.float64, device=device)
        self.resend = resend
        self.undelivered: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def step(self, push: torch.Tensor, params: torch.Tensor, grads: torch.Tensor, lr: float,
             happened: Exchange | None = None, push_params: torch.Tensor | None = None) -> torch.Tensor:
        """`push` in float64 (it mixes the weights); `push_params`, the same matrix in the models'
        dtype when the caller holds one (else converted here, every step)."""
        pushed = (self.weights.to(params.dtype) * params).add_(grads, alpha=-lr)  # x_i − η g(z_i), x_i = w_i z_i
        mixed = (push.to(pushed.dtype) if push_params is None else push_params) @ pushed
        weights = push @ self.weights
        if self.resend and happened is not None:
            self._carry(happened, pushed, mixed, weights)
        self.weights = weights
        return mixed / weights.to(mixed.dtype)

    def _carry(self, happened: Exchange, pushed, mixed, weights) -> None:
        """Running sums: a lost share joins its link's undelivered mass; a delivered message brings its
        link's undelivered mass along."""
        shares = happened.matrix
        lost = happened.sent & ~happened.delivered
        for i, j in zip(*np.nonzero(lost)):
            x, w = pushed[j] * float(shares[i, j]), self.weights[j] * float(shares[i, j])
            if (i, j) in self.undelivered:
                x0, w0 = self.undelivered[i, j]
                x, w = x0.add_(x), w0 + w
            self.undelivered[i, j] = (x, w)
        for i, j in [link for link in self.undelivered if happened.delivered[link]]:
            x, w = self.undelivered.pop((i, j))
            mixed[i] += x
            weights[i] += w

    def mass(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ x, Σ w) held by the agents and in flight on the links, for models `params` (= z)."""
        x = (self.weights.to(params.dtype) * params).sum(dim=0)
        w = self.weights.sum()
        for x_link, w_link in self.undelivered.values():
            x, w = x + x_link, w + w_link.sum()
        return x, w


@dataclass(frozen=True)
class SGPOptions(GossipOptions):
    """sgp: what push-sum does with a lost message"""

    lost_mass: str = cfg.option("lost", "a lost message's share of x and w: lost (Assran et al.'s SGP: it is gone, "
                                "so w shrinks under drops) or resent (running sums: the link delivers it with its "
                                "next message that arrives)", choices=lambda: ["lost", "resent"])


@register("sgp")
class SGP(GossipMethod):
    """Stochastic gradient push (Assran et al. 2019), true push-sum. Agent i keeps x_i and a weight w_i;
    its model holds the de-biased z_i = x_i / w_i, where gradients are taken:
    x ← P (x − η g(z)), w ← P w, with P column-stochastic. When Π is column-stochastic P = Π (on a
    symmetric doubly-stochastic Π the weights stay 1 and x_i ← Σ_j Π_ij (x_j − η g_j)); otherwise
    each agent pushes equal shares to itself and its out-neighbours. Under faults see `PushSum`."""

    Options = SGPOptions
    extra_elements = 1

    def __init__(self, context):
        self.push_sum = PushSum(context.population.n_agents, context.population.device,
                                resend=context.options.lost_mass == "resent")
        self.happened: Exchange | None = None
        super().__init__(context)

    @property
    def weights(self) -> torch.Tensor:
        return self.push_sum.weights

    def use_matrix(self, matrix):
        super().use_matrix(matrix)
        self.push = torch.as_tensor(matrix, dtype=torch.float64, device=self.population.device)

    def step_matrix(self, happened):
        """Push-sum over what arrived: a lost message takes its share of x and of w alike, so z = x / w
        stays the ratio of what each agent holds; an absent agent keeps its whole mass."""
        self.happened = happened
        return happened.pushed(happened.matrix)

    @classmethod
    def communication_matrix(cls, matrix):
        if np.allclose(matrix.sum(axis=0), 1.0):
            return matrix
        support = (matrix > 0).astype(np.float64)
        return support / support.sum(axis=0, keepdims=True)

    def step(self, params, grads, lr):
        return self.push_sum.step(self.push, params, grads, lr, self.happened, push_params=self.mixing)
