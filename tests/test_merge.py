"""The merge-and-train methods on their own: DIMAT undoes a permutation, WA gives the exact mean,
every merge is Σ_j Π_ij P_ij(θ_j) by hand (unequal weights, a permutation per neighbour), the
BatchNorm reset starts from nothing, the matching images come from the right pool, the authors' fc
shortcut and preset."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from helpers import (
    assert_states_close,
    eval_images,
    flat_floats,
    make_population,
    method_for,
    permuted_copies,
    random_permutations,
    realistic_model,
    scramble_batchnorm,
    states_equal,
)

from dimat_bench.communication import cell_communication
from dimat_bench.matching import activation_permutations, batchnorm_layers, reset_batchnorm
from dimat_bench.methods import METHODS
from dimat_bench.models import create_model
from dimat_bench.permutation import FeatureExtractor, permutation_spec
from dimat_bench.topology import Topology, create_topology, validate_mixing_matrix


def freshly_reset(model, batches):
    """A copy of `model` with its BatchNorm statistics recomputed on `batches` (the reference for
    the reset before matching)."""
    fresh = copy.deepcopy(model)
    reset_batchnorm(fresh, batches)
    return fresh.eval()


def test_dimat_method_merges_an_agent_with_its_permuted_copy_exactly(cifar10, batches):
    """The copy carries the same statistics, so only the function can tell: after the reset before
    matching (on 100 augmented training images, not the 200 the statistics came from) both agents
    compute what the model computes with its statistics recomputed on those images."""
    model = realistic_model("resnet20", 1, batches)
    spec = permutation_spec(model)
    copy = create_model("resnet20", 10)
    copy.load_state_dict(spec.apply(model.state_dict(), random_permutations(spec, seed=7)))
    population, _ = make_population(cifar10, n_agents=2, models=[model, copy])
    method = method_for("dimat", population, create_topology("fc", 2), bn_reset=False)
    x = eval_images(cifar10)
    with torch.no_grad():
        stale = model.eval()(x).clone()
        expected = freshly_reset(model, method.matching_batches(0, 1))(x)
    assert ((stale - expected).norm() / expected.norm()).item() > 1e-2  # the reset changes the function
    method.communicate(1)
    for merged in population.models:
        with torch.no_grad():
            got = merged.eval()(x)
        assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_weight_averaging_under_fc_gives_every_agent_the_exact_mean(cifar10):
    population, _ = make_population(cifar10, n_agents=3)
    before = population.state_dicts()
    method_for("wa", population, create_topology("fc", 3)).communicate(1)
    for state in population.state_dicts():
        for key, value in state.items():
            if value.is_floating_point():
                mean = sum(s[key].double() for s in before) / 3
                torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)


def test_official_preset_sets_the_authors_switches_and_explicit_keys_win():
    dimat = METHODS.get("dimat")
    options = dimat.build_options({"preset": "official"})
    assert (options.match_data, options.match_augment, options.bn_momentum_cumulative, options.fc_merge_once) == \
        ("global", True, True, True)
    assert dimat.build_options({"preset": "official", "match_data": "local"}).match_data == "local"
    assert METHODS.get("dimat").build_options() == dataclasses.replace(options, preset=None)  # the authors' merge


def test_each_merge_method_has_its_own_batchnorm_default():
    """WA averages BatchNorm buffers as they are; the aligning merges recompute them; variants fix it."""
    assert {name: METHODS.get(name).build_options().bn_reset for name in ("wa", "dimat", "wm", "wm_reset")} == \
        {"wa": False, "dimat": True, "wm": False, "wm_reset": True}


def test_dimat_resets_before_matching_unless_a_stale_ablation_says_not():
    assert {name: METHODS.get(name).build_options().bn_reset_before_match
            for name in ("dimat", "dimat_local", "dimat_stale", "dimat_local_stale")} == \
        {"dimat": True, "dimat_local": True, "dimat_stale": False, "dimat_local_stale": False}
    assert METHODS.get("dimat_local_stale").build_options().match_data == "local"
    assert "bn_reset_before_match" not in METHODS.get("wa").settable_keys()  # nothing to match: no such option


def test_fc_merge_once_gives_everyone_agent_zeros_merge(cifar10):
    population, _ = make_population(cifar10, n_agents=3)
    method = method_for("dimat", population, create_topology("fc", 3), fc_merge_once=True, bn_reset=True,
                        bn_momentum_cumulative=True)
    method.communicate(1)
    states = population.state_dicts()
    assert states_equal(states[0], states[1]) and states_equal(states[0], states[2])
    assert all(m.momentum is None for model in population.models for m in batchnorm_layers(model))
    assert method.bytes_sent[0] == 2 * method.bytes_sent[1] == 2 * method.elements * 4
    assert method.messages_sent.tolist() == [2, 1, 1]
    cost = cell_communication("dimat", create_topology("fc", 3).mixing_matrix, population.models[0], 1, 1, 1,
                              method.options)
    assert cost.messages.tolist() == [2, 1, 1] and cost.bytes.tolist() == method.bytes_sent.tolist()
    assert cell_communication("dimat", create_topology("fc", 3).mixing_matrix, population.models[0], 1, 1,
                              1).messages.tolist() == [2, 1, 1]
    assert cell_communication("dimat_local", create_topology("fc", 3).mixing_matrix, population.models[0], 1, 1,
                              1).messages.tolist() == [2, 2, 2]


# --- exact merges: Σ_j Π_ij P_ij(θ_j) against a hand computation -------------------------------

# An irregular graph (degrees 3, 2, 2, 2, 1) and its `uniform` weights, by hand: 1/(degree + 1) on
# self and neighbours. Row-stochastic, not column-stochastic, not symmetric (Π_03 = 1/4, Π_30 = 1/3).
IRREGULAR = [(0, 1), (0, 2), (0, 3), (1, 2), (3, 4)]
IRREGULAR_UNIFORM = np.array([[1 / 4, 1 / 4, 1 / 4, 1 / 4, 0], [1 / 3, 1 / 3, 1 / 3, 0, 0],
                              [1 / 3, 1 / 3, 1 / 3, 0, 0], [1 / 3, 0, 0, 1 / 3, 1 / 3], [0, 0, 0, 1 / 2, 1 / 2]])
# The official bipartite graph on 7 agents: hubs 5 and 6, a = ⌊100/6⌋/100 = 0.16; the self weight
# differs from every neighbour's (0.68 on the leaves, 1 − 5a = 0.2 on the hubs).
BIPARTITE7 = np.array([[0.68 if j == i else 0.16 if j >= 5 else 0 for j in range(7)] for i in range(5)]
                      + [[0.16] * 5 + ([0.2, 0] if hub == 5 else [0, 0.2]) for hub in (5, 6)])
# Every agent with >= 3 neighbours: K5 without (0, 1) and (2, 3), so degrees 3, 3, 3, 3, 4.
DENSE = [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4), (2, 4), (3, 4)]
# A full-support mixing matrix with unequal weights in every row (rows sum to 1, columns do not).
UNEQUAL = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.25, 0.15], [0.2, 0.1, 0.3, 0.4], [0.05, 0.15, 0.3, 0.5]])


def hand_weighted_sum(states, weights):
    """Σ_j w_j state_j over the floating entries, flattened (`flat_floats`), in float64."""
    return torch.as_tensor(np.asarray(weights, dtype=np.float64)) @ torch.stack([flat_floats(s) for s in states])


@pytest.mark.parametrize("graph", ["irregular_uniform", "bipartite_official"])
def test_weight_averaging_gives_agent_i_row_i_of_the_mixing_matrix_over_stale_batchnorm_too(graph, cifar10):
    """Distinct agents (own inits) with distinct stale BatchNorm statistics; WA resets nothing, so
    every float entry is Σ_j Π_ij θ_j and the batch counter stays the agent's own."""
    if graph == "irregular_uniform":
        topology, matrix = create_topology("edges", 5, "uniform", edges=IRREGULAR), IRREGULAR_UNIFORM
    else:
        topology, matrix = create_topology("bipartite", 7), BIPARTITE7
    np.testing.assert_allclose(topology.mixing_matrix, matrix, rtol=0, atol=1e-12)
    population, _ = make_population(cifar10, n_agents=len(matrix))
    for k, model in enumerate(population.models):
        scramble_batchnorm(model, seed=k)
        model.bn1.num_batches_tracked.fill_(10 + k)
    before = population.state_dicts()
    method_for("wa", population, topology).communicate(1)
    after = population.state_dicts()
    expected = torch.as_tensor(matrix) @ torch.stack([flat_floats(s) for s in before])  # row i: Σ_j Π_ij θ_j
    torch.testing.assert_close(torch.stack([flat_floats(s) for s in after]), expected, rtol=1e-6, atol=1e-6)
    assert [s["bn1.num_batches_tracked"].item() for s in after] == [10 + i for i in range(len(matrix))]


