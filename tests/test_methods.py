"""The shared tests every registered method and variant gets, by name from the registry."""

import json

import numpy as np
import pandas as pd
import pytest

from dimat_bench.checkpoint import load_agents
from dimat_bench.cli import main
from dimat_bench.communication import cell_communication
from dimat_bench.methods import METHODS
from dimat_bench.models import create_model
from dimat_bench.population import OptimizerSpec, batch_bounds
from dimat_bench.run import CellConfig
from dimat_bench.topology import create_topology
from helpers import make_population, method_for, states_equal


def local_twin(name, cifar10):
    """The optimizer a method's agents would use if they never communicated (CDMSGD's consensus
    momentum is torch's Nesterov SGD momentum)."""
    options = METHODS.get(name).build_options()
    mu = getattr(options, "gossip_momentum", None)
    spec = OptimizerSpec(options.optimizer, options.lr, options.momentum if mu is None else mu, 0.0,
                         options.lr_decay, nesterov=mu is not None)
    return make_population(cifar10, n_agents=3, optimizer=spec)[0]


@pytest.mark.parametrize("name", METHODS.names())
def test_under_disconnected_every_method_is_just_local_training(name, cifar10):
    options = METHODS.get(name).build_options()
    population, _ = make_population(cifar10, n_agents=3, optimizer=options.optimizer_spec())
    method = method_for(name, population, create_topology("disconnected", 3))
    if method.family == "merge":
        before = population.state_dicts()
        method.communicate(1)
        assert all(states_equal(a, b) for a, b in zip(before, population.state_dicts()))
    method.train(1)
    twin = local_twin(name, cifar10)
    method_for("local", twin, create_topology("disconnected", 3), reset_optimizer=options.reset_optimizer).train(1)
    for a, b in zip(population.state_dicts(), twin.state_dicts()):
        assert states_equal(a, b, atol=1e-5)


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
        sends = np.full(5, out_degree)
        if topology == "fc" and getattr(method.build_options(), "fc_merge_once", False):
            sends = np.array([4, 1, 1, 1, 1])  # the authors' shortcut: to agent 0, and its merge back to the rest
        return sends * (params + buffers) * 4 * rounds
    extra = 1 if name == "sgp" else 0
    return np.full(5, (params + extra) * 4 * out_degree * rounds * steps_per_round)


@pytest.mark.parametrize("topology", ["fc", "ring"])
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_a_two_round_cell_and_counts_bytes_exactly(name, topology, pretrained5, tmp_path):
    out = tmp_path / "cell"
    cls = METHODS.get(name)
    matching = ["--match-samples", "50"] if "match_samples" in cls.settable_keys() else []
    assert main(["run", "--pretrained", str(pretrained5), "--method", name, "--topology", topology, "--rounds", "2",
                 "--epochs-per-round", "1", *matching, "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".dimat-bench", "agents.pt", "meta.json", "metrics.csv"]
    meta = json.loads((out / "meta.json").read_text())  # the resolved config: run keys and the method's options
    resolved = CellConfig.from_mapping(meta["config"])
    assert resolved.to_dict() == meta["config"]
    assert resolved.options == cls.build_options({"match_samples": 50} if matching else {})
    assert resolved.run.method == name and meta["method"]["variant_of"] == cls.variant_of
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
    if cls.random_communication:  # the schedule is an upper bound
        assert (final["messages_sent"].to_numpy() <= cost.messages).all()
        assert (final["bytes_sent"].to_numpy() <= cost.bytes).all()
    else:
        assert final["messages_sent"].tolist() == cost.messages.tolist()
        assert final["bytes_sent"].tolist() == cost.bytes.tolist()
