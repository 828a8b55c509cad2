"""Merge-and-train methods (one communication per round): WA, DIMAT, WM, and their options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .. import config as cfg
from ..devices import inference_batch_size, matching_memory
from ..matching import (
    activation_permutations,
    batchnorm_layers,
    edge_permutations,
    reset_batchnorm,
    weight_permutations,
    weighted_sum,
)
from ..permutation import FeatureExtractor, permutation_spec
from ..population import derive_seed
from ..registry import ConfigError
from ..topology import neighbours as graph_neighbours
from .base import PLACEMENTS, Method, MethodOptions, Schedule, out_degrees, register

# The authors' code: match on the whole (augmented) training set, BN momentum left cumulative after a
# merge, and under fc only agent 0 merges while every agent receives its result. (Their DIMAT also
# recomputes the BatchNorm statistics of every model in a merge before matching: an option of DIMAT,
# `bn_reset_before_match`, on by default, since it is what makes matching read fresh statistics.)
OFFICIAL = {"match_data": "global", "match_samples": None, "match_augment": True, "bn_momentum_cumulative": True,
            "fc_merge_once": True}
PRESETS = {"official": OFFICIAL}


@dataclass(frozen=True)
class MergeOptions(MethodOptions):
    """merge methods: matching data, BatchNorm reset, the authors' switches"""

    preset: str | None = cfg.option(None, "official = the authors' merge settings (explicit keys win)",
                                    choices=lambda: list(PRESETS))
    match_data: str = cfg.option("local", "matching/BN-reset data: local (own shard) or global (whole train set)",
                                 choices=lambda: ["local", "global"])
    match_samples: int | None = cfg.option(None, "images used for matching and BN reset (none = all)", min=1)
    match_augment: bool = cfg.option(False, "augment the matching images")
    bn_reset: bool = cfg.option(False, "recompute BatchNorm statistics on the matching data after a merge")
    bn_momentum_cumulative: bool = cfg.option(False, "official: leave BN momentum cumulative after a merge")
    fc_merge_once: bool = cfg.option(False, "official: under fc only agent 0 merges, everyone copies it")
    merge_schedule: str = cfg.option("every", "the rounds that merge: every round, or merge_budget of them placed "
                                     "early (the first), uniform (spread evenly) or late (the last)",
                                     choices=lambda: list(PLACEMENTS))
    merge_budget: int | None = cfg.option(None, "rounds that merge under merge_schedule early, uniform or late "
                                          "(required by them; every ignores it)", min=1)

    @staticmethod
    def with_preset(data: dict) -> dict:
        """Preset values under the explicitly given keys."""
        preset = data.get("preset")
        if preset is None or preset not in PRESETS:
            return data
        return {**PRESETS[preset], **data}


@dataclass(frozen=True)
class DimatOptions(MergeOptions):
    """dimat: the authors' merge (the `dimat_local` variant is the decentralized one)"""

    match_data: str = cfg.redefault(MergeOptions, "match_data", OFFICIAL["match_data"])
    match_augment: bool = cfg.redefault(MergeOptions, "match_augment", OFFICIAL["match_augment"])
    bn_reset: bool = cfg.redefault(MergeOptions, "bn_reset", True)
    bn_momentum_cumulative: bool = cfg.redefault(MergeOptions, "bn_momentum_cumulative",
                                                 OFFICIAL["bn_momentum_cumulative"])
    fc_merge_once: bool = cfg.redefault(MergeOptions, "fc_merge_once", OFFICIAL["fc_merge_once"])
    bn_reset_before_match: bool = cfg.option(True, "recompute the BatchNorm statistics of every model in a merge on "
                                                   "the matching data before matching (the authors' code)")


@dataclass(frozen=True)
class WeightMatchingOptions(MergeOptions):
    """wm: weight matching"""

    wm_max_sweeps: int = cfg.option(100, "most coordinate-descent sweeps over the layers", min=1)


def merges_once(matrix: np.ndarray, options: MergeOptions) -> bool:
    """The authors' fc shortcut applies: asked for, and every row of the mixing matrix is the same."""
    return options.fc_merge_once and bool(np.allclose(matrix, matrix[0]))