@pytest.mark.parametrize("match_data", ["global", "local"])
def test_dimat_gives_every_agent_back_its_own_model_when_all_are_permuted_copies(match_data, cifar10, batches):
    """Agent k = Q_k(base). The permutation aligning j to i is Q_i∘Q_j⁻¹, so every aligned neighbour
    is exactly agent i's model and, the weights summing to 1, so is the merge: each agent must get
    its own model back (a neighbour aligned with another neighbour's permutation would not)."""
    base = realistic_model("resnet20", 1, batches)
    spec = permutation_spec(base)
    models, states = permuted_copies(base, spec, 5)
    assert not states_equal(states[0], states[1]) and not states_equal(states[2], states[3])
    population, _ = make_population(cifar10, n_agents=5, models=models)
    topology = create_topology("edges", 5, "uniform", edges=DENSE)
    assert min(len(topology.neighbours(i)) for i in range(5)) == 3
    method = method_for("dimat", population, topology, match_data=match_data, match_samples=20, bn_reset=False)
    # what each agent must get back: its own weights, with its statistics recomputed on its matching images
    expected = [freshly_reset(models[i], method.matching_batches(i, 1)).state_dict() for i in range(5)]
    method.communicate(1)
    for i, state in enumerate(population.state_dicts()):
        assert_states_close(state, expected[i], tol=1e-5)


