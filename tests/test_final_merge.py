"""The final global merge of a cell's agents: the plain average is the exact mean; the aligned merge is
DIMAT's with agent 0 as the anchor of every other agent, on statistics recomputed first (stale ones
here, 4 distinct agents); N permuted copies of one model give that model back, N identical models
give it unchanged; the agents are left as they were, and a cell records both merges as phases of
their own."""

import copy
import json

import pandas as pd
import pytest
import torch
from helpers import (
    assert_states_close,
    eval_images,
    flat_floats,
    make_population,
    permuted_copies,
    realistic_model,
    scramble_batchnorm,
    states_equal,
)

from dimat_bench import final_merge
from dimat_bench.cli import main
from dimat_bench.matching import activation_permutations, batchnorm_layers, reset_batchnorm
from dimat_bench.permutation import FeatureExtractor, permutation_spec


def freshly_reset(model, images):
    fresh = copy.deepcopy(model)
    reset_batchnorm(fresh, images)
    return fresh.eval()


def hand_aligned_merge(population, images, reset_first=True):
    """By hand on copies: every model's statistics recomputed on `images` (`reset_first`), agent
    j = 1..N-1 matched to agent 0 on them, the float64 mean of agent 0 and the aligned others, and
    the permutations."""
    models = [copy.deepcopy(m) for m in population.models]
    spec = permutation_spec(models[0])
    if reset_first:
        for model in models:
            reset_batchnorm(model, images)
    for model in models:
        model.eval()
    extractors = [FeatureExtractor(m, spec) for m in models]
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    perms = {j: activation_permutations(extractors[0], [extractors[j]], images, spec)[0] for j in range(1, len(models))}
    aligned = [states[0]] + [spec.apply(states[j], perms[j]) for j in perms]
    mean = {k: sum(s[k].double() for s in aligned) / len(aligned) for k in states[0] if states[0][k].is_floating_point()}
    return mean, perms


@pytest.fixture
def stale4(cifar10):
    """4 distinct agents with stale BatchNorm statistics (random, 7 batches tracked)."""
    population, _ = make_population(cifar10, n_agents=4)
    for k, model in enumerate(population.models):
        scramble_batchnorm(model, seed=k)
    return population


def test_the_matching_images_are_the_union_of_the_shards_not_the_whole_training_subset(cifar10):
    """A split that leaves images to no agent (non-IID drops leftovers): those are never drawn."""
    population, parts = make_population(cifar10, n_agents=3, train_index=range(300))
    held = torch.cat([torch.as_tensor(shard[:20]) for shard in parts.shards])
    population.shards = [shard[:20] for shard in population.shards]  # 60 of the 300 images held by an agent
    drawn = torch.cat(list(final_merge.matching_batches(population, None, seed=1)))
    assert len(drawn) == 60 and len(list(final_merge.matching_batches(population, 1000, seed=1))[0]) == 60
    expected = population.train.batch(held)[0]
    key = lambda x: x.flatten(1).double().sum(1).sort().values  # noqa: E731 (the same images, in any order)
    assert torch.allclose(key(drawn), key(expected))


def test_the_aligned_merge_matches_every_agent_to_agent_zero_on_fresh_statistics(stale4):
    images = list(final_merge.matching_batches(stale4, 60, seed=3))
    assert sum(len(x) for x in images) == 60
    before = stale4.state_dicts()
    momenta = [m.momentum for model in stale4.models for m in batchnorm_layers(model)]
    merged = final_merge.merged_models(stale4, 60, seed=3)
    # the agents are left as they were: weights, statistics and BatchNorm momentum
    assert all(states_equal(a, b) for a, b in zip(stale4.state_dicts(), before))
    assert [m.momentum for model in stale4.models for m in batchnorm_layers(model)] == momenta
    expected, perms = hand_aligned_merge(stale4, images)
    _, stale = hand_aligned_merge(stale4, images, reset_first=False)
    # not vacuous: every agent needs its own permutation, and stale statistics would pick others
    assert not any(torch.equal(p, torch.arange(len(p))) for p in perms[1])
    assert not all(torch.equal(a, b) for a, b in zip(perms[1], perms[2]))
    assert sum(not torch.equal(a, b) for j in perms for a, b in zip(perms[j], stale[j])) >= 6
    got = merged["aligned"].state_dict()
    weights = {k: v for k, v in got.items() if "running" not in k and v.is_floating_point()}
    torch.testing.assert_close(flat_floats(weights), flat_floats({k: expected[k] for k in weights}),
                               rtol=1e-5, atol=1e-5)
    # its statistics are recomputed on the same images after the merge
    reference = copy.deepcopy(merged["aligned"])
    reset_batchnorm(reference, images)
    assert_states_close(got, reference.state_dict(), tol=1e-6)
    # the plain average is the mean of every parameter and buffer as the agents hold them
    mean = {k: sum(s[k].double() for s in before) / 4 for k in before[0] if before[0][k].is_floating_point()}
    average = {k: v for k, v in merged["average"].state_dict().items() if v.is_floating_point()}
    torch.testing.assert_close(flat_floats(average), flat_floats(mean), rtol=1e-6, atol=1e-6)