class MergeMethod(Method):
    """θ_i ← Σ_j Π_ij P_ij(θ_j), with P_ij = identity unless `align` says otherwise, then (optionally)
    BatchNorm statistics recomputed on agent i's matching data."""

    family = "merge"
    Options = MergeOptions
    supports_networks = True

    def __init__(self, context):
        super().__init__(context)
        self.elements = self.message_elements(self.population.models[0])
        self.match_batch_size = inference_batch_size(self.population.device)
        if self.faults.active and merges_once(self.topology.mixing_matrix, self.options):
            key = "drop_rate" if self.faults.drop_rate > 0 else "absent_rate"
            raise ConfigError(key, getattr(self.faults, key),
                              f"0 for {self.name} on {self.topology.name} with fc_merge_once (the authors' shortcut, "
                              "agent 0 merging for everyone, has no fault model)", "set fc_merge_once false")

    @classmethod
    def schedule(cls, options):
        """At the start of every round, or of the `merge_budget` rounds `merge_schedule` places."""
        return Schedule("round", placement=options.merge_schedule, budget=options.merge_budget)

    @classmethod
    def messages_per_exchange(cls, matrix, options):
        """Under the fc shortcut every agent sends its model to agent 0, which sends the merge back
        to the N - 1 others; otherwise one message per out-neighbour."""
        if merges_once(matrix, options):
            counts = np.ones(len(matrix), dtype=np.int64)
            counts[0] = len(matrix) - 1
            return counts
        return out_degrees(matrix)

    @staticmethod
    def merging_agents(matrix: np.ndarray, options: MergeOptions) -> list[int]:
        """The agents that merge (and then reset BatchNorm): all that have neighbours, or agent 0
        alone under the authors' fc shortcut."""
        if merges_once(matrix, options):
            return [0]
        off_diagonal = (matrix > 0) & ~np.eye(len(matrix), dtype=bool)
        return [i for i in range(len(matrix)) if off_diagonal[i].any()]

    @staticmethod
    def match_images(options: MergeOptions, agent: int, train_images: int, shard_images: list[int]) -> int:
        """How many images agent `agent` matches and resets BatchNorm on per round."""
        pool = shard_images[agent] if options.match_data == "local" else train_images
        return min(pool, options.match_samples or pool)

    @classmethod
    def round_images(cls, matrix, options, train_images, shard_images):
        if not options.bn_reset:
            return {}
        return {"bn_reset": sum(cls.match_images(options, i, train_images, shard_images)
                                for i in cls.merging_agents(matrix, options))}

    def align(self, agent: int, neighbours: list[int], states: list[dict], round_index: int) -> list[dict]:
        """The states agent `agent` merges: its own, then each neighbour's aligned to it (identity
        here: plain weight averaging)."""
        return [states[agent]] + [states[j] for j in neighbours]

    def align_all(self, neighbourhoods: dict[int, list[int]], states: list[dict], round_index: int) -> dict[int, list[dict]]:
        """For every merging agent i, the states it merges (its own first, then its neighbours' aligned
        to it): `align` agent by agent (a method that can share work across agents overrides this)."""
        return {i: self.align(i, neighbours, states, round_index) for i, neighbours in neighbourhoods.items()}

    def matching_batches(self, agent: int, round_index: int) -> Iterator[torch.Tensor]:
        """Images agent `agent` matches and resets BatchNorm on: its shard (`local`, drawn per agent)
        or the whole training set (`global`, one draw per round that every agent shares; it is the
        stream agent 0 drew from before the draw was shared), `match_samples` of them, drawn afresh
        each round."""
        population, options = self.population, self.options
        pool = (population.shards[agent] if options.match_data == "local"
                else torch.arange(len(population.train), device=population.device))
        stream = agent if options.match_data == "local" else 0
        generator = torch.Generator(population.device).manual_seed(derive_seed(self.seed, "match", round_index, stream))
        order = pool[torch.randperm(len(pool), generator=generator, device=population.device)]
        if options.match_samples is not None:
            order = order[:options.match_samples]
        for lo in range(0, len(order), self.match_batch_size):
            images, _ = population.train.batch(order[lo:lo + self.match_batch_size],
                                               generator if options.match_augment else None)
            yield images

    def communicate(self, round_index: int) -> None:
        """Round `round_index`'s merge: exchange t = round_index − 1 of the graph (a time-varying one
        drawn for it). Under faults each agent merges what it received, the weights renormalised over
        its own and the models that arrived (`Exchange.received`)."""
        with self.communicating():
            population, graph = self.population, self.topology.at(round_index - 1)
            if self.faults.active:
                happened = self.network_exchange(graph, round_index - 1)
                matrix, sent, delivered = happened.received(), happened.sent_per_agent, happened.delivered_per_agent
            else:
                matrix = graph
                sent = delivered = self.messages_per_exchange(graph, self.options)
            states = population.state_dicts()
            merge_once = merges_once(matrix, self.options)
            # an isolated agent (or one that received nothing) keeps its model as it is
            neighbourhoods = {i: [int(j) for j in graph_neighbours(matrix, i)]
                              for i in self.merging_agents(matrix, self.options)}
            aligned = self.align_all(neighbourhoods, states, round_index)
            merged = {}
            for i, merging in aligned.items():
                weights = [matrix[i, i]] + [matrix[i, j] for j in neighbourhoods[i]]
                merged[i] = weighted_sum(merging, weights)
            if merge_once:  # the authors' fc shortcut: agent 0 merges, everyone receives its result
                population.load_state_dicts([merged[0]] * population.n_agents)
            else:
                population.load_state_dicts([merged.get(i, states[i]) for i in range(population.n_agents)])
            self.sent(sent, self.elements, delivered)
            if self.options.bn_reset:
                for i, model in enumerate(population.models):
                    if i not in merged and not merge_once:
                        continue
                    if merge_once and i > 0:  # receives agent 0's result, BN momentum setting included
                        model.load_state_dict(population.models[0].state_dict())
                        for mine, theirs in zip(batchnorm_layers(model), batchnorm_layers(population.models[0])):
                            mine.momentum = theirs.momentum
                        continue
                    reset_batchnorm(model, self.matching_batches(i, round_index), self.options.bn_momentum_cumulative,
                                    population.autocast)