def unequal_topology():
    validate_mixing_matrix(UNEQUAL, np.ones((4, 4), dtype=bool))
    return Topology("full", "unequal", np.ones((4, 4), dtype=bool), UNEQUAL)


def hand_dimat_merge(method, round_index, matrix=UNEQUAL, reset_first=True, anchors=None):
    """The authors' merge by hand, agent by agent on copies of the agents' models (full support:
    everyone is everyone's neighbour): for agent i (of `anchors`, default all), recompute the
    statistics of every model on i's matching images (`reset_first`), match each neighbour to i on
    them with activation_permutations, and take Σ_j Π_ij spec.apply(θ_j, perms_ij) in float64 over
    the states with those statistics. Returns the merges and the permutations."""
    models = [copy.deepcopy(m) for m in method.population.models]
    spec = permutation_spec(models[0])
    extractors = [FeatureExtractor(m, spec) for m in models]
    merged, perms = [], {}
    for i in range(len(models)) if anchors is None else anchors:
        images = list(method.matching_batches(i, round_index))
        if reset_first:
            for model in models:
                reset_batchnorm(model, images)
        for model in models:
            model.eval()
        states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
        aligned = []
        for j in range(len(models)):
            if j != i:
                [perms[i, j]] = activation_permutations(extractors[i], [extractors[j]], images, spec)
            aligned.append(states[i] if j == i else spec.apply(states[j], perms[i, j]))
        merged.append(hand_weighted_sum(aligned, matrix[i]))
    return merged, perms