def test_n_permuted_copies_merge_back_into_the_model_and_n_identical_models_are_left_unchanged(cifar10, batches):
    base = realistic_model("resnet20", 1, batches)
    spec = permutation_spec(base)
    models, states = permuted_copies(base, spec, 4)
    assert not states_equal(states[1], states[2])
    population, _ = make_population(cifar10, n_agents=4, models=models)
    images = list(final_merge.matching_batches(population, 100, seed=0))
    merged = final_merge.merged_models(population, 100, seed=0)
    # aligned: the model in agent 0's channel order (agent 0 is a permuted copy too), with its statistics
    # recomputed on the matching images
    assert_states_close(merged["aligned"].state_dict(), freshly_reset(models[0], images).state_dict(), tol=1e-5)
    x = eval_images(cifar10)
    with torch.no_grad():
        expected = freshly_reset(base, images)(x)
        averaged = merged["average"].eval()(x)
    assert ((averaged - expected).norm() / expected.norm()).item() > 0.1  # averaging unaligned copies does not

    same = [copy.deepcopy(base) for _ in range(3)]
    population, _ = make_population(cifar10, n_agents=3, models=same)
    merged = final_merge.merged_models(population, 100, seed=0)
    assert_states_close(merged["average"].state_dict(), base.state_dict(), tol=1e-6)  # unchanged, buffers too
    assert_states_close(merged["aligned"].state_dict(),
                        freshly_reset(base, list(final_merge.matching_batches(population, 100, seed=0))).state_dict(),
                        tol=1e-5)


def test_one_model_held_by_every_agent_is_evaluated_once_as_if_each_held_it(cifar10, batches):
    """Non-IID agents: the one model's accuracy on each agent's own classes differs between agents."""
    population, _ = make_population(cifar10, n_agents=4, split="noniid")
    model = realistic_model("resnet20", 1, batches)
    once = population.evaluate(models=[model])
    population.load_state_dicts([model.state_dict()] * 4)
    assert once == population.evaluate()
    assert len({r["test_acc"] for r in once}) == 1 and len({r["own_acc"] for r in once}) > 1


def test_a_cell_records_both_final_merges_and_leaves_its_agents_as_the_last_round_left_them(pretrained5, tmp_path):
    args = ["run", "--pretrained", str(pretrained5), "--method", "wa", "--topology", "ring", "--rounds", "1",
            "--epochs-per-round", "1", "--quiet", "--final-merge-samples", "40"]
    assert main([*args, "--out", str(tmp_path / "with")]) == 0
    assert main([*args, "--no-final-merge", "--out", str(tmp_path / "without")]) == 0
    with_merge = pd.read_csv(tmp_path / "with" / "metrics.csv", comment="#")
    without = pd.read_csv(tmp_path / "without" / "metrics.csv", comment="#")
    phases = with_merge.groupby(["round", "phase"], sort=False).size()
    assert phases.index.tolist() == [(0, "initial"), (1, "after_merge"), (1, "after_train"),
                                     (1, "final_merge_average"), (1, "final_merge_aligned")]
    assert (phases == 5).all()
    rest = with_merge[~with_merge["phase"].str.startswith("final_merge")].drop(columns=["seconds_train",
                                                                                        "seconds_communicate",
                                                                                        "seconds_evaluate"])
    pd.testing.assert_frame_equal(rest, without.drop(columns=["seconds_train", "seconds_communicate",
                                                              "seconds_evaluate"]))
    for phase in final_merge.PHASES.values():
        rows = with_merge[with_merge["phase"] == phase]
        assert rows["test_acc"].nunique() == 1 and (rows["consensus_distance"] == 0).all()
        trained = with_merge[with_merge["phase"] == "after_train"]
        assert rows["messages_sent"].tolist() == trained["messages_sent"].tolist()  # the merge is not the method's
    a, b = (torch.load(tmp_path / name / "agents.pt", weights_only=True)["agents"] for name in ("with", "without"))
    assert len(a) == 5 and all(states_equal(x, y) for x, y in zip(a, b))
    meta = json.loads((tmp_path / "with" / "meta.json").read_text())
    assert meta["final_merge"]["samples"] == 40 and meta["final_merge"]["variants"] == ["average", "aligned"]
    assert "final_merge" not in json.loads((tmp_path / "without" / "meta.json").read_text())


def test_the_final_merge_declares_the_images_it_runs():
    assert final_merge.images(5, 4000, 1000, 1000) == {"bn_reset": 6000, "matching": 5000, "correlation": 4000,
                                                       "evaluate": 2000}
    assert final_merge.images(5, 800, 1000, 1000)["matching"] == 4000  # never more than the training set
    assert final_merge.images(5, 800, 1000, None)["bn_reset"] == 4800
