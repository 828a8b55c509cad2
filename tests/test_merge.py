"""The merge-and-train methods on their own: DIMAT undoes a permutation, WA gives the exact mean,
the authors' fc shortcut and preset."""

import dataclasses

import torch

from dimat_bench.communication import cell_communication
from dimat_bench.matching import batchnorm_layers
from dimat_bench.methods import METHODS
from dimat_bench.models import create_model
from dimat_bench.permutation import permutation_spec
from dimat_bench.topology import create_topology
from helpers import eval_images, make_population, method_for, random_permutations, realistic_model, states_equal


def test_dimat_method_merges_an_agent_with_its_permuted_copy_exactly(cifar10, batches):
    model = realistic_model("resnet20", 1, batches)
    spec = permutation_spec(model)
    copy = create_model("resnet20", 10)
    copy.load_state_dict(spec.apply(model.state_dict(), random_permutations(spec, seed=7)))
    population, _ = make_population(cifar10, n_agents=2, models=[model, copy])
    method = method_for("dimat", population, create_topology("fc", 2), bn_reset=False)
    x = eval_images(cifar10)
    with torch.no_grad():
        expected = model.eval()(x).clone()
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
