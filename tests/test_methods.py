import math

import numpy as np
import pandas as pd
import pytest
import torch

from dimat_bench import config as cfg
from dimat_bench.checkpoint import load_agents
from dimat_bench.cli import main
from dimat_bench.communication import cell_communication, communication_table
from dimat_bench.matching import (CorrelationStats, activation_permutations, batchnorm_layers, reset_batchnorm, weight_permutations,
                                  weighted_sum)
from dimat_bench.methods import METHODS, MethodContext, MethodOptions, create_method
from dimat_bench.methods.gossip import cdsgd_step
from dimat_bench.models import create_model
from dimat_bench.permutation import FeatureExtractor, permutation_spec
from dimat_bench.population import OptimizerSpec, batch_bounds
from dimat_bench.registry import ConfigError
from dimat_bench.run import RunConfig
from dimat_bench.topology import Topology, create_topology
from helpers import eval_images, make_population, random_permutations, real_batches, states_equal

ARCHITECTURES = [("resnet20", 1), ("resnet20", 2), ("vgg16_bn", 1), ("resnet50", 1), ("timm:resnet10t", 1)]


@pytest.fixture(scope="module")
def batches(cifar10):
    return real_batches(cifar10, count=200, batch=50)


def realistic_model(name, width, batches):
    """A randomly initialised model whose BatchNorm statistics are those of real images."""
    torch.manual_seed(0)
    model = create_model(name, 10, width=width)
    reset_batchnorm(model, batches)
    return model.eval()