def stale_population(cifar10):
    """4 distinct agents whose BatchNorm statistics are stale (random, 7 batches tracked)."""
    population, _ = make_population(cifar10, n_agents=4)
    for k, model in enumerate(population.models):
        scramble_batchnorm(model, seed=k)
    return population


@pytest.mark.parametrize("match_data", ["global", "local"])
def test_dimat_merge_is_the_weighted_sum_of_each_neighbour_aligned_by_its_own_matching(match_data, cifar10):
    """Stale statistics, unequal weights, 3 neighbours each; global runs the shared matching pass,
    local the per-agent one. The merge must be the authors': every model's statistics recomputed
    on agent i's matching images first, then matching and the weighted sum, permutations included
    (the buffers too: no reset after this merge)."""
    population = stale_population(cifar10)
    method = method_for("dimat", population, unequal_topology(), match_data=match_data, match_samples=20,
                        bn_reset=False)
    method.match_batch_size = 10
    expected, perms = hand_dimat_merge(method, 1)
    # not vacuous: each neighbour of agent 0 needs its own, non-identity permutation, and matching on
    # the stale statistics would pick other permutations
    assert not any(torch.equal(p, torch.arange(len(p))) for p in perms[0, 1])
    assert not all(torch.equal(a, b) for a, b in zip(perms[0, 1], perms[0, 2]))
    _, stale = hand_dimat_merge(method, 1, reset_first=False)
    assert sum(not torch.equal(a, b) for edge in perms for a, b in zip(perms[edge], stale[edge])) >= 12
    method.communicate(1)
    for i, state in enumerate(population.state_dicts()):
        torch.testing.assert_close(flat_floats(state), expected[i], rtol=1e-5, atol=1e-5)
        assert state["bn1.num_batches_tracked"].item() == 2  # agent i's own, from the 2 batches of its reset