@register("wa")
class WeightAveraging(MergeMethod):
    """WA: θ_i ← Σ_j Π_ij θ_j over all parameters and BatchNorm buffers."""


@register("dimat")
class DIMAT(MergeMethod):
    """DIMAT: each neighbour aligned to agent i by activation matching on i's matching data. With
    `bn_reset_before_match` (the authors' code) the BatchNorm statistics of agent i's model and of
    every neighbour's are first recomputed on those images, so the features matched, and the
    buffers merged, are the ones under fresh statistics. With `match_data: global` every agent
    matches on the same images, so one reset and one matching pass of every model over them serve
    every edge (`shared_pass`; False runs agent by agent, for comparison: the same permutations at
    N·(degree + 1) passes of each kind instead of N)."""

    Options = DimatOptions
    shared_pass = True

    def __init__(self, context):
        super().__init__(context)
        models = self.population.models
        self.spec = permutation_spec(models[0])
        self.extractors = [FeatureExtractor(m, self.spec) for m in models]

    @classmethod
    def round_images(cls, matrix, options, train_images, shard_images):
        images = super().round_images(matrix, options, train_images, shard_images)
        anchors = cls.merging_agents(matrix, options)
        neighbours = {i: graph_neighbours(matrix, i) for i in anchors}
        per_agent = {i: cls.match_images(options, i, train_images, shard_images) for i in anchors}
        if cls.shared_pass and options.match_data == "global":
            models = set(anchors) | {j for js in neighbours.values() for j in js}
            matching = len(models) * per_agent[anchors[0]] if anchors else 0
        else:
            matching = sum((1 + len(neighbours[i])) * per_agent[i] for i in anchors)
        correlation = sum(len(neighbours[i]) * per_agent[i] for i in anchors)
        if options.bn_reset_before_match:  # a reset pass over the same images for every matching pass
            images["bn_reset"] = images.get("bn_reset", 0) + matching
        return {**images, "matching": matching, "correlation": correlation}

    def reset_before_match(self, states: list[dict], models: list[int], agent: int, round_index: int) -> dict[int, dict]:
        """Recompute, in place, the BatchNorm statistics of `models` on agent `agent`'s matching
        images, drawn once for all of them (the authors' reset before matching; their momentum is
        restored, the reset after the merge decides it); `states` by agent, those of `models` now
        with their fresh statistics."""
        population = self.population
        reset_batchnorm([population.models[k] for k in models], self.matching_batches(agent, round_index), False,
                        population.autocast)
        fresh = {k: {key: v.detach().clone() for key, v in population.models[k].state_dict().items()} for k in models}
        return {**dict(enumerate(states)), **fresh}

    def align_all(self, neighbourhoods, states, round_index):
        if not (self.shared_pass and self.options.match_data == "global"):
            return super().align_all(neighbourhoods, states, round_index)
        if self.options.bn_reset_before_match:  # one reset of every model serves every edge
            models = sorted(set(neighbourhoods) | {j for js in neighbourhoods.values() for j in js})
            states = self.reset_before_match(states, models, 0, round_index)
        for model in self.population.models:
            model.eval()
        edges = [(i, j) for i, neighbours in neighbourhoods.items() for j in neighbours]
        perms = edge_permutations(self.extractors, edges, self.matching_batches(0, round_index), self.spec,
                                  self.population.autocast, matching_memory(self.population.device))
        return {i: [states[i]] + [self.spec.apply(states[j], perms[(i, j)]) for j in neighbours]
                for i, neighbours in neighbourhoods.items()}

    def align(self, agent, neighbours, states, round_index):
        if self.options.bn_reset_before_match:
            states = self.reset_before_match(states, [agent, *neighbours], agent, round_index)
        for model in self.population.models:
            model.eval()
        perms = activation_permutations(self.extractors[agent], [self.extractors[j] for j in neighbours],
                                        self.matching_batches(agent, round_index), self.spec,
                                        self.population.autocast, matching_memory(self.population.device))
        return [states[agent]] + [self.spec.apply(states[j], p) for j, p in zip(neighbours, perms)]


@register("wm")
class WeightMatching(MergeMethod):
    """WM (git re-basin weight matching): each neighbour aligned to agent i from weights alone."""

    Options = WeightMatchingOptions

    def __init__(self, context):
        super().__init__(context)
        self.spec = permutation_spec(self.population.models[0])

    def align(self, agent, neighbours, states, round_index):
        return [states[agent]] + [self.spec.apply(states[j], weight_permutations(
                    states[agent], states[j], self.spec, self.options.wm_max_sweeps,
                    seed=derive_seed(self.seed, "wm", round_index, agent, j)))
                for j in neighbours]