@pytest.mark.parametrize("matcher", ["activation", "weight"])
@pytest.mark.parametrize("name,width", ARCHITECTURES)
def test_merging_with_a_permuted_copy_returns_the_same_function(name, width, matcher, batches, cifar10):
    model = realistic_model(name, width, batches)
    spec = permutation_spec(model)
    state = model.state_dict()
    permuted_state = spec.apply(state, random_permutations(spec))
    assert not states_equal(state, permuted_state), "the copy must really be permuted"
    copy = create_model(name, 10, width=width).eval()
    copy.load_state_dict(permuted_state)
    if matcher == "activation":
        [perms] = activation_permutations(FeatureExtractor(model, spec), [FeatureExtractor(copy, spec)], batches, spec)
    else:
        perms = weight_permutations(state, permuted_state, spec)
    merged = create_model(name, 10, width=width).eval()
    merged.load_state_dict(weighted_sum([state, spec.apply(permuted_state, perms)], [0.5, 0.5]))
    x = eval_images(cifar10)
    with torch.no_grad():
        expected, got = model(x), merged(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_streamed_correlation_equals_pearson_on_all_samples_at_once():
    """Batches of unequal size, far-from-zero means, a dead channel (correlation 0, not NaN)."""
    g = torch.Generator().manual_seed(0)
    a = 50 + torch.randn(7, 6, 5, 5, generator=g)
    b = torch.cat([a[:, :3] * 2 + 0.3 * torch.randn(7, 3, 5, 5, generator=g), torch.randn(7, 2, 5, 5, generator=g),
                   torch.zeros(7, 1, 5, 5)], 1) - 20
    stats = CorrelationStats(6, "cpu")
    for lo, hi in [(0, 1), (1, 4), (4, 7)]:
        stats.update(a[lo:hi], b[lo:hi])
    flat = lambda x: x.movedim(1, -1).reshape(-1, 6).double().numpy()  # noqa: E731
    with np.errstate(invalid="ignore"):
        expected = np.corrcoef(flat(a), flat(b), rowvar=False)[:6, 6:]
    expected[:, 5] = 0.0  # no variance: numpy gives NaN
    np.testing.assert_allclose(stats.correlation().numpy(), expected, rtol=0, atol=1e-5)
    assert stats.n == 7 * 25


def test_permutation_structure_has_the_specified_feature_points():
    counts = {name: len(permutation_spec(create_model(name, 10)).groups) for name in ("resnet20", "vgg16_bn", "resnet50")}
    assert counts == {"resnet20": 12, "vgg16_bn": 13, "resnet50": 37}
    spec = permutation_spec(create_model("resnet20", 10))
    stage1 = next(g for g in spec.groups if ("conv1.weight", 0) in g.axes)
    # The stem, every stage-1 block output and stage 2's first conv and shortcut inputs share one permutation.
    assert {("layer1.0.bn2.weight", 0), ("layer1.2.conv2.weight", 0), ("layer2.0.conv1.weight", 1),
            ("layer2.0.shortcut.0.weight", 1)} <= set(stage1.axes)
    assert not any(key.startswith("linear") and axis == 0 for g in spec.groups for key, axis in g.axes)


def method_for(name, population, topology, **options):
    defaults = METHODS.get(name).defaults
    opts = MethodOptions(match_samples=100, reset_optimizer=defaults["reset_optimizer"], **options)
    return create_method(name, MethodContext(population, topology, opts, seed=0))


def one_round(method):
    if method.family == "merge":
        method.communicate(1)
    return method.train(1)


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


def local_twin(name, cifar10):
    """The optimizer a method's agents would use if they never communicated."""
    d = METHODS.get(name).defaults
    mu = 0.9 if name == "cdmsgd" else d["momentum"] if d["optimizer"] == "sgd" else 0.9
    spec = OptimizerSpec(d["optimizer"], d["lr"], mu, 0.0, d["lr_decay"], nesterov=name == "cdmsgd")
    return make_population(cifar10, n_agents=3, optimizer=spec)[0]


@pytest.mark.parametrize("name", METHODS.names())
def test_under_disconnected_every_method_is_just_local_training(name, cifar10):
    d = METHODS.get(name).defaults
    spec = OptimizerSpec(d["optimizer"], d["lr"], d["momentum"], 0.0, d["lr_decay"])
    population, _ = make_population(cifar10, n_agents=3, optimizer=spec)
    method = method_for(name, population, create_topology("disconnected", 3))
    if method.family == "merge":
        before = population.state_dicts()
        method.communicate(1)
        assert all(states_equal(a, b) for a, b in zip(before, population.state_dicts()))
    method.train(1)
    twin = local_twin(name, cifar10)
    twin_method = method_for("local", twin, create_topology("disconnected", 3))
    twin_method.reset_optimizer = method.reset_optimizer
    twin_method.train(1)
    for a, b in zip(population.state_dicts(), twin.state_dicts()):
        assert states_equal(a, b, atol=1e-5)


@pytest.mark.parametrize("topology", ["fc", "ring"])
def test_sgp_on_a_symmetric_doubly_stochastic_matrix_mixes_local_sgd_steps(topology, cifar10):
    population, _ = make_population(cifar10, n_agents=4)
    method = method_for("sgp", population, create_topology(topology, 4, "metropolis"))
    torch.manual_seed(3)
    for model in population.models:
        for p in model.parameters():
            p.grad = torch.randn_like(p)
    params, grads, lr = population.flat_parameters(), population.flat_gradients(), population.lr
    mixing = torch.as_tensor(create_topology(topology, 4, "metropolis").mixing_matrix, dtype=torch.float32)
    method._update(0, [0, 1, 2, 3])
    torch.testing.assert_close(population.flat_parameters(), mixing @ (params - lr * grads), rtol=1e-5, atol=1e-6)
    assert torch.allclose(method.weights, torch.ones_like(method.weights))


def test_sgp_push_sum_on_a_directed_graph_conserves_mass_and_finds_the_average(cifar10):
    # Agent j pushes equal shares to itself and its out-neighbours: column-stochastic, not row-stochastic.
    out_edges = {0: [1], 1: [2, 3], 2: [0], 3: [0, 2]}
    push = np.zeros((4, 4))
    for j, targets in out_edges.items():
        for i in [j, *targets]:
            push[i, j] = 1 / (len(targets) + 1)
    assert np.allclose(push.sum(axis=0), 1) and not np.allclose(push.sum(axis=1), 1)
    population, _ = make_population(cifar10, n_agents=4)
    method = method_for("sgp", population, Topology("directed", "push", push > 0, push))
    x0 = torch.randn(4, 6)
    z = x0.clone()
    for step in range(200):
        z = method.step(z, torch.zeros_like(z), lr=0.1)
        x = method.weights.float() * z
        assert math.isclose(method.weights.sum().item(), 4.0, rel_tol=1e-9)
        torch.testing.assert_close(x.sum(0), x0.sum(0), rtol=1e-5, atol=1e-5)
        if step == 0:
            assert not torch.allclose(method.weights, torch.ones_like(method.weights))
    torch.testing.assert_close(z, x0.mean(0).expand_as(z), rtol=1e-4, atol=1e-4)


def test_cdsgd_on_a_quadratic_reaches_consensus():
    mixing = torch.as_tensor(create_topology("ring", 6).mixing_matrix, dtype=torch.float64)
    targets = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10
    initial = ((x - x.mean(0)) ** 2).sum(1).mean()
    for t in range(3000):
        lr = 0.5 / (1 + t) ** 0.5  # f_i = ½‖x − c_i‖², gradient x − c_i; diminishing step
        x = cdsgd_step(mixing, x, x - targets, lr)
    consensus = ((x - x.mean(0)) ** 2).sum(1).mean()
    assert consensus < 1e-4 * initial
    torch.testing.assert_close(x.mean(0), targets.mean(0), rtol=0, atol=2e-2)


PAPER_METHODS = {"dimat", "wa", "wm", "sgp", "cdsgd", "cdmsgd", "local"}


def expected_bytes(name, population_model, topology, rounds, steps_per_round):
    """The analytic count: elements sent × 4 bytes × out-neighbours × communication events."""
    method = METHODS.get(name)
    if method.family == "local":
        return np.zeros(5, dtype=np.int64)
    out_degree = {"fc": 4, "ring": 2}[topology]
    params = sum(p.numel() for p in population_model.parameters())
    buffers = sum(b.numel() for b in population_model.buffers() if b.is_floating_point())
    if method.family == "merge":
        return np.full(5, (params + buffers) * 4 * out_degree * rounds)
    extra = 1 if name == "sgp" else 0
    return np.full(5, (params + extra) * 4 * out_degree * rounds * steps_per_round)


@pytest.mark.parametrize("topology", ["fc", "ring"])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_a_two_round_cell_and_counts_bytes_exactly(name, topology, pretrained5, tmp_path):
    out = tmp_path / "cell"
    assert main(["run", "--pretrained", str(pretrained5), "--method", name, "--topology", topology, "--rounds", "2",
                 "--epochs-per-round", "1", "--match-samples", "50", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["agents.pt", "meta.json", "metrics.csv"]
    metrics = pd.read_csv(out / "metrics.csv", comment="#")
    family = METHODS.get(name).family
    phases = ["initial"] + (["after_merge", "after_train"] if family == "merge" else ["after_train"]) * 2
    assert metrics.groupby(["round", "phase"], sort=False).size().index.get_level_values("phase").tolist() == phases
    assert (metrics.groupby(["round", "phase"]).size() == 5).all()
    assert metrics["test_acc"].between(0, 1).all() and np.isfinite(metrics["test_loss"]).all()
    per_agent = metrics.pivot_table(index=["round", "phase"], columns="agent", values="bytes_sent", sort=False)
    assert (per_agent.iloc[0] == 0).all() and (per_agent.diff().dropna() >= 0).all().all()
    final = metrics[(metrics["round"] == 2) & (metrics["phase"] == "after_train")].sort_values("agent")
    model = create_model("resnet20", 10)
    if name in PAPER_METHODS:
        steps = len(batch_bounds(100, 100))  # 500 fixture images / 5 agents, batch 100
        assert final["bytes_sent"].tolist() == expected_bytes(name, model, topology, 2, steps).tolist()
    # What the run counted is what the communication figure's analytic schedule says.
    shards = load_agents(pretrained5 / "agents.pt").shards
    steps = max(len(batch_bounds(len(shard), 100)) for shard in shards)
    cost = cell_communication(name, create_topology(topology, 5).mixing_matrix, model, steps, 1, 2)
    if METHODS.get(name).random_communication:  # the schedule is an upper bound
        assert (final["messages_sent"].to_numpy() <= cost.messages).all()
        assert (final["bytes_sent"].to_numpy() <= cost.bytes).all()
    else:
        assert final["messages_sent"].tolist() == cost.messages.tolist()
        assert final["bytes_sent"].tolist() == cost.bytes.tolist()


def test_official_preset_sets_the_authors_switches_and_explicit_keys_win():
    config = cfg.from_dict(RunConfig, {"pretrained": "p", "preset": "official"})
    assert (config.match_data, config.match_augment, config.bn_momentum_cumulative, config.fc_merge_once) == \
        ("global", True, True, True)
    assert cfg.from_dict(RunConfig, {"pretrained": "p", "preset": "official", "match_data": "local"}).match_data == "local"


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
                              MethodOptions(fc_merge_once=True))
    assert cost.messages.tolist() == [2, 1, 1] and cost.bytes.tolist() == method.bytes_sent.tolist()


def test_gossip_sends_two_hundred_times_more_messages_than_merging_at_paper_scale():
    """SPEC §7: CIFAR (50,000 images), 5 agents, batch 100, E = 2: merge methods exchange once per
    2 epochs, gossip methods after each of the 100 steps of every epoch."""
    rows = communication_table(["dimat", "wa", "sgp", "cdsgd", "local"], "cifar10", "resnet20", 1, [5, 10, 20],
                               ["fc", "ring"])
    table = {(r["method"], r["topology"], r["agents"]): r for r in rows}
    assert len(rows) == 5 * 2 * 3
    assert [table["sgp", "fc", n]["steps_per_epoch"] for n in (5, 10, 20)] == [100, 50, 25]
    # merge: half an exchange per epoch, each agent sending to every out-neighbour
    assert table["dimat", "fc", 5]["messages_per_epoch"] == 0.5 * 5 * 4
    assert table["dimat", "ring", 5]["messages_per_epoch"] == 0.5 * 5 * 2
    assert table["dimat", "fc", 20]["messages_per_epoch"] == 0.5 * 20 * 19
    for topology in ("fc", "ring"):
        assert table["sgp", topology, 5]["messages_per_epoch"] == 200 * table["dimat", topology, 5]["messages_per_epoch"]
        assert table["cdsgd", topology, 20]["messages_per_epoch"] == 50 * table["wa", topology, 20]["messages_per_epoch"]
        assert table["local", topology, 10]["messages_per_epoch"] == table["local", topology, 10]["bytes_per_epoch"] == 0
    model = create_model("resnet20", 10)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert table["wa", "ring", 10]["bytes_per_epoch"] == 0.5 * 10 * 2 * (params + buffers) * 4
    assert table["cdsgd", "ring", 10]["bytes_per_epoch"] == 50 * 10 * 2 * params * 4
    assert table["sgp", "ring", 10]["bytes_per_epoch"] == 50 * 10 * 2 * (params + 1) * 4


@pytest.mark.parametrize("data,message", [
    ({"method": "fedavg"}, "method: got 'fedavg'; allowed: cdmsgd, cdsgd, dimat, local, sgp, wa, wm"),
    ({"topology": "star"}, "topology: got 'star'"),
    ({"rounds": -1}, "rounds: got -1; allowed: a number >= 1"),
    ({"preset": "paper"}, "preset: got 'paper'; allowed: official"),
    ({}, "pretrained: got None"),
])
def test_bad_run_configs_fail_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        cfg.from_dict(RunConfig, {"pretrained": "p", **data} if data else {})


def test_run_fails_before_compute_on_a_missing_or_corrupt_pretrained_dir(tmp_path, capsys, pretrained5):
    assert main(["run", "--pretrained", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "pretrained: got" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "agents.pt").write_bytes((pretrained5 / "agents.pt").read_bytes()[:1000])
    assert main(["run", "--pretrained", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_batchnorm_reset_is_the_exact_average_over_the_batches(batches):
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    reset_batchnorm(model, batches)
    with torch.no_grad():
        first = [model.conv1(x) for x in batches]  # what bn1 normalises
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in first]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in first]).mean(0)
    torch.testing.assert_close(model.bn1.running_mean, means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.running_var, variances, rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1 and model.bn1.num_batches_tracked.item() == len(batches)
    reset_batchnorm(model, batches, keep_cumulative=True)
    assert all(m.momentum is None for m in batchnorm_layers(model))


def test_feature_extractor_follows_the_models_current_weights(cifar10):
    """Extractors are built once per run; they must see every later load_state_dict."""
    model = create_model("resnet20", 10).eval()
    extractor = FeatureExtractor(model, permutation_spec(model))
    torch.manual_seed(5)
    model.load_state_dict(create_model("resnet20", 10).state_dict())
    x = eval_images(cifar10, count=8)
    with torch.no_grad():
        assert torch.equal(extractor(x)[0], model(x))