def test_the_authors_fc_shortcut_merges_agent_zero_on_fresh_statistics_and_gives_everyone_its_result(cifar10):
    """fc with `fc_merge_once`: only agent 0 merges, after the statistics of all 4 models (stale
    here) are recomputed on its matching images; every agent receives exactly that merge."""
    population = stale_population(cifar10)
    fc = create_topology("fc", 4)
    method = method_for("dimat", population, fc, match_samples=20, bn_reset=False)
    assert method.options.fc_merge_once and method.options.match_data == "global"
    method.match_batch_size = 10
    [expected], perms = hand_dimat_merge(method, 1, fc.mixing_matrix, anchors=[0])
    _, stale = hand_dimat_merge(method, 1, fc.mixing_matrix, reset_first=False, anchors=[0])
    assert any(not torch.equal(a, b) for edge in perms for a, b in zip(perms[edge], stale[edge]))
    method.communicate(1)
    for state in population.state_dicts():
        torch.testing.assert_close(flat_floats(state), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("match_data", ["global", "local"])
def test_dimat_matches_features_normalised_by_statistics_recomputed_on_the_matching_images(match_data, cifar10):
    """Every feature map the matching reads, of every model on every batch, is the one the model
    gives with its statistics recomputed on the images of the agent that is matching, not with its
    stale ones."""
    population = stale_population(cifar10)
    method = method_for("dimat", population, create_topology("ring", 4), match_data=match_data, match_samples=20,
                        fc_merge_once=False)
    method.match_batch_size = 10
    batches = {i: list(method.matching_batches(i, 1)) for i in range(4)}
    fresh = {i: [FeatureExtractor(freshly_reset(m, batches[i]), method.spec) for m in population.models]
             for i in range(4)}
    stale = [FeatureExtractor(copy.deepcopy(m).eval(), method.spec) for m in population.models]
    calls = []

    def recording(k, extractor):
        def forward(x):
            out = extractor(x)
            calls.append((k, x.clone(), [f.clone() for f in out[1]]))
            return out
        return forward

    method.extractors = [recording(k, e) for k, e in enumerate(method.extractors)]
    method.communicate(1)
    readers = [0] if match_data == "global" else range(4)  # global: one draw, agent 0's stream
    assert len(calls) == (4 if match_data == "global" else 4 * 3) * 2  # every model (and anchor) per batch
    with torch.no_grad():
        for k, x, features in calls:
            [i] = [i for i in readers if any(torch.equal(x, b) for b in batches[i])]  # whose images
            want = fresh[i][k](x)[1]
            assert all(torch.allclose(f, w, rtol=1e-5, atol=1e-5) for f, w in zip(features, want)), (k, i)
            assert not torch.allclose(features[0], stale[k](x)[1][0], atol=1e-2)


# --- the BatchNorm reset after a merge ---------------------------------------------------------

@pytest.mark.parametrize("cumulative", [True, False])
def test_dimat_resets_batchnorm_from_scratch_on_each_agents_own_matching_images(cumulative, cifar10):
    """Stale statistics (random, 7 batches tracked) must not leak into the reset: every agent's
    statistics equal a reset of its merged weights that starts from nothing (0 batches tracked,
    whatever the buffers hold) on its own matching images, in 2 batches (of 10 images)."""
    population, _ = make_population(cifar10, n_agents=3)
    for k, model in enumerate(population.models):
        scramble_batchnorm(model, seed=k)
    method = method_for("dimat", population, create_topology("ring", 3), match_data="local", match_samples=20,
                        bn_reset=True, bn_momentum_cumulative=cumulative, fc_merge_once=False)
    method.match_batch_size = 10
    before = population.state_dicts()
    method.communicate(1)
    for i, model in enumerate(population.models):
        reference = copy.deepcopy(model)
        for layer in batchnorm_layers(reference):
            layer.num_batches_tracked.zero_()
        reset_batchnorm(reference, method.matching_batches(i, 1))
        for got, want in zip(batchnorm_layers(model), batchnorm_layers(reference)):
            torch.testing.assert_close(got.running_mean, want.running_mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.running_var, want.running_var, rtol=1e-5, atol=1e-5)
            assert got.num_batches_tracked.item() == 2
            assert got.momentum == (None if cumulative else 0.1)
        assert not torch.allclose(model.bn1.running_mean, before[i]["bn1.running_mean"], atol=1e-3)


# --- the matching images -----------------------------------------------------------------------

def drawn_indices(method, agent, round_index, index_of):
    """The training indices of the images `matching_batches` yields (exact pixel equality)."""
    return [index_of[image.contiguous().reshape(-1).numpy().tobytes()]
            for batch in method.matching_batches(agent, round_index) for image in batch]


@pytest.mark.parametrize("match_data", ["local", "global"])
@pytest.mark.parametrize("samples", [150, None])
def test_matching_batches_draw_the_asked_number_from_the_right_pool_afresh_each_round(match_data, samples, cifar10):
    population, parts = make_population(cifar10, n_agents=3)
    everything = population.train.batch(torch.arange(len(population.train)))[0]
    index_of = {x.contiguous().reshape(-1).numpy().tobytes(): k for k, x in enumerate(everything)}
    assert len(index_of) == len(everything) == 500
    method = method_for("dimat", population, create_topology("ring", 3), match_data=match_data,
                        match_samples=samples, match_augment=False)
    for i, shard in enumerate(parts.shards):
        pool = set(shard.tolist()) if match_data == "local" else set(range(500))
        first = drawn_indices(method, i, 1, index_of)
        assert len(first) == len(set(first)) == (samples or len(pool))
        assert (set(first) <= pool) if samples else (set(first) == pool)
        if match_data == "global":
            assert not set(first) <= set(shard.tolist())
        assert drawn_indices(method, i, 1, index_of) == first  # the same round: the same draw
        assert drawn_indices(method, i, 2, index_of) != first  # another round: another draw
